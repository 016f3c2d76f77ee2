"""Where things live. Shipped inputs sit in the repository's `data/`; everything the course generates
(the world, instruction data, checkpoints, figures) goes to one work folder that later notebooks reuse.
Set LLAVA_MINI_WORK to move it (the course runner does, so a run never touches your own work folder)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / "data"


def work_dir() -> Path:
    path = Path(os.environ.get("LLAVA_MINI_WORK", REPO_ROOT / "work"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def figures_dir() -> Path:
    """Where notebooks save their figures; the course runner points LLAVA_MINI_FIGURES at its run folder."""
    path = Path(os.environ.get("LLAVA_MINI_FIGURES", work_dir() / "figures"))
    path.mkdir(parents=True, exist_ok=True)
    return path
