"""Precision from the hardware: each device simulated through torch.cuda's answers (T4, V100, A100, H100, the
CPU); the towers and the 4-bit matmuls follow the choice; the fp16 path trains with loss scaling."""

import math

import pytest
import torch
from transformers import CLIPImageProcessor

from llava_mini.config import TrainConfig, get_preset
from llava_mini.course import load_base
from llava_mini.model import LlavaCollator, LlavaInstructDataset, build
from llava_mini.train import compute_dtype, freeze_for_stage1, qlora_quantization_config, resolve_precision, train
from llava_mini.train.loop import _accelerator
from stand_ins import (COLOURS, IMAGE_SIZE, PATCH, SHAPES, bpe_tokenizer, one_thread, tiny_llama,  # noqa: F401
                       tiny_processor, tiny_vision, write_records)

# name: (compute capability, what "auto" must choose); None: no GPU
DEVICES = {"T4": ((7, 5), "fp16"), "V100": ((7, 0), "fp16"), "A100": ((8, 0), "bf16"), "H100": ((9, 0), "bf16"),
           "CPU": (None, "fp32")}


def simulate(monkeypatch, capability, torch_knows_emulation=True):
    """torch.cuda as it answers on a GPU of this compute capability (None: no GPU). Like the real one, plain
    is_bf16_supported() counts emulation (True on every CUDA GPU); including_emulation=False counts sm_80+.
    An older torch has no including_emulation keyword."""
    def is_bf16_supported(including_emulation=True):
        return capability is not None and (including_emulation or capability >= (8, 0))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: capability is not None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        is_bf16_supported if torch_knows_emulation else lambda: is_bf16_supported())


@pytest.mark.parametrize("torch_knows_emulation", [True, False], ids=["torch with including_emulation", "older torch"])
@pytest.mark.parametrize("device", DEVICES)
def test_auto_precision_follows_the_device(monkeypatch, device, torch_knows_emulation):
    capability, expected = DEVICES[device]
    simulate(monkeypatch, capability, torch_knows_emulation)
    assert resolve_precision("auto") == expected
    assert resolve_precision("bf16") == "bf16" and resolve_precision("fp32") == "fp32"  # asked for: as asked
    assert qlora_quantization_config("auto").bnb_4bit_compute_dtype == compute_dtype(expected)


def test_a_t4_claims_bf16_when_emulation_counts(monkeypatch):
    """Why including_emulation=False matters: the plain question says yes on a T4."""
    simulate(monkeypatch, DEVICES["T4"][0])
    assert torch.cuda.is_bf16_supported() and resolve_precision("auto") == "fp16"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    corpus = [f"USER: What colour is the {s}? ASSISTANT: The {s} is {c}." for s in SHAPES for c in COLOURS] * 3
    tokenizer = bpe_tokenizer(corpus)
    # Towers saved in fp16: the default of transformers 5 would keep that dtype; the precision must decide.
    tiny_vision(seed=0).half().save_pretrained(root / "vision")
    tiny_processor().save_pretrained(root / "vision")
    tiny_llama(len(tokenizer), seed=1, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id).half().save_pretrained(root / "lm")
    tokenizer.save_pretrained(root / "lm")
    records, images = write_records(root, n=8)
    dataset = LlavaInstructDataset(records, images, tokenizer, CLIPImageProcessor.from_pretrained(root / "vision"),
                                   (IMAGE_SIZE // PATCH) ** 2)
    return {"root": root, "tokenizer": tokenizer, "dataset": dataset, "collator": LlavaCollator(tokenizer.pad_token_id)}


@pytest.mark.parametrize("device", ["T4", "A100", "CPU"])
def test_the_towers_load_in_the_chosen_precision_and_the_projector_trains_in_fp32(setup, monkeypatch, device):
    capability, expected = DEVICES[device]
    preset = get_preset("tiny", model={"vision": str(setup["root"] / "vision"), "lm": str(setup["root"] / "lm")})
    simulate(monkeypatch, capability)
    model = load_base(preset, setup["tokenizer"], precision="auto", device="cpu")  # (no real GPU to load onto)
    assert model.vision_tower.dtype == model.language_model.dtype == compute_dtype(expected)
    assert {p.dtype for p in model.projector.parameters()} == {torch.float32}  # master weights for AdamW/GradScaler
    ids = torch.tensor([[setup["tokenizer"].convert_tokens_to_ids("<image>")] * model.num_image_tokens])
    assert model.embed_inputs(ids, torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)).dtype == compute_dtype(expected)


def fp16_accelerator(init_scale: float):
    """The loop's fp16 Accelerator with a loss scaler. accelerate makes its GradScaler on GPUs only (fp16 on
    the CPU is plain fp32 there); give it torch's CPU GradScaler, as it would the CUDA one, to run that path."""
    accelerator = _accelerator("fp16")
    assert accelerator.mixed_precision == "fp16" and accelerator.scaler is None
    accelerator.scaler, accelerator.native_amp = torch.amp.GradScaler("cpu", init_scale=init_scale), True
    return accelerator


def short_run(setup, tmp_path, precision, accelerator=None):
    """Two stage-1 steps (batch 4, clipping at 1.0): (first history row, projector weights before, after)."""
    torch.manual_seed(0)
    lm = setup["root"] / "lm"
    model = freeze_for_stage1(build(setup["root"] / "vision", lm, image_token_id=setup["tokenizer"].convert_tokens_to_ids(
        "<image>"), torch_dtype=torch.float32))
    before = model.projector.linear_1.weight.detach().clone()
    cfg = TrainConfig(output_dir=str(tmp_path / precision), max_steps=2, batch_size=4, lr=1e-2, progress=False,
                      precision=precision, warmup_ratio=0.0)
    history = train(model, setup["dataset"], setup["collator"], cfg, accelerator=accelerator).history
    return history[0], before, model.projector.linear_1.weight.detach()


def test_fp16_scales_the_loss_unscales_before_clipping_and_skips_overflow_steps(setup, tmp_path):
    reference, _, _ = short_run(setup, tmp_path, "fp32")
    # The gradient norm is that of the true gradients (clipping saw them unscaled), not 4096 times it.
    accelerator = fp16_accelerator(init_scale=2.0 ** 12)
    scaled, before, after = short_run(setup, tmp_path, "fp16", accelerator)
    assert scaled["grad_norm"] == pytest.approx(reference["grad_norm"], rel=0.05)
    assert scaled["loss"] == pytest.approx(reference["loss"], rel=0.05) and not torch.equal(before, after)
    assert scaled["lr"] < 1e-2  # the cosine schedule moved on
    # A scale that overflows fp16: the scaler skips the step (weights and schedule unchanged) and backs off.
    accelerator = fp16_accelerator(init_scale=2.0 ** 40)
    overflow, before, after = short_run(setup, tmp_path, "fp16", accelerator)
    assert not math.isfinite(overflow["grad_norm"]) and torch.equal(before, after) and overflow["lr"] == 1e-2
    assert accelerator.scaler.get_scale() < 2.0 ** 40
