"""Prompt assembly: system messages, seed examples, instruction lists, message order."""

import json

import pytest

from llava_mini.teacher import prompts
from llava_mini.world import ImageRecord, ObjectAnnotation
from llava_mini.teacher import validate_response
from llava_mini.teacher import BRIEF_INSTRUCTIONS, DETAILED_INSTRUCTIONS, SYSTEM_MESSAGES
from llava_mini.teacher import (
    RESPONSE_TYPES, build_messages, cache_key, load_seeds, record_context, response_type_of,
)


def test_instruction_lists_are_long_and_distinct():
    for lst in (BRIEF_INSTRUCTIONS, DETAILED_INSTRUCTIONS):
        assert len(lst) >= 10
        assert len(set(lst)) == len(lst)
        assert all(s.strip() == s and s for s in lst)
    assert not set(BRIEF_INSTRUCTIONS) & set(DETAILED_INSTRUCTIONS)


def test_system_messages_state_the_rules():
    assert set(SYSTEM_MESSAGES) == set(RESPONSE_TYPES)
    assert len(set(SYSTEM_MESSAGES.values())) == 3
    for text in SYSTEM_MESSAGES.values():
        assert "never quote a coordinate" in text  # the shared rule is in each
    assert "Question:" in SYSTEM_MESSAGES["conversation"] and "===" in SYSTEM_MESSAGES["conversation"]
    assert "step by step" in SYSTEM_MESSAGES["complex"]
    assert "definite" in SYSTEM_MESSAGES["conversation"]


@pytest.mark.parametrize("response_type", RESPONSE_TYPES)
def test_seeds_are_valid_examples(response_type):
    seeds = load_seeds(response_type)
    assert len(seeds) >= 2
    raw = json.loads((prompts.SEEDS_DIR / f"{response_type}.json").read_text())
    sources = " ".join(item["source"] for item in raw)
    assert "shapes world" in sources and "real photo" in sources  # both kinds of image
    for context, response in seeds:
        has_boxes = "\n\n" in context
        assert has_boxes == prompts.USES_BOXES[response_type], context
        validate_response(response, response_type)  # the reference answers pass our own checks


def test_message_assembly_order():
    context = "A red circle.\n\nred circle: [0.1, 0.1, 0.3, 0.3]"
    messages = build_messages("detail", context)
    seeds = load_seeds("detail")
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * len(seeds) + ["user"]
    assert messages[0]["content"] == SYSTEM_MESSAGES["detail"]
    for k, (c, r) in enumerate(seeds):
        assert messages[1 + 2 * k]["content"] == c and messages[2 + 2 * k]["content"] == r
    assert messages[-1]["content"] == context
    assert response_type_of(messages) == "detail"
    assert len(build_messages("detail", context, n_shots=1)) == 4
    assert len(build_messages("detail", context, seeds=[])) == 2


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="unknown response type"):
        build_messages("poem", "x")
    with pytest.raises(ValueError, match="empty"):
        build_messages("conversation", "  ")
    assert response_type_of([{"role": "user", "content": "x"}]) is None


def test_seed_file_errors(tmp_path):
    (tmp_path / "conversation.json").write_text('[{"context": "x"}]')
    with pytest.raises(prompts.SeedFormatError, match="example 0"):
        load_seeds("conversation", tmp_path)
    with pytest.raises(prompts.SeedFormatError, match="not found"):
        load_seeds("detail", tmp_path)


def test_record_context_follows_the_paper():
    rec = ImageRecord(1, "1.png", 64, 64, captions=["A red circle."],
                      objects=[ObjectAnnotation("red circle", (0, 0, 16, 16))])
    assert record_context(rec, "conversation") == "A red circle."  # captions only
    assert record_context(rec, "complex") == "A red circle.\n\nred circle: [0.000, 0.000, 0.250, 0.250]"


def test_cache_key_changes_with_the_prompt():
    a = build_messages("conversation", "A red circle.")
    b = build_messages("conversation", "A blue circle.")

    def key(messages):
        return cache_key("1.png", "conversation", "teacher", messages)
    assert key(a) == key(build_messages("conversation", "A red circle.")) and key(a) != key(b)
