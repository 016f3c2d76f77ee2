"""Six real photographs to set beside the shapes world. The pictures ship inside skimage and matplotlib (no
download); their captions and boxes (COCO format, `data/photos/`) were written by hand for this course."""

from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from llava_mini.paths import DATA_DIR, work_dir
from llava_mini.world.coco import CocoDataset, read_coco

ANNOTATION_DIR = DATA_DIR / "photos"
CAPTIONS_FILE = ANNOTATION_DIR / "captions_photos.json"
INSTANCES_FILE = ANNOTATION_DIR / "instances_photos.json"


def _skimage(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    return image[0] if isinstance(image, tuple) else image  # stereo_motorcycle: (left, right, disparity)


def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))


# file name in the annotation files -> how to load the pixels (H, W, 3) uint8
SOURCES: dict[str, Callable[[], np.ndarray]] = {
    **{f"{name}.png": partial(_skimage, name) for name in ("astronaut", "coffee", "chelsea", "rocket")},
    "motorcycle.png": partial(_skimage, "stereo_motorcycle"), "grace_hopper.png": _grace_hopper}


def export_photos(out_dir: str | Path) -> Path:
    """Write every photo as a PNG file under `out_dir` (skipping files already there); return the folder."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for file_name, load in SOURCES.items():
        path = out_dir / file_name
        if not path.exists():
            tmp = path.with_name(f".{file_name}.tmp")
            Image.fromarray(load()).save(tmp, format="PNG")
            tmp.replace(path)  # never half a picture under the final name
    return out_dir


def read_photos(errors: str = "raise") -> CocoDataset:
    """The annotated photos as a CocoDataset whose records load their pixels from <work>/photos."""
    return read_coco(CAPTIONS_FILE, INSTANCES_FILE, image_dir=export_photos(work_dir() / "photos"), errors=errors)
