"""LLaVA-Instruct records as Hugging Face `datasets`, both ways.

    load_instruct(paths, image_folder)  the released JSON (LLaVA-Instruct-158K, its three parts, the stage-1
                                        captions) or llava_mini's own, as an Arrow Dataset (memory-mapped) or,
                                        streaming=True, an IterableDataset; bad records skipped and counted
    image_dataset(records, folder)      llava_mini's records with each picture embedded (an `Image` column),
                                        for save_to_disk, to_parquet or push_to_hub
    unpack_image_dataset(ds, folder)    the way back: the pictures written to a folder, the records returned

Every record passes ``validate_training_record``: ``validate_record`` (what llava_mini's own records pass)
and a picture that is there. Columns are
typed (RECORD_FEATURES); a record whose fields have other types is skipped, never coerced (an `id` excepted:
it becomes a string, as the released files' ids are). Not datasets.load_dataset("json"): on a file with
mixed types it infers a Json column and hands back altered values (the id "1" as 1) before a check sees them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from datasets import Dataset, Features, Image, IterableDataset, List, Value

from llava_mini.files import FileFormatError, file_fingerprint, fingerprint, read_json
from llava_mini.teacher.records import RecordError, load_records, validate_training_record

RECORD_FEATURES = Features({
    "id": Value("string"),
    "image": Value("string"),  # the picture's file name, relative to the image folder
    "conversations": List({"from": Value("string"), "value": Value("string")}),
})
# The picture rides beside the file name, so a row minus "picture" is exactly a LLaVA-Instruct record.
IMAGE_FEATURES = Features({**RECORD_FEATURES, "picture": Image()})
MAX_EXAMPLES = 20  # skip messages kept for a look


@dataclass
class CheckedRecords:
    """The records that passed, and what was left out: `skipped` counts by reason (RecordError.reason: the
    rule broken), `skipped_examples` holds the first messages (file, index, id, problem). With streaming the
    counts fill as the stream is read and are complete after one full pass (each pass counts afresh)."""
    dataset: Dataset | IterableDataset
    skipped: Counter = field(default_factory=Counter)
    skipped_examples: list[str] = field(default_factory=list)


def as_row(record: dict, index: int) -> dict:
    """A valid record as a RECORD_FEATURES row: its three fields only, the id a string (the index if it has none)."""
    return {"id": str(record.get("id", index)), "image": record["image"],
            "conversations": [{"from": t["from"], "value": t["value"]} for t in record["conversations"]]}


def checked_rows(paths: tuple[Path, ...], image_folder: Path | None, skipped: Counter, examples: list[str],
                 skipped_at: list | None = None) -> Iterator[dict]:
    """Each valid record of the files, as a RECORD_FEATURES row; the others counted (and, given `skipped_at`,
    listed as (file, index)). A file that is missing or not JSON raises FileFormatError naming it."""
    skipped.clear(), examples.clear()
    for path in paths:
        records = read_json(path)
        if not isinstance(records, list):
            raise FileFormatError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
        for index, record in enumerate(records):
            try:
                validate_training_record(record, image_folder)
            except RecordError as e:
                skipped[e.reason] += 1
                if len(examples) < MAX_EXAMPLES:
                    examples.append(str(RecordError(e.record_id, e.problem, path, index)))
                if skipped_at is not None:
                    skipped_at.append((path.name, index))
                continue
            yield as_row(record, index)


def load_instruct(paths: str | Path | Iterable[str | Path], image_folder: str | Path | None = None,
                  streaming: bool = False, cache_dir: str | Path | None = None) -> CheckedRecords:
    """LLaVA-Instruct JSON files (one or several, e.g. the three parts of the 158K mix) as one dataset of
    RECORD_FEATURES rows, in file order. Given `image_folder`, a record whose picture is not there is skipped
    ("image not found"): train on what you downloaded. Not streaming, the rows are written once to an Arrow
    file under `cache_dir` (datasets' cache by default) and memory-mapped; the same files with the same
    records skipped reuse it. Streaming writes nothing: rows are checked as they are read (each JSON list is
    still parsed whole: a list cannot be read piecemeal)."""
    paths = (Path(paths),) if isinstance(paths, (str, Path)) else tuple(Path(p) for p in paths)
    folder = Path(image_folder) if image_folder is not None else None
    result = CheckedRecords(dataset=None)
    if streaming:  # paths as a tuple: datasets shards list arguments, and the counts must see every file
        result.dataset = IterableDataset.from_generator(checked_rows, features=RECORD_FEATURES, gen_kwargs=dict(
            paths=paths, image_folder=folder, skipped=result.skipped, examples=result.skipped_examples))
        return result
    skipped_at: list = []
    rows = list(checked_rows(paths, folder, result.skipped, result.skipped_examples, skipped_at))
    # The Arrow file is named by what decides its rows: the files' bytes and which records were left out.
    key = fingerprint({"files": [file_fingerprint(p) for p in paths], "skipped": skipped_at, "format": 1})
    result.dataset = Dataset.from_generator(lambda: iter(rows), features=RECORD_FEATURES, fingerprint=key,
                                            cache_dir=str(cache_dir) if cache_dir else None)
    return result


def image_dataset(records: list[dict] | str | Path, image_folder: str | Path,
                  cache_dir: str | Path | None = None) -> Dataset:
    """The records (a list, or a JSON file) with their pictures embedded as bytes: IMAGE_FEATURES rows. Every
    record must pass (RecordError names the first that does not); `.save_to_disk(folder)`, `.to_parquet(file)`
    or `.push_to_hub(name)` then share them whole. Loaded back with datasets.load_from_disk or
    Dataset.from_parquet, the `picture` column decodes to PIL images."""
    if isinstance(records, (str, Path)):
        records = load_records(records)
    rows = []
    for index, record in enumerate(records):
        try:
            validate_training_record(record, image_folder)
        except RecordError as e:
            raise RecordError(e.record_id, e.problem, None, index, e.reason) from None
        rows.append(as_row(record, index))
    files = sorted({row["image"] for row in rows})
    key = fingerprint({"rows": rows, "images": {f: file_fingerprint(Path(image_folder) / f) for f in files}})

    def with_pictures():  # one picture in memory at a time; datasets writes the rows out in batches
        for row in rows:
            yield {**row, "picture": {"bytes": (Path(image_folder) / row["image"]).read_bytes(), "path": row["image"]}}
    return Dataset.from_generator(with_pictures, features=IMAGE_FEATURES, fingerprint=key,
                                  cache_dir=str(cache_dir) if cache_dir else None)


def unpack_image_dataset(dataset: Dataset | IterableDataset, image_folder: str | Path) -> list[dict]:
    """An IMAGE_FEATURES dataset (say, one shared on the hub) back to what llava_mini trains on: each
    picture's bytes written to `image_folder`/<its image name> (created as needed), the records returned."""
    folder, records = Path(image_folder), []
    for row in dataset.cast_column("picture", Image(decode=False)):
        validate_training_record(row)  # also keeps a written file inside the folder
        target = folder / row["image"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(row["picture"]["bytes"])
        records.append({k: row[k] for k in RECORD_FEATURES})
    return records
