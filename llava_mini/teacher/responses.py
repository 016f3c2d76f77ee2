"""From teacher text to question/answer pairs: the block format the prompts ask for (`format_qa` writes it,
`parse_qa_pairs` reads it, tolerating the drift of real LLMs), and the checks that reject a response which
cannot become a training record."""

import random
import re

from llava_mini.teacher.prompts import DETAILED_INSTRUCTIONS, check_type
from llava_mini.teacher.records import make_record


class ResponseRejected(ValueError):
    """A teacher response that cannot become a training record; `reason` is a short label for counting."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# A marker at the start of a line: "Question:", "**Answer:**", "Q1:", "A:" ...
_MARKER_RE = re.compile(r"^\s*[*#_]*\s*(question|answer|q|a)\s*\d*\s*[*_]*\s*[:：]\s*[*_]*\s*", re.IGNORECASE)
_SEPARATOR_RE = re.compile(r"^\s*={3,}\s*$")

# What gives the game away: the teacher talking about its sources instead of the image.
_LEAKS = {
    "mentions captions": re.compile(r"\bcaption", re.IGNORECASE),
    "mentions boxes": re.compile(r"\bbounding\b|\b(?:the|given|provided|listed)\s+box(?:es)?\b", re.IGNORECASE),
    "mentions coordinates": re.compile(r"\bcoordinat|\[\s*-?\d*\.?\d+\s*,\s*-?\d*\.?\d+|\b[01]\.\d{3}\b",
                                       re.IGNORECASE),
    "mentions annotations": re.compile(
        r"\bannotat|\b(?:given|provided)\s+(?:description|information|context|sentences?)\b", re.IGNORECASE),
}


def format_qa(pairs: list[tuple[str, str]]) -> str:
    """Question/answer pairs in the block format the prompts ask for."""
    return "\n".join(f"Question:\n{q}\n===\nAnswer:\n{a}\n===" for q, a in pairs)


def parse_qa_pairs(text: str) -> list[tuple[str, str]]:
    """Question/answer blocks -> [(question, answer), ...]. Bold markers, `Q:`/`A:`, numbered questions and
    missing separators are accepted; a question without an answer, or an answer without a question, is dropped."""
    segments: list[list] = []  # [label, lines]
    for line in text.replace("\r\n", "\n").split("\n"):
        if m := _MARKER_RE.match(line):
            segments.append(["question" if m[1].lower() in ("question", "q") else "answer", [line[m.end():]]])
        elif segments and not _SEPARATOR_RE.match(line):
            segments[-1][1].append(line)
    blocks = [(label, "\n".join(lines).strip()) for label, lines in segments]
    return [(q, a) for (q_label, q), (a_label, a) in zip(blocks, blocks[1:])
            if q_label == "question" and a_label == "answer" and q and a]


def validate_response(text: str | None, response_type: str) -> list[tuple[str, str | None]]:
    """Parse and check one teacher response: [(question, answer), ...], for the detail type [(None, description)]
    (the runner picks its question); or raise ResponseRejected naming what is wrong."""
    check_type(response_type)
    if text is None or not text.strip():
        raise ResponseRejected("empty")
    text = text.strip()
    for reason, pattern in _LEAKS.items():
        if m := pattern.search(text):
            raise ResponseRejected(reason, repr(m.group(0)))
    if response_type == "detail":
        if _MARKER_RE.search(text.split("\n", 1)[0]) or "===" in text:
            raise ResponseRejected("not prose", "a description came back as question/answer blocks")
        if len(text.split()) < 8:
            raise ResponseRejected("too short", f"{len(text.split())} words")
        return [(None, text)]
    pairs = parse_qa_pairs(text)
    if not pairs:
        raise ResponseRejected("no question/answer pairs")
    # complex: one question with its reasoning; anything after it is the teacher rambling on
    return pairs[:1] if response_type == "complex" else pairs


def response_to_record(text: str, response_type: str, record_id: str, image: str, rng: random.Random) -> dict:
    """Validate a teacher response and turn it into a record (raises ResponseRejected)."""
    pairs = validate_response(text, response_type)
    if response_type == "detail":
        pairs = [(rng.choice(DETAILED_INSTRUCTIONS), pairs[0][1])]
    return make_record(record_id, image, pairs, rng)
