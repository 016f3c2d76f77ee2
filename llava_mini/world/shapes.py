"""The shapes world, a procedurally drawn stand-in for COCO: vocabulary, scenes and pixels. Each image holds
1-4 coloured shapes at known boxes on a tinted background, drawn from `_rng(seed, split, index)` alone."""

import math
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

COLORS = {"red": (215, 38, 45), "green": (35, 160, 65), "blue": (40, 85, 215), "yellow": (235, 200, 20),
          "purple": (135, 55, 175), "orange": (245, 125, 25)}
SHAPES = ("circle", "square", "triangle", "star", "cross")
# Side of the object's square box in pixels. At 64 px with 8 px patches an object spans 2-4 patches
# per side: a prototype with 10-21 px objects could not learn shapes from its patch tokens.
SIZES: dict[str, int] = {"small": 16, "medium": 22, "large": 28}
# Pale backgrounds, so every object colour stands out; each image blends two of them with a gradient.
BACKGROUNDS = ((236, 236, 236), (250, 244, 228), (226, 238, 246), (232, 244, 230), (246, 232, 238), (214, 214, 214))
SPLITS = ("train", "val", "test")
# Bump when a seed would draw other images or captions, so old worlds are redrawn (4: relations.py's rule).
WORLD_VERSION = 4
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
        step = len(self.colors) + 3  # gaps between shapes, like COCO's missing ids
        return [{"id": 1 + k * step + j, "name": f"{color} {shape}", "supercategory": shape}
                for k, shape in enumerate(self.shapes) for j, color in enumerate(self.colors)]


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


def _pick(rng: np.random.Generator, options):  # faster than rng.choice, which builds an array every call
    return options[int(rng.integers(len(options)))]


def _rng(seed: int, split: str, index: int) -> np.random.Generator:  # the backbones draw their streams with it too
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


def sample_scene(config: WorldConfig, rng: np.random.Generator, image_id: int) -> Scene:
    """Draw the objects' attributes, then non-overlapping boxes for them all at once, so that large objects (harder
    to fit) are not dropped more often than small ones: every size stays about equally common."""
    n = int(rng.integers(config.min_objects, config.max_objects + 1))
    wanted = [(_pick(rng, list(config.sizes)), _pick(rng, config.shapes), _pick(rng, list(config.colors)))
              for _ in range(n)]
    boxes = _place(config, rng, [config.sizes[size] for size, _, _ in wanted])
    objects = tuple(WorldObject(shape, color, size, box) for (size, shape, color), box in zip(wanted, boxes) if box)
    i, j = rng.integers(len(config.backgrounds), size=2)
    return Scene(image_id, objects, (config.backgrounds[int(i)], config.backgrounds[int(j)]), bool(rng.integers(2)))


def _place(config: WorldConfig, rng: np.random.Generator, sides: list[int], attempts: int = 30,
           tries_per_object: int = 20) -> list[tuple[int, int, int, int] | None]:
    """Square boxes with these sides, inside the image and `gap` pixels apart, largest (hardest) first; the layout
    is redrawn when one does not fit. Failing that (rare), the best layout, with None for the ones left out."""
    order = sorted(range(len(sides)), key=lambda k: -sides[k])
    best: list = [None] * len(sides)
    for _ in range(attempts):
        boxes: list = [None] * len(sides)
        for k in order:
            side = sides[k]
            # Candidate corners in [1, size - side - 1] (one free pixel at every border), drawn in one call.
            for x, y in rng.integers(1, config.image_size - side, size=(tries_per_object, 2)).tolist():
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
    (ax, ay, aw, ah), (bx, by, bw, bh) = a, b
    return not (ax + aw + gap <= bx or bx + bw + gap <= ax or ay + ah + gap <= by or by + bh + gap <= ay)


def _shape_polygon(shape: str, x: float, y: float, s: float) -> list[tuple[float, float]] | None:
    """Polygon filling the box (x, y, s, s) exactly; None for shapes drawn another way."""
    if shape == "triangle":
        return [(x + s / 2, y), (x + s, y + s), (x, y + s)]
    if shape == "star":
        radii, angles = [1.0, 0.42] * 5, [-math.pi / 2 + k * math.pi / 5 for k in range(10)]  # outer, inner, ...
        pts = [(r * math.cos(a), r * math.sin(a)) for r, a in zip(radii, angles)]
        xs, ys = zip(*pts)
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        return [(x + (px - x0) / (x1 - x0) * s, y + (py - y0) / (y1 - y0) * s) for px, py in pts]
    if shape == "cross":  # twelve corners, clockwise from the top arm's left
        t, u = s / 3, 2 * (s / 3)
        return [(x + t, y), (x + u, y), (x + u, y + t), (x + s, y + t), (x + s, y + u), (x + u, y + u),
                (x + u, y + s), (x + t, y + s), (x + t, y + u), (x, y + u), (x, y + t), (x + t, y + t)]
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
        fill, poly = config.colors[obj.color], _shape_polygon(obj.shape, x, y, w - 1)
        if obj.shape in ("circle", "square"):
            (draw.ellipse if obj.shape == "circle" else draw.rectangle)([x, y, x + w - 1, y + w - 1], fill=fill)
        elif poly is not None:
            draw.polygon(poly, fill=fill)
        else:
            raise ValueError(f"don't know how to draw shape {obj.shape!r}")
    return image.resize((config.image_size, config.image_size), Image.Resampling.BOX)
