"""The backbones' sizes and budgets, and the learning-rate schedule that keeps each phase within its budget."""

import math
import time
from dataclasses import dataclass

import torch


@dataclass
class BackboneRecipe:
    """Sizes and budgets. The defaults are what ships; `toy()` is for tests."""

    seed: int = 0
    vocab_size: int = 2048
    # vision tower: ViT on 64 px images with 8 px patches -> 8x8 = 64 patch tokens
    vision_hidden: int = 256
    vision_layers: int = 6
    vision_heads: int = 4
    patch_size: int = 8
    # CLIP text tower (only used for the contrastive objective and retrieval)
    text_hidden: int = 128
    text_layers: int = 2
    embed_dim: int = 128
    # language model
    lm_hidden: int = 256
    lm_layers: int = 4
    lm_heads: int = 4
    lm_intermediate: int = 768
    # data and budgets
    n_scenes: int = 60_000
    vision_steps: int = 12_000
    vision_batch: int = 128
    vision_lr: float = 1e-3
    lm_steps: int = 3_000
    lm_batch: int = 64
    lm_lr: float = 2e-3
    lm_seq_len: int = 256
    lm_scenes: int = 20_000       # scenes whose captions, contexts and text-only chats the LM reads
    lm_test_scenes: int = 300
    # wall-clock budgets: after a few steps the step count is cut so each phase ends within its budget
    # (the cosine schedule then spans the steps that fit), so one recipe runs on a CPU or a GPU
    vision_minutes: float = 25.0
    lm_minutes: float = 5.0

    @classmethod
    def toy(cls) -> "BackboneRecipe":
        return cls(vocab_size=400, vision_hidden=32, vision_layers=2, vision_heads=2, text_hidden=32,
                   text_layers=1, embed_dim=16, lm_hidden=32, lm_layers=2, lm_heads=2, lm_intermediate=64,
                   n_scenes=64, vision_steps=3, vision_batch=16, lm_steps=3, lm_batch=4, lm_seq_len=64,
                   lm_scenes=40, lm_test_scenes=8)


class BudgetedCosine:
    """Linear warmup then cosine decay over `total` steps, where `total` is cut once the first steps
    show that it would not fit in `minutes` of wall-clock time. (A fixed-length library schedule cannot
    shrink its horizon mid-run.)"""

    def __init__(self, optimizer, total: int, minutes: float, base_lr: float, warmup_share: float = 0.03):
        self.optimizer, self.total, self.minutes, self.base_lr = optimizer, total, minutes, base_lr
        self.warmup_share = warmup_share
        self.step_count = 0
        self._set_lr()

    def lr(self, step: int) -> float:
        warmup = max(1, int(self.warmup_share * self.total))
        if step < warmup:
            return self.base_lr * (step + 1) / warmup
        return self.base_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, self.total - warmup))))

    def step(self) -> bool:
        """Set the learning rate for the next step; False when training should stop."""
        self.step_count += 1
        if self.step_count in (20, 60) and torch.cuda.is_available():
            torch.cuda.synchronize()  # time finished work, not queued kernels
        if self.step_count == 20:  # the first steps include warm-up overheads; measure the next 40
            self._t20 = time.time()
        if self.step_count == 60:
            per_step = (time.time() - self._t20) / 40
            self.total = max(60, min(self.total, int(self.minutes * 60 / per_step)))
        self._set_lr()
        return self.step_count < self.total

    def _set_lr(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr(self.step_count)
