"""Teachers: who writes the instruction data. One interface, three implementations.

    teacher.complete(messages) -> str     messages: [{"role": "system"|"user"|"assistant", "content": str}]
    teacher.identity                      a string naming the teacher and its settings (part of the cache
                                          key); it never contains a secret

`SymbolicTeacher` (the default, offline, deterministic) plays GPT-4's part: it reads the symbolic context
in the last user message, exactly what the paper's teacher saw, and writes the same three response
formats. It parses that text as a reader would (number words, colour, size and shape words, "to the left
of", ...); it never opens the ground-truth annotation files, so everything it says is something the
context supports. `OpenAITeacher` talks to any OpenAI-compatible chat-completions server (GPT-4-class
services, vLLM, ollama); `TransformersTeacher` runs a local causal LM with a chat template.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field

from llava_mini.teacher.prompts import response_type_of

# ----------------------------------------------------------------------------- the interface


class TeacherError(RuntimeError):
    """One teacher call failed for good (after its retries); the run counts it and moves on."""


class TeacherFatalError(TeacherError):
    """The teacher cannot work at all (bad key, unknown model): stop the run instead of failing every call."""


class TeacherBudgetExhausted(TeacherError):
    """The request budget is spent; the run stops and keeps what it has (the cache resumes it later)."""


class Teacher:
    """Messages in, text out. Subclasses set `identity` and implement `complete`."""

    identity: str = "teacher"

    def complete(self, messages: list[dict[str, str]]) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.identity})"


def _last_user_message(messages: list[dict[str, str]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return message.get("content", "")
    raise ValueError("no user message: nothing for the teacher to read")


# ============================================================================= the symbolic teacher
#
# Reading: English words for colours, sizes and shapes, like any reader knows them. The shapes world uses
# a subset; the extra words let the reader recognise (and so not misread) other scenes.

COLOR_WORDS = ("red", "green", "blue", "yellow", "purple", "orange", "pink", "brown", "black", "white", "grey", "gray")
SIZE_WORDS = ("small", "medium", "large")
SHAPE_WORDS = ("circle", "square", "triangle", "star", "cross", "rectangle", "diamond", "hexagon", "heart", "oval")
# What the teacher asks "is there a ...?" about when a thing is absent: the everyday colours and shapes.
COMMON_COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
COMMON_SHAPES = ("circle", "square", "triangle", "star", "cross")

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve")
_NUMBER_VALUE = {w: i for i, w in enumerate(NUMBER_WORDS)}
SIZE_RANK = {"small": 0, "medium": 1, "large": 2}


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x", "sh", "ch")) else "s")


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def _article(text: str) -> str:
    return ("an " if text[:1] in "aeiou" else "a ") + text


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


_SHAPE_FORMS = {**{s: s for s in SHAPE_WORDS}, **{plural(s): s for s in SHAPE_WORDS}}
_PHRASE_RE = re.compile(
    r"^(?:(?:a|an|the|one)\s+)?(?:(?P<size>" + "|".join(SIZE_WORDS) + r")\s+)?(?:(?P<color>"
    + "|".join(COLOR_WORDS) + r")\s+)?(?P<shape>" + "|".join(sorted(_SHAPE_FORMS, key=len, reverse=True)) + r")$"
)
_COUNT_RE = re.compile(r"\b(?P<n>" + "|".join(NUMBER_WORDS[1:]) + r")\s+(?:shapes?|objects?)\b(?P<rest>.*)$")
_RELATIONS = ("to the left of", "to the right of", "above", "below")
_OPPOSITE = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below", "below": "above"}
_RELATION_RE = re.compile(
    r"^(?:in this (?:image|picture),?\s+)?(?P<a>.+?)\s+(?:(?:sits|is|lies|appears)\s+)?(?P<rel>"
    + "|".join(_RELATIONS) + r")\s+(?P<b>.+?)\.?$"
)
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
    def full_name(self) -> str:
        return " ".join(w for w in (self.size, self.color, self.shape) if w)

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

    @property
    def is_shapes_scene(self) -> bool:
        return self.complete and bool(self.objects)


def parse_phrase(text: str) -> SeenObject | None:
    """'a small red circle' -> SeenObject('circle', 'red', 'small'); None if it is not such a phrase."""
    m = _PHRASE_RE.match(text.strip().lower())
    if not m:
        return None
    return SeenObject(shape=_SHAPE_FORMS[m["shape"]], color=m["color"], size=m["size"])


def _split_list(text: str) -> list[str]:
    return [p for p in re.split(r",\s*(?:and\s+)?|\s+and\s+", text.strip().rstrip(".")) if p.strip()]


def read_context(context: str) -> SceneReading:
    """Parse a symbolic context (captions, a blank line, box lines) into what it states."""
    captions, boxes = [], []
    for line in context.splitlines():
        line = line.strip()
        if not line:
            continue
        m = _BOX_RE.match(line)
        if m:
            try:
                nums = tuple(float(v) for v in m["nums"].split(","))
            except ValueError:
                nums = ()
            if len(nums) == 4:
                boxes.append((m["label"].strip().lower(), nums))
                continue
        captions.append(line)
    reading = SceneReading(captions=captions, boxes=boxes)

    # 1. The inventory: a sentence with a count ("three shapes") followed by a list of that many phrases.
    for caption in captions:
        m = _COUNT_RE.search(caption.lower())
        if not m:
            continue
        rest = re.sub(r"^[^:,]*?(?:[:,]|\bhere\b,?)\s*", "", m["rest"].strip(), count=1)
        rest = re.sub(r"^(?:here,?\s*)", "", rest)
        phrases = [parse_phrase(p) for p in _split_list(rest)]
        if phrases and all(phrases) and len(phrases) == _NUMBER_VALUE[m["n"]]:
            reading.objects = phrases
            reading.complete = True
            break
    if "background" in context.lower():
        bg = re.search(r"\b(?:a|an)\s+((?:[a-z]+\s+)?background)\b", context.lower())
        reading.mentions_background = f"a {bg[1]}" if bg else None

    # 2. Boxes: attach each to an inventory object of the same category, matching sizes by box side.
    if boxes and reading.complete:
        _attach_boxes(reading)

    # 3. Relations and regions, kept only when each phrase points at exactly one known object.
    if reading.complete:
        for caption in captions:
            text = caption.lower().strip()
            m = _RELATION_RE.match(text)
            if m:
                i, j = _resolve(reading, m["a"]), _resolve(reading, m["b"])
                if i is not None and j is not None and i != j:
                    reading.relations.append((i, m["rel"], j))
                continue
            m = _REGION_RE.match(text)
            if m:
                i = _resolve(reading, m["a"])
                if i is not None:
                    reading.regions[i] = m["where"]
    return reading


def _attach_boxes(reading: SceneReading) -> None:
    by_category: dict[str, list[int]] = {}
    for i, obj in enumerate(reading.objects):
        by_category.setdefault(obj.category, []).append(i)
    box_groups: dict[str, list[tuple]] = {}
    for label, box in reading.boxes:
        box_groups.setdefault(label, []).append(box)
    if sorted(by_category) != sorted(box_groups) or any(len(by_category[c]) != len(box_groups[c]) for c in by_category):
        return  # the boxes and the sentences disagree: trust neither for positions
    for category, indices in by_category.items():
        boxes = sorted(box_groups[category], key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
        if len(indices) > 1:
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
    if seen is None:
        return None
    hits = [
        i for i, o in enumerate(reading.objects)
        if o.shape == seen.shape and seen.color in (None, o.color) and seen.size in (None, o.size)
    ]
    return hits[0] if len(hits) == 1 else None


# ----------------------------------------------------------------------------- referring to objects


def _unique_name(reading: SceneReading, i: int) -> str | None:
    """The shortest 'colour shape' or 'size colour shape' name that picks out object i alone."""
    obj = reading.objects[i]
    if sum(o.category == obj.category for o in reading.objects) == 1:
        return obj.category
    if obj.size and sum(o.full_name == obj.full_name for o in reading.objects) == 1:
        return obj.full_name
    return None


def _relation_of(a: SeenObject, b: SeenObject) -> str | None:
    """The clear spatial relation of a to b from their boxes, or None when it is not clear-cut.
    Margins keep rounding in the context from ever flipping an answer."""
    (ax, ay), (bx, by) = a.center, b.center
    dx, dy = bx - ax, by - ay
    if abs(dx) >= abs(dy) + 0.03 and abs(dx) >= 0.11:
        return "to the left of" if dx > 0 else "to the right of"
    if abs(dy) >= abs(dx) + 0.03 and abs(dy) >= 0.11:
        return "above" if dy > 0 else "below"
    return None


def _where(box: tuple[float, float, float, float]) -> str:
    """A rough position in words from a box: thirds of the image on each axis."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    horiz = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else None
    vert = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else None
    if horiz and vert:
        return f"in the {vert} {horiz} corner"
    if vert:
        return f"at the {vert}, near the middle"
    if horiz:
        return f"on the {horiz} side, about halfway down"
    return "near the centre of the picture"


# ----------------------------------------------------------------------------- conversations




class _Dialogue:
    """Builds question-answer pairs of one kind each from a SceneReading; every generator returns None
    when the context cannot settle the answer."""

    def __init__(self, reading: SceneReading, rng: random.Random):
        self.r, self.rng = reading, rng
        self.objs = reading.objects

    def pick(self, options):
        return options[self.rng.randrange(len(options))]

    # colour of a shape that occurs once
    def colour(self):
        shapes = [o.shape for o in self.objs]
        unique = [o for o in self.objs if shapes.count(o.shape) == 1 and o.color]
        if not unique:
            return None
        o = self.pick(unique)
        q = self.pick([
            f"What colour is the {o.shape}?", f"What color is the {o.shape}?",
            f"Which colour does the {o.shape} have?", f"What is the colour of the {o.shape} in the picture?",
            f"Can you tell me what color the {o.shape} is?", f"The {o.shape} in this image is what colour?",
        ])
        a = self.pick([f"The {o.shape} is {o.color}.", f"It is {o.color}.", f"The {o.shape} is coloured {o.color}."])
        return "colour", q, a

    # shape of a colour that occurs once
    def shape(self):
        colours = [o.color for o in self.objs]
        unique = [o for o in self.objs if o.color and colours.count(o.color) == 1]
        if not unique:
            return None
        o = self.pick(unique)
        thing = self.pick(["object", "shape", "thing"])
        q = self.pick([
            f"What shape is the {o.color} {thing}?", f"What is the shape of the {o.color} {thing}?",
            f"Which shape is drawn in {o.color}?", f"What kind of shape is the {o.color} one?",
            f"The {o.color} {thing} has what shape?",
        ])
        a = self.pick([f"The {o.color} {thing} is {_article(o.shape)}.", f"It is {_article(o.shape)}.",
                       f"The {o.color} one is {_article(o.shape)}."])
        return "shape", q, a

    def count_all(self):
        n = len(self.objs)
        noun = self.pick(["objects", "shapes"])
        q = self.pick([
            f"How many {noun} are there?", f"How many {noun} are in the image?",
            f"How many {noun} can you see in the picture?", f"Count the {noun}: how many are there?",
            f"What is the number of {noun} in this image?",
        ])
        single = noun[:-1]
        a = (f"There is one {single}." if n == 1 else
             self.pick([f"There are {number_word(n)} {noun}.", f"I can see {number_word(n)} {noun} in the picture."]))
        return "count", q, a

    def count_shape(self):
        shape = self.pick(sorted({o.shape for o in self.objs}))
        k = sum(o.shape == shape for o in self.objs)
        q = self.pick([f"How many {plural(shape)} are there?", f"How many {plural(shape)} are in the picture?",
                       f"How many {plural(shape)} can you count?", f"Count the {plural(shape)} in the image."])
        a = f"There is one {shape}." if k == 1 else f"There are {number_word(k)} {plural(shape)}."
        return "count", q, a

    def count_colour(self):
        colour = self.pick(sorted({o.color for o in self.objs if o.color}))
        k = sum(o.color == colour for o in self.objs)
        q = self.pick([f"How many {colour} shapes are there?", f"How many shapes are {colour}?"])
        a = f"There is one {colour} shape." if k == 1 else f"There are {number_word(k)} {colour} shapes."
        return "count", q, a

    def exists(self):
        present = self.rng.random() < 0.5 or not self.r.complete
        by_shape_only = self.rng.random() < 0.2
        if present:
            o = self.pick(self.objs)
            thing = o.shape if by_shape_only or not o.color else o.category
        else:
            have = {o.category for o in self.objs}
            have_shapes = {o.shape for o in self.objs}
            if by_shape_only:
                options = [s for s in COMMON_SHAPES if s not in have_shapes]
            else:
                # Near misses teach the most: an absent thing that shares a colour or a shape with one present.
                near = [f"{c} {o.shape}" for o in self.objs for c in COMMON_COLORS] + \
                       [f"{o.color} {s}" for o in self.objs if o.color for s in COMMON_SHAPES]
                options = sorted({t for t in near if t not in have})
                if not options:
                    options = [f"{c} {s}" for c in COMMON_COLORS for s in COMMON_SHAPES if f"{c} {s}" not in have]
            if not options:
                return None
            thing = self.pick(options)
        q = self.pick([f"Is there {_article(thing)} in the image?", f"Can you see {_article(thing)}?",
                       f"Does the picture contain {_article(thing)}?", f"Is there {_article(thing)} anywhere in the picture?"])
        if present:
            a = self.pick([f"Yes, there is {_article(thing)} in the image.", f"Yes, I can see {_article(thing)}."])
        else:
            a = self.pick([f"No, there is no {thing} in the image.", f"No, the picture has no {thing}."])
        return "existence", q, a

    def relation(self):
        options = []
        for i, rel, j in self.r.relations:
            a, b = _unique_name(self.r, i), _unique_name(self.r, j)
            if a and b:
                options.append((a, rel, b))
                options.append((b, _OPPOSITE[rel], a))
        if not options:
            return None
        a, rel, b = self.pick(options)
        horizontal = rel in ("to the left of", "to the right of")
        style = self.rng.random()
        if style < 0.55:
            q = (self.pick([f"Is the {a} to the left or to the right of the {b}?",
                            f"Is the {a} on the left or the right of the {b}?"]) if horizontal else
                 self.pick([f"Is the {a} above or below the {b}?", f"Is the {a} higher or lower than the {b}?"]))
            ans = f"The {a} is {rel} the {b}."
        elif style < 0.8:
            asked = rel if self.rng.random() < 0.5 else _OPPOSITE[rel]
            q = f"Is the {a} {asked} the {b}?"
            ans = f"Yes, the {a} is {rel} the {b}." if asked == rel else f"No, the {a} is {rel} the {b}."
        else:
            q = self.pick([f"Where is the {a} relative to the {b}?", f"How is the {a} placed compared with the {b}?"])
            ans = f"The {a} is {rel} the {b}."
        return "relation", q, ans

    def size(self):
        options = [(i, o) for i, o in enumerate(self.objs) if o.size and _unique_name(self.r, i)]
        if not options:
            return None
        i, o = self.pick(options)
        name = _unique_name(self.r, i)
        word = "medium-sized" if o.size == "medium" else o.size
        q = self.pick([f"How big is the {name}?", f"Is the {name} small, medium or large?", f"What size is the {name}?"])
        return "size", q, f"The {name} is {word}."

    def region(self):
        options = [(i, w) for i, w in self.r.regions.items() if _unique_name(self.r, i)]
        if not options:
            return None
        i, where = self.pick(options)
        name = _unique_name(self.r, i)
        q = self.pick([f"Where is the {name}?", f"Where in the picture is the {name}?", f"Where can the {name} be found?"])
        return "position", q, f"The {name} is {where}."


def _conversation(reading: SceneReading, rng: random.Random) -> str:
    if not reading.is_shapes_scene:
        return _fallback_conversation(reading, rng)
    d = _Dialogue(reading, rng)
    # A weighted random order of question kinds (Efraimidis-Spirakis keys): the kinds a person asks most
    # come first more often; a relation, the rarest fact (only some sentences state one), nearly always leads.
    weights = [(d.relation, 12.0), (d.colour, 3.0), (d.shape, 3.0), (d.count_all, 2.0), (d.count_shape, 2.0),
               (d.count_colour, 1.0), (d.exists, 2.0), (d.exists, 2.0), (d.size, 1.0), (d.region, 1.0)]
    makers = [m for m, w in sorted(weights, key=lambda mw: -rng.random() ** (1 / mw[1]))]
    want = rng.choices((2, 3, 4, 5), weights=(0.15, 0.25, 0.3, 0.3))[0]
    pairs, asked, kinds = [], set(), Counter()
    for maker in makers:
        if len(pairs) == want:
            break
        made = maker()
        if made is None:
            continue
        kind, q, a = made
        if q in asked or kinds[kind] >= 2:
            continue
        asked.add(q)
        kinds[kind] += 1
        pairs.append((q, a))
    rng.shuffle(pairs)
    return format_qa(pairs)


def _fallback_conversation(reading: SceneReading, rng: random.Random) -> str:
    """A scene the reader cannot take apart (a real photo): ask only what a sentence answers verbatim."""
    if not reading.captions:
        return ""
    q = rng.choice(["What does this picture show?", "What is happening in this image?", "Can you describe the scene?"])
    pairs = [(q, _sentence(reading.captions[0]))]
    if len(reading.captions) > 1:
        q2 = rng.choice(["Can you tell me more about it?", "What else can you see?"])
        pairs.append((q2, _sentence(reading.captions[1])))
    return format_qa(pairs)


def _sentence(text: str) -> str:
    text = _cap(text.strip())
    return text if text.endswith((".", "!", "?")) else text + "."


def format_qa(pairs: list[tuple[str, str]]) -> str:
    """Question/answer pairs in the block format the prompts ask for."""
    return "\n".join(f"Question:\n{q}\n===\nAnswer:\n{a}\n===" for q, a in pairs)


# ----------------------------------------------------------------------------- detailed description


def _detail(reading: SceneReading, rng: random.Random) -> str:
    objs = reading.objects
    if not (reading.is_shapes_scene and all(o.box for o in objs)):
        return _fallback_detail(reading, rng)
    n = len(objs)
    where = f" on {reading.mentions_background}" if reading.mentions_background else ""
    opening = rng.choice([
        f"The picture shows {number_word(n)} {'shape' if n == 1 else 'shapes'}{where}.",
        f"This image contains {number_word(n)} simple {'shape' if n == 1 else 'shapes'}{where}.",
        f"There {'is' if n == 1 else 'are'} {number_word(n)} {'shape' if n == 1 else 'shapes'} in this picture{where}.",
    ])
    sentences = [opening]
    order = sorted(range(n), key=lambda i: (objs[i].center[1] > 0.5, objs[i].center[0]))  # roughly reading order
    for k, i in enumerate(order):
        o = objs[i]
        size = "medium-sized" if o.size == "medium" else o.size
        name = " ".join(w for w in (size, o.color, o.shape) if w)
        pos = _where(o.box)
        template = rng.choice([
            "{A} sits {pos}.", "{Pos}, there is {a}.", "{A} can be seen {pos}.", "{A} is placed {pos}.",
        ])
        sentences.append(template.format(A=_cap(_article(name)), a=_article(name), pos=pos, Pos=_cap(pos)))
    # One or two relations between named objects, from the boxes, when they are clear-cut.
    pairs = [(i, j) for i in range(n) for j in range(n) if i < j]
    rng.shuffle(pairs)
    said = 0
    for i, j in pairs:
        a, b = _unique_name(reading, i), _unique_name(reading, j)
        rel = _relation_of(objs[i], objs[j])
        if a and b and rel:
            sentences.append(f"The {a} is {rel} the {b}.")
            said += 1
            if said == 2:
                break
    sized = [o for o in objs if o.size]
    if n > 1 and len(sized) == n:
        top = max(SIZE_RANK[o.size] for o in objs)
        biggest = [i for i, o in enumerate(objs) if SIZE_RANK[o.size] == top]
        if len(biggest) == 1 and _unique_name(reading, biggest[0]):
            sentences.append(f"The {_unique_name(reading, biggest[0])} is the largest shape in the scene.")
        elif len({o.size for o in objs}) == 1:
            sentences.append(f"All of the shapes are the same size: {'medium-sized' if objs[0].size == 'medium' else objs[0].size}.")
    return " ".join(sentences)


def _fallback_detail(reading: SceneReading, rng: random.Random) -> str:
    """A real photo: restate the first sentence and place each listed object in words."""
    if not reading.captions:
        return ""
    sentences = [_sentence(reading.captions[0])]
    for label, box in reading.boxes:
        area = (box[2] - box[0]) * (box[3] - box[1])
        if area > 0.8:
            sentences.append(f"{_cap(_article(label))} fills the whole frame.")
        else:
            extent = " and takes up a large part of the picture" if area > 0.3 else ""
            sentences.append(f"{_cap(_article(label))} appears {_where(box)}{extent}.")
    if len(reading.captions) > 1:
        sentences.append(_sentence(reading.captions[1]))
    return " ".join(sentences)


# ----------------------------------------------------------------------------- complex reasoning


def _complex(reading: SceneReading, rng: random.Random) -> str:
    objs = reading.objects
    if not reading.is_shapes_scene:
        return _fallback_complex(reading, rng)
    makers = [_q_most_common_colour, _q_remove_colour, _q_add_shape, _q_largest]
    if all(o.box for o in objs):
        makers += [_q_swap_leftmost, _q_order, _q_lowest, _q_single_edge]
    rng.shuffle(makers)
    for maker in makers:
        made = maker(reading, rng)
        if made:
            return format_qa([made])
    return ""


def _names(objs: list[SeenObject]) -> list[str]:
    return [_article(" ".join(w for w in ("medium-sized" if o.size == "medium" else o.size, o.color, o.shape) if w))
            for o in objs]


def _q_most_common_colour(reading, rng):
    objs = reading.objects
    if len(objs) < 2 or not all(o.color for o in objs):
        return None
    counts = Counter(o.color for o in objs)
    q = rng.choice(["Which colour appears most often among the shapes?", "Which colour is used for the most shapes in this picture?"])
    tally = _join([f"{number_word(k)} {c}" for c, k in counts.most_common()])
    top = counts.most_common()
    steps = [f"First, list the shapes: {_join(_names(objs))}.", f"Next, count them by colour: {tally}."]
    if len(top) == 1:
        steps.append(f"So every shape is {top[0][0]}: {top[0][0]} is the only colour, used {number_word(top[0][1])} times.")
    elif top[0][1] > top[1][1]:
        steps.append(f"So {top[0][0]} appears most often, on {number_word(top[0][1])} of the {number_word(len(objs))} shapes.")
    else:
        tied = [c for c, k in top if k == top[0][1]]
        steps.append(f"So no single colour wins: {_join(tied)} each appear {number_word(top[0][1])} "
                     f"{'time' if top[0][1] == 1 else 'times'}.")
    return q, " ".join(steps)


def _q_remove_colour(reading, rng):
    objs = reading.objects
    colour = rng.choice(sorted({o.color for o in objs if o.color}) or [None])
    if colour is None or not all(o.color for o in objs):
        return None
    k = sum(o.color == colour for o in objs)
    left = len(objs) - k
    q = f"If every {colour} shape were taken out of the picture, how many shapes would be left?"
    steps = [f"There are {number_word(len(objs))} shapes in total: {_join(_names(objs))}.",
             f"Of these, {number_word(k)} {'is' if k == 1 else 'are'} {colour}.",
             f"Removing {'it' if k == 1 else 'them'} leaves {number_word(len(objs))} minus {number_word(k)}, "
             f"so {number_word(left)} {'shape' if left == 1 else 'shapes'} would be left"
             + (" and the picture would be empty." if left == 0 else ".")]
    return q, " ".join(steps)


def _q_add_shape(reading, rng):
    objs = reading.objects
    shape = rng.choice(sorted({o.shape for o in objs}))
    k = sum(o.shape == shape for o in objs)
    q = f"If one more {shape} were drawn, how many {plural(shape)} would the picture contain?"
    now = f"there is one {shape}" if k == 1 else f"there are {number_word(k)} {plural(shape)}"
    steps = [f"Looking at the shapes, {now} at the moment.",
             f"Adding one more makes {number_word(k)} plus one, so the picture would contain {number_word(k + 1)} {plural(shape)}."]
    return q, " ".join(steps)


def _q_largest(reading, rng):
    objs = reading.objects
    if len(objs) < 2 or not all(o.size for o in objs):
        return None
    top = max(SIZE_RANK[o.size] for o in objs)
    biggest = [i for i, o in enumerate(objs) if SIZE_RANK[o.size] == top]
    if len(biggest) != 1:
        return None
    i = biggest[0]
    name = _unique_name(reading, i)
    if not name:
        return None
    q = "Which shape is the biggest, and how many shapes are smaller than it?"
    sizes = _join([f"the {o.full_name} is {'medium-sized' if o.size == 'medium' else o.size}" for o in objs])
    smaller = len(objs) - 1
    steps = [f"Compare the sizes: {sizes}.", f"Only the {name} is {objs[i].size}, so it is the biggest.",
             f"Every other shape is smaller, which makes {number_word(smaller)} {'shape' if smaller == 1 else 'shapes'} smaller than the {name}."]
    return q, " ".join(steps)


def _x_order(objs) -> list[int] | None:
    """Object indices from left to right, or None when two centres are too close to order for sure."""
    order = sorted(range(len(objs)), key=lambda i: objs[i].center[0])
    xs = [objs[i].center[0] for i in order]
    if any(b - a < 0.06 for a, b in zip(xs, xs[1:])):
        return None
    return order


def _q_swap_leftmost(reading, rng):
    objs = reading.objects
    if len(objs) < 2:
        return None
    order = _x_order(objs)
    if order is None:
        return None
    names = _names(objs)
    first, second = order[0], order[1]
    q = "If the two leftmost shapes swapped places, which shape would then be furthest to the left?"
    steps = [f"From left to right, the shapes are {_join([names[i] for i in order])}.",
             f"The two leftmost are {names[first]} and {names[second]}.",
             f"After the swap, {names[second]} takes the leftmost place, so it would be furthest to the left."]
    return q, " ".join(steps)


def _q_order(reading, rng):
    objs = reading.objects
    if len(objs) < 2:
        return None
    order = _x_order(objs)
    if order is None:
        return None
    names = _names(objs)
    q = rng.choice(["If you read the shapes from left to right, in what order would you meet them?",
                    "Put the shapes in order from left to right."])
    steps = [f"Start at the left edge of the picture: the first shape is {names[order[0]]}."]
    for i in order[1:-1]:
        steps.append(f"Moving right, the next one is {names[i]}.")
    steps.append(f"The last one, furthest to the right, is {names[order[-1]]}.")
    steps.append(f"So the order is {_join([names[i] for i in order])}.")
    return q, " ".join(steps)


def _q_lowest(reading, rng):
    objs = reading.objects
    if len(objs) < 2:
        return None
    by_bottom = sorted(range(len(objs)), key=lambda i: objs[i].box[3], reverse=True)
    if objs[by_bottom[0]].box[3] - objs[by_bottom[1]].box[3] < 0.06:
        return None
    names = _names(objs)
    low = by_bottom[0]
    q = "Which shape comes closest to the bottom edge of the picture?"
    others = [names[i] for i in by_bottom[1:]]
    steps = [f"Compare how far down each shape reaches: {names[low]} reaches lowest, "
             f"while {_join(others)} {'stays' if len(others) == 1 else 'stay'} higher up.",
             f"So {names[low]} is the shape closest to the bottom edge."]
    return q, " ".join(steps)


def _q_single_edge(reading, rng):
    objs = reading.objects
    if len(objs) != 1:
        return None
    o = objs[0]
    cx = o.center[0]
    if abs(cx - 0.5) < 0.08:
        return None
    side = "left" if cx < 0.5 else "right"
    name = _names(objs)[0]
    q = f"Is the {o.category} closer to the left edge or to the right edge of the picture?"
    steps = [f"There is only one shape, {name}.",
             f"Its middle lies {'left' if side == 'left' else 'right'} of the picture's vertical centre line.",
             f"So it is closer to the {side} edge."]
    return q, " ".join(steps)


def _fallback_complex(reading: SceneReading, rng: random.Random) -> str:
    """A real photo: the one safe comparison is which listed object takes up the most room."""
    boxes = reading.boxes
    if len(boxes) < 2:
        return ""
    areas = [((b[2] - b[0]) * (b[3] - b[1]), label) for label, b in boxes]
    areas.sort(reverse=True)
    if areas[0][0] - areas[1][0] < 0.05:
        return ""
    labels = _join([_article(label) for _, label in areas])
    q = "Of the things in this picture, which one takes up the most room, and which the least?"
    steps = [f"The picture contains {labels}.",
             f"Comparing how much of the frame each covers, the {areas[0][1]} is the largest.",
             f"The {areas[-1][1]} covers the least space.",
             f"So the {areas[0][1]} takes up the most room and the {areas[-1][1]} the least."]
    return format_qa([(q, " ".join(steps))])


# ----------------------------------------------------------------------------- the teacher


def _code_version() -> str:
    from pathlib import Path

    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:8]


class SymbolicTeacher(Teacher):
    """An offline, deterministic stand-in for GPT-4. It learns the task from the system message and reads
    the context from the last user message (and nothing else). Same seed + same messages = same text."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        # The identity carries a hash of this module's code, so an edit to the teacher invalidates cached
        # answers (and the course's reuse stamp) instead of silently mixing old and new behaviour.
        self.identity = f"symbolic-{_code_version()}(seed={seed})"

    def complete(self, messages: list[dict[str, str]]) -> str:
        response_type = response_type_of(messages)
        if response_type is None:
            raise TeacherFatalError("the symbolic teacher only knows this project's system messages (llava_mini.prompts)")
        context = _last_user_message(messages)
        digest = hashlib.sha256(f"{self.seed}\0{response_type}\0{context}".encode()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        reading = read_context(context)
        return {"conversation": _conversation, "detail": _detail, "complex": _complex}[response_type](reading, rng)


# ============================================================================= an OpenAI-compatible server

ENV_API_KEY = "LLAVA_MINI_TEACHER_API_KEY"  # falls back to OPENAI_API_KEY
ENV_BASE_URL = "LLAVA_MINI_TEACHER_BASE_URL"  # falls back to OPENAI_BASE_URL; unset = api.openai.com
ENV_MODEL = "LLAVA_MINI_TEACHER_MODEL"


def teacher_from_env() -> "OpenAITeacher | None":
    """An OpenAITeacher configured from the environment, or None when neither a key nor a server is set
    (the notebooks then stay offline with the symbolic teacher)."""
    key = os.environ.get(ENV_API_KEY) or os.environ.get("OPENAI_API_KEY")
    base_url = os.environ.get(ENV_BASE_URL) or os.environ.get("OPENAI_BASE_URL")
    if not key and not base_url:
        return None
    return OpenAITeacher()


class OpenAITeacher(Teacher):
    """Any chat-completions server: OpenAI (GPT-4 class), vLLM (`vllm serve <model>`), ollama
    (`http://localhost:11434/v1`), ... Configuration comes from arguments or the environment:

        LLAVA_MINI_TEACHER_API_KEY or OPENAI_API_KEY     the key (local servers accept any; it is never stored)
        LLAVA_MINI_TEACHER_BASE_URL or OPENAI_BASE_URL   e.g. http://localhost:8000/v1 (unset: OpenAI's API)
        LLAVA_MINI_TEACHER_MODEL                         e.g. gpt-4o, Qwen/Qwen2.5-7B-Instruct, llama3.1

    Rate limits (429), server errors (5xx), timeouts, dropped connections and malformed bodies are retried
    with exponential backoff (honouring Retry-After); each is counted in `stats`. `max_requests` caps the
    HTTP requests made, retries included, so a run cannot spend more than you meant to.
    """

    def __init__(
        self,
        model: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        max_requests: int | None = None,
        max_retries: int = 6,
        timeout: float = 60.0,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        temperature: float = 0.2,
        max_tokens: int = 1024,
    ):
        import threading

        import openai

        self.model = model or os.environ.get(ENV_MODEL)
        if not self.model:
            raise ValueError(f"no model: pass model= or set {ENV_MODEL}")
        base_url = base_url or os.environ.get(ENV_BASE_URL) or os.environ.get("OPENAI_BASE_URL") or None
        key = api_key or os.environ.get(ENV_API_KEY) or os.environ.get("OPENAI_API_KEY")
        if not key:
            if base_url is None:
                raise ValueError(f"no API key: set {ENV_API_KEY} or OPENAI_API_KEY (or point {ENV_BASE_URL} at a local server)")
            key = "not-needed"  # vLLM and ollama ignore the key but the client wants one
        self._secret = key  # kept only to redact it from error messages
        # max_retries=0: the client's own retries would hide failures from our counts and budget.
        self._client = openai.OpenAI(api_key=key, base_url=base_url, max_retries=0, timeout=timeout)
        self.base_url = str(self._client.base_url)
        self.max_requests, self.max_retries = max_requests, max_retries
        self.backoff, self.max_backoff = backoff, max_backoff
        self.temperature, self.max_tokens = temperature, max_tokens
        self.stats: Counter = Counter()
        self._lock = threading.Lock()
        # The server's address is left out: the same model behind another port or host gives the same
        # answers, so the cache carries over (and a URL can hold a token).
        self.identity = f"openai({self.model}, temperature={temperature}, max_tokens={max_tokens})"

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _take_request(self) -> None:
        with self._lock:
            if self.max_requests is not None and self.stats["requests"] >= self.max_requests:
                raise TeacherBudgetExhausted(f"{self.max_requests} requests made")
            self.stats["requests"] += 1

    def _count(self, what: str) -> None:
        with self._lock:
            self.stats[what] += 1

    def complete(self, messages: list[dict[str, str]]) -> str:
        import openai

        last = "?"
        for attempt in range(self.max_retries + 1):
            self._take_request()
            wait = min(self.max_backoff, self.backoff * 2 ** attempt) * (0.5 + random.random() / 2)
            try:
                response = self._client.chat.completions.create(
                    model=self.model, messages=messages, temperature=self.temperature, max_tokens=self.max_tokens)
                try:
                    text = response.choices[0].message.content
                except (AttributeError, IndexError, TypeError, KeyError):
                    text = None
                if not isinstance(text, str):
                    raise _Malformed()
                self._count("ok")
                return text
            except _Malformed:
                last = "malformed"
            except openai.RateLimitError as e:
                last = "rate_limited"
                retry_after = e.response.headers.get("retry-after") if e.response is not None else None
                if retry_after:
                    try:
                        wait = min(self.max_backoff, max(wait, float(retry_after)))
                    except ValueError:
                        pass
            except openai.APITimeoutError:
                last = "timeout"
            except openai.APIConnectionError:
                last = "connection_error"
            except openai.APIResponseValidationError:
                last = "malformed"
            except openai.APIStatusError as e:
                if e.status_code >= 500 or e.status_code in (408, 409):
                    last = "server_error"
                else:  # 400, 401, 403, 404, 422: retrying cannot help
                    self._count("fatal")
                    raise TeacherFatalError(self._redact(f"HTTP {e.status_code} from {self.base_url}: {e.message}")) from None
            except ValueError:  # a body the client could not decode at all
                last = "malformed"
            self._count(last)
            if attempt < self.max_retries:
                self._count("retries")
                time.sleep(wait)
        self._count("gave_up")
        raise TeacherError(f"{self.model}: no usable response after {self.max_retries + 1} attempts (last: {last})")


class _Malformed(Exception):
    pass


# ============================================================================= a local transformers model


class TransformersTeacher(Teacher):
    """A local causal LM with a chat template (e.g. Qwen2.5-7B-Instruct, Llama-3.1-8B-Instruct), by hub
    name or local folder. Greedy by default, so the data is reproducible."""

    def __init__(self, model_name_or_path: str | os.PathLike, max_new_tokens: int = 768, temperature: float = 0.0,
                 device: str | None = None, dtype="auto", seed: int = 0):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"{model_name_or_path}: the tokenizer has no chat template; use an instruct/chat model")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=dtype).to(device).eval()
        self.device, self.max_new_tokens, self.temperature, self.seed = device, max_new_tokens, temperature, seed
        self.identity = f"transformers({model_name_or_path}, max_new_tokens={max_new_tokens}, temperature={temperature}, seed={seed})"

    def complete(self, messages: list[dict[str, str]]) -> str:
        import torch

        inputs = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True).to(self.device)
        sample = self.temperature > 0
        if sample:
            torch.manual_seed(self.seed)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.no_grad():
            out = self.model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, do_sample=sample,
                temperature=self.temperature if sample else None, top_p=None, top_k=None, pad_token_id=pad)
        new_tokens = out[0, inputs["input_ids"].shape[1]:]
        return self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
