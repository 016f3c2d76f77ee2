"""Tests for llava_mini.model conversation, images and data: chat templates, label masks, image tokens,
truncation, the dataset and the collator."""

import json

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from llava_mini.model import (
    IGNORE_INDEX, LlavaCollator, LlavaInstructDataset, RecordTooLong, TokenizationMismatch, add_image_token,
    build_prompt, encode_conversation, image_to_pixel_values, image_token_id, left_pad,
)
from llava_mini.teacher import RecordError
from stand_ins import VICUNA, bpe_tokenizer, tiny_processor

N_IMAGE = 16  # image tokens per image in these tests

# The tiny track's Vicuna-like template and a ChatML (Qwen-like) template with a default system prompt.
CHATML = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# A template whose generation prompt ends in a space: byte-level BPE glues that space to the answer's
# first word in the full conversation, so the prefix ids differ -> must be detected, not mis-masked.
DRIFTING = VICUNA.replace("{% if add_generation_prompt %}ASSISTANT:", "{% if add_generation_prompt %}ASSISTANT: ")

CORPUS = [
    "USER: What colour is the circle? ASSISTANT: The circle is red.",
    "How many shapes are there in the image? There are three shapes: a square, a circle and a triangle.",
    "Describe the image in detail. A small blue square sits left of a large green triangle.",
    "<|im_start|>user\nIs there a star?<|im_end|>\n<|im_start|>assistant\nNo, there is no star.<|im_end|>",
    "You are a helpful assistant. Look at the picture and answer briefly.",
] * 4


def make_tokenizer(template: str, chatml: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer like the tiny track's, trained in milliseconds on a toy corpus."""
    specials = ["<s>", "</s>", "<pad>", "<image>"] + (["<|im_start|>", "<|im_end|>"] if chatml else [])
    return bpe_tokenizer(CORPUS, specials, vocab_size=400, chat_template=template, tokens=dict(
        bos_token="<s>", eos_token="<|im_end|>" if chatml else "</s>", pad_token="<pad>",
        extra_special_tokens=specials[3:]))


@pytest.fixture(scope="module")
def vicuna():
    return make_tokenizer(VICUNA)


@pytest.fixture(scope="module")
def chatml():
    return make_tokenizer(CHATML, chatml=True)


@pytest.fixture(scope="module")
def processor():
    return tiny_processor(32)


def record(rid="r1", image_first=True, n_pairs=3):
    """A multi-turn LLaVA record with <image> before (or after) the first question."""
    qa = [
        ("What colour is the circle?", "The circle is red."),
        ("How many shapes are there?", "There are three shapes."),
        ("Is there a star?", "No, there is no star."),
        ("Describe the image in detail.", "A small blue square sits left of a large green triangle."),
    ][:n_pairs]
    turns = []
    for i, (q, a) in enumerate(qa):
        if i == 0:
            q = f"<image>\n{q}" if image_first else f"{q}\n<image>"
        turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return {"id": rid, "image": f"{rid}.png", "conversations": turns}


def answer_spans(labels):
    """Contiguous runs of labelled positions -> list of (start, end)."""
    spans, start = [], None
    for i, label in enumerate(list(labels) + [IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = i
        elif label == IGNORE_INDEX and start is not None:
            spans.append((start, i))
            start = None
    return spans


@pytest.mark.parametrize("template", ["vicuna", "chatml"])
@pytest.mark.parametrize("image_first", [True, False])
def test_labels_decode_to_exactly_the_answers(template, image_first, request):
    tokenizer = request.getfixturevalue(template)
    rec = record(image_first=image_first, n_pairs=3)
    enc = encode_conversation(rec, tokenizer, N_IMAGE, system_prompt="Answer about the image.")
    ids, labels = enc.input_ids, enc.labels
    assert len(ids) == len(labels)
    image_id = image_token_id(tokenizer)
    image_positions = [i for i, t in enumerate(ids) if t == image_id]
    assert len(image_positions) == N_IMAGE
    assert image_positions == list(range(image_positions[0], image_positions[0] + N_IMAGE))  # one block
    assert all(labels[i] == IGNORE_INDEX for i in image_positions)

    answers = [t["value"] for t in rec["conversations"][1::2]]
    spans = answer_spans(labels)
    assert len(spans) == len(answers) == enc.num_answers
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>" if template == "chatml" else "</s>")
    for (start, end), answer in zip(spans, answers):
        assert labels[start:end] == ids[start:end]
        assert ids[end - 1] == end_of_turn  # the model learns to stop
        assert tokenizer.decode(ids[start:end], skip_special_tokens=True).strip() == answer
    # Nothing else is learned: not the system prompt, the questions or the role headers.
    labelled_text = tokenizer.decode([t for t in labels if t != IGNORE_INDEX], skip_special_tokens=True)
    assert "Answer about" not in labelled_text and "colour" not in labelled_text
    assert "USER" not in labelled_text and "assistant" not in labelled_text


@pytest.mark.parametrize("template", ["vicuna", "chatml"])
def test_generation_prompt_matches_training_prefix(template, request):
    tokenizer = request.getfixturevalue(template)
    rec = record(n_pairs=2)
    enc = encode_conversation(rec, tokenizer, N_IMAGE)
    first_answer_start = answer_spans(enc.labels)[0][0]
    prompt = build_prompt(tokenizer, "What colour is the circle?", N_IMAGE)
    assert prompt.tolist() == enc.input_ids[:first_answer_start]
    # With history: the prompt for the second question is the training prefix of the second answer.
    second = build_prompt(tokenizer, "How many shapes are there?", N_IMAGE,
                          history=[("What colour is the circle?", "The circle is red.")])
    assert second.tolist() == enc.input_ids[: answer_spans(enc.labels)[1][0]]
    # <image> after the text.
    after = build_prompt(tokenizer, "What colour is the circle?", N_IMAGE, image_position="after")
    enc_after = encode_conversation(record(image_first=False), tokenizer, N_IMAGE)
    assert after.tolist() == enc_after.input_ids[: answer_spans(enc_after.labels)[0][0]]


def test_left_padded_prompt_batch(vicuna):
    a = build_prompt(vicuna, "Is there a star?", N_IMAGE)
    b = build_prompt(vicuna, "How many shapes are there in the image?", N_IMAGE)
    batch = left_pad([a, b], vicuna.pad_token_id)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, max(len(a), len(b)))
    assert batch["input_ids"][0, -len(a):].tolist() == a.tolist()  # left padded: prompts end together
    assert batch["attention_mask"][0].sum() == len(a) and batch["attention_mask"][1].all()


def test_tokenization_mismatch_is_detected():
    tokenizer = make_tokenizer(DRIFTING)
    with pytest.raises(TokenizationMismatch, match="'r7'.*tokenization mismatch"):
        encode_conversation(record("r7"), tokenizer, N_IMAGE)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r["conversations"][0].update(value="What colour?"), "exactly once, found 0"),
        (lambda r: r["conversations"][2].update(value="<image> again?"), "exactly once, found 2"),
        (lambda r: r["conversations"].__setitem__(1, {"from": "human", "value": "hi"}), "do not alternate"),
        (lambda r: r["conversations"][3].update(value="  "), "turn 3 \\(gpt\\) is empty"),
        (lambda r: r["conversations"].pop(), "without an answer"),
        (lambda r: r["conversations"][0].update(value="<image>"), "turn 0 \\(human\\) is empty"),
    ],
)
def test_bad_records_name_the_record(vicuna, mutate, message):
    rec = record("bad-42")
    mutate(rec)
    with pytest.raises(RecordError, match=f"'bad-42'.*{message}"):
        encode_conversation(rec, vicuna, N_IMAGE)


def test_truncation_drops_whole_trailing_turns(vicuna):
    full = encode_conversation(record(n_pairs=3), vicuna, N_IMAGE)
    two = encode_conversation(record(n_pairs=2), vicuna, N_IMAGE)
    # A limit between the 2-pair and 3-pair lengths keeps exactly the first two pairs.
    enc = encode_conversation(record(n_pairs=3), vicuna, N_IMAGE, max_length=len(full.input_ids) - 1)
    assert (enc.num_answers, enc.num_answers_dropped) == (2, 1)
    assert enc.input_ids == two.input_ids and enc.labels == two.labels
    assert enc.input_ids.count(image_token_id(vicuna)) == N_IMAGE  # image tokens are never cut
    one = encode_conversation(record(n_pairs=1), vicuna, N_IMAGE)
    assert encode_conversation(record(n_pairs=3), vicuna, N_IMAGE, max_length=len(one.input_ids)).num_answers == 1
    with pytest.raises(RecordTooLong, match="'r1'.*first question and answer"):
        encode_conversation(record(n_pairs=3), vicuna, N_IMAGE, max_length=len(one.input_ids) - 1)


def write_images(folder, ids, size=(40, 24)):
    for i, rid in enumerate(ids):
        Image.new("RGB", size, (200, 30 * i, 10)).save(folder / f"{rid}.png")


def test_dataset_collator_and_image_padding(tmp_path, vicuna, processor):
    records = [record("a", n_pairs=1), record("b", image_first=False, n_pairs=3), record("c", n_pairs=2)]
    write_images(tmp_path, ["a", "b", "c"])
    (tmp_path / "data.json").write_text(json.dumps(records))
    dataset = LlavaInstructDataset(tmp_path / "data.json", tmp_path, vicuna, processor, N_IMAGE, max_length=256)
    assert len(dataset) == 3
    item = dataset[1]
    assert item["id"] == "b" and item["input_ids"].shape == item["labels"].shape
    assert item["pixel_values"].shape == (3, 32, 32)
    # The 40x24 image was padded to a square with the processor's mean colour: after normalisation
    # the padding rows are ~0 (up to the rounding of the mean to 8-bit colour).
    assert item["pixel_values"][:, 0, :].abs().max() < 0.02 and item["pixel_values"][:, 16, :].abs().max() > 0.5

    batch = LlavaCollator(vicuna.pad_token_id)([dataset[i] for i in range(3)])
    lengths = dataset.lengths()
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (3, max(lengths))
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert (batch["labels"][0, lengths[0]:] == IGNORE_INDEX).all()  # right padding, pad never learned
    assert (batch["input_ids"][0, lengths[0]:] == vicuna.pad_token_id).all()
    assert (batch["input_ids"][0, : lengths[0]] == dataset[0]["input_ids"]).all()


def test_dataset_errors_and_counted_skips(tmp_path, vicuna, processor):
    one = encode_conversation(record(n_pairs=1), vicuna, N_IMAGE)
    records = [record("ok"), record("too-long", n_pairs=4), record("no-image"), record("broken")]
    records[1]["conversations"][1]["value"] = "word " * 200
    records[2]["conversations"][0]["value"] = "What colour?"
    write_images(tmp_path, ["ok", "too-long", "no-image"])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    max_length = len(one.input_ids) + 20
    with pytest.raises(RecordTooLong, match="'too-long'"):
        LlavaInstructDataset(records, tmp_path, vicuna, processor, N_IMAGE, max_length=max_length)
    dataset = LlavaInstructDataset(records, tmp_path, vicuna, processor, N_IMAGE, max_length=max_length,
                                   skip_invalid=True)
    assert len(dataset) == 2 and dataset.skipped == {"RecordTooLong": 1, "RecordError": 1}
    assert dataset.skipped_ids == ["too-long", "no-image"]
    assert dataset.num_answers_dropped == 4  # "ok" and "broken" each lost their last two QA pairs
    with pytest.raises(RecordError, match="'broken'.*cannot read image"):
        dataset[1]
    checked = LlavaInstructDataset(records, tmp_path, vicuna, processor, N_IMAGE, max_length=max_length,
                                   skip_invalid=True, check_images=True)
    assert len(checked) == 1 and checked.skipped_ids == ["too-long", "no-image", "broken"]


def test_add_image_token_to_a_tokenizer_without_one():
    tokenizer = make_tokenizer(VICUNA)
    assert image_token_id(tokenizer) == add_image_token(tokenizer)  # already there: unchanged
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["</s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    plain = PreTrainedTokenizerFast(tokenizer_object=bpe)
    with pytest.raises(ValueError, match="add_image_token"):
        image_token_id(plain)
    new_id = add_image_token(plain)
    assert plain.encode("a <image> b", add_special_tokens=False).count(new_id) == 1


def test_pixel_values_of_square_image_are_the_processor_output(processor):
    image = Image.new("RGB", (48, 48), (10, 200, 90))
    expected = processor(images=image, return_tensors="pt")["pixel_values"][0]
    assert torch.equal(image_to_pixel_values(image, processor), expected)


def test_collator_rounds_up_and_matches_transformers_right_padding(vicuna):
    """The batch DataCollatorForSeq2Seq gives with a right-padding tokenizer (data.py says why it is not used)."""
    from transformers import DataCollatorForSeq2Seq

    items = [{"input_ids": torch.arange(3, 3 + n), "labels": torch.tensor([IGNORE_INDEX] * (n - 2) + [7, 8]),
              "pixel_values": torch.full((3, 2, 2), float(n))} for n in (5, 9, 3)]
    batch = LlavaCollator(vicuna.pad_token_id, pad_to_multiple_of=8)(items)
    assert batch["input_ids"].shape == (3, 16) and batch["attention_mask"].sum(1).tolist() == [5, 9, 3]
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [5.0, 9.0, 3.0]
    right = DataCollatorForSeq2Seq(vicuna, pad_to_multiple_of=8)
    assert vicuna.padding_side == "right"
    reference = right([{k: item[k].tolist() for k in ("input_ids", "labels")} for item in items])
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(batch[key], reference[key]), key
    with pytest.raises(ValueError, match="pad token"):
        LlavaCollator(None)
