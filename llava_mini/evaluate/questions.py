"""Held-out questions from the test split's annotations (never the teacher's), each asked when the image settles it:

    colour      "What colour is the star in the picture?"        only when the shape occurs once
    shape       "Which shape is the red object?"                 only when the colour occurs once
    count       "How many shapes are in this picture?" / "How many circles can you see?"
    relation    "Is the red circle left or right of the blue square?"   only when world.relation is clear
    existence   "Do you see a green triangle in the image?"       present and absent things, balanced

The phrasings are close to the teacher's but copy none of its templates. Relations and names follow the world's
rules (``relation`` on box centres in fractions of the image, ``unique_name``), as the captions and the teacher do.
"""

import random
from collections import Counter
from dataclasses import dataclass
from itertools import permutations
from typing import Iterable

from llava_mini.english import article, number_word, plural
from llava_mini.world import COLORS, SHAPES, ImageRecord, WorldObject, relation, unique_name

KINDS = ("colour", "shape", "count", "relation", "existence")


def scene_objects(record: ImageRecord) -> list[WorldObject]:
    """A record's objects as world objects (box in pixels), from the annotation attributes or else a
    '<colour> <shape>' category; ValueError naming the image without either (these need the shapes world)."""
    objects = []
    for k, ann in enumerate(record.objects):
        attrs, words = ann.attributes or {}, ann.category.split()
        color, shape = attrs.get("color"), attrs.get("shape")
        if not (shape and color) and len(words) == 2 and words[0] in COLORS and words[1] in SHAPES:
            color, shape = words
        if not (shape and color):
            raise ValueError(f"image {record.image_id} ({record.file_name}): object {k} ({ann.category!r}) is not "
                             "of the shapes world (no shape/colour attributes, the category not '<colour> <shape>')")
        objects.append(WorldObject(shape=shape, color=color, size=attrs.get("size") or "", bbox=tuple(ann.bbox)))
    return objects


@dataclass(frozen=True)
class Question:
    """``expected``: the canonical answer the matcher compares against ("red", "3", "left", "yes");
    ``reference``: a full-sentence correct answer (for a judge)."""

    image_id: int
    file_name: str
    kind: str
    question: str
    expected: str
    reference: str


_COLOUR_QS = ("What colour is the {s} in the picture?", "Which colour does the {s} in this image have?",
              "What is the colour of the {s}?", "Tell me the colour of the {s}.", "What color is the {s} here?")
_SHAPE_QS = ("Which shape is the {c} object?", "What shape does the {c} object have?", "What is the {c} shape?",
             "Name the shape of the {c} object.", "What kind of shape is drawn in {c} here?")
_COUNT_ALL_QS = ("How many shapes are in this picture?", "How many objects can you see?",
                 "How many shapes does the image contain?", "What is the total number of objects in the image?")
_COUNT_SHAPE_QS = ("How many {p} can you see?", "How many {p} does the picture contain?",
                   "How many {p} are in this image?", "What is the number of {p} in the picture?")
_HORIZONTAL_QS = ("Is the {a} left or right of the {b}?", "Relative to the {b}, is the {a} on the left or on the right?",
                  "Is the {a} to the left of the {b} or to its right?")
_VERTICAL_QS = ("Is the {a} above the {b} or below it?", "Relative to the {b}, is the {a} higher up or lower down?",
                "Is the {a} over or under the {b}?")
_EXIST_QS = ("Is there {t} in this picture?", "Do you see {t} in the image?", "Does the image contain {t}?",
             "Can {t} be seen in the picture?")
_REL_WORD = {"to the left of": "left", "to the right of": "right", "above": "above", "below": "below"}

# Each maker yields (target, (question, expected, reference)); an image gets one question per target at most.


def _colour_options(record, objs, rng):
    shapes = Counter(o.shape for o in objs)
    for o in (o for o in objs if shapes[o.shape] == 1):
        yield o.shape, (rng.choice(_COLOUR_QS).format(s=o.shape), o.color, f"The {o.shape} is {o.color}.")


def _shape_options(record, objs, rng):
    colours = Counter(o.color for o in objs)
    for o in (o for o in objs if colours[o.color] == 1):
        yield o.color, (rng.choice(_SHAPE_QS).format(c=o.color), o.shape, f"The {o.color} object is {article(o.shape)}.")


def _count_options(record, objs, rng):
    there_are = lambda k, noun: (f"There is one {noun}." if k == 1  # noqa: E731
                                 else f"There are {number_word(k)} {plural(noun)}.")
    total = ("all", (rng.choice(_COUNT_ALL_QS), str(len(objs)), there_are(len(objs), "shape")))
    per_shape = [(shape, (rng.choice(_COUNT_SHAPE_QS).format(p=plural(shape)), str(k), there_are(k, shape)))
                 for shape, k in sorted(Counter(o.shape for o in objs).items())]
    rng.shuffle(per_shape)
    # Half the time the whole-image count comes first, so both forms are about equally common.
    yield from [total] + per_shape if rng.random() < 0.5 else per_shape + [total]


def _relation_options(record, objs, rng):
    # world.relation compares box centres in fractions of the image; WorldObject boxes are in pixels.
    centres = [((x + w / 2) / record.width, (y + h / 2) / record.height) for x, y, w, h in (o.bbox for o in objs)]
    for i, j in permutations(range(len(objs)), 2):
        a, b = unique_name(objs, i), unique_name(objs, j)
        rel = a and b and relation(centres[i], centres[j])
        if rel:
            question = rng.choice(_HORIZONTAL_QS if rel.startswith("to the") else _VERTICAL_QS).format(a=a, b=b)
            yield frozenset((i, j)), (question, _REL_WORD[rel], f"The {a} is {rel} the {b}.")


def _existence_options(objs, rng, present: bool):
    have, have_shapes = {o.category for o in objs}, {o.shape for o in objs}
    if present:  # usually a colour + shape; sometimes a bare shape, as the teacher sometimes asks
        things = sorted(have_shapes) if rng.random() < 0.2 else sorted(have)
    elif rng.random() < 0.2:
        things = [s for s in SHAPES if s not in have_shapes]
    else:  # near misses (sharing a colour or a shape with something present) are the informative absences
        near = {f"{c} {o.shape}" for o in objs for c in COLORS} | {f"{o.color} {s}" for o in objs for s in SHAPES}
        things = sorted(near - have)
    things = things or sorted({f"{c} {s}" for c in COLORS for s in SHAPES} - have)
    rng.shuffle(things)
    for thing in things:
        ref = f"Yes, there is {article(thing)} in the image." if present else f"No, there is no {thing} in the image."
        yield thing, (rng.choice(_EXIST_QS).format(t=article(thing)), "yes" if present else "no", ref)


_MAKERS = {"colour": _colour_options, "shape": _shape_options, "count": _count_options, "relation": _relation_options}


def questions_for_image(record: ImageRecord, seed: int = 0, per_kind: int = 1, index: int = 0) -> list[Question]:
    """Up to ``per_kind`` questions of each kind the image settles; deterministic for (seed, image id).
    ``index`` (the image's position in the set) alternates existence questions between something present
    and something absent over images, so the yes/no answers of a set are balanced to within one."""
    objs = scene_objects(record)
    out: list[Question] = []
    for kind in KINDS if objs else ():
        rng = random.Random(f"{seed}:{record.image_id}:{kind}")
        options: dict = {}  # target -> its first (question, expected, reference)
        if kind == "existence":  # one new thing per question; present and absent alternate
            for k in range(per_kind):
                fresh = (o for o in _existence_options(objs, rng, (index + k) % 2 == 0) if o[0] not in options)
                options.update([pick] if (pick := next(fresh, None)) else [])
        else:
            found = list(_MAKERS[kind](record, objs, rng))
            if kind != "count":
                rng.shuffle(found)
            for target, option in found:
                options.setdefault(target, option)
        out += [Question(record.image_id, record.file_name, kind, *o) for o in list(options.values())[:per_kind]]
    return out


def make_questions(records: Iterable[ImageRecord], seed: int = 0, per_kind: int = 1,
                   max_per_kind: int | None = None) -> list[Question]:
    """Held-out questions for a set of records (e.g. ``read_split(root, "test")``), in order of image, then kind.
    ``max_per_kind`` caps each kind at that many (a seeded sample; existence keeps yes and no balanced), so
    kinds weigh equally in a micro average. Deterministic for a seed and a set of records."""
    questions = [q for index, r in enumerate(records) for q in questions_for_image(r, seed, per_kind, index)]
    if max_per_kind is None:
        return questions
    rng = random.Random(f"{seed}:sample")
    keep: set[int] = set()
    for kind in KINDS:
        idx = [i for i, q in enumerate(questions) if q.kind == kind]
        if kind == "existence":
            groups = [[i for i in idx if questions[i].expected == v] for v in ("yes", "no")]
            for group, n in zip(groups, (max_per_kind - max_per_kind // 2, max_per_kind // 2)):
                keep.update(rng.sample(group, min(n, len(group))))
        else:
            keep.update(rng.sample(idx, min(max_per_kind, len(idx))))
    return [q for i, q in enumerate(questions) if i in keep]
