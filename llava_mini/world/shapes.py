"""The shapes world: a procedurally drawn stand-in for COCO that the offline track trains on.

Each image holds 1-4 coloured shapes at known boxes on a tinted background. The generator writes a
real COCO-format dataset, so every later step reads it exactly as it would read COCO 2017:

    <root>/images/<split>/<image_id:07d>.png     ids: train 1, 2, ...; val 1000001, ...; test 2000001, ...
    <root>/annotations/captions_<split>.json    images + five captions per image
    <root>/annotations/instances_<split>.json   images + boxes; one category per colour+shape ("red circle")

Everything is deterministic for a seed: image i of a split depends only on (seed, split, i), so asking
for more images never changes the ones already drawn.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 38, 45),
    "green": (35, 160, 65),
    "blue": (40, 85, 215),
    "yellow": (235, 200, 20),
    "purple": (135, 55, 175),
    "orange": (245, 125, 25),
}
SHAPES = ("circle", "square", "triangle", "star", "cross")
# Side of the object's square box in pixels. At 64 px with 8 px patches an object spans 2-4 patches
# per side: a prototype with 10-21 px objects could not learn shapes from its patch tokens.
SIZES: dict[str, int] = {"small": 16, "medium": 22, "large": 28}
# Pale backgrounds, so every object colour stands out; each image blends two of them with a gradient.
BACKGROUNDS = ((236, 236, 236), (250, 244, 228), (226, 238, 246), (232, 244, 230), (246, 232, 238), (214, 214, 214))
SPLITS = ("train", "val", "test")
WORLD_VERSION = 3  # bump when the same seed would draw different images or captions, so old worlds are redrawn
SUPERSAMPLE = 4  # draw at 4x and downsample: antialiased edges carry the shape


@dataclass(frozen=True)
class WorldConfig:
    """The world's vocabulary and geometry. Change any field to make the world easier or harder."""

    image_size: int = 64
    shapes: tuple[str, ...] = SHAPES
    colors: dict[str, tuple[int, int, int]] = field(default_factory=lambda: dict(COLORS))
    sizes: dict[str, int] = field(default_factory=lambda: dict(SIZES))
    min_objects: int = 1
    max_objects: int = 4
    backgrounds: tuple[tuple[int, int, int], ...] = BACKGROUNDS
    gap: int = 2  # minimum free pixels between two boxes

    def categories(self) -> list[dict]:
        """COCO categories: one per colour+shape pair. Ids are not contiguous, as in real COCO."""
        cats, cid = [], 1
        for shape in self.shapes:
            for color in self.colors:
                cats.append({"id": cid, "name": f"{color} {shape}", "supercategory": shape})
                cid += 1
            cid += 3  # leave gaps between shapes, like COCO's missing ids
        return cats


@dataclass(frozen=True)
class WorldObject:
    shape: str
    color: str
    size: str
    bbox: tuple[int, int, int, int]  # x, y, w, h in pixels

    @property
    def category(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def center(self) -> tuple[float, float]:
        x, y, w, h = self.bbox
        return x + w / 2, y + h / 2


@dataclass(frozen=True)
class Scene:
    image_id: int
    objects: tuple[WorldObject, ...]
    background: tuple[tuple[int, int, int], tuple[int, int, int]]
    gradient_vertical: bool


# ----------------------------------------------------------------------------- sampling scenes


def _pick(rng: np.random.Generator, options):
    """One item of a sequence (faster than rng.choice, which builds an array every call)."""
    return options[int(rng.integers(len(options)))]


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


IDS_PER_SPLIT = 1_000_000


def image_id_for(split: str, index: int) -> int:
    """COCO image id of image `index` of `split`: unique across splits and independent of how many
    images the other splits hold (train 1, 2, ...; val 1000001, ...; test 2000001, ...)."""
    if not 0 <= index < IDS_PER_SPLIT - 1:
        raise ValueError(f"image index {index} out of range for split {split!r}")
    block = SPLITS.index(split) if split in SPLITS else 3 + zlib.crc32(split.encode()) % 1000
    return block * IDS_PER_SPLIT + index + 1


def sample_scene(config: WorldConfig, rng: np.random.Generator, image_id: int) -> Scene:
    """Draw object attributes, then non-overlapping boxes for them, for one image.

    Attributes are drawn first and placement retried for the whole set, so that large objects (harder
    to fit) are not dropped more often than small ones: every size stays about equally common."""
    n = int(rng.integers(config.min_objects, config.max_objects + 1))
    wanted = [(_pick(rng, list(config.sizes)), _pick(rng, config.shapes), _pick(rng, list(config.colors)))
              for _ in range(n)]
    boxes = _place(config, rng, [config.sizes[size] for size, _, _ in wanted])
    objects = tuple(WorldObject(shape, color, size, box)
                    for (size, shape, color), box in zip(wanted, boxes) if box is not None)
    i, j = rng.integers(len(config.backgrounds), size=2)
    return Scene(
        image_id=image_id,
        objects=objects,
        background=(config.backgrounds[int(i)], config.backgrounds[int(j)]),
        gradient_vertical=bool(rng.integers(2)),
    )


def _place(config: WorldConfig, rng: np.random.Generator, sides: list[int], attempts: int = 30,
           tries_per_object: int = 20) -> list[tuple[int, int, int, int] | None]:
    """Square boxes with the given sides, inside the image and `gap` pixels apart. Largest first, since
    they are the hardest to fit; the whole layout is redrawn when one does not fit. If no attempt fits
    them all (rare: four large objects), the best layout is returned with None for the ones left out."""
    order = sorted(range(len(sides)), key=lambda k: -sides[k])
    best: list = [None] * len(sides)
    for _ in range(attempts):
        boxes: list = [None] * len(sides)
        for k in order:
            side = sides[k]
            # Candidate corners in [1, size - side - 1] (one free pixel at every border), drawn in one call.
            corners = rng.integers(1, config.image_size - side, size=(tries_per_object, 2)).tolist()
            for x, y in corners:
                box = (x, y, side, side)
                if not any(b is not None and _overlaps(box, b, config.gap) for b in boxes):
                    boxes[k] = box
                    break
        if all(b is not None for b in boxes):
            return boxes
        if sum(b is not None for b in boxes) > sum(b is not None for b in best):
            best = boxes
    return best


def _overlaps(a, b, gap: int) -> bool:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return not (ax + aw + gap <= bx or bx + bw + gap <= ax or ay + ah + gap <= by or by + bh + gap <= ay)


# ----------------------------------------------------------------------------- drawing


def _shape_polygon(shape: str, x: float, y: float, s: float) -> list[tuple[float, float]] | None:
    """Polygon filling the box (x, y, s, s) exactly; None for shapes drawn another way."""
    if shape == "triangle":
        return [(x + s / 2, y), (x + s, y + s), (x, y + s)]
    if shape == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.42
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((r * math.cos(a), r * math.sin(a)))
        xs, ys = zip(*pts)
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        return [(x + (px - x0) / (x1 - x0) * s, y + (py - y0) / (y1 - y0) * s) for px, py in pts]
    if shape == "cross":
        t = s / 3
        return [
            (x + t, y), (x + 2 * t, y), (x + 2 * t, y + t), (x + s, y + t), (x + s, y + 2 * t),
            (x + 2 * t, y + 2 * t), (x + 2 * t, y + s), (x + t, y + s), (x + t, y + 2 * t),
            (x, y + 2 * t), (x, y + t), (x + t, y + t),
        ]
    return None


def render_scene(scene: Scene, config: WorldConfig) -> Image.Image:
    """Draw a scene as an RGB image of config.image_size pixels."""
    big = config.image_size * SUPERSAMPLE
    # The gradient is one line of colours, repeated across the other axis.
    ramp = np.linspace(0.0, 1.0, big, dtype=np.float32)[:, None]
    c0, c1 = (np.array(c, dtype=np.float32) for c in scene.background)
    line = (c0 * (1 - ramp) + c1 * ramp).astype(np.uint8)  # (big, 3)
    strip = Image.fromarray(line[:, None, :] if scene.gradient_vertical else line[None, :, :])
    image = strip.resize((big, big), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        x, y, w, _ = (v * SUPERSAMPLE for v in obj.bbox)
        fill = config.colors[obj.color]
        poly = _shape_polygon(obj.shape, x, y, w - 1)
        if obj.shape == "circle":
            draw.ellipse([x, y, x + w - 1, y + w - 1], fill=fill)
        elif obj.shape == "square":
            draw.rectangle([x, y, x + w - 1, y + w - 1], fill=fill)
        elif poly is not None:
            draw.polygon(poly, fill=fill)
        else:
            raise ValueError(f"don't know how to draw shape {obj.shape!r}")
    return image.resize((config.image_size, config.image_size), Image.Resampling.BOX)


# ----------------------------------------------------------------------------- captions

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


def _phrase(obj: WorldObject, rng: np.random.Generator, article: bool = True, detail: float = 0.5) -> str:
    """'a small red circle' with the size and colour each said or left out at random."""
    words = []
    if rng.random() < detail:
        words.append(obj.size)
    if rng.random() < 0.5 + detail / 2:
        words.append(obj.color)
    words.append(obj.shape)
    text = " ".join(words)
    return (("an " if text[0] in "aeiou" else "a ") + text) if article else text


def _full_phrase(obj: WorldObject) -> str:
    text = f"{obj.size} {obj.color} {obj.shape}"
    return "a " + text


def _join(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def relation(a: WorldObject, b: WorldObject) -> str | None:
    """The clearest spatial relation of a to b, or None when neither axis separates them clearly."""
    (ax, ay), (bx, by) = a.center, b.center
    dx, dy = bx - ax, by - ay
    if abs(dx) >= abs(dy) and abs(dx) >= 6:
        return "to the left of" if dx > 0 else "to the right of"
    if abs(dy) > abs(dx) and abs(dy) >= 6:
        return "above" if dy > 0 else "below"
    return None


def make_captions(scene: Scene, rng: np.random.Generator, n: int = 5, image_size: int = 64) -> list[str]:
    """Five captions in varied wording. The first always lists every object with its count; the
    others, like real COCO captions, pick a few facts (a relation, a count, one object) and leave
    the rest out."""
    objs = list(scene.objects)
    count = len(objs)
    noun = "shape" if count == 1 else "shapes"
    openers = [
        f"{NUMBER_WORDS[count].capitalize()} {noun} on a light background: {{}}.",
        f"A picture of {NUMBER_WORDS[count]} {noun}: {{}}.",
        f"There {'is' if count == 1 else 'are'} {NUMBER_WORDS[count]} {noun} here, {{}}.",
    ]
    full = _pick(rng, openers).format(_join([_full_phrase(o) for o in objs]))
    captions = [full]
    makers = [_caption_relation, _caption_count, _caption_single, _caption_list, _caption_corner]
    for _ in range(1000):  # a scene always offers far more than n distinct captions; the cap is a guard
        if len(captions) == n:
            return captions
        maker = makers[int(rng.integers(len(makers)))]
        text = maker(objs, rng, image_size)
        if text and text not in captions:
            captions.append(text)
    raise RuntimeError(f"image {scene.image_id}: could not write {n} distinct captions")


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _caption_relation(objs, rng, image_size):
    if len(objs) < 2:
        return None
    i, j = (int(v) for v in rng.permutation(len(objs))[:2])
    rel = relation(objs[i], objs[j])
    if rel is None:
        return None
    a, b = _phrase(objs[i], rng), _phrase(objs[j], rng)
    templates = ["{a} {rel} {b}.", "{a} sits {rel} {b}.", "In this image {a} is {rel} {b}."]
    return _cap(_pick(rng, templates).format(a=a, rel=rel, b=b))


def _caption_count(objs, rng, image_size):
    shapes = sorted({o.shape for o in objs})
    shape = _pick(rng, shapes)
    k = sum(o.shape == shape for o in objs)
    plural = shape + ("es" if shape.endswith(("s", "x")) else "s")
    if k == 1:
        return _cap(_pick(rng, [f"only one {shape} is visible.", f"a single {shape} among the shapes."]))
    return _cap(_pick(rng, [f"{NUMBER_WORDS[k]} {plural} in the picture.", f"there are {NUMBER_WORDS[k]} {plural}."]))


def _caption_single(objs, rng, image_size):
    obj = objs[int(rng.integers(len(objs)))]
    templates = ["{p} on a light background.", "a drawing that includes {p}.", "{p} can be seen in the image."]
    return _cap(_pick(rng, templates).format(p=_phrase(obj, rng, detail=0.8)))


def _caption_list(objs, rng, image_size):
    k = int(rng.integers(1, len(objs) + 1))
    chosen = [objs[i] for i in sorted(rng.permutation(len(objs))[:k])]
    return _cap(_pick(rng, ["{l} drawn on a canvas.", "simple shapes, including {l}."]).format(
        l=_join([_phrase(o, rng) for o in chosen])))


def region(obj: WorldObject, image_size: int) -> str:
    """Where an object's centre lies: 'top left', 'top', ..., 'middle'. A side is named only when the
    centre is clearly off the midline (more than a sixth of the image), so the caption is never a
    coin toss."""
    cx, cy = obj.center
    mid, margin = image_size / 2, image_size / 6
    vert = "top" if cy < mid - margin else "bottom" if cy > mid + margin else ""
    horiz = "left" if cx < mid - margin else "right" if cx > mid + margin else ""
    return " ".join(w for w in (vert, horiz) if w) or "middle"


REGION_PHRASES = {
    "middle": "near the middle of the picture",
    "top": "at the top of the picture",
    "bottom": "at the bottom of the picture",
    "left": "on the left side of the picture",
    "right": "on the right side of the picture",
}


def _caption_corner(objs, rng, image_size):
    obj = objs[int(rng.integers(len(objs)))]
    where = region(obj, image_size)
    phrase = REGION_PHRASES.get(where, f"in the {where} part of the picture")
    return _cap(f"{_phrase(obj, rng)} {phrase}.")


# ----------------------------------------------------------------------------- writing COCO files


def generate_world(
    root: str | Path,
    sizes: dict[str, int] | None = None,
    seed: int = 0,
    config: WorldConfig | None = None,
    overwrite: bool = False,
) -> dict[str, dict[str, Path]]:
    """Write a COCO-format shapes world under `root` and return {split: {"captions", "instances", "images"}}.

    `sizes` maps split name to image count (default train 4000, val 500, test 500). An existing world
    with the same seed, sizes and config is reused unless `overwrite`.
    """
    config = config or WorldConfig()
    sizes = sizes or {"train": 4000, "val": 500, "test": 500}
    root = Path(root)
    stamp = {"version": WORLD_VERSION, "seed": seed, "sizes": sizes, "config": asdict(config)}
    stamp_file = root / "world.json"
    paths = {
        split: {
            "captions": root / "annotations" / f"captions_{split}.json",
            "instances": root / "annotations" / f"instances_{split}.json",
            "images": root / "images" / split,
        }
        for split in sizes
    }
    if not overwrite and _same_stamp(stamp_file, stamp):
        last_images = [paths[s]["images"] / f"{image_id_for(s, n - 1):07d}.png" for s, n in sizes.items() if n > 0]
        if all(p["captions"].exists() and p["instances"].exists() for p in paths.values()) and all(
            f.exists() for f in last_images
        ):
            return paths
    stamp_file.unlink(missing_ok=True)  # a run cut short must not leave a stamp that vouches for it
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = config.categories()
    cat_id = {c["name"]: c["id"] for c in categories}
    for split, count in sizes.items():
        paths[split]["images"].mkdir(parents=True, exist_ok=True)
        images, captions, instances = [], [], []
        for index in range(count):
            scene, scene_captions = scene_with_captions(seed, split, index, config)
            image_id = scene.image_id
            file_name = f"{image_id:07d}.png"
            render_scene(scene, config).save(paths[split]["images"] / file_name)
            images.append({"id": image_id, "file_name": file_name, "width": config.image_size, "height": config.image_size})
            for k, text in enumerate(scene_captions):
                # Annotation ids derive from the image id, so they too stay put when a split grows.
                captions.append({"id": image_id * 100 + k, "image_id": image_id, "caption": text})
            for k, obj in enumerate(scene.objects):
                x, y, w, h = obj.bbox
                instances.append({
                    "id": image_id * 100 + k, "image_id": image_id, "category_id": cat_id[obj.category],
                    "bbox": [x, y, w, h], "area": float(w * h), "iscrowd": 0,
                    # An extension of COCO's format (readers ignore unknown keys): the attributes as
                    # separate fields, which the evaluation's question builder uses as ground truth.
                    "attributes": {"shape": obj.shape, "color": obj.color, "size": obj.size},
                })
        info = {"description": "llava_mini shapes world", "seed": seed, "split": split}
        _write_json(paths[split]["captions"], {"info": info, "images": images, "annotations": captions})
        _write_json(paths[split]["instances"], {
            "info": info, "images": images, "annotations": instances, "categories": categories})
    _write_json(stamp_file, stamp)
    return paths


def _same_stamp(stamp_file: Path, stamp: dict) -> bool:
    try:
        return json.loads(stamp_file.read_text()) == json.loads(json.dumps(stamp))
    except (OSError, json.JSONDecodeError):
        return False


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj))
    tmp.replace(path)  # never leave a half-written annotation file behind


def scene_with_captions(
    seed: int, split: str, index: int, config: WorldConfig | None = None, n_captions: int = 5
) -> tuple[Scene, list[str]]:
    """The scene and captions of image `index` of `split`: exactly what generate_world writes for it."""
    config = config or WorldConfig()
    rng = _rng(seed, split, index)
    scene = sample_scene(config, rng, image_id_for(split, index))
    return scene, make_captions(scene, rng, n=n_captions, image_size=config.image_size)


def scene_for(seed: int, split: str, index: int, image_id: int | None = None, config: WorldConfig | None = None) -> Scene:
    """The scene generate_world draws for image `index` of `split` (for tests and demos)."""
    image_id = image_id_for(split, index) if image_id is None else image_id
    return sample_scene(config or WorldConfig(), _rng(seed, split, index), image_id)




