"""Descriptions scored like CHAIR (Rohrbach et al. 2018): the objects a description mentions are parsed ("a
small red circle" -> red circle; a bare "the star" -> star, any colour); a mention is hallucinated when no
object of the image fits it. CHAIR_i = hallucinated mentions / all mentions, CHAIR_s = share of descriptions
with a hallucination, recall = share of ground-truth objects whose colour + shape is mentioned. Negations
("there is no ...") are not understood and count as mentions.

On COCO, as CHAIR was defined, a mention is a category named by one of its words (data/coco/chair_words.json),
and it is hallucinated when the image has no box of that category and no caption naming it.
"""

from functools import lru_cache
from itertools import takewhile
from pathlib import Path
from typing import Sequence

from llava_mini.english import plural
from llava_mini.evaluate.matching import TERMS, normalize, scan_terms
from llava_mini.files import FileFormatError, read_json
from llava_mini.paths import DATA_DIR
from llava_mini.world import ImageRecord, WorldObject

COCO_WORDS_FILE = DATA_DIR / "coco" / "chair_words.json"

_SIZE_WORDS = {"small", "medium", "large", "big", "tiny", "little", "sized", "huge", "mid"}
# Shape terms that name an object (adjectives such as "round" do not, in a description).
_ADJECTIVES = {(w,) for a in ("round", "ring", "circular", "triangular", "rectangular", "plus") for w in (a, plural(a))}
_DESCRIPTION_SHAPES = {term: shape for term, shape in TERMS["shape"].items() if term not in _ADJECTIVES}


def mentioned_objects(description: str) -> list[tuple[str | None, str]]:
    """(colour or None, shape) of each object mentioned, in order, without repeats. A colour counts right before
    the shape, size words allowed between ("a red, medium-sized circle"); a bare shape ("the star") is dropped
    when the same shape is also mentioned with a colour (it most likely refers back to it)."""
    words = normalize(description)
    colours = TERMS["colour"]
    found: list[tuple[str | None, str]] = []
    for i, _, shape in scan_terms(words, _DESCRIPTION_SHAPES):
        # The nearest colour up to three words back, with only size words between.
        back = takewhile(lambda w: w in _SIZE_WORDS or (w,) in colours, reversed(words[max(i - 3, 0):i]))
        colour = next((colours[(w,)] for w in back if (w,) in colours), None)
        if (colour, shape) not in found:
            found.append((colour, shape))
    coloured_shapes = {s for c, s in found if c is not None}
    return [(c, s) for c, s in found if c is not None or s not in coloured_shapes]


def score_description(description: str, objects: Sequence[WorldObject]) -> dict:
    """One description against the image's objects: {"mentioned": ["red circle", "star", ...], "hallucinated":
    [...], "objects": how many, "recalled": how many have their colour + shape mentioned, "shapes_recalled":
    how many have at least their shape mentioned}."""
    mentions = mentioned_objects(description)
    categories = {(o.color, o.shape) for o in objects}
    shapes = {o.shape for o in objects}
    hallucinated = [(c, s) for c, s in mentions if ((c, s) not in categories if c else s not in shapes)]
    said = {(c, s) for c, s in mentions if c}
    said_shapes = {s for _, s in mentions}
    name = lambda m: f"{m[0]} {m[1]}" if m[0] else m[1]  # noqa: E731
    return {"mentioned": [name(m) for m in mentions], "hallucinated": [name(m) for m in hallucinated],
            "objects": len(objects), "recalled": sum((o.color, o.shape) in said for o in objects),
            "shapes_recalled": sum(o.shape in said_shapes for o in objects)}


def description_metrics(scores: Sequence[dict]) -> dict:
    """Aggregate ``score_description`` results: recall, shape_recall, chair_i, chair_s (all micro
    averages over the set; None where the denominator is zero) and the counts behind them."""
    n_objects = sum(s["objects"] for s in scores)
    n_mentions = sum(len(s["mentioned"]) for s in scores)
    n_halluc = sum(len(s["hallucinated"]) for s in scores)
    n_with_halluc = sum(bool(s["hallucinated"]) for s in scores)
    ratio = lambda a, b: a / b if b else None  # noqa: E731
    return {"recall": ratio(sum(s["recalled"] for s in scores), n_objects),
            "shape_recall": ratio(sum(s["shapes_recalled"] for s in scores), n_objects),
            "chair_i": ratio(n_halluc, n_mentions), "chair_s": ratio(n_with_halluc, len(scores)),
            "descriptions": len(scores), "mentions": n_mentions, "hallucinations": n_halluc, "objects": n_objects}


@lru_cache(maxsize=None)
def coco_terms(path: str | Path = COCO_WORDS_FILE) -> dict[tuple[str, ...], str]:
    """``scan_terms``' table for COCO: each word of {"categories": {category: [words]}} and its regular plural
    (word tuple) -> category. A file without that mapping, or a word under two categories, raises naming it."""
    categories = read_json(path).get("categories")
    if not isinstance(categories, dict):
        raise FileFormatError(f"{path}: expected {{'categories': {{category name: [words]}}}}")
    pairs = [(category, tuple(normalize(word))) for category, words in categories.items() for word in words]
    terms: dict[tuple[str, ...], str] = {}
    for category, word in pairs:
        if terms.setdefault(word, category) != category:
            raise FileFormatError(f"{path}: {' '.join(word)!r} is listed under {terms[word]!r} and {category!r}")
    for category, word in pairs:  # then the plurals, which never displace a listed word
        terms.setdefault((*word[:-1], plural(word[-1])), category)
    return terms


def coco_mentions(text: str) -> list[str]:
    """The COCO categories a text names, in order, once each: "Two men ride a bus past a hot dog stand." ->
    ["person", "bus", "hot dog"]."""
    return list(dict.fromkeys(category for _, _, category in scan_terms(normalize(text), coco_terms())))


def score_coco_description(description: str, record: ImageRecord) -> dict:
    """One description of a COCO image, in ``score_description``'s form: "mentioned" (categories), "hallucinated"
    (neither boxed in the image nor named by one of its captions: CHAIR's ground truth), "objects" (categories
    boxed), "recalled" (of those, mentioned; "shapes_recalled" the same: COCO has no colour to miss)."""
    mentions, boxed = coco_mentions(description), {o.category for o in record.objects}
    present = boxed | {c for caption in record.captions for c in coco_mentions(caption)}
    recalled = len(boxed & set(mentions))
    return {"mentioned": mentions, "hallucinated": [m for m in mentions if m not in present], "objects": len(boxed),
            "recalled": recalled, "shapes_recalled": recalled}
