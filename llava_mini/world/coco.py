"""Read COCO-format captions + instances files (real COCO 2017 or the shapes world) into image records."""

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

from PIL import Image

from llava_mini.files import read_json

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
    def corners(self) -> tuple[float, float, float, float]:  # x1, y1, x2, y2 in pixels
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

    def load_image(self) -> Image.Image:
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

    def subset(self, n: int, seed: int | None = None, start: int = 0) -> "CocoDataset":
        """Records start .. start+n of the images in id order, or (with a seed) in a seeded shuffle, returned
        in id order: subset(4000, seed=0) and subset(500, seed=0, start=4000) never share an image."""
        order = list(self.records)
        if seed is not None:
            random.Random(seed).shuffle(order)
        chosen = sorted(order[start:start + n], key=lambda r: r.image_id)
        return CocoDataset(chosen, Counter(self.skipped), list(self.skipped_examples))


def _get(record, key: str, where, kind: type | None = None):  # record[key], checked
    if not isinstance(record, dict):
        raise CocoFormatError(f"{where}: not an object (got {type(record).__name__})")
    if key not in record:
        raise CocoFormatError(f"{where}: missing key {key!r}")
    if kind is not None and not isinstance(record[key], kind):
        raise CocoFormatError(f"{where}: {key!r} is not a {kind.__name__} (got {type(record[key]).__name__})")
    return record[key]


def read_coco(captions_file: str | Path | None, instances_file: str | Path | None, image_dir: str | Path | None = None,
              errors: Literal["raise", "skip"] = "raise") -> CocoDataset:
    """Merge a captions file and an instances file (either may be None) into one record per image: the union
    of both files' images, each with its captions and objects (lists that may be empty).

    With errors="skip", an image that cannot be right (id not an integer, size not positive, listed twice in
    one file) is left out with its annotations, and so is an annotation that cannot be right (caption not a
    non-empty string, bad box, unknown image or category, iscrowd not 0/1), each counted in `skipped` by
    reason. A missing file or key, a file not UTF-8 JSON, or files that disagree on an image always raise."""
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip', not {errors!r}")
    if captions_file is None and instances_file is None:
        raise ValueError("give at least one of captions_file and instances_file")
    # read_json names a file that is missing, not UTF-8 or not JSON; _get one that is not a JSON object.
    loaded = {kind: (Path(f), read_json(f, error=CocoFormatError))
              for kind, f in (("captions", captions_file), ("instances", instances_file)) if f is not None}
    image_dir = Path(image_dir) if image_dir is not None else None
    dataset = CocoDataset(records=[])

    def reject(reason: str, message: str) -> None:
        if errors == "raise":
            raise CocoFormatError(message)
        dataset.skipped[reason] += 1
        if len(dataset.skipped_examples) < 20:
            dataset.skipped_examples.append(message)

    # Ids are keyed by repr: hashable whatever a file holds, and 3, "3" and 3.0 stay apart.
    records: dict[str, ImageRecord] = {}
    bad_images: set[str] = set()  # skipped once, though both files list them
    for path, data in loaded.values():
        seen: dict[str, int] = {}  # image key -> its index in this file
        for i, img in enumerate(_get(data, "images", path, list)):
            image_id = _get(img, "id", f"{path}: images[{i}]")
            key = repr(image_id)
            where = f"{path}: image id {image_id}" if _is_int(image_id) else f"{path}: images[{i}]"
            width, height, file_name = (_get(img, k, where) for k in ("width", "height", "file_name"))
            if key in seen:
                reject("duplicate image id", f"{where}: appears twice in this file (images[{seen[key]}] and [{i}])")
                continue
            seen[key] = i
            if key in bad_images:
                continue
            problem = None  # (skip reason, message)
            if not _is_int(image_id):
                problem = "image id is not an integer", f"id is not an integer (got {type(image_id).__name__})"
            elif not (_is_number(width) and _is_number(height) and width > 0 and height > 0):
                problem = "bad image size", f"width and height must be positive numbers, got {width!r}x{height!r}"
            elif not isinstance(file_name, str):
                problem = "file_name is not a string", f"file_name is not a string (got {type(file_name).__name__})"
            if problem:
                bad_images.add(key)
                records.pop(key, None)  # listed fine by the other file: skipped all the same
                reject(problem[0], f"{where}: {problem[1]}")
            elif key not in records:
                records[key] = ImageRecord(image_id, file_name, int(width), int(height), image_dir=image_dir)
            elif (records[key].file_name, records[key].width, records[key].height) != (file_name, width, height):
                # Only the instances file can meet an image again: the captions file listed it first.
                raise CocoFormatError(f"{where}: differs from the same image in {loaded['captions'][0]}")

    def annotations(kind: str, keys: tuple[str, ...]):
        """(where, record, the values of `keys`) per annotation of an image that was read; the others rejected."""
        path, data = loaded[kind]
        what = "caption" if kind == "captions" else "box"
        for i, ann in enumerate(_get(data, "annotations", path, list)):
            where = f"{path}: annotations[{i}]" + (f" (id {ann.get('id', '?')})" if isinstance(ann, dict) else "")
            image_id, *values = (_get(ann, k, where) for k in ("image_id", *keys))
            if repr(image_id) in records:
                yield where, records[repr(image_id)], ann, *values
            elif repr(image_id) in bad_images:
                reject("annotation of a skipped image", f"{where}: {what} of skipped image id {image_id}")
            else:
                reject(f"{what} for unknown image", f"{where}: {what} for unknown image id {image_id}")

    if "captions" in loaded:
        for where, record, _, caption in annotations("captions", ("caption",)):
            if not isinstance(caption, str):
                reject("caption is not a string", f"{where}: caption is not a string (got {type(caption).__name__})")
            elif not caption.strip():
                reject("empty caption", f"{where}: empty caption")
            else:  # one caption is one line of the teacher's context: fold stray newlines and runs of spaces
                record.captions.append(" ".join(caption.split()))

    if "instances" in loaded:
        path, data = loaded["instances"]
        categories = {}
        for i, cat in enumerate(_get(data, "categories", path, list)):
            where = f"{path}: categories[{i}]"
            categories[repr(_get(cat, "id", where))] = _get(cat, "name", where, str)
        for where, record, ann, category_id, bbox in annotations("instances", ("category_id", "bbox")):
            where, iscrowd = f"{where}, image id {record.image_id}", ann.get("iscrowd", 0)
            problem = _box_problem(bbox, record.width, record.height)
            if repr(category_id) not in categories:
                reject("unknown category", f"{where}: unknown category id {category_id}")
            elif problem:
                reject(problem.split(":")[0], f"{where}: {problem}")
            elif not (isinstance(iscrowd, int) and iscrowd in (0, 1)):  # a bool is an int; "0" is not
                reject("bad iscrowd", f"{where}: iscrowd must be 0 or 1, got {iscrowd!r}")
            else:
                record.objects.append(ObjectAnnotation(categories[repr(category_id)], tuple(float(v) for v in bbox),
                                                       bool(iscrowd), ann.get("attributes")))

    dataset.records = sorted(records.values(), key=lambda r: r.image_id)
    return dataset


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _box_problem(bbox, width: int, height: int) -> str | None:
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        return f"malformed box: expected [x, y, w, h] of finite numbers, got {bbox!r}"
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return f"box with non-positive size: {list(bbox)}"
    if min(x, y) < -BOX_TOLERANCE or x + w > width + BOX_TOLERANCE or y + h > height + BOX_TOLERANCE:
        return f"box outside the image: {list(bbox)} in a {width}x{height} image"
    return None


def read_split(root: str | Path, split: str, errors: Literal["raise", "skip"] = "raise") -> CocoDataset:
    """Read one split in the shapes world's layout (`<root>/annotations/captions_train.json`, `instances_...`,
    images in `<root>/images/train`) or COCO 2017's as unzipped (`annotations/captions_train2017.json`,
    images in `<root>/train2017`); `split` is "train" or "train2017" for either."""
    root, base = Path(root), split.removesuffix("2017")
    name = next((s for s in (split, base + "2017", base) if (root / "annotations" / f"captions_{s}.json").exists()), split)
    folders = (root / "images" / split, root / "images" / base, root / (base + "2017"), root / split)
    image_dir = next((d for d in folders if d.is_dir()), folders[0])
    return read_coco(root / "annotations" / f"captions_{name}.json", root / "annotations" / f"instances_{name}.json",
                     image_dir, errors)
