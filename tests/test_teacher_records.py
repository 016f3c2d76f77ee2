"""The record format: one validation (what the model subpackage checks too) and one loader whose errors
name the file, the record's index and its id."""

import json
import random

import pytest

from llava_mini.files import FileFormatError
from llava_mini.teacher import RecordError, load_records, make_record, validate_record


def good(rid="r1"):
    return make_record(rid, "1.png", [("Q1?", "A1."), ("Q2?", "A2.")], random.Random(0))


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["conversations"][1].update(value=7), "turn 1 value is not a string \\(got int\\)"),
    (lambda r: r["conversations"][2].update(value=None), "turn 2 value is not a string \\(got NoneType\\)"),
    (lambda r: r["conversations"][3].update(value=" "), "turn 3 \\(gpt\\) is empty"),
    (lambda r: r["conversations"][2].pop("from"), "turn 2 has unknown speaker None"),
    (lambda r: r.update(image=""), "'image' is not a file name"),
    (lambda r: r.pop("conversations"), "has no 'conversations' list"),
])
def test_validate_record_says_what_is_wrong(mutate, message):
    rec = good()
    mutate(rec)
    with pytest.raises(RecordError, match=f"^record 'r1': {message}"):
        validate_record(rec)
    with pytest.raises(RecordError, match="not a JSON object \\(got list\\)"):
        validate_record([])


def test_load_records_names_file_index_and_id(tmp_path):
    path = tmp_path / "data.json"
    records = [good("a"), good("b"), good("c")]
    path.write_text(json.dumps(records))
    assert load_records(path) == records
    records[2]["conversations"][1]["value"] = 3
    path.write_text(json.dumps(records))
    with pytest.raises(RecordError) as e:
        load_records(path)
    assert str(e.value) == f"{path}: record 2 (id 'c'): turn 1 value is not a string (got int)"
    assert (e.value.record_id, e.value.index) == ("c", 2)
    assert len(load_records(path, validate=False)) == 3  # for a caller that skips bad records itself


@pytest.mark.parametrize("content, message", [
    (None, "file not found"),
    (b"\xff\xfe[]", "not UTF-8"),
    (b'[{"id": ', "not valid JSON"),
    (b'{"id": "a"}', "expected a JSON list of records, got dict"),
])
def test_load_records_names_a_bad_file(tmp_path, content, message):
    path = tmp_path / "data.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(FileFormatError, match=message) as e:
        load_records(path)
    assert str(e.value).startswith(str(path))
