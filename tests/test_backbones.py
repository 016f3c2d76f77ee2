"""The tiny-backbone builder: end to end at toy size, and the pieces it rests on."""

import json

import pytest
import torch

from llava_mini import backbones
from llava_mini.backbones import BackboneRecipe, build_backbones, patch_coverage, train_tokenizer
from llava_mini.world import WorldConfig, WorldObject, Scene


def test_builder_runs_end_to_end_at_toy_size(tmp_path):
    report = build_backbones(tmp_path, BackboneRecipe.toy(), device="cpu", workers=1, log=lambda *_: None)
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tmp_path / "lm")
    lm = LlamaForCausalLM.from_pretrained(tmp_path / "lm")
    clip = CLIPModel.from_pretrained(tmp_path / "vision")
    proc = CLIPImageProcessor.from_pretrained(tmp_path / "vision")
    assert lm.config.vocab_size == len(tok)
    assert clip.config.vision_config.image_size == WorldConfig().image_size
    assert len(proc.image_mean) == 3
    saved = json.loads((tmp_path / "report.json").read_text())
    assert set(saved["patch_probe"]) == {"shape", "color", "size"}
    assert 0.0 <= report["retrieval_top1"]["image_to_text"] <= 1.0
    # the LM's report says what the text reference reached on held-out scenes, per kind
    reference = saved["lm_text_reference"]
    assert set(reference["accuracy"]) <= {"colour", "shape", "count", "relation", "existence"}
    assert sum(reference["n"].values()) > 0 and 0.0 <= reference["micro"] <= 1.0
    assert saved["lm_corpus"]["chats"] > 0 and 0 < saved["lm_corpus"]["learned_tokens"] < saved["lm_corpus"]["tokens"]
    # the chat template renders a Vicuna-like turn and ends the answer with </s>
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}]
    text = tok.apply_chat_template(turns, tokenize=False)
    assert text == "USER: hi\nASSISTANT: yes</s>\n"


def test_lm_build_continues_from_an_earlier_build_with_its_tokenizer(tmp_path):
    from dataclasses import replace

    from transformers import LlamaForCausalLM

    first, second = tmp_path / "first", tmp_path / "second"
    build_backbones(first, BackboneRecipe.toy(), device="cpu", parts=("lm",), log=lambda *_: None)
    recipe = replace(BackboneRecipe.toy(), lm_init=str(first), lm_steps=2, vocab_size=999)  # vocab: ignored
    report = build_backbones(second, recipe, device="cpu", parts=("lm",), log=lambda *_: None)
    assert (second / "tokenizer" / "tokenizer.json").read_text() == (first / "tokenizer" / "tokenizer.json").read_text()
    before, after = (LlamaForCausalLM.from_pretrained(d / "lm") for d in (first, second))
    shape = lambda c: (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.intermediate_size)
    assert shape(after.config) == shape(before.config)
    changed = [n for (n, p), q in zip(before.named_parameters(), after.parameters()) if not torch.equal(p, q)]
    assert changed and report["lm_recipe"]["lm_init"] == str(first)


def test_eos_token_never_gets_clip_legacy_id():
    tok = train_tokenizer(["a red circle", "two blue squares"], vocab_size=300)
    assert tok.eos_token_id != 2 and tok.convert_tokens_to_ids("<image>") is not None
    # CLIP's text tower pools at the first </s>: with id 2 it would pool at the largest token id instead
    ids, mask = backbones.tokenize_captions(tok, ["a red circle", "two"])
    assert ids[0, mask[0].sum() - 1] == tok.eos_token_id and ids[1, mask[1].sum() - 1] == tok.eos_token_id


def test_patch_coverage_counts_drawn_pixels():
    config = WorldConfig()
    square = WorldObject("square", "red", "medium", (8, 8, 16, 16))  # exactly patches (1,1),(1,2),(2,1),(2,2)
    scene = Scene(image_id=1, objects=(square,), background=((230, 230, 230),) * 2, gradient_vertical=False)
    cover = patch_coverage(scene, config, patch=8).reshape(8, 8)
    assert cover[1:3, 1:3].min() > 0.95 and cover.sum() == pytest.approx(4.0, abs=0.1)


def test_linear_probe_separates_separable_features():
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(3, (300,), generator=gen)
    x = torch.randn(300, 8, generator=gen) * 0.1 + torch.nn.functional.one_hot(y, 8).float()
    assert backbones.linear_probe(x[:200], y[:200], x[200:], y[200:], classes=3) > 0.95
    noise = torch.randn(300, 8, generator=gen)
    assert backbones.linear_probe(noise[:200], y[:200], noise[200:], y[200:], classes=3) < 0.6


def test_shipped_backbones_load_like_hub_models():
    from transformers import AutoTokenizer, CLIPVisionModel, LlamaForCausalLM

    root = backbones.BACKBONES_DIR
    report = json.loads((root / "report.json").read_text())
    tower = CLIPVisionModel.from_pretrained(root / "vision")
    lm = LlamaForCausalLM.from_pretrained(root / "lm")
    tok = AutoTokenizer.from_pretrained(root / "lm")
    assert lm.config.vocab_size == len(tok) and "<image>" in tok.get_vocab()
    out = tower(pixel_values=torch.zeros(1, 3, 64, 64), output_hidden_states=True)
    assert out.hidden_states[-2].shape == (1, 1 + 64, report["vision_recipe"]["vision_hidden"])
    assert report["patch_probe"]["shape"] >= 0.9 and report["patch_probe"]["color"] >= 0.95


def test_patch_targets_name_the_object_covering_most_of_the_patch_else_background():
    config = WorldConfig()
    _, targets, _, scenes = backbones.render_pool(24, 1, config, patch=8, workers=1)
    vocabularies = (list(config.shapes), list(config.colors), list(config.sizes))
    kinds = set()
    for scene, target in zip(scenes, targets):  # the rule written out patch by patch
        cover = patch_coverage(scene, config, patch=8)
        for p in range(64):
            if scene.objects and cover[:, p].max() >= 0.25:
                obj = scene.objects[cover[:, p].argmax()]
                expected = [v.index(a) for v, a in zip(vocabularies, (obj.shape, obj.color, obj.size))]
            else:
                expected = [len(v) for v in vocabularies]
            kinds.add(expected[0] == len(config.shapes))
            assert target[:, p].tolist() == expected
    assert kinds == {True, False}  # both object and background patches were checked


def test_train_in_budget_warms_up_decays_and_cuts_the_steps_to_the_budget(monkeypatch):
    lrs = []

    class RecordingAdamW(torch.optim.AdamW):
        def step(self, closure=None):
            lrs.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    model, x = torch.nn.Linear(4, 1), torch.randn(16, 4)

    def loss_fn(logging):
        loss = model(x).pow(2).mean()
        return loss, {"loss": loss}

    history = backbones.train_in_budget([model], loss_fn, "cpu", 0.1, 100, 60.0, log=lambda *_: None)
    assert [h["step"] for h in history] == [0, 50, 99] and not model.training
    assert lrs[:3] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1])  # 3% warmup, then cosine decay
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:])) and lrs[-1] < 1e-3
    lrs.clear()
    history = backbones.train_in_budget([model], loss_fn, "cpu", 0.1, 10_000, 1e-6, log=lambda *_: None)
    assert [(h["step"], h["planned"]) for h in history] == [(0, 10_000), (50, 10_000), (59, 60)]
    assert len(lrs) == 60  # timed over steps 20-59, the budget fits fewer steps than the floor of 60


def test_text_scene_chats_learn_only_the_answers_and_pack_whole():
    from dataclasses import replace

    from llava_mini.model import answer_labels, encode_conversation
    from llava_mini.teacher import record_type
    from llava_mini.world import scene_with_captions

    config = WorldConfig()
    pairs = [scene_with_captions(0, "lm", i, config) for i in range(6)]
    scenes, captions = [replace(s, image_id=i + 1) for i, (s, _) in enumerate(pairs)], [c for _, c in pairs]
    records, contexts = backbones.text_scene_records(scenes, captions, config, drills=1)
    assert {record_type(r) for r in records} == {"conversation", "detail", "complex", "drill"}
    tok = train_tokenizer([backbones.render_chat(backbones.with_context(r, contexts[r["image"]])) for r in records], 400)
    record = next(r for r in records if "drill" in r["id"])
    messages = backbones.with_context(record, contexts[record["image"]])
    assert "<image>" not in messages[0]["content"] and contexts[record["image"]] in messages[0]["content"]
    ids, labels = answer_labels(tok, messages)
    learned = tok.decode([t for t, y in zip(ids, labels) if y != -100])
    answers = [t["value"] for t in record["conversations"] if t["from"] == "gpt"]
    assert learned == "".join(f" {a}</s>" for a in answers)  # every answer and its end of turn; nothing else
    # the same masks as the image records get: only the image span differs
    with_image = encode_conversation(record, tok, num_image_tokens=1)
    assert sum(y != -100 for y in with_image.labels) == sum(y != -100 for y in labels)

    rows, row_labels = backbones.pack_examples([(ids, labels), ([7, 8], [7, 8]), (list(range(9)), list(range(9)))],
                                               seq_len=len(ids) + 2, pad_id=0)
    assert rows.shape == (2, len(ids) + 2)  # whole examples, in order; the third does not fit the first row
    assert rows[0].tolist() == ids + [7, 8] and row_labels[1, 9:].eq(-100).all()
