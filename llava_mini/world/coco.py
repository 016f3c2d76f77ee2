"""Read COCO-format captions + instances files into symbolic image records.

Works on the real COCO 2017 files and on the shapes world alike. Bad input raises `CocoFormatError`
naming the file and the record; with `errors="skip"` a bad record is left out and counted instead.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

BOX_TOLERANCE = 1.0  # pixels a box may poke out of the image (COCO's float boxes round outwards)


class CocoFormatError(ValueError):
    """A COCO file is missing, malformed, or holds a record that cannot be right."""


@dataclass(frozen=True)
class ObjectAnnotation:
    category: str
    bbox: tuple[float, float, float, float]  # x, y, w, h in pixels, as in COCO
    iscrowd: bool = False
    attributes: dict | None = field(default=None, compare=False, hash=False)  # shapes world only

    @property
    def corners(self) -> tuple[float, float, float, float]:
        """x1, y1, x2, y2 in pixels."""
        x, y, w, h = self.bbox
        return x, y, x + w, y + h


@dataclass
class ImageRecord:
    image_id: int
    file_name: str
    width: int
    height: int
    captions: list[str] = field(default_factory=list)
    objects: list[ObjectAnnotation] = field(default_factory=list)
    image_dir: Path | None = None

    @property
    def path(self) -> Path:
        if self.image_dir is None:
            raise ValueError(f"image {self.image_id}: no image folder was given to the reader")
        return self.image_dir / self.file_name

    def load_image(self):
        from PIL import Image

        try:
            return Image.open(self.path).convert("RGB")
        except (OSError, ValueError) as e:
            raise CocoFormatError(f"image {self.image_id} ({self.path}): cannot be read: {e}") from e


@dataclass
class CocoDataset:
    records: list[ImageRecord]
    skipped: Counter = field(default_factory=Counter)  # reason -> how many records were left out
    skipped_examples: list[str] = field(default_factory=list)  # the first few messages, for a look

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self.records)

    def __getitem__(self, i: int) -> ImageRecord:
        return self.records[i]

    def by_id(self) -> dict[int, ImageRecord]:
        return {r.image_id: r for r in self.records}


def _load_json(path: Path) -> dict:
    if not path.exists():
        raise CocoFormatError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CocoFormatError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise CocoFormatError(f"{path}: expected a JSON object at the top level")
    return data


def _get(record: dict, key: str, where: str):
    if not isinstance(record, dict) or key not in record:
        raise CocoFormatError(f"{where}: missing key {key!r}")
    return record[key]


def read_coco(
    captions_file: str | Path | None,
    instances_file: str | Path | None,
    image_dir: str | Path | None = None,
    errors: Literal["raise", "skip"] = "raise",
) -> CocoDataset:
    """Merge a captions file and an instances file (either may be None) into one record per image.

    Images are the union of both files' `images`; an image with no captions or no objects is kept
    with an empty list. With errors="skip", an annotation that cannot be right (negative size, box
    outside the image, unknown image or category) is dropped and counted in `skipped`; a missing file
    or key always raises, since it means the whole file is not what it claims to be.
    """
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip', not {errors!r}")
    image_dir = Path(image_dir) if image_dir is not None else None
    dataset = CocoDataset(records=[])

    def reject(reason: str, message: str) -> None:
        if errors == "raise":
            raise CocoFormatError(message)
        dataset.skipped[reason] += 1
        if len(dataset.skipped_examples) < 20:
            dataset.skipped_examples.append(message)

    records: dict[int, ImageRecord] = {}
    files = [(Path(f), kind) for f, kind in ((captions_file, "captions"), (instances_file, "instances")) if f is not None]
    if not files:
        raise ValueError("give at least one of captions_file and instances_file")
    loaded = {kind: (path, _load_json(path)) for path, kind in files}

    for kind, (path, data) in loaded.items():
        for i, img in enumerate(_get(data, "images", str(path))):
            where = f"{path}: images[{i}]"
            image_id = _get(img, "id", where)
            where = f"{path}: image id {image_id}"
            width, height = _get(img, "width", where), _get(img, "height", where)
            file_name = _get(img, "file_name", where)
            if image_id in records:
                known = records[image_id]
                if (known.file_name, known.width, known.height) != (file_name, width, height):
                    raise CocoFormatError(f"{where}: differs from the same image in the other file")
                continue
            if not (_is_number(width) and _is_number(height) and width > 0 and height > 0):
                raise CocoFormatError(f"{where}: width and height must be positive numbers, got {width}x{height}")
            records[image_id] = ImageRecord(image_id, file_name, int(width), int(height), image_dir=image_dir)

    if "captions" in loaded:
        path, data = loaded["captions"]
        for i, ann in enumerate(_get(data, "annotations", str(path))):
            where = f"{path}: annotations[{i}] (id {ann.get('id', '?') if isinstance(ann, dict) else '?'})"
            image_id = _get(ann, "image_id", where)
            caption = _get(ann, "caption", where)
            if image_id not in records:
                reject("caption for unknown image", f"{where}: caption for unknown image id {image_id}")
                continue
            if not isinstance(caption, str) or not caption.strip():
                reject("empty caption", f"{where}: empty caption")
                continue
            # One caption is one line of the teacher's context: fold stray newlines and runs of spaces.
            records[image_id].captions.append(" ".join(caption.split()))

    if "instances" in loaded:
        path, data = loaded["instances"]
        categories = {}
        for i, cat in enumerate(_get(data, "categories", str(path))):
            where = f"{path}: categories[{i}]"
            categories[_get(cat, "id", where)] = _get(cat, "name", where)
        for i, ann in enumerate(_get(data, "annotations", str(path))):
            where = f"{path}: annotations[{i}] (id {ann.get('id', '?') if isinstance(ann, dict) else '?'})"
            image_id = _get(ann, "image_id", where)
            category_id = _get(ann, "category_id", where)
            bbox = _get(ann, "bbox", where)
            if image_id not in records:
                reject("box for unknown image", f"{where}: box for unknown image id {image_id}")
                continue
            if category_id not in categories:
                reject("unknown category", f"{where}: unknown category id {category_id}")
                continue
            record = records[image_id]
            problem = _box_problem(bbox, record.width, record.height)
            if problem:
                reject(problem.split(":")[0], f"{where}, image id {image_id}: {problem}")
                continue
            record.objects.append(ObjectAnnotation(
                category=categories[category_id],
                bbox=tuple(float(v) for v in bbox),
                iscrowd=bool(ann.get("iscrowd", 0)),
                attributes=ann.get("attributes"),
            ))

    dataset.records = [records[k] for k in sorted(records)]
    return dataset


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _box_problem(bbox, width: int, height: int) -> str | None:
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        return f"malformed box: expected [x, y, w, h] of finite numbers, got {bbox!r}"
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return f"box with non-positive size: {list(bbox)}"
    t = BOX_TOLERANCE
    if x < -t or y < -t or x + w > width + t or y + h > height + t:
        return f"box outside the image: {list(bbox)} in a {width}x{height} image"
    return None


def read_split(root: str | Path, split: str, errors: Literal["raise", "skip"] = "raise") -> CocoDataset:
    """Read `<root>/annotations/{captions,instances}_<split>.json` with images from `<root>/images/<split>`
    (the shapes world's layout) or `<root>/<split>2017` (COCO's)."""
    root = Path(root)
    image_dir = root / "images" / split
    if not image_dir.exists() and (root / f"{split}2017").exists():
        image_dir = root / f"{split}2017"
    return read_coco(
        root / "annotations" / f"captions_{split}.json",
        root / "annotations" / f"instances_{split}.json",
        image_dir=image_dir,
        errors=errors,
    )
