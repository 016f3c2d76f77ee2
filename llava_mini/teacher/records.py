"""The LLaVA-Instruct record format, written, checked and loaded in one place (teacher writes, training reads).

    {"id": "1000001_conversation", "image": "1000001.png",
     "conversations": [{"from": "human", "value": "<image>\\nWhat colour is the star?"},
                       {"from": "gpt", "value": "The star is blue."}, ...]}

`image` is relative to the split's image folder. Turns alternate human / gpt, starting with human and ending
with gpt; ``<image>`` appears exactly once, in the first human turn, before or after the text (at random, as
in LLaVA's data). Ids are '<image stem>_<type>', or '<image stem>_caption<k>' for stage-1 records (the naive
baseline: a brief-description instruction with ``<image>``, answered by one caption).
"""

import random
from pathlib import Path
from typing import Any, Iterable

from llava_mini.files import FileFormatError, read_json
from llava_mini.teacher.prompts import BRIEF_INSTRUCTIONS

IMAGE_TOKEN = "<image>"
ROLES = {"human": "user", "gpt": "assistant"}
STOP = "<STOP>"


class RecordError(ValueError):
    """A record that cannot become a training example; the message names it (and the file and index, if read).
    `reason`: the rule it breaks, without this record's details (the key under which skips are counted)."""

    def __init__(self, record_id: Any, problem: str, path: str | Path | None = None, index: int | None = None,
                 reason: str | None = None):
        self.record_id, self.problem, self.path, self.index = record_id, problem, path, index
        self.reason = reason or problem
        where = f"record {record_id!r}" if index is None else f"record {index} (id {record_id!r})"
        super().__init__(f"{where}: {problem}" if path is None else f"{path}: {where}: {problem}")


def record_id(record: dict) -> Any:
    return record.get("id", "<no id>") if isinstance(record, dict) else "<not a dict>"


def validate_record(record: dict) -> None:
    """Raise ``RecordError`` (naming the record) unless it has the format above; an `image`, if any, is a file name."""
    rid = record_id(record)
    if not isinstance(record, dict):
        raise RecordError(rid, f"is not a JSON object (got {type(record).__name__})", reason="not a JSON object")
    if not isinstance(turns := record.get("conversations"), list) or not turns:
        raise RecordError(rid, f"has no 'conversations' list of turns (got {turns!r:.40})", reason="no turns")
    if "image" in record and not (isinstance(record["image"], str) and record["image"].strip()):
        raise RecordError(rid, f"'image' is not a file name (got {record['image']!r})", reason="bad image name")
    for i, turn in enumerate(turns):
        expected = "human" if i % 2 == 0 else "gpt"
        speaker = turn.get("from") if isinstance(turn, dict) else None
        if speaker not in ROLES:
            raise RecordError(rid, f"turn {i} has unknown speaker {speaker!r} (expected 'human' or 'gpt')",
                              reason="unknown speaker")
        if speaker != expected:
            raise RecordError(rid, f"turns do not alternate: turn {i} is {speaker!r}, expected {expected!r}",
                              reason="turns do not alternate")
        if not isinstance(value := turn.get("value"), str):
            raise RecordError(rid, f"turn {i} value is not a string (got {type(value).__name__})",
                              reason="turn is not a string")
        if not value.replace(IMAGE_TOKEN, "").strip():
            raise RecordError(rid, f"turn {i} ({speaker}) is empty", reason="empty turn")
    if len(turns) % 2:
        raise RecordError(rid, "the last turn is a question without an answer (turns must end with 'gpt')",
                          reason="question without an answer")
    counts = [turn["value"].count(IMAGE_TOKEN) for turn in turns]
    if sum(counts) != 1:
        raise RecordError(rid, f"must contain {IMAGE_TOKEN} exactly once, found {sum(counts)}",
                          reason=f"{IMAGE_TOKEN} not exactly once")
    if counts[0] != 1:
        raise RecordError(rid, f"{IMAGE_TOKEN} must be in the first human turn", reason=f"{IMAGE_TOKEN} not in turn 0")


def validate_training_record(record: dict, image_folder: str | Path | None = None) -> None:
    """``validate_record``, and a training record needs its picture: an `image` inside ``image_folder``
    (a relative path) that is a file there (checked when the folder is given)."""
    validate_record(record)
    rid, image = record_id(record), record.get("image")
    if not image:
        raise RecordError(rid, "has no 'image' file name", reason="no image")
    if Path(image).is_absolute() or ".." in Path(image).parts:
        raise RecordError(rid, f"image {image!r} is not a path inside the image folder", reason="bad image name")
    if image_folder is not None and not (Path(image_folder) / image).is_file():
        raise RecordError(rid, f"image {image!r} is not in {image_folder}", reason="image not found")


def load_records(path: str | Path, validate: bool = True) -> list[dict]:
    """A LLaVA-Instruct JSON file (a list of records), every record checked. A missing, non-UTF-8, non-JSON
    or non-list file raises ``FileFormatError``, a bad record ``RecordError``: each names the file (and the
    record's index and id). `validate=False` leaves the checks to a caller that skips bad records itself."""
    if not isinstance(records := read_json(path), list):
        raise FileFormatError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    for index, record in enumerate(records if validate else ()):
        try:
            validate_record(record)
        except RecordError as e:
            raise RecordError(e.record_id, e.problem, path, index, e.reason) from None
    return records


def record_type(record: dict) -> str:
    """The response type of a record written here, from its id ('caption' for stage-1 records)."""
    return record["id"].rsplit("_", 1)[-1].rstrip("0123456789")  # "_caption3" -> caption, "_drill0" -> drill


def make_record(record_id: str, image: str, pairs: list[tuple[str, str]], rng: random.Random) -> dict:
    """A LLaVA-Instruct record from question/answer pairs; `<image>` goes before or after the first question."""
    if not pairs:
        raise ValueError(f"record {record_id}: no question/answer pairs")
    turns = [turn for q, a in pairs for turn in ({"from": "human", "value": q}, {"from": "gpt", "value": a})]
    q = turns[0]["value"]
    turns[0]["value"] = f"{IMAGE_TOKEN}\n{q}" if rng.random() < 0.5 else f"{q}\n{IMAGE_TOKEN}"
    return {"id": record_id, "image": image, "conversations": turns}


def caption_records(records: Iterable, seed: int = 0, captions: str = "all") -> list[dict]:
    """The naive expansion the paper starts from, and exactly the stage-1 (feature alignment) data: each
    caption of each world ImageRecord becomes one single-turn record, `Human: X_q X_v <STOP> Assistant: X_c
    <STOP>`, X_q a brief-description instruction. `captions`: "all", "first" or "random" (one per image)."""
    if captions not in ("all", "first", "random"):
        raise ValueError(f"captions must be 'all', 'first' or 'random', not {captions!r}")
    out = []
    for rec in filter(lambda rec: rec.captions, records):
        stem = Path(rec.file_name).stem
        rng = random.Random(f"{seed}:{stem}:caption")
        chosen = list(enumerate(rec.captions))
        chosen = chosen[:1] if captions == "first" else [rng.choice(chosen)] if captions == "random" else chosen
        for k, text in chosen:
            out.append(make_record(f"{stem}_caption{k}", rec.file_name, [(rng.choice(BRIEF_INSTRUCTIONS), text)], rng))
    return out


def naive_text(record: dict) -> str:
    """A record in the paper's plain form: `Human: X_q X_v <STOP> Assistant: X_c <STOP>` per turn pair."""
    lines = []
    for human, gpt in zip(record["conversations"][::2], record["conversations"][1::2]):
        q = human["value"]
        if IMAGE_TOKEN in q:  # X_q then X_v: the instruction, then the image
            q = q.replace(IMAGE_TOKEN, "").strip() + " " + IMAGE_TOKEN
        lines.append(f"Human: {q} {STOP} Assistant: {gpt['value']} {STOP}")
    return "\n".join(lines)
