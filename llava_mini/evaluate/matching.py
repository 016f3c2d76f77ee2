"""Answer matching: the answer's words are scanned for the terms of the question's kind (colours and synonyms,
shapes, number words and digits, left/right/above/below and synonyms, yes/no and variants), each mapped to its
canonical value: "It looks crimson" -> red, "There are 3 circles" -> 3, "No, I don't see one" -> no.

Scoring is strict: an answer is right only when it names the expected value and no competing value of the same
kind. "The circle is coloured left of three shapes: a large green triangle" is wrong for "what colour is the
circle?" (it names green, and no colour of the circle); "yes ... no", "left ... right" and "red, not blue" are
wrong too. Wrong-but-plausible words ("pink") are terms: they make an answer wrong, not unscored. So a correct
answer must stay on its question: "the star next to the blue square is red" is wrong for the star's colour.

An answer that states its steps first ("The red one is a triangle; the blue one is a cross, so the cross is
blue.") is scored on its conclusion, the text after its last ", so ": the steps name other objects by design.
"""

import re
from typing import Sequence

from llava_mini.english import NUMBER_WORDS, plural
from llava_mini.evaluate.questions import KINDS
from llava_mini.world import COLORS, SHAPES


def normalize(text: str) -> list[str]:
    """Lowercase words, apostrophes dropped, other punctuation splits; a decimal ("0.25") stays one token, so
    its digits are never read as a count."""
    text = text.lower().replace("'", "").replace("\u2019", "")
    return re.findall(r"\d+(?:\.\d+)+|[a-z0-9]+", text)


def _forms(words: dict[str, str], plurals: bool = False) -> dict[tuple[str, ...], str]:
    """With ``plurals`` the plural of each term too ("crosses")."""
    return {tuple(form.split()): value for word, value in words.items()
            for form in ([word, plural(word)] if plurals else [word])}


_COLOUR_TERMS = {c: c for c in COLORS} | {
    "crimson": "red", "scarlet": "red", "maroon": "red", "lime": "green", "olive": "green", "navy": "blue",
    "azure": "blue", "cyan": "blue", "gold": "yellow", "golden": "yellow", "violet": "purple", "lilac": "purple",
    "lavender": "purple", "magenta": "purple", "amber": "orange",
    # wrong but plausible: they are answers too (and wrong ones)
    "pink": "pink", "brown": "brown", "black": "black", "white": "white", "grey": "grey", "gray": "grey"}
_SHAPE_TERMS = {s: s for s in SHAPES} | {
    "circular": "circle", "round": "circle", "ring": "circle", "disc": "circle", "disk": "circle", "plus": "cross",
    "triangular": "triangle", "plus sign": "cross", "square shaped": "square", "rectangular": "rectangle",
    **{s: s for s in ("rectangle", "diamond", "hexagon", "pentagon", "heart", "oval")}}  # wrong but plausible
_COUNT_TERMS = {w: str(i) for i, w in enumerate(NUMBER_WORDS)} | {"no": "0", "none": "0", "single": "1"}
_RELATION_TERMS = {"left": "left", "right": "right", "above": "above", "below": "below", "higher": "above",
                   "over": "above", "on top": "above", "atop": "above", "lower": "below", "under": "below",
                   "beneath": "below", "underneath": "below"}
_EXISTENCE_TERMS = {"yes": "yes", "yeah": "yes", "yep": "yes", "yup": "yes", "indeed": "yes", "no": "no", "nope": "no",
                    "not": "no", "isnt": "no", "arent": "no", "dont": "no", "cannot": "no", "cant": "no"}

TERMS: dict[str, dict[tuple[str, ...], str]] = {  # kind -> term (a word tuple) -> canonical value
    "colour": _forms(_COLOUR_TERMS), "shape": _forms(_SHAPE_TERMS, plurals=True), "count": _forms(_COUNT_TERMS),
    "relation": _forms(_RELATION_TERMS), "existence": _forms(_EXISTENCE_TERMS)}
_LONGEST_TERM = max(len(t) for terms in TERMS.values() for t in terms)


def scan_terms(words: Sequence[str], terms: dict[tuple[str, ...], str]):
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


def answer_terms(kind: str, answer: str) -> list[str]:
    """The canonical values of every term of ``kind`` in ``answer``, in order of mention (digits too, for counts)."""
    if kind not in TERMS:
        raise ValueError(f"unknown question kind {kind!r}; expected one of {KINDS}")
    words = normalize(answer)
    hits = [(pos, value) for pos, _, value in scan_terms(words, TERMS[kind])]
    if kind == "count":
        hits += [(pos, str(int(w))) for pos, w in enumerate(words) if w.isdigit()]
    return [value for _, value in sorted(hits)]


def extract_answer(kind: str, answer: str) -> str | None:
    """The value for ``kind`` of the answer's conclusion: the one value it names, None when it names none, or
    "a|b" (the values it names, in order of mention) when it names several, which ``is_correct`` scores as wrong."""
    values = list(dict.fromkeys(answer_terms(kind, conclusion(answer))))
    return "|".join(values) if values else None


def conclusion(answer: str) -> str:
    """The verdict of an answer that gives its steps first: the text after the last ", so " (else all of it)."""
    return answer.rpartition(", so ")[2]


def is_correct(kind: str, answer: str, expected: str) -> bool:
    """True iff the answer's conclusion names ``expected`` and no other value of ``kind`` (strict; see the
    module docstring)."""
    return set(answer_terms(kind, conclusion(answer))) == {expected}


def is_correct_lenient(kind: str, answer: str, expected: str) -> bool:
    """The course's earlier rule, kept to compare old and new numbers: the FIRST value the answer names."""
    values = answer_terms(kind, answer)
    return bool(values) and values[0] == expected
