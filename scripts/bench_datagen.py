"""Benchmark: generate the course's instruction data offline with the symbolic teacher.

    python scripts/bench_datagen.py [--images 4000] [--seed 0]

Prints the time of a cold run (every call goes to the teacher), a warm rerun (every call served from
the cache) and the record counts. It writes into a temporary folder, never into your work folder (the
world itself is the shared course world, generated once if missing).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from llava_mini.world import read_split
from llava_mini.teacher import caption_records, generate_instruct_data, SymbolicTeacher
from llava_mini.course import course_world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=4000, help="train images to use (course: 4000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    t0 = time.perf_counter()
    root = course_world(seed=args.seed)
    records = read_split(root, "train").records[: args.images]
    t_read = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        teacher = SymbolicTeacher(args.seed)
        t0 = time.perf_counter()
        cold = generate_instruct_data(records, teacher, out_file=tmp / "instruct.json", stage1_file=tmp / "stage1.json",
                                      cache_file=tmp / "cache.jsonl", seed=args.seed, progress=False)
        t_cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm = generate_instruct_data(records, teacher, out_file=tmp / "instruct.json", stage1_file=tmp / "stage1.json",
                                      cache_file=tmp / "cache.jsonl", seed=args.seed, progress=False)
        t_warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        stage1 = caption_records(records, seed=args.seed)
        t_stage1 = time.perf_counter() - t0
        size_mb = (tmp / "instruct.json").stat().st_size / 1e6

    s = cold.summary
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"world read ({len(records)} train images): {t_read:.2f} s")
    print(f"cold run (symbolic teacher, {s['teacher_calls']} calls, cache written): {t_cold:.2f} s "
          f"= {s['teacher_calls'] / t_cold:.0f} calls/s")
    print(f"warm rerun ({warm.summary['cache_hits']} cache hits, {warm.summary['teacher_calls']} calls): {t_warm:.2f} s")
    print(f"stage-1 caption records: {len(stage1)} in {t_stage1:.2f} s")
    print(f"instruction records: {json.dumps(s['records'])}, rejected: {json.dumps(s['rejected'])}, "
          f"file {size_mb:.1f} MB")


if __name__ == "__main__":
    main()
