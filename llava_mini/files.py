"""Reading and writing the project's JSON files, and fingerprints: each rule written once.

    write_json(path, obj)     atomic: written beside, then renamed, so a reader never sees half a file
    read_json(path)           a missing, non-UTF-8 or malformed file raises an error that names it
    fingerprint(obj)          16 hex digits of SHA-256 over canonical JSON: the one cache key scheme
    file_fingerprint(path)    the same over a file's bytes, or a folder's files
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


class FileFormatError(ValueError):
    """A file that is missing, not UTF-8 or not the JSON it should be; the message names the file."""


def write_json(path: str | Path, obj, indent: int | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=indent), encoding="utf-8")
    tmp.replace(path)
    return path


def read_json(path: str | Path, error: type[Exception] = FileFormatError):
    path = Path(path)
    if not path.exists():
        raise error(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e})") from None


def fingerprint(obj) -> str:
    """A short stable hash of any JSON-able object (dict keys sorted, so order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


READ_CHUNK_BYTES = 16 * 2 ** 20


def file_fingerprint(path: str | Path, patterns: tuple[str, ...] = ("*",)) -> str:
    """A hash of a file's bytes, or of a folder's files matching ``patterns`` (names and bytes). Files are
    read in chunks: a 7B tower's 13 GB of weights must not pass through RAM at once (Colab has 12.7 GB)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted({f for p in patterns for f in path.glob(p) if f.is_file()})
    for f in files:
        digest.update(f.name.encode() + b"\0")
        with f.open("rb") as stream:
            while chunk := stream.read(READ_CHUNK_BYTES):
                digest.update(chunk)
    return digest.hexdigest()[:16]
