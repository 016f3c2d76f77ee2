"""Write llava_mini.colab.SETUP_CELL into the first code cell of every notebook.

The setup part of that cell is its first paragraph (everything before the first blank line); the notebook's
own imports after it stay as they are, and so does the rest of the file (JSON with a 1-space indent, as
Jupyter writes it). Run it after editing llava_mini/colab.py:

    python scripts/sync_setup_cell.py            # rewrite notebooks/*.ipynb where they differ
    python scripts/sync_setup_cell.py --check    # only report; exit 1 if a notebook is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llava_mini.colab import SETUP_CELL

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def with_setup_cell(notebook: dict, setup: str = SETUP_CELL) -> dict:
    """The notebook with the setup part of its first code cell replaced by ``setup`` (in place)."""
    cell = next((c for c in notebook["cells"] if c["cell_type"] == "code"), None)
    if cell is None:
        raise ValueError("the notebook has no code cell")
    source = "".join(cell["source"])
    _, blank, imports = source.partition("\n\n")
    if not blank:
        raise ValueError("its first code cell has no blank line between the setup part and the imports")
    cell["source"] = (setup + "\n\n" + imports).splitlines(keepends=True)
    return notebook


def sync(path: Path, check: bool = False) -> bool:
    """Stamp the setup cell into ``path``; True if the file was (or, with ``check``, would be) changed."""
    text = path.read_text(encoding="utf-8")
    try:
        synced = json.dumps(with_setup_cell(json.loads(text)), indent=1, ensure_ascii=False) + "\n"
    except ValueError as error:
        raise SystemExit(f"{path}: {error}")
    if synced != text and not check:
        path.write_text(synced, encoding="utf-8")
    return synced != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook is out of date")
    args = parser.parse_args(argv)
    changed = [p for p in args.notebooks or sorted(NOTEBOOKS.glob("*.ipynb")) if sync(p, args.check)]
    for path in changed:
        print(f"{'out of date' if args.check else 'updated'}: {path}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
