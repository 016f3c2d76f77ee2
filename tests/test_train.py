"""Tests for llava_mini.train: what is frozen, where LoRA goes, QLoRA layers, data order, precision, checkpoints.
(Resume, step checkpoints and 2 processes: test_train_resume.py.)

Tiny random towers are written with save_pretrained into a tmp folder (the hub path, offline), with a
few random images and records; every training run is a handful of steps.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import CLIPImageProcessor, PreTrainedTokenizerFast

from llava_mini.model import LlavaCollator, LlavaInstructDataset
from llava_mini.model import build
from llava_mini.train import (
    StepSampler, add_lora, freeze_for_stage1, load_checkpoint, merge_lora, plot_loss,
    qlora_quantization_config, train, trainable_parameters,
)
from llava_mini.config import TrainConfig
from llava_mini.train.__main__ import _parse_value
from llava_mini.course import repeat_types
from stand_ins import (COLOURS, IMAGE_SIZE, PATCH, SHAPES, VICUNA, bpe_tokenizer, one_thread, tiny_llama,  # noqa: F401
                       tiny_processor, tiny_vision, write_records)

REPO = Path(__file__).resolve().parents[1]
LM_LINEARS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def make_tokenizer(chat_template=VICUNA) -> PreTrainedTokenizerFast:
    corpus = [f"USER: What colour is the {s}? ASSISTANT: The {s} is {c}." for s in SHAPES for c in COLOURS] * 3
    return bpe_tokenizer(corpus, chat_template=chat_template)


def write_towers(root: Path, tokenizer, lm_hidden=32) -> tuple[Path, Path]:
    """A tiny CLIP vision tower and a tiny Llama, saved as hub folders would hold them."""
    tiny_vision(seed=0).save_pretrained(root / "vision")
    tiny_processor().save_pretrained(root / "vision")
    tiny_llama(len(tokenizer), seed=1, hidden_size=lm_hidden, intermediate_size=2 * lm_hidden,
               tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id).save_pretrained(root / "lm")
    tokenizer.save_pretrained(root / "lm")
    return root / "vision", root / "lm"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    tokenizer = make_tokenizer()
    vision, lm = write_towers(root, tokenizer)
    _, lm64 = write_towers(root / "wide", tokenizer, lm_hidden=64)  # bitsandbytes' CPU 4-bit needs >= 64 wide
    records, images = write_records(root)
    processor = CLIPImageProcessor.from_pretrained(vision)
    dataset = LlavaInstructDataset(records, images, tokenizer, processor, (IMAGE_SIZE // PATCH) ** 2)
    return {"root": root, "tokenizer": tokenizer, "vision": vision, "lm": lm, "lm64": lm64, "dataset": dataset,
            "collator": LlavaCollator(tokenizer.pad_token_id), "records": records, "images": images}


def make_model(setup, lm=None, seed=0, **build_kwargs):
    torch.manual_seed(seed)
    return build(setup["vision"], lm or setup["lm"], image_token_id=setup["tokenizer"].convert_tokens_to_ids("<image>"),
                 **build_kwargs)


def config(tmp_path, **changes) -> TrainConfig:
    settings = dict(output_dir=str(tmp_path / "run"), max_steps=3, batch_size=4, lr=1e-2, progress=False,
                    lora_r=4, lora_alpha=8, lora_dropout=0.0)
    return TrainConfig(**{**settings, **changes})


def snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def changed(before, module) -> set[str]:
    return {n for n, p in module.named_parameters() if not torch.equal(before[n], p.detach())}


# ----------------------------------------------------------------------------- what is trained


def test_stage1_trains_only_the_projector(setup, tmp_path):
    model = freeze_for_stage1(make_model(setup))
    counts = trainable_parameters(model)
    assert counts["projector"] == sum(p.numel() for p in model.projector.parameters())
    assert counts["lora"] == counts["other"] == 0
    vision, lm, projector = snapshot(model.vision_tower), snapshot(model.language_model), snapshot(model.projector)
    result = train(model, setup["dataset"], setup["collator"], config(tmp_path, stage=1, max_steps=2))
    assert not changed(vision, model.vision_tower) and not changed(lm, model.language_model)
    assert changed(projector, model.projector) == set(projector)  # every projector tensor moved
    assert all(p.grad is None for p in model.vision_tower.parameters())
    assert all(p.grad is None for p in model.language_model.parameters())
    assert all(np.isfinite(row["loss"]) for row in result.history) and len(result.history) == 2
    assert (result.checkpoint_dir / "projector.safetensors").exists()
    assert not (result.checkpoint_dir / "adapter").exists()


def test_stage1_refuses_a_model_with_more_trainable_than_the_projector(setup, tmp_path):
    model = make_model(setup)  # nothing frozen
    with pytest.raises(ValueError, match="freeze_for_stage1"):
        train(model, setup["dataset"], setup["collator"], config(tmp_path, stage=1))


def test_lora_goes_on_every_lm_linear_and_nowhere_else(setup, tmp_path):
    model = add_lora(make_model(setup), config(tmp_path, stage=2))
    adapted = {name.split(".lora_A.")[0] for name, _ in model.named_parameters() if ".lora_A." in name}
    expected = {name for name, module in model.named_modules()
                if name.startswith("language_model.") and name.rsplit(".", 1)[-1] in LM_LINEARS
                and hasattr(module, "base_layer")}
    lm_linears = [n for n, m in model.language_model.named_modules()
                  if isinstance(m, torch.nn.Linear) and "lora_" not in n and not n.endswith("base_layer")]
    assert len(expected) == 2 * 7  # 2 decoder layers x 7 linears
    assert adapted == expected
    assert all(not n.endswith("lm_head") for n in adapted)
    assert any(n.endswith("lm_head") for n in lm_linears)  # there is an lm_head, and it has no adapter
    assert not any("lora_" in n for n, _ in model.vision_tower.named_parameters())
    assert not any("lora_" in n for n, _ in model.projector.named_parameters())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if "lora_" in n} | {n for n, _ in model.named_parameters()
                                                                  if n.startswith("projector.")}
    counts = trainable_parameters(model)
    assert counts["lora"] > 0 and counts["projector"] > 0 and counts["other"] == 0


def test_lora_targets_are_configurable(setup, tmp_path):
    model = add_lora(make_model(setup), config(tmp_path, stage=2, lora_targets=["q_proj", "v_proj"], lora_r=2))
    adapted = {n.split(".lora_A.")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if ".lora_A." in n}
    assert adapted == {"q_proj", "v_proj"}
    assert all(p.shape[0] == 2 for n, p in model.named_parameters() if ".lora_A." in n)


def test_stage2_step_moves_adapters_and_projector_only_with_their_own_learning_rates(setup, tmp_path):
    cfg = config(tmp_path, stage=2, max_steps=4, lr=1e-2, projector_lr=1e-3)
    model = add_lora(make_model(setup), cfg)
    before = snapshot(model)
    result = train(model, setup["dataset"], setup["collator"], cfg)
    moved = changed(before, model)
    assert moved and all("lora_B" in n or "lora_A" in n or n.startswith("projector.") for n in moved)
    assert any(n.startswith("projector.") for n in moved) and any("lora_B" in n for n in moved)
    rows = result.history
    # cosine with 3% warmup (one step of four): lr rises to its peak at step 1, then falls to ~0.
    assert rows[0]["lr"] == pytest.approx(1e-2) and rows[0]["projector_lr"] == pytest.approx(1e-3)
    assert [r["lr"] for r in rows] == sorted((r["lr"] for r in rows), reverse=True)
    assert rows[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert all(r["projector_lr"] / r["lr"] == pytest.approx(0.1) for r in rows[:-1])
    assert (result.checkpoint_dir / "adapter" / "adapter_config.json").exists()


def test_qlora_lm_is_nf4_double_quantized_projector_fp32_and_trainable(setup, tmp_path):
    import bitsandbytes as bnb

    cfg = config(tmp_path, stage=2, qlora=True, max_steps=2)
    model = make_model(setup, lm=setup["lm64"], quantization_config=qlora_quantization_config("fp32"))
    add_lora(model, cfg)
    lm_linears = {n: m for n, m in model.language_model.named_modules() if n.rsplit(".", 1)[-1] in LM_LINEARS}
    assert len(lm_linears) == 14
    for name, module in lm_linears.items():
        base = module.base_layer
        assert isinstance(base, bnb.nn.Linear4bit), name
        assert base.weight.quant_type == "nf4" and base.weight.compress_statistics  # double quantization
        assert hasattr(module, "lora_A")
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model.vision_tower.modules())
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model.projector.modules())
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.projector.parameters())
    before = snapshot(model.projector)
    result = train(model, setup["dataset"], setup["collator"], cfg)
    assert all(np.isfinite(r["loss"]) for r in result.history)
    assert changed(before, model.projector)
    assert json.loads((result.checkpoint_dir / "run.json").read_text())["qlora"] is True
    with pytest.raises(ValueError, match="qlora=False"):
        merge_lora(model)


# ----------------------------------------------------------------------------- data order, precision


def test_sampler_splits_the_same_global_batches_across_processes_and_accumulation():
    lengths = [int(x) for x in np.random.default_rng(0).integers(70, 200, 50)]
    one = list(StepSampler(50, 4, 4, 1, 0, seed=1, start=0, stop=12, lengths=lengths))  # one micro-batch a step

    def steps(micro, processes):
        """Per optimizer step, the examples all processes see together."""
        per_rank = [list(StepSampler(50, 4, micro, processes, r, 1, 0, 12 * 4 // (micro * processes), lengths))
                    for r in range(processes)]
        accumulation = 4 // (micro * processes)
        return [sorted(i for rank in per_rank for batch in rank[s * accumulation:(s + 1) * accumulation] for i in batch)
                for s in range(12)]

    for micro, processes in [(2, 1), (1, 1), (2, 2), (1, 2), (1, 4)]:
        assert steps(micro, processes) == [sorted(b) for b in one], (micro, processes)
    assert list(StepSampler(50, 4, 4, 1, 0, 1, 7, 12, lengths)) == one[7:]  # resuming needs only the step
    epoch = [i for batch in one for i in batch]
    assert len(set(epoch)) == 48  # an epoch visits each example at most once
    spread = np.mean([np.ptp([lengths[i] for i in b]) for b in one])
    plain = np.mean([np.ptp([lengths[i] for i in b]) for b in StepSampler(50, 4, 4, 1, 0, 1, 0, 12)])
    assert spread < plain / 2  # grouping by length: similar lengths share a batch


@pytest.mark.parametrize("changes", [dict(gradient_checkpointing=True),
                                     dict(gradient_checkpointing=True, checkpoint_every=2),
                                     dict(gradient_checkpointing=True, keep_matmul_outputs=True),
                                     dict(loss_chunk_logits=200),  # a few rows per chunk
                                     dict(cache_image_features=True)])
def test_speed_and_memory_options_change_nothing_else(setup, tmp_path, changes):
    # each image twice in the 12 examples the 3 steps draw (a second epoch, or two records of one picture)
    items = [setup["dataset"][i] for i in range(6)] * 2
    histories, tower_images = [], []
    for settings in ({}, changes):
        cfg = config(tmp_path, stage=2, **settings, output_dir=str(tmp_path / str(len(histories))))
        model = add_lora(make_model(setup), cfg)
        images = []
        model.vision_tower.register_forward_hook(lambda module, args, out: images.append(len(args[0])))
        histories.append([r["loss"] for r in train(model, items, setup["collator"], cfg).history])
        tower_images.append(sum(images))
        assert not model.is_gradient_checkpointing  # switched off again after training
    # Bitwise equal here but for the chunked head (its sum of chunk sums rounds differently, ~1e-7 in gradients);
    # a cached image's features come from another batch, which a BLAS may round differently.
    tolerance = 1e-5 if "loss_chunk_logits" in changes else 1e-6
    np.testing.assert_allclose(histories[1], histories[0], rtol=0, atol=tolerance)
    assert tower_images == [12, 6 if changes.get("cache_image_features") else 12]


def test_host_mmap_threshold_is_set_once_per_cpu_run_and_glibc_takes_it(setup, tmp_path, monkeypatch):
    import sys

    import llava_mini.train.loop as loop
    from llava_mini.train.memory import return_freed_host_memory

    calls = []
    monkeypatch.setattr(loop, "return_freed_host_memory", lambda n: calls.append(n) or True)
    for threshold in (None, 2 ** 20):
        cfg = config(tmp_path, stage=2, max_steps=1, host_mmap_threshold=threshold)
        train(add_lora(make_model(setup), cfg), setup["dataset"], setup["collator"], cfg)
    assert calls == [2 ** 20]
    # 32 MiB: what glibc's own rule reaches anyway, so the rest of this test process allocates as before
    assert return_freed_host_memory(2 ** 25) is sys.platform.startswith("linux")


def test_cached_features_need_a_frozen_tower(setup, tmp_path):
    cfg = config(tmp_path, stage=2, cache_image_features=True)
    model = add_lora(make_model(setup), cfg)
    model.vision_tower.requires_grad_(True)
    with pytest.raises(ValueError, match="frozen vision tower"):
        train(model, setup["dataset"], setup["collator"], cfg)


def test_batch_size_is_global_and_accumulation_is_derived():
    cfg = TrainConfig(batch_size=32, micro_batch_size=4)
    assert cfg.accumulation_steps(1) == 8 and cfg.accumulation_steps(2) == 4
    assert TrainConfig(batch_size=16).accumulation_steps(2) == 1
    with pytest.raises(ValueError, match="multiple"):
        TrainConfig(batch_size=10, micro_batch_size=4).accumulation_steps(1)


# ----------------------------------------------------------------------------- checkpoints, merging, figures


def test_checkpoint_reloads_and_merged_model_exports(setup, tmp_path):
    cfg = config(tmp_path, stage=2, max_steps=3)
    model = add_lora(make_model(setup), cfg)
    result = train(model, setup["dataset"], setup["collator"], cfg)
    batch = setup["collator"]([setup["dataset"][i] for i in range(3)])
    batch.pop("id", None)
    with torch.no_grad():
        trained = model(**batch).loss
        reloaded = load_checkpoint(result.checkpoint_dir)
        assert reloaded.language_model.peft_config  # adapters came back
        assert torch.allclose(reloaded(**batch).loss, trained, atol=1e-6)
        merged = merge_lora(reloaded)
        assert not any("lora_" in n for n, _ in merged.named_parameters())
        assert torch.allclose(merged(**batch).loss, trained, atol=1e-5)
    processor = CLIPImageProcessor.from_pretrained(setup["vision"])
    out = merged.export_to_transformers(tmp_path / "hf", setup["tokenizer"], processor)
    assert (out / "model.safetensors").exists()


def test_plot_loss_writes_a_figure(tmp_path):
    history = [{"step": s, "loss": 3 / s, "lr": 1e-3 * (1 - s / 40)} for s in range(1, 41)]
    fig = plot_loss(history, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert fig.axes[0].get_xlabel() == "optimizer step"


def test_course_model_trains_once_then_loads(setup, tmp_path, monkeypatch):
    """course_model("lora") builds stage 1 first, then stage 2 from its projector; a second call loads."""
    from llava_mini import config as presets
    from llava_mini.course import course_model

    work = tmp_path / "work"
    monkeypatch.setenv("LLAVA_MINI_WORK", str(work))
    records_file = work / "data" / "records.json"
    records_file.parent.mkdir(parents=True)
    records_file.write_text(setup["records"].read_text())
    stages = presets._stages(stage1=dict(max_steps=2, batch_size=4, lr=1e-2),
                             lora=dict(max_steps=2, batch_size=4, lr=1e-2, lora_r=4, lora_alpha=8, lora_dropout=0.0))
    test_preset = presets.get_preset(
        "tiny", model={"vision": str(setup["vision"]), "lm": str(setup["lm"])}, stages=stages,
        data={"source": "files", "stage1_file": "data/records.json", "instruct_file": "data/records.json",
              "image_folder": str(setup["images"]), "max_length": 128})
    monkeypatch.setitem(presets.PRESETS, "tiny", test_preset)

    model, tokenizer, processor = course_model("lora", progress=False)
    checkpoints = work / "checkpoints"
    (stage1,), (lora,) = checkpoints.glob("tiny-stage1-*"), checkpoints.glob("tiny-lora-*")
    assert (stage1 / "final" / "projector.safetensors").exists() and (lora / "final" / "adapter").exists()
    stamp = (lora / "final" / "run.json").stat().st_mtime_ns
    again, _, _ = course_model("lora", progress=False)
    assert (lora / "final" / "run.json").stat().st_mtime_ns == stamp  # loaded, not retrained
    for a, b in zip(model.projector.parameters(), again.projector.parameters()):
        assert torch.equal(a, b)
    assert tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id

    # Other training records (a bigger world, a new teacher): another key, so it is trained anew.
    records_file.write_text(json.dumps(json.loads(records_file.read_text())[:-1]))
    course_model("lora", progress=False)
    assert len(list(checkpoints.glob("tiny-lora-*"))) == 2
    assert (lora / "final" / "run.json").stat().st_mtime_ns == stamp  # the old one is left as it was


def test_precision_can_change_between_runs_in_one_process(setup, tmp_path):
    """A notebook trains fp32, then bf16 autocast: accelerate's one-per-process state must not refuse."""
    for precision in ("fp32", "bf16", "fp32"):
        cfg = config(tmp_path, stage=1, max_steps=1, precision=precision, output_dir=str(tmp_path / precision))
        result = train(freeze_for_stage1(make_model(setup)), setup["dataset"], setup["collator"], cfg)
        assert np.isfinite(result.history[0]["loss"])


def test_type_repeats_weights_the_response_types_and_names_mistakes():
    records = [{"id": f"{i:07d}_{kind}"} for i in range(3) for kind in ("conversation", "detail", "complex")]
    mixed = repeat_types(records, {"conversation": 3, "complex": 0})
    counts = {kind: sum(r["id"].endswith(kind) for r in mixed) for kind in ("conversation", "detail", "complex")}
    assert counts == {"conversation": 9, "detail": 3, "complex": 0}
    assert repeat_types(records, None) is records
    with pytest.raises(ValueError, match="conversaton"):
        repeat_types(records, {"conversaton": 2})
    with pytest.raises(ValueError, match="whole numbers"):
        repeat_types(records, {"detail": 1.5})
    assert _parse_value('{"conversation": 3}') == {"conversation": 3}
