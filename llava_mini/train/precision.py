"""Training precision: what "auto" means on this hardware, and the QLoRA 4-bit recipe."""

from __future__ import annotations

from pathlib import Path

import torch

from llava_mini.config import PRECISIONS


def resolve_precision(precision: str = "auto") -> str:
    """"auto" -> what the hardware does well: bf16 on GPUs with native bf16 (Ampere, sm_80, and newer), fp16
    on older ones (T4 sm_75, V100 sm_70; the loop scales the loss there), fp32 on the CPU (bf16 autocast
    works there too, but fp32 is exact and the default; ask for "bf16" to trade accuracy for ~1.3x speed)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if has_native_bf16() else "fp16"
    return "fp32"


def has_native_bf16(device: str = "cuda") -> bool:
    """Whether the device computes in bf16 itself: the current GPU, or for "cpu" a CPU with AVX-512 BF16 or AMX
    (without them an LM step of the backbone build took 88 s in bf16 autocast against 3.2 s in fp32). Plain
    ``is_bf16_supported()`` also counts emulation, which says True on a T4, where bf16 is only emulated (slowly)."""
    if device.startswith("cpu"):
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # a torch without including_emulation: native bf16 came with compute capability 8.0
        return torch.cuda.get_device_capability() >= (8, 0)


def compute_dtype(precision: str) -> torch.dtype:
    """Dtype of frozen weights (both towers) and of 4-bit matmuls for a precision."""
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[resolve_precision(precision)]


def qlora_quantization_config(precision: str = "auto"):
    """The QLoRA recipe: NF4 weights, double quantization (the quantization constants are quantized
    too, ~0.4 bit/parameter saved), matmuls in the training precision. Pass it to ``build``;
    only the LM is quantized (vision tower and projector are not)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype(precision))
