"""How the symbolic teacher reads a context: as a person would, from the text alone. It knows English words
for colours, sizes, shapes and numbers and "to the left of" (the shapes world uses a subset; the others keep
it from misreading other scenes); it never opens the annotation files, so all it says the context supports."""

import re
from contextlib import suppress
from dataclasses import dataclass, field

from llava_mini.english import NUMBER_WORDS, plural
from llava_mini.world import RELATIONS

COLOR_WORDS = ("red", "green", "blue", "yellow", "purple", "orange", "pink", "brown", "black", "white", "grey", "gray")
SIZE_WORDS = ("small", "medium", "large")
SHAPE_WORDS = ("circle", "square", "triangle", "star", "cross", "rectangle", "diamond", "hexagon", "heart", "oval")
SIZE_RANK = {"small": 0, "medium": 1, "large": 2}

_SHAPE_FORMS = {**{s: s for s in SHAPE_WORDS}, **{plural(s): s for s in SHAPE_WORDS}}
_PHRASE_RE = re.compile(
    r"^(?:(?:a|an|the|one)\s+)?(?:(?P<size>" + "|".join(SIZE_WORDS) + r")\s+)?(?:(?P<color>"
    + "|".join(COLOR_WORDS) + r")\s+)?(?P<shape>" + "|".join(sorted(_SHAPE_FORMS, key=len, reverse=True)) + r")$")
_COUNT_RE = re.compile(r"\b(?P<n>" + "|".join(NUMBER_WORDS[1:]) + r")\s+(?:shapes?|objects?)\b(?P<rest>.*)$")
_RELATION_RE = re.compile(r"^(?:in this (?:image|picture),?\s+)?(?P<a>.+?)\s+(?:(?:sits|is|lies|appears)\s+)?(?P<rel>"
                          + "|".join(RELATIONS) + r")\s+(?P<b>.+?)\.?$")
_REGION_RE = re.compile(r"^(?P<a>.+?)\s+(?P<where>(?:in|at|on|near) the [a-z ]+? of the (?:picture|image))\.?$")
_BOX_RE = re.compile(r"^(?P<label>[^:\[\]]+?):\s*\[(?P<nums>[^\]]*)\]\s*$")


@dataclass
class SeenObject:
    """One object as the context describes it; fields the context leaves open are None."""

    shape: str
    color: str | None = None
    size: str | None = None
    box: tuple[float, float, float, float] | None = None  # x1, y1, x2, y2 as fractions of the image

    @property
    def category(self) -> str:
        return f"{self.color} {self.shape}" if self.color else self.shape

    @property
    def described(self) -> str:  # as a sentence says it: 'medium-sized red circle'
        return " ".join(w for w in (size_word(self.size), self.color, self.shape) if w)

    @property
    def center(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2, (y1 + y2) / 2


@dataclass
class SceneReading:
    """What a reader can take from one context. `complete` means the context enumerates every object
    (a count and a list that agrees with it), which is what lets the teacher say "no" to absent things."""

    captions: list[str]
    boxes: list[tuple[str, tuple[float, float, float, float]]]
    objects: list[SeenObject] = field(default_factory=list)
    complete: bool = False
    relations: list[tuple[int, str, int]] = field(default_factory=list)  # (i, "above", j): object i is above j
    regions: dict[int, str] = field(default_factory=dict)  # i -> "in the top left part of the picture"
    mentions_background: str | None = None  # "a light background", when a sentence says so


def size_word(size: str | None) -> str | None:
    """How a sentence says a size: 'medium' -> 'medium-sized'."""
    return "medium-sized" if size == "medium" else size


def parse_phrase(text: str) -> SeenObject | None:
    """'a small red circle' -> SeenObject('circle', 'red', 'small'); None if it is not such a phrase."""
    m = _PHRASE_RE.match(text.strip().lower())
    return SeenObject(shape=_SHAPE_FORMS[m["shape"]], color=m["color"], size=m["size"]) if m else None


def read_context(context: str) -> SceneReading:
    """Parse a symbolic context (captions, a blank line, box lines) into what it states."""
    captions, boxes = [], []
    for line in filter(None, (line.strip() for line in context.splitlines())):
        m, nums = _BOX_RE.match(line), ()
        with suppress(ValueError):  # not numbers: a caption that happens to hold brackets
            nums = tuple(float(v) for v in m["nums"].split(",")) if m else ()
        if len(nums) == 4:
            boxes.append((m["label"].strip().lower(), nums))
        else:
            captions.append(line)
    reading = SceneReading(captions=captions, boxes=boxes)
    # 1. The inventory: a sentence with a count ("three shapes") followed by a list of that many phrases.
    for m in filter(None, (_COUNT_RE.search(caption.lower()) for caption in captions)):
        rest = re.sub(r"^[^:,]*?(?:[:,]|\bhere\b,?)\s*", "", m["rest"].strip(), count=1)
        items = re.split(r",\s*(?:and\s+)?|\s+and\s+", re.sub(r"^(?:here,?\s*)", "", rest).strip().rstrip("."))
        phrases = [parse_phrase(p) for p in items if p.strip()]
        if phrases and all(phrases) and len(phrases) == NUMBER_WORDS.index(m["n"]):
            reading.objects, reading.complete = phrases, True
            break
    if bg := re.search(r"\b(?:a|an)\s+((?:[a-z]+\s+)?background)\b", context.lower()):
        reading.mentions_background = f"a {bg[1]}"
    if not reading.complete:
        return reading
    # 2. Boxes: attach each to an inventory object of the same category, matching sizes by box side.
    _attach_boxes(reading)
    # 3. Relations and regions, kept only when each phrase points at exactly one known object.
    for text in (caption.lower().strip() for caption in captions):
        if m := _RELATION_RE.match(text):
            i, j = _resolve(reading, m["a"]), _resolve(reading, m["b"])
            if i is not None and j is not None and i != j:
                reading.relations.append((i, m["rel"], j))
        elif (m := _REGION_RE.match(text)) and (i := _resolve(reading, m["a"])) is not None:
            reading.regions[i] = m["where"]
    return reading


def _attach_boxes(reading: SceneReading) -> None:
    by_category, box_groups = {}, {}
    for i, obj in enumerate(reading.objects):
        by_category.setdefault(obj.category, []).append(i)
    for label, box in reading.boxes:
        box_groups.setdefault(label, []).append(box)
    if sorted(by_category) != sorted(box_groups) or any(len(by_category[c]) != len(box_groups[c]) for c in by_category):
        return  # the boxes and the sentences disagree: trust neither for positions
    for category, indices in by_category.items():
        boxes = sorted(box_groups[category], key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
        sizes = [reading.objects[i].size for i in indices]
        if None in sizes and len(set(sizes)) > 1:
            return  # some sizes said, some not: we cannot tell which box is which
        # Smallest box to the smallest object; objects of equal size are interchangeable anyway.
        indices = sorted(indices, key=lambda i: SIZE_RANK.get(reading.objects[i].size, 0))
        for i, box in zip(indices, boxes):
            reading.objects[i].box = box


def _resolve(reading: SceneReading, phrase: str) -> int | None:
    """The index of the one known object a phrase describes, or None if it fits none or several."""
    seen = parse_phrase(phrase)
    hits = [i for i, o in enumerate(reading.objects) if seen and o.shape == seen.shape
            and seen.color in (None, o.color) and seen.size in (None, o.size)]
    return hits[0] if len(hits) == 1 else None
