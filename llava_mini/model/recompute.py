"""What gradient checkpointing keeps of a decoder layer: everything recomputed, or the expensive outputs kept.

Plain checkpointing keeps each checkpointed layer's input and runs the whole layer forward again in backward.
With LoRA most of that rerun is the frozen base weights' matmuls, whose outputs do not change between the
forward and the rerun. ``keep_matmul_outputs`` is a policy for torch's selective activation checkpointing:
the outputs of matmuls with a frozen weight (the base layers: q, k, v, o, gate, up, down) and of the attention
kernel are kept, and only the cheap rest is rerun (norms, rotary embedding, activations, LoRA's own small
matmuls, and its dropout, which replays the same masks from the saved RNG state). The loss and gradients are
the same up to rounding; the memory is one layer's worth of those outputs per checkpointed layer. At the colab shape
on a 2-core CPU it was no faster than plain checkpointing (README, Benchmarks), so it is off by default.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

_MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}


def _keep_frozen_matmuls(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    # The weight is the last tensor argument of mm(x, W^T) and addmm(bias, x, W^T); LoRA's A and B train.
    if op in _MATMULS and not args[-1].requires_grad:
        return CheckpointPolicy.MUST_SAVE
    if op.__name__.startswith("_scaled_dot_product"):  # sdpa's kernels: flash (CPU, CUDA), efficient, math
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def keep_matmul_outputs_context():
    """``context_fn`` for ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``: the policy above."""
    return create_selective_checkpoint_contexts(_keep_frozen_matmuls)
