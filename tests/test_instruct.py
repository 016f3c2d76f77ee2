"""Parsing, validation, records, the naive baseline, the cache and the runner."""

import json
import random

import pytest

from llava_mini.world import read_split
from llava_mini.teacher import (
    EMPTY_REPLY, IMAGE_TOKEN, RecordError, ResponseCache, ResponseRejected, caption_records, generate_instruct_data,
    load_records, make_record, naive_text, parse_qa_pairs, record_type, validate_record, validate_response,
)
from llava_mini.course import course_instruct_data
from llava_mini.teacher import BRIEF_INSTRUCTIONS, DETAILED_INSTRUCTIONS
from llava_mini.teacher import response_type_of
from llava_mini.teacher import SymbolicTeacher, Teacher, TeacherBudgetExhausted, TeacherError, format_qa
from llava_mini.world import generate_world

GOOD = "Question:\nWhat colour is the star?\n===\nAnswer:\nThe star is blue.\n===\nQuestion:\nHow many shapes?\n===\nAnswer:\nThree.\n==="


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    generate_world(root, {"train": 12}, seed=3)
    return root


@pytest.fixture(scope="module")
def records(world):
    return read_split(world, "train").records


# ----------------------------------------------------------------------------- parsing


def test_parse_prompted_format():
    assert parse_qa_pairs(GOOD) == [("What colour is the star?", "The star is blue."), ("How many shapes?", "Three.")]


def test_parse_tolerates_llm_drift():
    text = "Sure! Here you go.\n\n**Question 1:** Is it red?\n**Answer 1:** Yes, it is red.\n\nQ: How many?\nA: Two\nof them."
    assert parse_qa_pairs(text) == [("Is it red?", "Yes, it is red."), ("How many?", "Two\nof them.")]


def test_parse_drops_unpaired_blocks():
    assert parse_qa_pairs("Question:\nA?\n===\nQuestion:\nB?\n===\nAnswer:\nb.\n===\nAnswer:\nstray") == [("B?", "b.")]
    assert parse_qa_pairs("Question:\n\n===\nAnswer:\nx\n===") == []
    assert parse_qa_pairs("just some prose about a circle") == []


def test_format_qa_round_trips():
    pairs = [("Is there a red star?", "No, there is no red star in the image."), ("How many?", "There are two shapes.")]
    assert parse_qa_pairs(format_qa(pairs)) == pairs


@pytest.mark.parametrize("text, response_type, reason", [
    ("", "conversation", "empty"),
    ("   \n ", "detail", "empty"),
    (None, "complex", "empty"),
    ("The picture is nice and has many shapes in it.", "conversation", "no question/answer pairs"),
    ("Question:\nWhat is there?\n===\nAnswer:\nThe caption says a red circle.\n===", "conversation", "mentions captions"),
    ("Question:\nWhere?\n===\nAnswer:\nIts bounding box is in the corner.\n===", "conversation", "mentions boxes"),
    ("A red circle sits at [0.125, 0.250, 0.469, 0.594] in the picture today.", "detail", "mentions coordinates"),
    ("A red circle whose left edge is at 0.125 of the width, near the top left of it.", "detail", "mentions coordinates"),
    ("Based on the given boxes, a red circle is at the top left of this picture.", "detail", "mentions boxes"),
    ("According to the provided description, there is a red circle in the scene here.", "detail", "mentions annotations"),
    ("A red circle.", "detail", "too short"),
    (GOOD, "detail", "not prose"),
])
def test_bad_responses_are_rejected(text, response_type, reason):
    with pytest.raises(ResponseRejected) as e:
        validate_response(text, response_type)
    assert e.value.reason == reason


def test_good_responses_pass():
    assert len(validate_response(GOOD, "conversation")) == 2
    assert len(validate_response(GOOD, "complex")) == 1  # one question and its reasoning
    desc = "The picture shows a small red circle in the top left corner and a large blue square below it."
    assert validate_response(desc, "detail") == [(None, desc)]


# ----------------------------------------------------------------------------- records


def test_records_put_the_image_once_in_the_first_turn():
    positions = set()
    for k in range(40):
        rec = make_record(f"x{k}", "1.png", [("Q1?", "A1."), ("Q2?", "A2.")], random.Random(k))
        validate_record(rec)
        first = rec["conversations"][0]["value"]
        positions.add(first.startswith(IMAGE_TOKEN))
        assert first.replace(IMAGE_TOKEN, "").strip() == "Q1?"
        assert [t["from"] for t in rec["conversations"]] == ["human", "gpt"] * 2
    assert positions == {True, False}  # before and after the text, at random


def test_validate_record_catches_broken_records():
    good = make_record("a", "1.png", [("Q?", "A.")], random.Random(0))
    for broken in (
        {"id": "a", "image": "1.png"},
        {**good, "conversations": good["conversations"][:1]},
        {**good, "conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]},
        {**good, "conversations": [{"from": "gpt", "value": "<image>\nQ?"}, {"from": "human", "value": "A."}]},
    ):
        with pytest.raises(RecordError, match="record 'a'"):
            validate_record(broken)


def test_naive_baseline(records):
    recs = caption_records(records, seed=0)
    assert len(recs) == sum(len(r.captions) for r in records)
    first = recs[0]
    validate_record(first)
    assert len(first["conversations"]) == 2
    q = first["conversations"][0]["value"].replace(IMAGE_TOKEN, "").strip()
    assert q in BRIEF_INSTRUCTIONS
    assert first["conversations"][1]["value"] == records[0].captions[0]
    assert first["image"] == records[0].file_name
    text = naive_text(first)
    assert text == f"Human: {q} {IMAGE_TOKEN} <STOP> Assistant: {records[0].captions[0]} <STOP>"
    assert len(caption_records(records, captions="first")) == len(records)
    assert caption_records(records, seed=0) == recs  # deterministic
    assert record_type(first) == "caption"


# ----------------------------------------------------------------------------- cache


def test_cache_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "c.jsonl"
    cache = ResponseCache(path)
    cache.put("k1", "one")
    cache.put("k2", "two")
    cache.put("k1", "again")  # duplicate keys are never appended
    cache.close()
    with path.open("a") as f:
        f.write('{"key": "k3", "resp')  # a run killed mid-write
    cache = ResponseCache(path)
    assert cache.torn_lines == 1 and len(cache) == 2 and cache.get("k1") == "one"
    cache.put("k3", "three")
    cache.close()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["k1", "k2", "k3"]


def test_cache_never_keeps_an_empty_reply(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"key": "old", "response": "  "}) + "\n")  # written by an older version
    cache = ResponseCache(path)
    assert "old" not in cache and len(cache) == 0
    cache.put("new", "")
    cache.put("old", "an answer at last")
    cache.close()
    assert ResponseCache(path).entries == {"old": "an answer at last"}


# ----------------------------------------------------------------------------- runner


class FlakyTeacher(Teacher):
    """Symbolic answers, except: every 4th call fails, every 5th returns junk."""

    identity = "flaky"

    def __init__(self):
        self.inner = SymbolicTeacher(0)
        self.calls = 0

    def complete(self, messages):
        self.calls += 1
        if self.calls % 4 == 0:
            raise TeacherError("simulated failure")
        if self.calls % 5 == 0:
            return "I would rather not." if response_type_of(messages) != "detail" else ""
        return self.inner.complete(messages)


def test_runner_counts_failures_and_resumes(tmp_path, records):
    cache = tmp_path / "cache.jsonl"
    teacher = FlakyTeacher()
    result = generate_instruct_data(records, teacher, cache_file=cache, progress=False)
    s = result.summary
    units = len(records) * 3
    assert s["teacher_failures"]["failed after retries"] == units // 4
    assert s["teacher_failures"][EMPTY_REPLY] > 0 and s["rejected"]["no question/answer pairs"] > 0
    failed = sum(s["teacher_failures"].values())  # failures and empty replies: not cached
    assert s["total_records"] + sum(s["rejected"].values()) + failed == units == len(ResponseCache(cache)) + failed
    assert s["missing"] == failed and s["teacher_calls"] == units - units // 4
    # Rerun: only the failed and the empty calls go to the teacher again; nothing is asked twice.
    teacher2 = FlakyTeacher()
    teacher2.calls = 1  # shift the failure pattern
    again = generate_instruct_data(records, teacher2, cache_file=cache, progress=False)
    assert again.summary["cache_hits"] == units - failed
    assert teacher2.calls - 1 == failed
    ids = [r["id"] for r in again.records]
    assert len(ids) == len(set(ids))
    assert len(again.records) >= len(result.records)


def test_an_empty_reply_is_asked_again_next_run(tmp_path, records):
    class EmptyOnce(SymbolicTeacher):
        def __init__(self, empty):
            super().__init__(0)
            self.empty, self.calls = empty, 0

        def complete(self, messages):
            self.calls += 1
            return self.empty if self.calls == 1 else super().complete(messages)

    cache, units = tmp_path / "c.jsonl", len(records) * 3
    reference = generate_instruct_data(records, progress=False).records
    first = generate_instruct_data(records, EmptyOnce(" \n"), cache_file=cache, progress=False)
    assert first.summary["teacher_failures"] == {EMPTY_REPLY: 1} and first.summary["missing"] == 1
    assert first.summary["rejected"] == {} and len(first.records) == units - 1 == len(ResponseCache(cache))
    teacher = EmptyOnce("")
    teacher.calls = 1  # answers well from now on
    second = generate_instruct_data(records, teacher, cache_file=cache, progress=False)
    assert teacher.calls == 2 and second.summary["cache_hits"] == units - 1  # only the gap is asked
    assert second.summary["missing"] == 0 and second.summary["teacher_failures"] == {}
    assert second.records == reference  # the gap is filled


def test_runner_stops_on_budget(tmp_path, records):
    class Budgeted(SymbolicTeacher):
        def __init__(self):
            super().__init__(0)
            self.left = 5

        def complete(self, messages):
            if self.left == 0:
                raise TeacherBudgetExhausted("5 requests made")
            self.left -= 1
            return super().complete(messages)

    result = generate_instruct_data(records, Budgeted(), cache_file=tmp_path / "c.jsonl", progress=False)
    assert result.summary["stopped_early"].startswith("request budget spent")
    assert result.summary["teacher_calls"] == 5 and result.summary["missing"] == len(records) * 3 - 5
    resumed = generate_instruct_data(records, SymbolicTeacher(0), cache_file=tmp_path / "c.jsonl", progress=False)
    assert resumed.summary["cache_hits"] == 5 and resumed.summary["missing"] == 0


def test_runner_output_is_llava_instruct(tmp_path, records):
    result = generate_instruct_data(
        records, out_file=tmp_path / "out.json", stage1_file=tmp_path / "s1.json",
        summary_file=tmp_path / "summary.json", progress=False, workers=2)
    loaded = load_records(tmp_path / "out.json")
    assert loaded == result.records
    assert [r["id"] for r in loaded] == [f"{r.file_name[:-4]}_{t}" for r in records for t in ("conversation", "detail", "complex")]
    assert {r["image"] for r in loaded} == {r.file_name for r in records}
    detail = [r for r in loaded if r["id"].endswith("_detail")]
    assert all(d["conversations"][0]["value"].replace(IMAGE_TOKEN, "").strip() in DETAILED_INSTRUCTIONS for d in detail)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["records"] == {"complex": len(records), "conversation": len(records), "detail": len(records)}
    assert summary["stage1_records"] == len(load_records(tmp_path / "s1.json"))
    assert result.examples["conversation"][0]["messages"][-1]["role"] == "user"


def test_course_data_is_reused(tmp_path, world):
    paths = course_instruct_data(seed=0, world_root=world, out_dir=tmp_path, progress=False)
    assert paths["images"] == world / "images" / "train"
    first = paths["instruct"].read_text()
    mtime = paths["instruct"].stat().st_mtime_ns
    again = course_instruct_data(seed=0, world_root=world, out_dir=tmp_path, progress=False)
    assert again == paths and paths["instruct"].stat().st_mtime_ns == mtime  # reused, not rewritten
    forced = course_instruct_data(seed=0, world_root=world, out_dir=tmp_path, force=True, progress=False)
    assert forced["instruct"].read_text() == first  # deterministic
    summary = json.loads(paths["summary"].read_text())
    assert summary["cache_hits"] == summary["total_records"] + sum(summary["rejected"].values())
    for rec in load_records(paths["instruct"]):
        assert (paths["images"] / rec["image"]).exists()


def test_an_image_without_captions_is_counted_not_fatal(records):
    from llava_mini.world import ImageRecord

    blank = ImageRecord(999, "blank.png", 64, 64)
    result = generate_instruct_data([blank, records[0]], progress=False)
    assert result.summary["rejected"]["no context"] == 3
    assert result.summary["missing"] == 0 and result.summary["total_records"] == 3
