"""Run every notebook of the course in order, headless, and keep what it produced.

    python scripts/run_course.py [--runs runs] [--only 03]

Executed notebooks and their figures go to runs/<timestamp>/; generated data (the world, instruction data,
checkpoints) stays in the shared work folder, so a second run reuses it. Prints each notebook's time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=str(ROOT / "runs"), help="folder that receives one run folder per run")
    parser.add_argument("--only", default="", help="run only notebooks whose name contains this")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds a single cell may take")
    args = parser.parse_args()

    run_dir = Path(args.runs) / datetime.now().strftime("%Y%m%d-%H%M%S")
    (run_dir / "figures").mkdir(parents=True)
    os.environ["LLAVA_MINI_FIGURES"] = str(run_dir / "figures")  # inherited by the kernels
    notebooks = sorted(p for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb") if args.only in p.name)
    timings, failed = {}, None
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        start = time.time()
        print(f"running {path.name} ...", flush=True)
        try:
            NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                           resources={"metadata": {"path": str(path.parent)}}).execute()
        except Exception as e:  # keep the partly executed notebook: it shows where it broke
            failed = f"{path.name}: {type(e).__name__}: {str(e).splitlines()[-1] if str(e) else ''}"
        timings[path.name] = round(time.time() - start, 1)
        nbformat.write(nb, run_dir / path.name)
        print(f"  {timings[path.name]:7.1f} s  {'FAILED' if failed else 'ok'}", flush=True)
        if failed:
            break
    total = round(sum(timings.values()), 1)
    (run_dir / "timings.json").write_text(json.dumps({"notebooks": timings, "total_s": total,
                                                       "cpus": os.cpu_count()}, indent=1))
    print(f"\n{len(timings)} notebook(s) in {total} s; executed notebooks and figures are in {run_dir}")
    if failed:
        print(f"FAILED: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
