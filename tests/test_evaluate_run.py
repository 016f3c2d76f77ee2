"""Tests for llava_mini.evaluate running a model: evaluate_model end to end with a tiny random LlavaMini,
batched answers against chat (both decode through model.generate_ids), each image encoded once per
batch, a peft wrapper, the blind baseline and the LM told the scene as text."""

import json
import re

import pytest
import torch

from llava_mini import evaluate as ev
from llava_mini.model import build_prompt
from llava_mini.world import context_text, generate_world, read_split
from stand_ins import IMAGE_SIZE, PATCH, bpe_tokenizer, tiny_llama, tiny_llava, tiny_processor, tiny_vision

SEED = 0

# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    generate_world(root, {"test": 40}, seed=SEED)
    return root


@pytest.fixture(scope="module")
def records(world):
    return read_split(world, "test").records


N_IMAGE = (IMAGE_SIZE // PATCH) ** 2



@pytest.fixture(scope="module")
def tokenizer():
    return bpe_tokenizer(["USER: What colour is the circle? ASSISTANT: The circle is red.",
                          "How many shapes are there? There are three shapes. Yes, there is a blue star."] * 4)


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


def make_model(tokenizer):
    vision = tiny_vision(seed=0)
    lm = tiny_llama(len(tokenizer), seed=None)
    # strong projector weights: the image must move the logits
    return tiny_llava(vision, lm, tokenizer, projector_std=1.0).eval()


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_model(tokenizer)



# ----------------------------------------------------------------------------- running the model


def test_blind_images_are_identical_and_give_identical_logits(model, tokenizer, processor, records):
    images = [records[0].load_image(), records[1].load_image()]
    seeing = ev.prepare_images(images, processor)
    blind = ev.prepare_images(images, processor, blind=True)
    assert not torch.equal(seeing[0], seeing[1])
    assert torch.equal(blind[0], blind[1])
    # The blank canvas is the processor's mean colour: after normalisation it is ~0 everywhere.
    assert blind.abs().max() < 0.02
    ids = torch.stack([build_prompt(tokenizer, "What colour is the star?", N_IMAGE)] * 2)
    with torch.no_grad():
        see = model(ids, seeing, return_logits=True).logits
        blank = model(ids, blind, return_logits=True).logits
    assert (see[0] - see[1]).abs().max() > 1e-3  # the image moves the logits ...
    torch.testing.assert_close(blank[0], blank[1], atol=1e-5, rtol=0)  # ... unless it is blanked (fp noise aside)


def test_batched_left_padded_answers_equal_one_at_a_time(model, tokenizer, processor, records):
    images = [records[0].load_image(), records[1].load_image()]
    items = [(images[0], "What colour is the star?"), (images[1], "How many shapes are in this picture, can you count?"),
             (images[0], "Is there a red circle?"), (images[1], "What colour is the star?")]
    # Batches of 3: the first holds one image twice (its features computed once), the second a lone item.
    batched = ev.generate_answers(model, tokenizer, processor, items, batch_size=3, max_new_tokens=6)
    single = [ev.chat(model, tokenizer, processor, image, q, max_new_tokens=6) for image, q in items]
    assert batched == single
    assert any(batched)
    follow_up = ev.chat(model, tokenizer, processor, images[0], "And the circle?", history=[(items[0][1], batched[0])],
                        max_new_tokens=3)
    assert isinstance(follow_up, str)


def test_each_distinct_image_of_a_batch_is_encoded_once_and_answers_come_from_generate_ids(
        model, tokenizer, processor, records, monkeypatch):
    from llava_mini.model import decode, generate_ids

    images = [records[0].load_image(), records[1].load_image()]
    items = [(images[0], "What colour is the star?"), (images[0], "Is there a red circle?"),
             (images[1], "What colour is the star?"), (images[0], "How many shapes are in this picture?")]
    encoded = []
    encode = model.encode_images
    monkeypatch.setattr(model, "encode_images", lambda pixels: encoded.append(len(pixels)) or encode(pixels))
    answers = ev.generate_answers(model, tokenizer, processor, items, batch_size=4, max_new_tokens=5)
    assert encoded == [2]  # one batch, two distinct images: not four encodings
    encoded.clear()
    ev.generate_answers(model, tokenizer, processor, items, batch_size=2, max_new_tokens=5)
    assert encoded == [1, 2]  # batch 1: images[0] twice; batch 2: images[1] and images[0]
    monkeypatch.undo()
    prompts = [build_prompt(tokenizer, q, N_IMAGE) for _, q in items]
    ids = generate_ids(model, tokenizer, prompts, pixel_values=ev.prepare_images([im for im, _ in items], processor),
                       max_new_tokens=5)
    assert answers == [decode(tokenizer, row) for row in ids]  # the one decoding loop, one image per prompt


def test_answers_through_a_peft_wrapper_and_training_mode_restored(tokenizer, processor, records, model):
    from peft import LoraConfig, get_peft_model

    items = [(records[0].load_image(), "What colour is the star?")]
    plain = ev.generate_answers(model, tokenizer, processor, items, max_new_tokens=5)
    wrapped = get_peft_model(make_model(tokenizer), LoraConfig(
        r=4, target_modules=r".*language_model.*\.(q_proj|v_proj)"))  # B = 0: same outputs as the plain model
    wrapped.train()
    assert ev.generate_answers(wrapped, tokenizer, processor, items, max_new_tokens=5) == plain
    assert wrapped.get_base_model().training  # evaluation put it in eval mode and back


def test_evaluate_model_end_to_end_and_blind_ignores_the_image(model, tokenizer, processor, records, world):
    recs = records[:6]
    result = ev.evaluate_model(model, tokenizer, processor, recs, world / "images" / "test", seed=SEED,
                               max_new_tokens=6, n_descriptions=3, description_max_new_tokens=12, batch_size=4)
    qs = ev.make_questions(recs, seed=SEED)
    assert len(result["answers"]) == len(qs) == sum(result["n"].values())
    for row, q in zip(result["answers"], qs):
        assert (row["question"], row["expected"]) == (q.question, q.expected)
        assert row["correct"] == ev.is_correct(q.kind, row["answer"], q.expected)
    assert 0 <= result["micro"] <= 1 and 0 <= result["macro"] <= 1
    assert result["macro"] == pytest.approx(sum(result["accuracy"].values()) / len(result["accuracy"]))
    d = result["description"]
    assert d["descriptions"] == 3 and len(d["items"]) == 3 and d["objects"] == sum(len(r.objects) for r in recs[:3])
    assert json.dumps(result)  # everything in it can go to a file

    # Blind: the same question on different images gets the same answer (the image is never seen).
    same_q = [ev.Question(r.image_id, r.file_name, "count", "How many shapes are in this picture?", str(len(r.objects)),
                          "") for r in recs]
    blind = ev.evaluate_model(model, tokenizer, processor, recs, questions=same_q, blind=True, max_new_tokens=6,
                              n_descriptions=0)
    assert len({a["answer"] for a in blind["answers"]}) == 1
    assert blind["blind"] and blind["description"] is None
    seeing = ev.evaluate_model(model, tokenizer, processor, recs, questions=same_q, max_new_tokens=6, n_descriptions=0)
    assert seeing["settings"]["blind"] is False



# ----------------------------------------------------------------------------- the LM told the scene as text


class _TextReader(torch.nn.Module):
    """A stand-in LM that answers existence questions by reading the box lines of its prompt: 'yes' iff a
    box line names the asked-for thing ('green square', or a bare 'square'); 'green' to everything else."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer
        self.device = torch.device("cpu")
        self.prompts = []

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            prompt = self.tokenizer.decode([i for i, m in zip(ids, mask) if m])
            self.prompts.append(prompt)
            boxed = re.findall(r"^(\w+ \w+): \[", prompt, flags=re.M)
            asked = re.search(r"(?:Is there|Do you see|Does the image contain|Can) an? ([\w ]+?)(?: in| be|\?)", prompt)
            found = asked and any(c == asked.group(1) or c.endswith(" " + asked.group(1)) for c in boxed)
            reply = ("Yes." if found else "No.") if asked else "green"
            rows.append(ids + self.tokenizer(reply, add_special_tokens=False)["input_ids"])
        width = max(map(len, rows))  # replies of different lengths: pad after them, as generate does
        return torch.tensor([r + [self.tokenizer.pad_token_id or 0] * (width - len(r)) for r in rows])


def test_text_scene_puts_each_scene_in_its_prompt_and_scores_like_evaluate_model(tokenizer, records):
    recs = records[:30]
    qs = [q for q in ev.make_questions(recs, seed=SEED) if q.kind in ("existence", "colour")]
    reader = _TextReader(tokenizer)
    result = ev.evaluate_text_scene(reader, tokenizer, recs, qs, batch_size=7)
    assert [r["question"] for r in result["answers"]] == [q.question for q in qs]
    by_id = {r.image_id: r for r in recs}
    for prompt, q in zip(reader.prompts, sorted(qs, key=lambda q: q.kind), strict=True):  # asked kind by kind
        assert context_text(by_id[q.image_id]) in prompt and q.question in prompt
    assert result["accuracy"]["existence"] == 1.0  # a perfect reader of the boxes, scored as such
    colour = [r for r in result["answers"] if r["kind"] == "colour"]
    assert all(r["correct"] == (r["expected"] == "green") for r in colour)
    assert result["settings"]["text_scene"] and result["description"] is None
    with pytest.raises(ValueError, match="not among the records"):
        ev.evaluate_text_scene(reader, tokenizer, recs[:1], qs[-1:])


def test_kind_by_kind_asks_each_kind_together_and_returns_replies_in_question_order(records):
    qs = ev.make_questions(records[:30], seed=SEED)
    asked = []

    def answer(order):
        asked.extend(qs[k].kind for k in order)
        return [f"reply to {qs[k].question} about {qs[k].image_id}" for k in order]

    replies = ev.kind_by_kind(qs, answer)
    assert replies == [f"reply to {q.question} about {q.image_id}" for q in qs]
    assert asked == sorted(asked) and len(set(asked)) > 1  # each kind in one run, several kinds
