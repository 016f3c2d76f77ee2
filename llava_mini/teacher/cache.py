"""The response cache: an append-only JSONL of raw teacher responses, so a rerun, or a run resumed after a
crash, asks the teacher only for what it has not answered yet."""

import json
import os
from pathlib import Path

from llava_mini.files import fingerprint


def cache_key(image: str, response_type: str, teacher_identity: str, messages: list[dict]) -> str:
    """One key per (image, type, teacher, prompt): change a prompt and the cache misses, not answers wrongly."""
    return fingerprint([image, response_type, teacher_identity, messages])


class ResponseCache:
    """One JSON line per key, flushed as it is written, so a killed run loses at most the calls in flight; a
    torn last line is cut off on reopening. Only the raw text is kept (parsing is cheap and deterministic, so
    a better parser applies to old responses too), never a secret, and never an empty response (not written;
    skipped in an old file), so the next run asks again."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.entries: dict[str, str] = {}
        self.torn_lines, self._file = 0, None
        data = self.path.read_bytes() if self.path.exists() else b""
        good = 0  # bytes up to the end of the last whole line
        for line in data.splitlines(keepends=True):
            try:
                entry = json.loads(line) if line.strip() else {"key": None, "response": ""}
                if isinstance(entry["response"], str) and entry["response"].strip():
                    self.entries[entry["key"]] = entry["response"]
            except (ValueError, KeyError, TypeError):
                self.torn_lines += 1
                break
            good += len(line)
        if self.torn_lines:  # a torn line can only be the last one written: cut it off
            os.truncate(self.path, good)
        elif data and not data.endswith(b"\n"):  # a whole last line without its newline: add it
            with self.path.open("ab") as f:
                f.write(b"\n")

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> str | None:
        return self.entries.get(key)

    def put(self, key: str, response: str, **meta) -> None:
        if key in self.entries or not response.strip():
            return  # append-only and duplicate-free; an empty reply is retried, never kept
        if self._file is None:
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(json.dumps({"key": key, **meta, "response": response}, ensure_ascii=False) + "\n")
        self._file.flush()
        self.entries[key] = response

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
