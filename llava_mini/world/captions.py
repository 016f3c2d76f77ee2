"""Five COCO-style captions per scene, every fact true: the first lists every object; the others, like COCO's,
pick a few facts (a relation by `relations.py`'s rule, a count, one object, where it is) and leave the rest."""

import numpy as np

from llava_mini.english import article, capitalize, join, number_word, plural
from llava_mini.world.relations import relation
from llava_mini.world.shapes import Scene, WorldObject, _pick

REGION_PHRASES = {"middle": "near the middle of the picture", "top": "at the top of the picture",
                  "bottom": "at the bottom of the picture", "left": "on the left side of the picture",
                  "right": "on the right side of the picture"}


def make_captions(scene: Scene, rng: np.random.Generator, n: int = 5, image_size: int = 64) -> list[str]:
    """`n` distinct captions of the scene, drawn with `rng` (the scene's own generator, after sampling)."""
    objs = list(scene.objects)
    count, number, noun = len(objs), number_word(len(objs)), "shape" if len(objs) == 1 else "shapes"
    openers = [f"{capitalize(number)} {noun} on a light background: {{}}.", f"A picture of {number} {noun}: {{}}.",
               f"There {'is' if count == 1 else 'are'} {number} {noun} here, {{}}."]
    captions = [_pick(rng, openers).format(join([article(f"{o.size} {o.color} {o.shape}") for o in objs]))]
    makers = [_caption_relation, _caption_count, _caption_single, _caption_list, _caption_corner]
    for _ in range(1000):  # a scene always offers far more than n distinct captions; the cap is a guard
        if len(captions) == n:
            return captions
        text = _pick(rng, makers)(objs, rng, image_size)
        if text and text not in captions:
            captions.append(text)
    raise RuntimeError(f"image {scene.image_id}: could not write {n} distinct captions")


def _phrase(obj: WorldObject, rng: np.random.Generator, detail: float = 0.5) -> str:
    """'a small red circle' with the size and colour each said or left out at random."""
    words = [obj.size] if rng.random() < detail else []
    if rng.random() < 0.5 + detail / 2:
        words.append(obj.color)
    return article(" ".join(words + [obj.shape]))


def _caption_relation(objs, rng, image_size):
    if len(objs) < 2:
        return None
    i, j = (int(v) for v in rng.permutation(len(objs))[:2])
    rel = relation(*[(x / image_size, y / image_size) for x, y in (objs[i].center, objs[j].center)])  # in fractions
    if rel is None:
        return None
    a, b = _phrase(objs[i], rng), _phrase(objs[j], rng)
    templates = ["{a} {rel} {b}.", "{a} sits {rel} {b}.", "In this image {a} is {rel} {b}."]
    return capitalize(_pick(rng, templates).format(a=a, rel=rel, b=b))


def _caption_count(objs, rng, image_size):
    shape = _pick(rng, sorted({o.shape for o in objs}))
    k = sum(o.shape == shape for o in objs)
    one = [f"only one {shape} is visible.", f"a single {shape} among the shapes."]
    many = [f"{number_word(k)} {plural(shape)} in the picture.", f"there are {number_word(k)} {plural(shape)}."]
    return capitalize(_pick(rng, one if k == 1 else many))


def _caption_single(objs, rng, image_size):
    obj = _pick(rng, objs)
    templates = ["{p} on a light background.", "a drawing that includes {p}.", "{p} can be seen in the image."]
    return capitalize(_pick(rng, templates).format(p=_phrase(obj, rng, detail=0.8)))


def _caption_list(objs, rng, image_size):
    k = int(rng.integers(1, len(objs) + 1))
    chosen = [objs[i] for i in sorted(rng.permutation(len(objs))[:k])]
    return capitalize(_pick(rng, ["{l} drawn on a canvas.", "simple shapes, including {l}."]).format(
        l=join([_phrase(o, rng) for o in chosen])))


def region(obj: WorldObject, image_size: int) -> str:
    """Where an object's centre lies: 'top left', 'top', ..., 'middle'. A side is named only when the centre
    is clearly off the midline (more than a sixth of the image), so the caption is never a coin toss."""
    cx, cy = obj.center
    mid, margin = image_size / 2, image_size / 6
    vert = "top" if cy < mid - margin else "bottom" if cy > mid + margin else ""
    horiz = "left" if cx < mid - margin else "right" if cx > mid + margin else ""
    return " ".join(w for w in (vert, horiz) if w) or "middle"


def _caption_corner(objs, rng, image_size):
    obj = _pick(rng, objs)
    where = region(obj, image_size)
    return capitalize(f"{_phrase(obj, rng)} {REGION_PHRASES.get(where, f'in the {where} part of the picture')}.")
