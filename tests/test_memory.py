"""The memory estimate: sane orderings, the H100 anchor, and counting formulas that match real modules."""

import pytest
from transformers import AutoConfig, CLIPVisionModel, LlamaForCausalLM

from llava_mini.config import get_preset
from llava_mini.paths import DATA_DIR
from llava_mini.train import estimate_memory


def test_tiny_shape_matches_the_shipped_backbones():
    shape = get_preset("tiny").shape
    vision = AutoConfig.from_pretrained(DATA_DIR / "backbones" / "vision").vision_config
    lm = AutoConfig.from_pretrained(DATA_DIR / "backbones" / "lm")
    assert (shape.vision_hidden, shape.vision_layers, shape.vision_intermediate) == (
        vision.hidden_size, vision.num_hidden_layers, vision.intermediate_size)
    assert (shape.image_size, shape.patch_size) == (vision.image_size, vision.patch_size)
    assert (shape.lm_hidden, shape.lm_layers, shape.lm_intermediate, shape.lm_heads, shape.lm_kv_heads) == (
        lm.hidden_size, lm.num_hidden_layers, lm.intermediate_size, lm.num_attention_heads, lm.num_key_value_heads)
    assert (shape.vocab_size, shape.tied_embeddings) == (lm.vocab_size, lm.tie_word_embeddings)
    # The counting formulas agree with real modules of that shape.
    lm_params = sum(p.numel() for p in LlamaForCausalLM(lm).parameters())
    vision_params = sum(p.numel() for p in CLIPVisionModel(vision).parameters())
    assert shape.lm_linear_params() + shape.lm_other_params() == pytest.approx(lm_params, rel=0.01)
    assert shape.vision_params() == pytest.approx(vision_params, rel=0.01)


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
