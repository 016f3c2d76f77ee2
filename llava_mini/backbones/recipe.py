"""The backbones' sizes and budgets, and the one training loop that keeps each phase within its budget."""

import json
import math
import time
from dataclasses import dataclass

import torch

from llava_mini.config import ANSWER_TOKENS
from llava_mini.train.precision import has_native_bf16


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
    lm_steps: int = 4_000
    lm_batch: int = 32
    lm_lr: float = 2e-3
    lm_seq_len: int = 384
    lm_snapshot_every: int = 600   # save the LM every this many steps under <out>/snapshots (0: never)
    lm_scenes: int = 20_000       # scenes whose captions and text-scene chats the LM reads
    lm_drills: int = 2            # drill chats (teacher.write_drill) per scene, beside the three response types
    lm_answer_tokens: int = ANSWER_TOKENS  # longest answer when the build measures the text reference
    lm_test_scenes: int = 300
    lm_init: str = ""             # a backbones folder (tokenizer/, lm/) to continue from, instead of a new LM
    # wall-clock budgets (train_in_budget cuts the step count to fit them), so one recipe runs on a CPU or a GPU
    vision_minutes: float = 25.0
    lm_minutes: float = 85.0   # the CPU build; a GPU finishes lm_steps long before

    @classmethod
    def toy(cls) -> "BackboneRecipe":
        return cls(vocab_size=400, vision_hidden=32, vision_layers=2, vision_heads=2, text_hidden=32,
                   text_layers=1, embed_dim=16, lm_hidden=32, lm_layers=2, lm_heads=2, lm_intermediate=64,
                   n_scenes=64, vision_steps=3, vision_batch=16, lm_steps=3, lm_batch=4, lm_seq_len=64,
                   lm_scenes=40, lm_test_scenes=8, lm_answer_tokens=8,
                   lm_snapshot_every=0)


def train_in_budget(modules: list, loss_fn, device: str, lr: float, steps: int, minutes: float, log=print,
                    after_step=lambda step: None, max_grad_norm: float | None = 1.0, bf16: bool | None = None,
                    **adamw) -> list[dict]:
    """Train `modules` with AdamW and a cosine schedule for `steps` steps or `minutes`, whichever ends first.

    loss_fn(logging) -> (loss, {name: 0-dim tensor}) draws and scores one batch (in bf16 autocast if ``bf16``;
    default: where the device computes bf16 natively, ``train.precision.has_native_bf16``).
    after_step(step) runs after each optimizer step (e.g. to save a snapshot).
    After 60 steps the step count is cut to what fits in `minutes`, and the cosine then spans the steps that
    fit (a library schedule cannot shrink its horizon mid-run). Returns every 50th step and the last with
    their values; every 500th is also logged."""
    params = [p for module in modules for p in module.to(device).train().parameters()]
    opt = torch.optim.AdamW(params, lr=lr, **adamw)
    amp = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=has_native_bf16(device) if bf16 is None else bf16)
    history, start, total, step, more = [], time.time(), steps, 0, True
    while more:
        warmup = max(1, int(0.03 * total))  # linear warmup, then cosine decay to 0 at `total`
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        for group in opt.param_groups:
            group["lr"] = lr * (step + 1) / warmup if step < warmup else lr * 0.5 * (1 + math.cos(math.pi * progress))
        with amp:
            loss, values = loss_fn(step % 50 == 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        opt.step()
        after_step(step)
        if step in (19, 59) and torch.cuda.is_available():
            torch.cuda.synchronize()  # time finished work, not queued kernels
        if step == 19:  # the first steps include warm-up overheads: time the next 40
            t20 = time.time()
        if step == 59:
            total = max(60, min(total, int(minutes * 60 / ((time.time() - t20) / 40))))
        more = step + 1 < total
        if step % 50 == 0 or not more:
            history.append({"step": step, "planned": total, **{k: round(v.item(), 4) for k, v in values.items()},
                            "seconds": round(time.time() - start, 1)})
            if step % 500 == 0 or not more:
                log(json.dumps(history[-1]))
        step += 1
    for module in modules:
        module.eval()
    return history
