"""The symbolic teacher, an offline deterministic stand-in for GPT-4: it learns the task from the system
message, reads the context (reading.py), exactly what the paper's teacher saw, and writes a conversation, a
detailed description (here) or a reasoning question (reasoning.py). It says only what the reading settles;
for a scene it cannot take apart (a real photo) it falls back to what a sentence states, or to ""."""

import hashlib
import inspect
import random
from functools import lru_cache
from pathlib import Path

from llava_mini.english import article, capitalize, join, number_word, plural
from llava_mini.files import file_fingerprint, fingerprint
from llava_mini.teacher.base import Teacher, TeacherFatalError, last_user_message
from llava_mini.teacher.prompts import response_type_of
from llava_mini.teacher.reading import SIZE_RANK, SceneReading, read_context, size_word
from llava_mini.teacher.reasoning import write_reasoning
from llava_mini.teacher.records import make_record
from llava_mini.teacher.responses import format_qa
from llava_mini.world import OPPOSITE, box_text, context_text, relation, unique_name

# What the teacher asks "is there a ...?" about when a thing is absent: the everyday colours and shapes.
_COMMON_COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
_COMMON_SHAPES = ("circle", "square", "triangle", "star", "cross")


# How a two-way relation question is worded. Half the wordings name the reference object {b} first; the answer
# still speaks of the {a} asked about, so the reader must keep track of which object is the subject (the text
# reference took the first-named object as the subject when only a few wordings did this).
_ASK_LEFT_RIGHT = ("Is the {a} to the left or to the right of the {b}?", "Is the {a} on the left or the right of the {b}?",
                   "Compared with the {b}, is the {a} on the left or the right?",
                   "Taking the {b} as the reference, is the {a} on its left or on its right?",
                   "Measured from the {b}, does the {a} lie to the left or to the right?")
_ASK_ABOVE_BELOW = ("Is the {a} above or below the {b}?", "Is the {a} higher or lower than the {b}?",
                    "Compared with the {b}, is the {a} higher or lower?",
                    "Taking the {b} as the reference, is the {a} above it or below it?",
                    "Measured from the {b}, does the {a} lie higher or lower?",
                    "Does the {a} sit over the {b} or under it?")


# How a relation answer about boxed objects reaches its verdict:
#   "walk"     down the box lines to each named object, copying its line (the LM's text drills: it reads boxes)
#   "centres"  each object's centre along the asked axis, to one decimal ("x 0.2 and x 0.6"): what an image shows
#              of where a thing is, one look-up per object; two clear-cut centres (world.relation: >= 0.11 apart)
#              never round to the same tenth, so the step always settles the verdict
#   "verdict"  no step
RELATION_STEPS = ("walk", "centres", "verdict")
# How a colour answer reaches its verdict: "scan" the box lines in order up to the asked shape (what the LM's text
# drills do), or "direct" (an image shows the shape's colour on its own patches, not the context's line order)
COLOUR_STEPS = ("scan", "direct")


class _Dialogue:
    """Question-answer pairs, one kind per method; each returns (kind, question, answer). A kind the context
    cannot settle leaves nothing to pick from, and `pick` (random.choice) of an empty list raises IndexError."""

    def __init__(self, reading: SceneReading, rng: random.Random, relation_steps: str = "walk",
                 colour_steps: str = "scan"):
        for name, value, allowed in (("relation_steps", relation_steps, RELATION_STEPS),
                                     ("colour_steps", colour_steps, COLOUR_STEPS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        self.r, self.rng, self.objs, self.pick = reading, rng, reading.objects, rng.choice
        self.steps, self.colour_steps = relation_steps, colour_steps

    def colour(self):  # of a shape that occurs once
        shapes = [o.shape for o in self.objs]
        unique = [o for o in self.objs if shapes.count(o.shape) == 1 and o.color]
        s, c = (o := self.pick(unique)).shape, o.color
        q = self.pick([f"What colour is the {s}?", f"What color is the {s}?", f"Which colour does the {s} have?",
                       f"What is the colour of the {s} in the picture?", f"Can you tell me what color the {s} is?",
                       f"The {s} in this image is what colour?"])
        labels = [label.split() for label, _ in self.r.boxes]
        if self.colour_steps == "direct" or any(len(w) != 2 for w in labels) or [w[1] for w in labels].count(s) != 1:
            return "colour", q, self.pick([f"The {s} is {c}.", f"It is {c}.", f"The {s} is coloured {c}."])
        # The box lines in order, up to the asked shape, then the verdict. Each step copies a label forward
        # ("red triangle" -> "the red one is a triangle"), the look-up a small LM does well; the direct answer
        # needs the colour *before* the named shape, which the stand-in LM does not learn (#11's probes).
        steps = [f"the {colour} one is {article(shape)}" for colour, shape in labels]
        steps = steps[:[shape for _, shape in labels].index(s) + 1]
        return "colour", q, f"{capitalize('; '.join(steps))}, so the {s} is {c}."

    def shape(self):  # of a colour that occurs once
        colours = [o.color for o in self.objs]
        unique = [o for o in self.objs if o.color and colours.count(o.color) == 1]
        c, a_shape = (o := self.pick(unique)).color, article(o.shape)
        thing = self.pick(["object", "shape", "thing"])
        q = self.pick([f"What shape is the {c} {thing}?", f"What is the shape of the {c} {thing}?",
                       f"Which shape is drawn in {c}?", f"What kind of shape is the {c} one?",
                       f"The {c} {thing} has what shape?"])
        return "shape", q, self.pick([f"The {c} {thing} is {a_shape}.", f"It is {a_shape}.",
                                      f"The {c} one is {a_shape}."])

    def count_all(self):
        n, noun = len(self.objs), self.pick(["objects", "shapes"])
        q = self.pick([f"How many {noun} are there?", f"How many {noun} are in the image?",
                       f"How many {noun} can you see in the picture?", f"Count the {noun}: how many are there?",
                       f"What is the number of {noun} in this image?"])
        return "count", q, (f"There is one {noun[:-1]}." if n == 1 else self.pick(
            [f"There are {number_word(n)} {noun}.", f"I can see {number_word(n)} {noun} in the picture."]))

    def count_shape(self):
        shape = self.pick(sorted({o.shape for o in self.objs}))
        k, many = sum(o.shape == shape for o in self.objs), plural(shape)
        q = self.pick([f"How many {many} are there?", f"How many {many} are in the picture?",
                       f"How many {many} can you count?", f"Count the {many} in the image."])
        return "count", q, f"There is one {shape}." if k == 1 else f"There are {number_word(k)} {many}."

    def count_colour(self):
        colour = self.pick(sorted({o.color for o in self.objs if o.color}))
        k = sum(o.color == colour for o in self.objs)
        q = self.pick([f"How many {colour} shapes are there?", f"How many shapes are {colour}?"])
        return "count", q, f"There is one {colour} shape." if k == 1 else f"There are {number_word(k)} {colour} shapes."

    def exists(self):
        present, by_shape_only = self.rng.random() < 0.5, self.rng.random() < 0.2
        if present:
            o = self.pick(self.objs)
            thing = o.shape if by_shape_only else o.category
        else:
            have = {o.category for o in self.objs}
            if by_shape_only:
                options = [s for s in _COMMON_SHAPES if s not in {o.shape for o in self.objs}]
            else:  # near misses teach the most: an absent thing that shares a colour or a shape with one present
                near = [f"{c} {o.shape}" for o in self.objs for c in _COMMON_COLORS] + \
                       [f"{o.color} {s}" for o in self.objs if o.color for s in _COMMON_SHAPES]
                options = sorted({t for t in near if t not in have}) or \
                    [f"{c} {s}" for c in _COMMON_COLORS for s in _COMMON_SHAPES if f"{c} {s}" not in have]
            thing = self.pick(options)
        a_thing = article(thing)
        q = self.pick([f"Is there {a_thing} in the image?", f"Can you see {a_thing}?",
                       f"Does the picture contain {a_thing}?", f"Is there {a_thing} anywhere in the picture?"])
        # The step first: the objects that share the thing's colour or shape, then the verdict (a near miss
        # is told apart by looking, not guessed).
        words = thing.split()
        alike = [article(o.category) for o in self.objs if o.shape == words[-1] or o.color == words[0]]
        nothing = f"{words[0]} or {article(words[-1])}" if len(words) > 1 else article(thing)
        seen = f"The picture has {join(alike)}" if alike else f"Nothing in the picture is {nothing}"
        if present:
            return "existence", q, f"{seen}, so yes, there is {a_thing}."
        return "existence", q, f"{seen}, so no, there is no {thing}."

    def relation(self):
        """Of two named objects: with boxes any clear-cut pair (world.relation on the centres), the answer
        first copying both objects' box lines; without, only what a caption states."""
        boxed = all(o.box for o in self.objs)
        facts = [(i, relation(a.center, b.center), j) for i, a in enumerate(self.objs) for j, b in
                 enumerate(self.objs) if i != j] if boxed else self.r.relations
        named = [(unique_name(self.objs, i), rel, unique_name(self.objs, j), i, j) for i, rel, j in facts if rel]
        options = [fact for a, rel, b, i, j in named if a and b for fact in ((a, rel, b, i, j), (b, OPPOSITE[rel], a, j, i))]
        a, rel, b, i, j = self.pick(options)
        # With boxes the steps first: two walks down the box lines, each ending at a named object with its line
        # copied, then the verdict on the two walks' last lines. A small LM cannot jump to a line by its label
        # (asked to quote it, the earlier LM copied the first line's numbers 93% of the time); walking line by
        # line and stopping at a label is what its colour answers already do well.
        step, style = "", self.rng.random()
        if boxed and self.steps == "walk":
            step = f"Down to the {a}: {self._walk_to(i)}. Down to the {b}: {self._walk_to(j)}, so "
        elif boxed and self.steps == "centres":
            axis = int(rel in ("above", "below"))  # 0: x (left to right), 1: y (top down), in fractions
            at_a, at_b = (f"{'xy'[axis]} {self.objs[k].center[axis]:.1f}" for k in (i, j))
            step = f"The {a} is centred at {at_a} and the {b} at {at_b}, so "
        answer = f"{step}the {a} is {rel} the {b}." if step else f"The {a} is {rel} the {b}."
        vertical = rel in ("above", "below")
        if style < 0.55:
            q = self.pick(_ASK_ABOVE_BELOW if vertical else _ASK_LEFT_RIGHT).format(a=a, b=b)
        elif style < 0.8:
            asked = rel if self.rng.random() < 0.5 else OPPOSITE[rel]
            verdict = f"{'yes' if asked == rel else 'no'}, the {a} is {rel} the {b}."
            if vertical and self.rng.random() < 0.3:  # the same question in plainer words
                asked = {"above": "over", "below": "under"}[asked]
            q, answer = f"Is the {a} {asked} the {b}?", step + verdict if step else capitalize(verdict)
        else:
            q = self.pick([f"Where is the {a} relative to the {b}?", f"How is the {a} placed compared with the {b}?"])
        return "relation", q, answer

    def _walk_to(self, k: int) -> str:
        """'purple cross, red triangle: [0.156, 0.094, 0.594, 0.531]': the labels of the box lines in the
        context's order up to object k's line, and that line whole."""
        n = self.r.boxes.index((self.objs[k].category, self.objs[k].box))
        return ", ".join([label for label, _ in self.r.boxes[:n]] + [box_text(*self.r.boxes[n])])

    def size(self):
        options = [(name, o) for i, o in enumerate(self.objs) if o.size and (name := unique_name(self.objs, i))]
        name, o = self.pick(options)
        q = self.pick([f"How big is the {name}?", f"Is the {name} small, medium or large?",
                       f"What size is the {name}?"])
        return "size", q, f"The {name} is {size_word(o.size)}."

    def region(self):
        options = [(name, place) for i, place in self.r.regions.items() if (name := unique_name(self.objs, i))]
        name, place = self.pick(options)
        q = self.pick([f"Where is the {name}?", f"Where in the picture is the {name}?",
                       f"Where can the {name} be found?"])
        return "position", q, f"The {name} is {place}."


def write_conversation(reading: SceneReading, rng: random.Random) -> str:
    """Two to five question/answer pairs, at most two of a kind, in the block format."""
    if not reading.complete:
        return _fallback_conversation(reading, rng)
    d = _Dialogue(reading, rng)
    # A weighted random order of question kinds (Efraimidis-Spirakis keys): the kinds a person asks most
    # come first more often; a relation, the rarest fact (only some sentences state one), nearly always leads.
    weights = [(d.relation, 12.0), (d.colour, 3.0), (d.shape, 3.0), (d.count_all, 2.0), (d.count_shape, 2.0),
               (d.count_colour, 1.0), (d.exists, 2.0), (d.exists, 2.0), (d.size, 1.0), (d.region, 1.0)]
    makers = [m for m, w in sorted(weights, key=lambda mw: -rng.random() ** (1 / mw[1]))]
    want = rng.choices((2, 3, 4, 5), weights=(0.15, 0.25, 0.3, 0.3))[0]
    made = []  # (kind, question, answer)
    for maker in makers:
        if len(made) == want:
            break
        try:
            kind, q, a = maker()
        except IndexError:  # nothing of this kind to ask about
            continue
        if q not in [m[1] for m in made] and [m[0] for m in made].count(kind) < 2:
            made.append((kind, q, a))
    rng.shuffle(made)
    return format_qa([(q, a) for _, q, a in made])


# The drill's mix: the held-out question kinds, relations and colours weighted up (the kinds the text reference
# failed most); the stand-in LM reads many of these with the scene as text before it ever sees an image.
DRILL_WEIGHTS = {"relation": 6.0, "colour": 3.0, "exists": 1.5, "shape": 1.0, "count_all": 0.5, "count_shape": 0.5}
# Every question maker a drill can draw from ("region": "Where is the red circle?" -> "... in the top left part ...")
DRILL_KINDS = ("relation", "colour", "exists", "shape", "count_all", "count_shape", "count_colour", "size", "region")


def write_drill(reading: SceneReading, rng: random.Random, n: int = 6,
                weights: dict[str, float] | None = None, relation_steps: str = "walk",
                colour_steps: str = "scan") -> list[tuple[str, str]]:
    """Up to n (question, answer) pairs about a complete reading, drawn with ``weights`` (default
    DRILL_WEIGHTS; keys name the question makers), no question twice; relation and colour answers reach their
    verdict by ``relation_steps`` (RELATION_STEPS) and ``colour_steps`` (COLOUR_STEPS)."""
    d, made, weights = _Dialogue(reading, rng, relation_steps, colour_steps), {}, weights or DRILL_WEIGHTS
    if unknown := sorted(set(weights) - set(DRILL_KINDS)):
        raise ValueError(f"drill weights name no question maker {unknown} (the makers: {DRILL_KINDS})")
    if any(not w >= 0 for w in weights.values()) or not any(weights.values()):
        raise ValueError(f"drill weights must be >= 0 with some above 0, got {weights}")
    makers, weights = [getattr(d, name) for name in weights], list(weights.values())
    for _ in range(4 * n):
        if len(made) == n:
            break
        try:
            _, q, a = rng.choices(makers, weights)[0]()
        except IndexError:  # nothing of this kind to ask about
            continue
        made.setdefault(q, a)
    return list(made.items())


def drill_records(records, seed: int = 0, per_image: int = 1, weights: dict[str, float] | None = None,
                  relation_steps: str = "walk", colour_steps: str = "scan") -> list[dict]:
    """``per_image`` drill records (``write_drill``) per world ImageRecord, read from its captions and boxes:
    short questions of the held-out kinds, like the short-answer VQA data LLaVA v1.5 added to its mix. Ids end
    in "_drill<k>" (teacher.record_type "drill"); a scene the reader cannot take apart gets none."""
    out = []
    for r, k in ((r, k) for r in records for k in range(per_image)):
        rng = random.Random(f"{seed}:{r.file_name}:drill{k}")
        if pairs := write_drill(read_context(context_text(r, boxes=True)), rng, weights=weights,
                                relation_steps=relation_steps, colour_steps=colour_steps):
            out.append(make_record(f"{Path(r.file_name).stem}_drill{k}", r.file_name, pairs, rng))
    return out


def _fallback_conversation(reading: SceneReading, rng: random.Random) -> str:
    """A scene the reader cannot take apart (a real photo): ask only what a sentence answers verbatim."""
    questions = (["What does this picture show?", "What is happening in this image?", "Can you describe the scene?"],
                 ["Can you tell me more about it?", "What else can you see?"])
    return format_qa([(rng.choice(qs), _sentence(caption)) for qs, caption in zip(questions, reading.captions)])


def _sentence(text: str) -> str:
    text = capitalize(text.strip())
    return text if text.endswith((".", "!", "?")) else text + "."


def _where(box: tuple[float, float, float, float]) -> str:
    """A rough position in words from a box: thirds of the image on each axis."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    horiz = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else None
    vert = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else None
    if vert:
        return f"in the {vert} {horiz} corner" if horiz else f"at the {vert}, near the middle"
    return f"on the {horiz} side, about halfway down" if horiz else "near the centre of the picture"


def write_detail(reading: SceneReading, rng: random.Random) -> str:
    """One paragraph: how many shapes, each placed in words, one or two clear relations, the largest."""
    objs, n = reading.objects, len(reading.objects)
    if not (reading.complete and all(o.box for o in objs)):
        return _fallback_detail(reading, rng)
    on = f" on {reading.mentions_background}" if reading.mentions_background else ""
    noun = "shape" if n == 1 else "shapes"
    sentences = [rng.choice([f"The picture shows {number_word(n)} {noun}{on}.",
                             f"This image contains {number_word(n)} simple {noun}{on}.",
                             f"There {'is' if n == 1 else 'are'} {number_word(n)} {noun} in this picture{on}."])]
    for i in sorted(range(n), key=lambda i: (objs[i].center[1] > 0.5, objs[i].center[0])):  # roughly reading order
        name, pos = objs[i].described, _where(objs[i].box)
        template = rng.choice(["{A} sits {pos}.", "{Pos}, there is {a}.", "{A} can be seen {pos}.",
                               "{A} is placed {pos}."])
        sentences.append(template.format(A=capitalize(article(name)), a=article(name), pos=pos, Pos=capitalize(pos)))
    pairs = [(i, j) for i in range(n) for j in range(n) if i < j]
    rng.shuffle(pairs)
    facts = [(unique_name(objs, i), relation(objs[i].center, objs[j].center), unique_name(objs, j)) for i, j in pairs]
    sentences += [f"The {a} is {rel} the {b}." for a, rel, b in facts if a and b and rel][:2]  # clear-cut ones
    if n > 1 and all(o.size for o in objs):
        top = max(SIZE_RANK[o.size] for o in objs)
        biggest = [i for i, o in enumerate(objs) if SIZE_RANK[o.size] == top]
        if len(biggest) == 1 and unique_name(objs, biggest[0]):
            sentences.append(f"The {unique_name(objs, biggest[0])} is the largest shape in the scene.")
        elif len({o.size for o in objs}) == 1:
            sentences.append(f"All of the shapes are the same size: {size_word(objs[0].size)}.")
    return " ".join(sentences)


def _fallback_detail(reading: SceneReading, rng: random.Random) -> str:
    """A real photo: restate the first sentence and place each listed object in words."""
    if not reading.captions:
        return ""
    sentences = [_sentence(reading.captions[0])]
    for label, box in reading.boxes:
        area, thing = (box[2] - box[0]) * (box[3] - box[1]), capitalize(article(label))
        extent = " and takes up a large part of the picture" if area > 0.3 else ""
        sentences.append(f"{thing} fills the whole frame." if area > 0.8 else f"{thing} appears {_where(box)}{extent}.")
    return " ".join(sentences + [_sentence(c) for c in reading.captions[1:2]])


@lru_cache(maxsize=None)
def _code_version() -> str:
    """A hash of the code that decides the text (the writers, the reader, the shared English and relation rules):
    part of the identity, so an edit invalidates cached answers instead of silently mixing old and new text."""
    writers_and_rules = (write_conversation, read_context, write_reasoning, format_qa, article, relation)
    code = {inspect.getfile(f) for f in writers_and_rules}
    return fingerprint([file_fingerprint(f) for f in sorted(code)])[:8]


class SymbolicTeacher(Teacher):
    """Reads the context from the last user message (and nothing else). Same seed + same messages = same text."""

    def __init__(self, seed: int = 0):
        self.seed, self.identity = seed, f"symbolic-{_code_version()}(seed={seed})"

    def complete(self, messages: list[dict[str, str]]) -> str:
        response_type = response_type_of(messages)
        if response_type is None:
            raise TeacherFatalError("the symbolic teacher only knows this project's system messages (teacher.prompts)")
        context = last_user_message(messages)
        digest = hashlib.sha256(f"{self.seed}\0{response_type}\0{context}".encode()).digest()
        writer = {"conversation": write_conversation, "detail": write_detail, "complex": write_reasoning}[response_type]
        return writer(read_context(context), random.Random(int.from_bytes(digest[:8], "big")))
