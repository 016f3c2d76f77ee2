"""The memory estimate: shapes from config.json, sane orderings, the H100 anchor, counting formulas that
match real modules, and host RAM while loading (Colab's ~12.7 GB) with the loading path it assumes."""

import json

import pytest
import torch
from transformers import (AutoConfig, CLIPVisionModel, LlamaForCausalLM, PreTrainedModel, Qwen2Config,
                          Qwen2ForCausalLM)

from llava_mini.config import get_preset
from llava_mini.model import Projector, build
from llava_mini.paths import DATA_DIR
from llava_mini.train import estimate_memory, parameter_counts, tower_config
from llava_mini.train.memory import GIB
from stand_ins import one_thread, tiny_llama, tiny_vision  # noqa: F401


def test_shapes_come_from_each_towers_config_json():
    # Local folders (tiny) are read as they are.
    clip = AutoConfig.from_pretrained(DATA_DIR / "backbones" / "vision")
    assert tower_config("tiny", "vision").to_dict() == clip.vision_config.to_dict()
    shipped, lm = json.loads((DATA_DIR / "backbones" / "lm" / "config.json").read_text()), tower_config("tiny", "lm")
    assert [getattr(lm, k) for k in ("hidden_size", "num_hidden_layers", "vocab_size")] == [
        shipped[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size")]
    # Hub towers: their published config.json, shipped under data/shapes/<preset>/ (no network needed).
    vision, lm = tower_config("colab", "vision"), tower_config("colab", "lm")
    assert (vision.hidden_size, vision.image_size, vision.patch_size) == (768, 224, 16)
    assert (lm.hidden_size, lm.num_key_value_heads, lm.vocab_size, lm.tie_word_embeddings) == (896, 2, 151_936, True)
    vision, lm = tower_config("paper", "vision"), tower_config("paper", "lm")
    assert (vision.hidden_size, vision.image_size, vision.patch_size, lm.num_hidden_layers) == (1024, 336, 14, 32)
    assert lm.tie_word_embeddings is False and lm.vocab_size == 32_000
    # A preset pointed at a local folder reads that folder, not the shipped hub shapes.
    moved = get_preset("colab", model={"lm": str(DATA_DIR / "backbones" / "lm")})
    assert tower_config(moved, "lm").hidden_size == 256 and tower_config(moved, "vision").hidden_size == 768


def test_counting_formulas_match_real_modules():
    vision, lm = tower_config("tiny", "vision"), tower_config("tiny", "lm")
    counts = parameter_counts(vision, lm)
    assert counts["lm_linear"] + counts["lm_other"] == pytest.approx(
        sum(p.numel() for p in LlamaForCausalLM(lm).parameters()), rel=0.01)
    assert counts["vision"] == pytest.approx(sum(p.numel() for p in CLIPVisionModel(vision).parameters()), rel=0.01)
    assert counts["projector"] == sum(p.numel() for p in Projector(vision.hidden_size, lm.hidden_size).parameters())
    # Grouped-query attention and tied embeddings (Qwen2.5's layout), on a small config of that family.
    qwen = Qwen2Config(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=500, tie_word_embeddings=True)
    counts = parameter_counts(vision, qwen, lora_r=4)
    assert counts["lm_linear"] + counts["lm_other"] == pytest.approx(
        sum(p.numel() for p in Qwen2ForCausalLM(qwen).parameters()), rel=0.01)  # (q, k, v biases not counted)
    # LoRA: A (r x in) + B (out x r) on each of the 7 linears of each layer, as peft adds them.
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(Qwen2ForCausalLM(qwen), LoraConfig(r=4, target_modules="all-linear"))
    assert counts["lora"] == sum(p.numel() for n, p in lora.named_parameters() if "lora_" in n)


def test_memory_estimate_is_sane():
    for name in ("tiny", "colab", "paper"):
        for mode in ("stage1", "lora", "qlora"):
            sizes = [estimate_memory(name, mode, batch_size=b).total for b in (1, 2, 4, 8)]
            assert all(s > 0 for s in sizes) and sizes == sorted(sizes) and sizes[0] < sizes[-1], (name, mode)
        for batch in (1, 8):
            assert estimate_memory(name, "qlora", batch_size=batch).total < estimate_memory(name, "lora", batch_size=batch).total
        no_ckpt = estimate_memory(name, "lora", batch_size=8, gradient_checkpointing=False).total
        assert estimate_memory(name, "lora", batch_size=8, gradient_checkpointing=True).total < no_ckpt
    # Weights alone: 4-bit well under half of bf16 for a 7B LM.
    qlora = dict((p, g) for p, g, _ in estimate_memory("paper", "qlora").rows)
    lora = dict((p, g) for p, g, _ in estimate_memory("paper", "lora").rows)
    assert qlora["LM linear layers (NF4)"] < 0.3 * lora["LM linear layers (frozen)"]
    # The H100 anchor in design.md: Llama-2-7B shape, QLoRA r=128, batch 4 x 832 tokens, checkpointing: 11.0 GiB.
    anchor = estimate_memory("paper", "qlora", batch_size=4, seq_len=832, gradient_checkpointing=True)
    assert 9 < anchor.total < 13
    text = str(anchor)
    assert "total" in text and "LoRA r=128" in text and "NF4" in text


def test_estimates_of_the_presets_stay_what_they_were():
    """The numbers the hand-copied shapes gave, before the shapes came from config.json (GiB, stage1/lora/qlora)."""
    expected = {"tiny": (0.1290, 0.2326, 0.2283), "colab": (7.3402, 2.0750, 1.8341),
                "paper": (17.9446, 24.0315, 12.6508)}
    for name, totals in expected.items():
        got = tuple(estimate_memory(name, mode).total for mode in ("stage1", "lora", "qlora"))
        assert got == pytest.approx(totals, abs=1e-4), name


COLAB_HOST_RAM_GIB = 12.7e9 / GIB  # what a free Colab runtime has (Colab shows "12.7 GB")


def test_host_ram_while_loading_stands_beside_gpu_memory_and_fits_colab():
    for mode in ("stage1", "lora", "qlora"):
        on_gpu = estimate_memory("colab", mode, precision="fp16", device="cuda")
        assert 0 < on_gpu.host[0] < COLAB_HOST_RAM_GIB and on_gpu.host[0] < on_gpu.total, mode
        text = str(on_gpu)
        assert "host RAM" in text and "straight to the GPU" in text and "total" in text
    # Even the 7B LM loads on Colab's host, one tensor at a time; the same model whole in host RAM could not.
    assert estimate_memory("paper", "qlora", device="cuda").host[0] < COLAB_HOST_RAM_GIB
    whole = estimate_memory("paper", "lora", precision="fp32", device="cpu")
    assert whole.host[0] == whole.total > COLAB_HOST_RAM_GIB


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_towers_load_straight_onto_the_device_in_the_requested_dtype(tmp_path, monkeypatch, dtype):
    tiny_vision().save_pretrained(tmp_path / "vision")  # saved in fp32, as hub CLIP checkpoints are
    tiny_llama(300).half().save_pretrained(tmp_path / "lm")
    loads, from_pretrained = [], PreTrainedModel.from_pretrained.__func__

    def recorded(cls, *args, **kwargs):  # every tower's from_pretrained, with how it was asked to load
        loads.append((cls.__name__, kwargs.get("device_map"), kwargs.get("dtype")))
        return from_pretrained(cls, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(recorded))
    model = build(tmp_path / "vision", tmp_path / "lm", image_token_id=3, torch_dtype=dtype, device="cpu")
    # Placed by from_pretrained tensor by tensor, not built whole on the host and moved afterwards.
    assert sorted(loads) == [("CLIPVisionModel", {"": "cpu"}, dtype), ("LlamaForCausalLM", {"": "cpu"}, dtype)]
    for tower in (model.vision_tower, model.language_model):
        assert {p.dtype for p in tower.parameters()} == {dtype}
