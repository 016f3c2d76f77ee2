"""Six real photographs, annotated by hand in COCO format, to set beside the shapes world.

The pictures ship inside packages the course already installs (scikit-image's `skimage.data` and
matplotlib's sample data), so they need no download. Neither package gives captions or boxes; the
five captions and the boxes in `data/photos/` were written for this course by looking at each picture.

    export_photos(folder)  writes the pictures as PNG files named as in the annotation files
    read_photos()          exports them (once) to <work>/photos and reads them as a CocoDataset
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from llava_mini.world.coco import CocoDataset, read_coco
from llava_mini.paths import DATA_DIR, work_dir

ANNOTATION_DIR = DATA_DIR / "photos"
CAPTIONS_FILE = ANNOTATION_DIR / "captions_photos.json"
INSTANCES_FILE = ANNOTATION_DIR / "instances_photos.json"


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        image = getattr(skimage.data, name)()
        return image[0] if isinstance(image, tuple) else image  # stereo_motorcycle: (left, right, disparity)

    return load


def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))


# file name in the annotation files -> how to load the pixels (H, W, 3) uint8
SOURCES: dict[str, Callable[[], np.ndarray]] = {
    "astronaut.png": _skimage("astronaut"),
    "coffee.png": _skimage("coffee"),
    "chelsea.png": _skimage("chelsea"),
    "rocket.png": _skimage("rocket"),
    "motorcycle.png": _skimage("stereo_motorcycle"),
    "grace_hopper.png": _grace_hopper,
}


def export_photos(out_dir: str | Path) -> Path:
    """Write every photo as a PNG file under `out_dir` (skipping files already there); return the folder."""
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for file_name, load in SOURCES.items():
        path = out_dir / file_name
        if not path.exists():
            tmp = path.with_name(f".{file_name}.tmp")
            Image.fromarray(load()).save(tmp, format="PNG")
            tmp.replace(path)
    return out_dir


def read_photos(errors: str = "raise") -> CocoDataset:
    """The annotated photos as a CocoDataset whose records load their pixels from <work>/photos."""
    image_dir = export_photos(work_dir() / "photos")
    return read_coco(CAPTIONS_FILE, INSTANCES_FILE, image_dir=image_dir, errors=errors)
