"""The LLaVA-Instruct record format, checked in one place (the teacher writes it, training reads it).

    {"id": "1000001_conversation", "image": "1000001.png",
     "conversations": [{"from": "human", "value": "<image>\\nWhat colour is the star?"},
                       {"from": "gpt", "value": "The star is blue."}, ...]}

Turns alternate human / gpt, starting with human and ending with gpt; ``<image>`` appears exactly once,
in the first human turn, before or after the text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

IMAGE_TOKEN = "<image>"
ROLES = {"human": "user", "gpt": "assistant"}


class RecordError(ValueError):
    """A record that cannot become a training example; the message names the record id."""

    def __init__(self, record_id: Any, problem: str):
        self.record_id = record_id
        self.problem = problem
        super().__init__(f"record {record_id!r}: {problem}")


def record_id(record: dict) -> Any:
    return record.get("id", "<no id>") if isinstance(record, dict) else "<not a dict>"


def validate_record(record: dict) -> None:
    """Raise ``RecordError`` (naming the record id) unless the record is a well-formed LLaVA record.

    Checks: a list of turns alternating human/gpt starting with human and ending with gpt, no
    empty turn, exactly one ``<image>`` and it is in the first human turn.
    """
    rid = record_id(record)
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        raise RecordError(rid, "has no 'conversations' list")
    turns = record["conversations"]
    if not turns:
        raise RecordError(rid, "has no turns")
    for i, turn in enumerate(turns):
        expected = "human" if i % 2 == 0 else "gpt"
        speaker = turn.get("from") if isinstance(turn, dict) else None
        if speaker not in ROLES:
            raise RecordError(rid, f"turn {i} has unknown speaker {speaker!r} (expected 'human' or 'gpt')")
        if speaker != expected:
            raise RecordError(rid, f"turns do not alternate: turn {i} is {speaker!r}, expected {expected!r}")
        value = turn.get("value")
        if not isinstance(value, str) or not value.replace(IMAGE_TOKEN, "").strip():
            raise RecordError(rid, f"turn {i} ({speaker}) is empty")
    if len(turns) % 2:
        raise RecordError(rid, "the last turn is a question without an answer (turns must end with 'gpt')")
    counts = [turn["value"].count(IMAGE_TOKEN) for turn in turns]
    if sum(counts) != 1:
        raise RecordError(rid, f"must contain {IMAGE_TOKEN} exactly once, found {sum(counts)}")
    if counts[0] != 1:
        raise RecordError(rid, f"{IMAGE_TOKEN} must be in the first human turn")


def load_records(path: str | Path) -> list[dict]:
    """Read a LLaVA-Instruct JSON file (a list of records)."""
    with open(path, encoding="utf-8") as f:
        records = json.load(f)
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records")
    return records
