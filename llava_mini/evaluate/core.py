"""Evaluation: does the model answer questions about images it has never seen, and does it describe them
without inventing objects?

    test-split records --make_questions--> held-out questions (from the ground truth, never the teacher)
          |                                          |
          |                     batched greedy answers (LlavaMini.generate, left-padded prompts)
          |                                          |
          |                     normalised answer matching --> accuracy per kind, macro + micro
          |
          +--> "Describe the image in detail." --> mentioned objects --> recall, CHAIR_i, CHAIR_s

Held-out questions are built from the annotations of the test split (instances + attributes), so the
score measures the model, not the teacher: five kinds, each asked only when the image settles it.

    colour      "What colour is the star in the picture?"        only when the shape occurs once
    shape       "Which shape is the red object?"                 only when the colour occurs once
    count       "How many shapes are in this picture?" / "How many circles can you see?"
    relation    "Is the red circle left or right of the blue square?"   only when world.relation is clear
    existence   "Do you see a green triangle in the image?"       present and absent things, balanced

The phrasings are close to the teacher's (the model was trained on that kind of question) but none is a
copy of one of its templates, so a memorised question string does not help.

Answer matching (``extract_answer`` / ``is_correct``): the answer is lowercased, punctuation becomes
space (apostrophes vanish: "isn't" -> "isnt"), and then it is scanned left to right for the *candidate
terms of the question's kind* (colours and colour synonyms for colour questions, shape names for shape
questions, number words and digits for counts, left/right/above/below and synonyms for relations,
yes/no and their variants for existence). The answer counts as correct iff the FIRST candidate term it
mentions maps to the expected value. "The star is red." -> red; "It looks crimson" -> red; "There are
3 circles" -> 3; "No, I don't see one" -> no. Wrong-but-plausible words are candidates too (pink,
hexagon, ...), so "pink" answers a colour question wrongly instead of being skipped. Limits, stated
rather than hidden: an answer that first names another object's colour ("the star next to the blue
square is red") is scored on "blue", and a relation answer with the objects swapped ("the blue square is
to the right of the red circle") is scored on "right". The teacher's answers never do either.

The blind baseline (``blind=True``) runs the same model with every image replaced by a blank canvas of
the image processor's mean colour: the same prompts and image tokens, no visual information. What it
still gets right comes from the language prior (the most common colour, "yes" to every existence
question...); ``gap_closed`` = (acc - blind) / (1 - blind) is the share of the remaining headroom an
image-seeing model closes.

Descriptions are scored like CHAIR (Rohrbach et al. 2018): the objects a description mentions are parsed
("a small red circle" -> red circle; a bare "the star" -> star, any colour); a mention is hallucinated
when no object of the image fits it. CHAIR_i = hallucinated mentions / all mentions, CHAIR_s = share of
descriptions with at least one hallucination, recall = share of ground-truth objects whose colour+shape
is mentioned. Negations ("there is no ...") are not understood and count as mentions.
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from PIL import Image

from llava_mini.world.coco import ImageRecord
from llava_mini.model.conversation import build_prompt, collate_prompts, image_to_pixel_values, load_image, mean_colour
from llava_mini.teacher.prompts import DETAILED_INSTRUCTIONS
from llava_mini.world.shapes import COLORS, SHAPES, WorldObject, relation

KINDS = ("colour", "shape", "count", "relation", "existence")

# ============================================================================= ground truth


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x", "sh", "ch")) else "s")


def _article(text: str) -> str:
    return ("an " if text[:1] in "aeiou" else "a ") + text


_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                 "eleven", "twelve")


def _number_word(n: int) -> str:
    return _NUMBER_WORDS[n] if 0 <= n < len(_NUMBER_WORDS) else str(n)


def scene_objects(record: ImageRecord) -> list[WorldObject]:
    """A record's objects as world objects (shape, colour, size, box), read from the annotation attributes
    (or, without them, from a '<colour> <shape>' category name). Raises ValueError naming the image
    when neither is there: these questions need the shapes world's ground truth."""
    objects = []
    for k, ann in enumerate(record.objects):
        attrs = ann.attributes or {}
        shape, color, size = attrs.get("shape"), attrs.get("color"), attrs.get("size")
        if not (shape and color):
            words = ann.category.split()
            if len(words) == 2 and words[0] in COLORS and words[1] in SHAPES:
                color, shape = words
            else:
                raise ValueError(
                    f"image {record.image_id} ({record.file_name}): object {k} ({ann.category!r}) has no shape/colour "
                    "attributes and its category is not '<colour> <shape>': held-out questions need the shapes world")
        objects.append(WorldObject(shape=shape, color=color, size=size or "", bbox=tuple(ann.bbox)))
    return objects


# ============================================================================= held-out questions


@dataclass(frozen=True)
class Question:
    """One held-out question. ``expected`` is the canonical answer the matcher compares against
    ("red", "circle", "3", "left", "yes"); ``reference`` is a full-sentence correct answer (for a judge)."""

    image_id: int
    file_name: str
    kind: str
    question: str
    expected: str
    reference: str


# Our own phrasings: close to the teacher's (llava_mini.teachers._Dialogue) but none of its templates.
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


def _name(objs: list[WorldObject], i: int) -> str | None:
    """The shortest 'colour shape' or 'size colour shape' that picks out object i alone (as the teacher names)."""
    o = objs[i]
    if sum(p.category == o.category for p in objs) == 1:
        return o.category
    if o.size and sum((p.size, p.category) == (o.size, o.category) for p in objs) == 1:
        return f"{o.size} {o.category}"
    return None


def _colour_options(objs, rng):
    shapes = Counter(o.shape for o in objs)
    for o in objs:
        if shapes[o.shape] == 1:
            yield o.shape, (rng.choice(_COLOUR_QS).format(s=o.shape), o.color, f"The {o.shape} is {o.color}.")


def _shape_options(objs, rng):
    colours = Counter(o.color for o in objs)
    for o in objs:
        if colours[o.color] == 1:
            yield o.color, (rng.choice(_SHAPE_QS).format(c=o.color), o.shape, f"The {o.color} object is {_article(o.shape)}.")


def _count_options(objs, rng):
    n = len(objs)
    total = (rng.choice(_COUNT_ALL_QS), str(n),
             "There is one shape." if n == 1 else f"There are {_number_word(n)} shapes.")
    per_shape = []
    for shape in sorted({o.shape for o in objs}):
        k = sum(o.shape == shape for o in objs)
        per_shape.append((shape, (rng.choice(_COUNT_SHAPE_QS).format(p=_plural(shape)), str(k),
                                  f"There is one {shape}." if k == 1 else f"There are {_number_word(k)} {_plural(shape)}.")))
    rng.shuffle(per_shape)
    # Half the time the whole-image count comes first, so both forms are about equally common.
    options = [("all", total)] + per_shape if rng.random() < 0.5 else per_shape + [("all", total)]
    yield from options


def _relation_options(objs, rng):
    pairs = [(i, j) for i in range(len(objs)) for j in range(len(objs)) if i != j]
    for i, j in pairs:
        a, b = _name(objs, i), _name(objs, j)
        rel = relation(objs[i], objs[j])
        if a and b and rel:
            templates = _HORIZONTAL_QS if rel.startswith("to the") else _VERTICAL_QS
            yield frozenset((i, j)), (rng.choice(templates).format(a=a, b=b), _REL_WORD[rel], f"The {a} is {rel} the {b}.")


def _existence_options(objs, rng, present: bool):
    have = {o.category for o in objs}
    have_shapes = {o.shape for o in objs}
    if present:
        # Usually a colour + shape; sometimes a bare shape, as the teacher sometimes asks.
        things = sorted(have_shapes) if rng.random() < 0.2 else sorted(have)
    else:
        if rng.random() < 0.2:
            things = [s for s in SHAPES if s not in have_shapes]
        else:
            # Near misses (sharing a colour or a shape with something present) are the informative absences.
            near = {f"{c} {o.shape}" for o in objs for c in COLORS} | {f"{o.color} {s}" for o in objs for s in SHAPES}
            things = sorted(near - have)
        if not things:
            things = sorted({f"{c} {s}" for c in COLORS for s in SHAPES} - have)
    rng.shuffle(things)
    for thing in things:
        q = rng.choice(_EXIST_QS).format(t=_article(thing))
        ref = f"Yes, there is {_article(thing)} in the image." if present else f"No, there is no {thing} in the image."
        yield thing, (q, "yes" if present else "no", ref)


def questions_for_image(record: ImageRecord, seed: int = 0, per_kind: int = 1, index: int = 0) -> list[Question]:
    """Up to ``per_kind`` questions of every kind the image settles (fewer when it settles fewer).

    Deterministic for (seed, image id). ``index`` (the image's position in the evaluation set) decides
    whether existence questions ask about something present or absent, alternating over images, so the
    yes/no answers of a set are balanced to within one."""
    objs = scene_objects(record)
    out: list[Question] = []
    if not objs:
        return out
    for kind in KINDS:
        rng = random.Random(f"{seed}:{record.image_id}:{kind}")
        if kind == "existence":
            options = []
            for k in range(per_kind):
                present = (index + k) % 2 == 0
                taken = {t for t, _ in options}
                options += [next(((t, o) for t, o in _existence_options(objs, rng, present) if t not in taken), None)]
            options = [o for o in options if o is not None]
        else:
            makers = {"colour": _colour_options, "shape": _shape_options, "count": _count_options,
                      "relation": _relation_options}
            options = list(makers[kind](objs, rng))
            if kind != "count":
                rng.shuffle(options)
        seen = set()
        for target, (question, expected, reference) in options:
            if len(seen) == per_kind:
                break
            if target in seen:
                continue
            seen.add(target)
            out.append(Question(record.image_id, record.file_name, kind, question, expected, reference))
    return out


def make_questions(
    records: Iterable[ImageRecord], seed: int = 0, per_kind: int = 1, max_per_kind: int | None = None
) -> list[Question]:
    """Held-out questions for a set of records (e.g. ``read_split(root, "test")``), from the ground truth.

    Every image gets up to ``per_kind`` questions of each kind it settles. ``max_per_kind`` caps each
    kind at that many (a seeded sample; existence keeps yes and no balanced), so kinds weigh equally in
    a micro average. Deterministic for a seed and a set of records; the order is by image, then kind.
    """
    records = list(records)
    questions = [q for index, r in enumerate(records) for q in questions_for_image(r, seed, per_kind, index)]
    if max_per_kind is None:
        return questions
    rng = random.Random(f"{seed}:sample")
    keep: set[int] = set()
    for kind in KINDS:
        idx = [i for i, q in enumerate(questions) if q.kind == kind]
        if kind == "existence":
            groups = [[i for i in idx if questions[i].expected == v] for v in ("yes", "no")]
            share = [max_per_kind // 2 + max_per_kind % 2, max_per_kind // 2]
            for group, n in zip(groups, share):
                keep.update(rng.sample(group, min(n, len(group))))
        else:
            keep.update(rng.sample(idx, min(max_per_kind, len(idx))))
    return [q for i, q in enumerate(questions) if i in keep]


# ============================================================================= answer matching


def normalize(text: str) -> list[str]:
    """Lowercase words: apostrophes dropped ("isn't" -> "isnt"), other punctuation and hyphens split words;
    a decimal ("0.25") stays one token, so its digits are never read as a count."""
    text = text.lower().replace("'", "").replace("\u2019", "")
    return re.findall(r"\d+(?:\.\d+)+|[a-z0-9]+", text)


def _forms(words: dict[str, str], plural: bool = False) -> dict[tuple[str, ...], str]:
    out = {}
    for word, canonical in words.items():
        out[tuple(word.split())] = canonical
        if plural:
            out[tuple(_plural(word).split())] = canonical
    return out


_COLOUR_TERMS = {c: c for c in COLORS} | {
    "crimson": "red", "scarlet": "red", "maroon": "red", "lime": "green", "olive": "green", "navy": "blue",
    "azure": "blue", "cyan": "blue", "gold": "yellow", "golden": "yellow", "violet": "purple", "lilac": "purple",
    "lavender": "purple", "magenta": "purple", "amber": "orange",
    # wrong but plausible: they are answers too (and wrong ones)
    "pink": "pink", "brown": "brown", "black": "black", "white": "white", "grey": "grey", "gray": "grey",
}
_SHAPE_TERMS = {s: s for s in SHAPES} | {
    "circular": "circle", "round": "circle", "ring": "circle", "disc": "circle", "disk": "circle",
    "triangular": "triangle", "plus": "cross", "plus sign": "cross",
    "rectangle": "rectangle", "rectangular": "rectangle", "diamond": "diamond", "hexagon": "hexagon",
    "pentagon": "pentagon", "heart": "heart", "oval": "oval", "square shaped": "square",
}
_COUNT_TERMS = {w: str(i) for i, w in enumerate(_NUMBER_WORDS)} | {"no": "0", "none": "0", "single": "1"}
_RELATION_TERMS = {
    "left": "left", "right": "right", "above": "above", "below": "below",
    "higher": "above", "over": "above", "on top": "above", "atop": "above",
    "lower": "below", "under": "below", "beneath": "below", "underneath": "below",
}
_EXISTENCE_TERMS = {"yes": "yes", "yeah": "yes", "yep": "yes", "yup": "yes", "indeed": "yes",
                    "no": "no", "nope": "no", "not": "no", "isnt": "no", "arent": "no", "dont": "no",
                    "cannot": "no", "cant": "no"}

TERMS: dict[str, dict[tuple[str, ...], str]] = {
    "colour": _forms(_COLOUR_TERMS),
    "shape": _forms(_SHAPE_TERMS, plural=True),
    "count": _forms(_COUNT_TERMS),
    "relation": _forms(_RELATION_TERMS),
    "existence": _forms(_EXISTENCE_TERMS),
}
_LONGEST_TERM = max(len(t) for terms in TERMS.values() for t in terms)


def _scan(words: Sequence[str], terms: dict[tuple[str, ...], str]):
    """(position, length, canonical) of every term in ``words``, left to right, longest match first."""
    i = 0
    while i < len(words):
        for n in range(min(_LONGEST_TERM, len(words) - i), 0, -1):
            hit = terms.get(tuple(words[i:i + n]))
            if hit is not None:
                yield i, n, hit
                i += n
                break
        else:
            i += 1


def extract_answer(kind: str, answer: str) -> str | None:
    """The canonical value of the first candidate term of ``kind`` in ``answer``, or None (no answer).

    Counts also accept digits ("3" -> "3"); see the module docstring for the rules."""
    if kind not in TERMS:
        raise ValueError(f"unknown question kind {kind!r}; expected one of {KINDS}")
    words = normalize(answer)
    for i, _, canonical in _scan(words, TERMS[kind]):
        if kind == "count":
            # A digit earlier than the first number word wins.
            digits = [w for w in words[:i] if w.isdigit()]
            return str(int(digits[0])) if digits else canonical
        return canonical
    if kind == "count":
        digits = [w for w in words if w.isdigit()]
        return str(int(digits[0])) if digits else None
    return None


def is_correct(kind: str, answer: str, expected: str) -> bool:
    """True iff the first candidate term of ``kind`` that ``answer`` mentions is ``expected``."""
    return extract_answer(kind, answer) == expected


# ============================================================================= descriptions: recall and CHAIR

_SIZE_WORDS = {"small", "medium", "large", "big", "tiny", "little", "sized", "huge", "mid"}
_DESCRIPTION_SHAPES = _forms({k: v for k, v in _SHAPE_TERMS.items()
                              if k not in ("round", "ring", "circular", "triangular", "rectangular", "plus")},
                             plural=True)


def mentioned_objects(description: str) -> list[tuple[str | None, str]]:
    """The objects a description mentions, as (colour or None, shape), without repeats, in order.

    A colour counts when it stands right before the shape, size words allowed between ("a small red
    circle", "a red, medium-sized circle"); a bare shape ("the star") is (None, shape) and is dropped
    when the same shape is also mentioned with a colour (it most likely refers back to it)."""
    words = normalize(description)
    colours = TERMS["colour"]
    found: list[tuple[str | None, str]] = []
    for i, _, shape in _scan(words, _DESCRIPTION_SHAPES):
        colour = None
        j = i - 1
        while j >= 0 and i - j <= 3:
            if (words[j],) in colours:
                colour = colours[(words[j],)]
                break
            if words[j] not in _SIZE_WORDS:
                break
            j -= 1
        if (colour, shape) not in found:
            found.append((colour, shape))
    coloured_shapes = {s for c, s in found if c is not None}
    return [(c, s) for c, s in found if c is not None or s not in coloured_shapes]


def score_description(description: str, objects: Sequence[WorldObject]) -> dict:
    """Mentions, hallucinations and recall of one description against the image's objects.

    Returns {"mentioned": ["red circle", "star", ...], "hallucinated": [...], "objects": n ground-truth
    objects, "recalled": how many of them have their colour + shape mentioned, "shapes_recalled": how
    many have at least their shape mentioned}."""
    mentions = mentioned_objects(description)
    categories = {(o.color, o.shape) for o in objects}
    shapes = {o.shape for o in objects}
    hallucinated = [(c, s) for c, s in mentions if ((c, s) not in categories if c else s not in shapes)]
    said = {(c, s) for c, s in mentions if c}
    said_shapes = {s for _, s in mentions}
    name = lambda m: f"{m[0]} {m[1]}" if m[0] else m[1]  # noqa: E731
    return {
        "mentioned": [name(m) for m in mentions],
        "hallucinated": [name(m) for m in hallucinated],
        "objects": len(objects),
        "recalled": sum((o.color, o.shape) in said for o in objects),
        "shapes_recalled": sum(o.shape in said_shapes for o in objects),
    }


def description_metrics(scores: Sequence[dict]) -> dict:
    """Aggregate ``score_description`` results: recall, shape_recall, chair_i, chair_s (all micro
    averages over the set; None where the denominator is zero) and the counts behind them."""
    n_objects = sum(s["objects"] for s in scores)
    n_mentions = sum(len(s["mentioned"]) for s in scores)
    n_halluc = sum(len(s["hallucinated"]) for s in scores)
    ratio = lambda a, b: a / b if b else None  # noqa: E731
    return {
        "recall": ratio(sum(s["recalled"] for s in scores), n_objects),
        "shape_recall": ratio(sum(s["shapes_recalled"] for s in scores), n_objects),
        "chair_i": ratio(n_halluc, n_mentions),
        "chair_s": ratio(sum(bool(s["hallucinated"]) for s in scores), len(scores)),
        "descriptions": len(scores),
        "mentions": n_mentions,
        "hallucinations": n_halluc,
        "objects": n_objects,
    }


# ============================================================================= running the model


def _base(model):
    """The LlavaMini inside a peft wrapper (LoRA layers live in it, so calling it uses them)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def blank_image(image_processor, size: tuple[int, int] = (64, 64)) -> Image.Image:
    """A canvas of the processor's mean colour: what the blind baseline sees instead of every image."""
    return Image.new("RGB", size, mean_colour(image_processor))


def prepare_images(images: Sequence[Image.Image], image_processor, blind: bool = False) -> torch.Tensor:
    """PIL images -> pixel_values (B, 3, H, W), padded to squares like training; with ``blind`` every
    image becomes the same blank mean-colour canvas."""
    if blind:
        images = [blank_image(image_processor, im.size) for im in images]
    return torch.stack([image_to_pixel_values(im, image_processor) for im in images])


@torch.no_grad()
def generate_answers(
    model,
    tokenizer,
    image_processor,
    items: Sequence[tuple[Image.Image, str]],
    batch_size: int = 32,
    max_new_tokens: int = 24,
    system_prompt: str | None = None,
    blind: bool = False,
    progress: bool = False,
    desc: str = "answering",
) -> list[str]:
    """Greedy answers to (image, question) pairs, in their order, batched with left-padded prompts.

    Items are batched in their order, so questions about one image (adjacent in ``make_questions``)
    share a batch, and each distinct image of a batch (by identity) goes through the vision tower once:
    the vision work is per image, not per question, and memory stays one batch's worth. Answers are
    decoded without special tokens and stripped; they are the tokens ``LlavaMini.generate`` gives on
    pixel values (the tests check it against ``chat``)."""
    base = _base(model)
    was_training = base.training
    base.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompts = [build_prompt(tokenizer, q, base.num_image_tokens, system_prompt=system_prompt) for _, q in items]
    batches = [list(range(k, min(k + batch_size, len(items)))) for k in range(0, len(items), batch_size)]
    answers: list[str] = [""] * len(items)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=desc)
    try:
        for batch in batches:
            slot: dict[int, int] = {}  # id(image) -> its row among the batch's distinct images
            distinct = []
            for i in batch:
                if id(items[i][0]) not in slot:
                    slot[id(items[i][0])] = len(distinct)
                    distinct.append(items[i][0])
            pixel_values = prepare_images(distinct, image_processor, blind).to(base.device)
            features = base.encode_images(pixel_values)  # (B_distinct, N, D_text)
            inputs = collate_prompts([prompts[i] for i in batch], pad)
            input_ids = inputs["input_ids"].to(base.device)
            # What LlavaMini.embed_inputs does, with each image's features computed once.
            image_mask = input_ids == base.config.image_token_id
            embeds = base.get_input_embeddings()(input_ids.masked_fill(image_mask, 0))
            rows = features[[slot[id(items[i][0])] for i in batch]]
            embeds = embeds.masked_scatter(image_mask.unsqueeze(-1), rows.to(embeds.dtype).reshape(-1, embeds.shape[-1]))
            new = base.language_model.generate(
                inputs_embeds=embeds, attention_mask=inputs["attention_mask"].to(base.device),
                max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
            )
            for i, ids in zip(batch, new.tolist()):
                answers[i] = tokenizer.decode(ids, skip_special_tokens=True).strip()
    finally:
        base.train(was_training)
    return answers


def evaluate_text_scene(
    language_model,
    tokenizer,
    records: Sequence[ImageRecord],
    questions: Sequence[Question],
    boxes: bool = True,
    system_prompt: str | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 24,
) -> dict:
    """The held-out questions answered by the language model alone, *told* the scene: each image's symbolic
    context (captions, and boxes if ``boxes``) stands where the image tokens would, as in the text-only
    chats the tiny LM was pretrained on.

    This separates the eyes from the brain: a kind the LM cannot answer even from a perfect text view of
    the scene is limited by what the LM has learned, and a better vision tower alone will not lift it.
    Returns the same dict as ``evaluate_model`` (without descriptions).
    """
    from llava_mini.model.conversation import render_ids
    from llava_mini.world.symbolic import context_text

    by_id = {r.image_id: r for r in records}
    missing = sorted({q.image_id for q in questions} - set(by_id))
    if missing:
        raise ValueError(f"questions about images {missing[:5]}, which are not among the records given")
    prompts = []
    for q in questions:
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": f"{context_text(by_id[q.image_id], boxes=boxes)}\n{q.question}"})
        prompts.append(torch.tensor(render_ids(tokenizer, messages, add_generation_prompt=True)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = language_model.training
    language_model.eval()
    replies = []
    try:
        for k in range(0, len(prompts), batch_size):
            inputs = {name: t.to(language_model.device) for name, t in collate_prompts(prompts[k:k + batch_size], pad).items()}
            with torch.no_grad():
                out = language_model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                              pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
            replies += [tokenizer.decode(ids, skip_special_tokens=True).strip()
                        for ids in out[:, inputs["input_ids"].shape[1]:].tolist()]
    finally:
        language_model.train(was_training)
    rows = score_answers(questions, replies)
    settings = dict(text_scene=True, boxes=boxes, system_prompt=system_prompt, max_new_tokens=max_new_tokens,
                    images=len(by_id), questions=len(questions))
    return {**accuracy_by_kind(rows), "answers": rows, "blind": False, "settings": settings, "description": None}


def chat(model, tokenizer, image_processor, image, question: str, history: Iterable[tuple[str, str]] = (),
         system_prompt: str | None = None, max_new_tokens: int = 64, blind: bool = False) -> str:
    """One greedy answer about ``image`` (a PIL image or a path), after earlier (question, answer) turns."""
    if not isinstance(image, Image.Image):
        image = load_image(image, str(image))
    base = _base(model)
    prompt = build_prompt(tokenizer, question, base.num_image_tokens, system_prompt=system_prompt, history=history)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = base.training
    base.eval()
    try:
        with torch.no_grad():
            new = base.generate(prompt[None].to(base.device), prepare_images([image], image_processor, blind).to(base.device),
                                max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                                eos_token_id=tokenizer.eos_token_id)
    finally:
        base.train(was_training)
    return tokenizer.decode(new[0], skip_special_tokens=True).strip()


def _image_of(record: ImageRecord, image_dir) -> Image.Image:
    path = Path(image_dir) / record.file_name if image_dir is not None else record.path
    return load_image(path, record.image_id)


def score_answers(questions: Sequence[Question], replies: Sequence[str]) -> list[dict]:
    """One row per question: what was asked, expected, answered, the extracted term and whether it is right."""
    rows = []
    for q, reply in zip(questions, replies, strict=True):
        extracted = extract_answer(q.kind, reply)
        rows.append({"image_id": q.image_id, "kind": q.kind, "question": q.question, "expected": q.expected,
                     "reference": q.reference, "answer": reply, "extracted": extracted,
                     "correct": extracted == q.expected})
    return rows


def accuracy_by_kind(answers: Sequence[dict]) -> dict:
    """{"accuracy": {kind: share correct}, "n": {kind: questions}, "micro": all questions, "macro": mean
    over kinds} from answer rows with "kind" and "correct"."""
    n, right = Counter(), Counter()
    for a in answers:
        n[a["kind"]] += 1
        right[a["kind"]] += bool(a["correct"])
    kinds = [k for k in KINDS if n[k]] + sorted(k for k in n if k not in KINDS)
    accuracy = {k: right[k] / n[k] for k in kinds}
    return {
        "accuracy": accuracy,
        "n": {k: n[k] for k in kinds},
        "micro": sum(right.values()) / sum(n.values()) if n else None,
        "macro": sum(accuracy.values()) / len(accuracy) if accuracy else None,
    }


def evaluate_model(
    model,
    tokenizer,
    image_processor,
    records: Sequence[ImageRecord],
    image_dir: str | Path | None = None,
    questions: Sequence[Question] | None = None,
    seed: int = 0,
    per_kind: int = 1,
    max_per_kind: int | None = None,
    blind: bool = False,
    batch_size: int = 32,
    max_new_tokens: int = 24,
    n_descriptions: int | None = 50,
    description_max_new_tokens: int = 160,
    system_prompt: str | None = None,
    progress: bool = False,
) -> dict:
    """Answer the held-out questions and describe held-out images; score both.

    Args:
        records: the held-out images (``read_split(root, "test")``), with ground-truth attributes.
        image_dir: folder of the images (default: each record's own ``path``).
        questions: a fixed question set (default ``make_questions(records, seed, per_kind, max_per_kind)``);
            pass the same list to every model you compare.
        blind: replace every image by a blank mean-colour canvas (the no-image baseline).
        n_descriptions: how many images (the first ones) to describe; 0 skips descriptions, None: all.
        system_prompt: the system message used in training, if any.
    Returns:
        {"accuracy": {kind: acc}, "n": {kind: count}, "micro", "macro",
         "answers": [{"image_id", "kind", "question", "expected", "reference", "answer", "extracted", "correct"}],
         "description": description_metrics(...) + {"examples": [...]} (None when skipped),
         "blind", "settings"}.
    """
    records = list(records)
    by_id = {r.image_id: r for r in records}
    if questions is None:
        questions = make_questions(records, seed=seed, per_kind=per_kind, max_per_kind=max_per_kind)
    images: dict[int, Image.Image] = {}

    def image(image_id: int) -> Image.Image:
        if image_id not in images:
            if image_id not in by_id:
                raise ValueError(f"question about image {image_id}, which is not among the records given")
            images[image_id] = _image_of(by_id[image_id], image_dir)
        return images[image_id]

    settings = dict(blind=blind, seed=seed, per_kind=per_kind, max_per_kind=max_per_kind, max_new_tokens=max_new_tokens,
                    system_prompt=system_prompt, images=len(records), questions=len(questions))
    replies = generate_answers(model, tokenizer, image_processor, [(image(q.image_id), q.question) for q in questions],
                               batch_size, max_new_tokens, system_prompt, blind, progress, "questions")
    rows = score_answers(questions, replies)
    result = {**accuracy_by_kind(rows), "answers": rows, "blind": blind, "settings": settings, "description": None}

    described = records if n_descriptions is None else records[:n_descriptions]
    if described:
        rng = random.Random(f"{seed}:describe")
        instructions = [rng.choice(DETAILED_INSTRUCTIONS) for _ in described]
        texts = generate_answers(model, tokenizer, image_processor,
                                 [(image(r.image_id), ins) for r, ins in zip(described, instructions)],
                                 batch_size, description_max_new_tokens, system_prompt, blind, progress, "descriptions")
        scores = [score_description(t, scene_objects(r)) for t, r in zip(texts, described)]
        metrics = description_metrics(scores)
        metrics["items"] = [{"image_id": r.image_id, "instruction": ins, "description": t, **s}
                            for r, ins, t, s in zip(described, instructions, texts, scores)]
        result["description"] = metrics
        settings["description_max_new_tokens"] = description_max_new_tokens
    return result


# ============================================================================= comparing models


def gap_closed(result: dict, blind: dict) -> dict[str, float | None]:
    """Per kind (and macro/micro): (acc - blind acc) / (1 - blind acc), the share of the headroom left by
    the no-image baseline that the model closes (1 = perfect, 0 = no better than blind, < 0 = worse).
    None where the blind baseline is already perfect."""
    out = {}
    pairs = [(k, result["accuracy"].get(k), blind["accuracy"].get(k)) for k in result["accuracy"]]
    pairs += [(k, result.get(k), blind.get(k)) for k in ("macro", "micro")]
    for k, acc, base in pairs:
        out[k] = None if acc is None or base is None or base >= 1 else (acc - base) / (1 - base)
    return out


def summarize_results(results: dict[str, dict], blind_name: str = "blind") -> dict[str, dict]:
    """What goes into a JSON file: per model its accuracies, counts, description metrics and (when a
    blind entry is present) gap closed; without the per-answer rows."""
    out = {}
    blind = results.get(blind_name)
    for name, r in results.items():
        entry = {k: r.get(k) for k in ("accuracy", "n", "micro", "macro", "blind", "settings")}
        if r.get("description"):
            entry["description"] = {k: v for k, v in r["description"].items() if k != "items"}
            entry["description"]["examples"] = [
                {k: item[k] for k in ("image_id", "description", "mentioned", "hallucinated")}
                for item in r["description"].get("items", [])[:3]]
        if blind is not None and name != blind_name:
            entry["gap_closed"] = gap_closed(r, blind)
        if r.get("judge"):
            entry["judge"] = {k: v for k, v in r["judge"].items() if k != "reviews"}
        out[name] = entry
    return out


def save_results(results: dict[str, dict], path: str | Path, blind_name: str = "blind") -> Path:
    """Write ``summarize_results`` as JSON (README numbers come from this file, not from memory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summarize_results(results, blind_name), indent=2))
    return path


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def results_table(results: dict[str, dict], blind_name: str = "blind") -> str:
    """A markdown table: one row per model, accuracy (%) per question kind, macro and micro, and the
    description metrics when present; then, with a blind entry, a table of gap closed per kind."""
    kinds = [k for k in KINDS if any(k in r["accuracy"] for r in results.values())]
    with_desc = any(r.get("description") for r in results.values())
    head = ["model", *kinds, "macro", "micro"] + (["recall", "CHAIR_i", "CHAIR_s"] if with_desc else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for name, r in results.items():
        cells = [name, *(_pct(r["accuracy"].get(k)) for k in kinds), _pct(r.get("macro")), _pct(r.get("micro"))]
        if with_desc:
            d = r.get("description") or {}
            cells += [_pct(d.get("recall")), _pct(d.get("chair_i")), _pct(d.get("chair_s"))]
        lines.append("| " + " | ".join(cells) + " |")
    blind = results.get(blind_name)
    others = {n: r for n, r in results.items() if n != blind_name}
    if blind is not None and others:
        lines += ["", f"Gap closed, (acc - {blind_name}) / (1 - {blind_name}), in %:", "",
                  "| " + " | ".join(["model", *kinds, "macro", "micro"]) + " |",
                  "|" + "|".join(["---"] + ["---:"] * (len(kinds) + 2)) + "|"]
        for name, r in others.items():
            gap = gap_closed(r, blind)
            lines.append("| " + " | ".join([name, *(_pct(gap.get(k)) for k in kinds), _pct(gap["macro"]),
                                            _pct(gap["micro"])]) + " |")
    return "\n".join(lines)


def plot_comparison(results: dict[str, dict], path: str | Path | None = None, blind_name: str = "blind"):
    """Grouped bars: accuracy per question kind (and macro) for each model; a second panel with the
    description metrics when present. Saved to ``path`` (PNG) with the numbers beside it as JSON
    (same name, ``.json``). Returns the figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(results)
    kinds = [k for k in KINDS if any(k in r["accuracy"] for r in results.values())]
    groups = kinds + ["macro"]
    with_desc = any(r.get("description") for r in results.values())
    fig, axes = plt.subplots(1, 2 if with_desc else 1, figsize=(13 if with_desc else 9, 3.8),
                             gridspec_kw={"width_ratios": [3, 1.2]} if with_desc else None, squeeze=False)
    ax = axes[0, 0]
    width = 0.8 / max(1, len(names))
    x = np.arange(len(groups))
    for k, name in enumerate(names):
        r = results[name]
        values = [r["accuracy"].get(g, np.nan) if g != "macro" else r.get("macro") for g in groups]
        values = [np.nan if v is None else 100 * v for v in values]
        ax.bar(x + (k - (len(names) - 1) / 2) * width, values, width, label=name,
               hatch="//" if name == blind_name else None, alpha=0.9)
    ax.set_xticks(x, groups)
    ax.set_ylim(0, 112)  # headroom for the legend above 100 %
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("accuracy (%)")
    ax.set_title("held-out questions by kind")
    ax.legend(fontsize=8, ncol=min(4, len(names)), loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    if with_desc:
        ax2 = axes[0, 1]
        metrics = ["recall", "chair_i", "chair_s"]
        x2 = np.arange(len(metrics))
        for k, name in enumerate(names):
            d = results[name].get("description") or {}
            values = [np.nan if d.get(m) is None else 100 * d[m] for m in metrics]
            ax2.bar(x2 + (k - (len(names) - 1) / 2) * width, values, width, label=name,
                    hatch="//" if name == blind_name else None, alpha=0.9)
        ax2.set_xticks(x2, ["recall ↑", "CHAIR_i ↓", "CHAIR_s ↓"])
        ax2.set_ylim(0, 112)
        ax2.set_yticks(range(0, 101, 20))
        ax2.set_title("detailed descriptions")
        ax2.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        save_results(results, path.with_suffix(".json"), blind_name)
    return fig


# ============================================================================= an LLM judge (LLaVA-Bench protocol)

JUDGE_SYSTEM = "You are a careful and fair reviewer of answers that AI assistants give about images."
JUDGE_RUBRIC = (
    "Two AI assistants answered the question above about an image that you cannot see; the description "
    "of the image is what you know about it. Judge how helpful, relevant and accurate each answer is, "
    "and whether its level of detail suits the question. Give each assistant an overall score from 1 to "
    "10, where a higher score is better.\n"
    "On the first line write only the two scores, Assistant 1's then Assistant 2's, separated by a space. "
    "From the next line on, explain your judgement briefly and without bias; the order in which the "
    "answers appear must not affect it."
)


def judge_messages(question: str, context: str, reference: str, answer: str) -> list[dict[str, str]]:
    """The judge's prompt: the symbolic context, the question, the reference answer as Assistant 1 and
    the model's answer as Assistant 2 (LLaVA-Bench's order), then the scoring instructions."""
    user = (f"[Image description]\n{context.strip()}\n\n[Question]\n{question.strip()}\n\n"
            f"[Assistant 1]\n{reference.strip()}\n[End of Assistant 1]\n\n"
            f"[Assistant 2]\n{answer.strip() or '(no answer)'}\n[End of Assistant 2]\n\n[Instructions]\n{JUDGE_RUBRIC}")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def parse_judge_scores(text: str) -> tuple[float, float] | None:
    """The two scores on the review's first line ("8 6", "8, 6", "Scores: 8/10 6/10"), or None."""
    first = (text or "").strip().split("\n", 1)[0]
    numbers = [float(v) for v in re.findall(r"\d+(?:\.\d+)?", re.sub(r"/\s*10\b", " ", first))]
    if len(numbers) != 2 or not all(0 <= v <= 10 for v in numbers):
        return None
    return numbers[0], numbers[1]


def judge_items(result: dict, records: Sequence[ImageRecord], max_per_kind: int = 10, seed: int = 0,
                detail_reference: bool = True) -> list[dict]:
    """Items for ``judge_answers`` from an ``evaluate_model`` result: up to ``max_per_kind`` answers of
    each question kind (reference: the ground-truth sentence) and of descriptions (kind "detail";
    reference: the symbolic teacher's description from the same context, as LLaVA-Bench used GPT-4's)."""
    from llava_mini.world.symbolic import context_text

    by_id = {r.image_id: r for r in records}
    rng = random.Random(f"{seed}:judge")
    items = []
    for kind in KINDS:
        rows = [a for a in result["answers"] if a["kind"] == kind]
        for a in rng.sample(rows, min(max_per_kind, len(rows))):
            items.append({"kind": kind, "question": a["question"], "reference": a["reference"], "answer": a["answer"],
                          "context": context_text(by_id[a["image_id"]], boxes=True), "image_id": a["image_id"]})
    if detail_reference and result.get("description"):
        from llava_mini.teacher.prompts import build_messages
        from llava_mini.teacher.teachers import SymbolicTeacher

        teacher = SymbolicTeacher(seed)
        for d in result["description"]["items"][:max_per_kind]:
            context = context_text(by_id[d["image_id"]], boxes=True)
            reference = teacher.complete(build_messages("detail", context))
            items.append({"kind": "detail", "question": d["instruction"], "reference": reference,
                          "answer": d["description"], "context": context, "image_id": d["image_id"]})
    return items


def judge_answers(items: Sequence[dict], judge=None, max_items: int | None = None, progress: bool = False) -> dict | None:
    """LLaVA-Bench's relative score: a judge LLM rates the reference answer and the model's answer 1-10;
    relative score = model's total / reference's total (in %), overall and per kind.

    ``judge``: anything with ``complete(messages) -> str`` (default: ``teachers.teacher_from_env()``, an
    OpenAI-compatible server from the environment). Without one, prints why and returns None. A review
    whose first line holds no two scores is counted in "unparsed" and left out; a failed call likewise
    in "failed".
    """
    from llava_mini.teacher.teachers import TeacherError, TeacherFatalError, teacher_from_env

    if judge is None:
        judge = teacher_from_env()
    if judge is None:
        print("LLM judge skipped: no judge configured (set LLAVA_MINI_TEACHER_API_KEY or OPENAI_API_KEY, "
              "or LLAVA_MINI_TEACHER_BASE_URL for a local server, and LLAVA_MINI_TEACHER_MODEL)", file=sys.stderr)
        return None
    items = list(items)[:max_items] if max_items is not None else list(items)
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc="judging")
    reviews, unparsed, failed = [], 0, 0
    totals: dict[str, list[float]] = {}
    for item in items:
        try:
            text = judge.complete(judge_messages(item["question"], item["context"], item["reference"], item["answer"]))
        except TeacherFatalError:
            raise
        except TeacherError:
            failed += 1
            continue
        scores = parse_judge_scores(text)
        reviews.append({**{k: item.get(k) for k in ("kind", "image_id", "question")}, "scores": scores, "review": text})
        if scores is None:
            unparsed += 1
            continue
        for key in ("all", item.get("kind", "other")):
            t = totals.setdefault(key, [0.0, 0.0, 0])
            t[0] += scores[0]
            t[1] += scores[1]
            t[2] += 1
    rel = lambda t: 100 * t[1] / t[0] if t[0] else None  # noqa: E731
    overall = totals.get("all", [0.0, 0.0, 0])
    return {
        "relative_score": rel(overall),
        "reference_score": overall[0] / overall[2] if overall[2] else None,
        "model_score": overall[1] / overall[2] if overall[2] else None,
        "by_kind": {k: rel(t) for k, t in totals.items() if k != "all"},
        "judged": overall[2],
        "unparsed": unparsed,
        "failed": failed,
        "judge": getattr(judge, "identity", type(judge).__name__),
        "reviews": reviews,
    }
