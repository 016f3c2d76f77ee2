"""Training precision: what "auto" means on this hardware, and the QLoRA 4-bit recipe."""

from __future__ import annotations

import torch

from llava_mini.config import PRECISIONS


def resolve_precision(precision: str = "auto") -> str:
    """"auto" -> what the hardware does well: bf16 on GPUs that support it, fp16 on those that do not
    (a T4 has no bf16), fp32 on the CPU (bf16 autocast works there too, but fp32 is exact and the
    default; ask for "bf16" to trade accuracy for ~1.3x speed)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def compute_dtype(precision: str) -> torch.dtype:
    """Dtype of frozen weights and of 4-bit matmuls for a precision."""
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[resolve_precision(precision)]


def qlora_quantization_config(precision: str = "auto"):
    """The QLoRA recipe: NF4 weights, double quantization (the quantization constants are quantized
    too, ~0.4 bit/parameter saved), matmuls in the training precision. Pass it to ``build``;
    only the LM is quantized (vision tower and projector are not)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype(precision))
