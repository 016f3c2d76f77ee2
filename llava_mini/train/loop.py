"""Stage 1 (feature alignment) and stage 2 (instruction tuning, LoRA / QLoRA) of LLaVA, in one loop.

    stage 1: vision tower and LM frozen, projector trained                      (paper lr 2e-3, v1.5 1e-3)
    stage 2: LoRA adapters on every linear layer of the LM (not lm_head), projector trained with its own
             learning rate (v1.5: 2e-4 / 2e-5); QLoRA: the LM's linear weights stored in 4-bit NF4
    both:    AdamW without weight decay, cosine schedule with 3% warmup, gradient clipping at 1.0

Plain PyTorch driven by ``accelerate.Accelerator`` (mixed precision, gradient all-reduce, devices, the
saved training state), so the same ``train()`` runs in a notebook, under ``accelerate launch`` and under
``torchrun --nproc_per_node N``; a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from llava_mini.config import TrainConfig
from llava_mini.model import IGNORE_INDEX, LlavaMini
from llava_mini.train.adapters import param_groups
from llava_mini.train.checkpoints import (keep_trainable_only, load_training_state, resume_point, save_checkpoint,
                                          save_step_checkpoint)
from llava_mini.train.memory import return_freed_host_memory
from llava_mini.train.precision import resolve_precision
from llava_mini.train.sampler import StepSampler


@dataclass
class TrainResult:
    history: list[dict]       # one row per optimizer step: step, loss, lr, projector_lr, grad_norm, tokens, seconds
    checkpoint_dir: Path      # the final checkpoint (projector + adapters)


def train(model: LlavaMini, dataset, collator, cfg: TrainConfig, resume_from: str | Path | None = None,
          accelerator=None, run_info: dict | None = None) -> TrainResult:
    """Train ``model`` (prepared with ``freeze_for_stage1`` or ``add_lora``) for ``cfg.max_steps`` optimizer
    steps of ``cfg.batch_size`` examples (all processes and accumulated micro-batches together) from
    ``dataset`` (``LlavaInstructDataset`` items) batched by ``collator``. ``resume_from``: a step checkpoint
    folder, or ``"latest"`` (the newest under ``cfg.output_dir``); ``run_info``: JSON-able entries added to
    every checkpoint's run.json.
    """
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    accelerator = accelerator or _accelerator(resolve_precision(cfg.precision))
    if accelerator.step_scheduler_with_optimizer and accelerator.num_processes > 1:  # it would step once per process
        raise ValueError("pass an Accelerator(step_scheduler_with_optimizer=False): train() steps the scheduler")
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    accumulation = cfg.accumulation_steps(world)
    set_seed(cfg.seed + rank)  # python, numpy, torch: dropout differs across processes, data order does not
    if cfg.host_mmap_threshold is not None and device.type == "cpu":
        if not return_freed_host_memory(cfg.host_mmap_threshold):
            warnings.warn("host_mmap_threshold needs glibc's malloc (Linux); here it does nothing")

    groups = param_groups(model, cfg)
    if cfg.cache_image_features and any(p.requires_grad for p in model.vision_tower.parameters()):
        raise ValueError("cache_image_features needs a frozen vision tower: its features would change")
    features = {} if cfg.cache_image_features else None  # pixels' digest -> (N, D_vision), this run only
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(every=cfg.checkpoint_every, keep_matmul_outputs=cfg.keep_matmul_outputs)
    model.train()
    model.vision_tower.eval()  # frozen: no dropout there; the LM keeps train mode for LoRA dropout
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * cfg.max_steps), cfg.max_steps)
    resume_dir, start_step, history = (resume_point(resume_from, cfg.output_dir) if resume_from is not None
                                       else (None, 0, []))
    wrapped, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    hooks = keep_trainable_only(accelerator)

    lengths = dataset.lengths() if cfg.group_by_length and hasattr(dataset, "lengths") else None
    sampler = StepSampler(len(dataset), cfg.batch_size, cfg.micro_batch(world), world, rank, cfg.seed,
                          start_step * accumulation, cfg.max_steps * accumulation, lengths=lengths)
    batches = iter(DataLoader(dataset, batch_sampler=sampler, collate_fn=collator, num_workers=cfg.num_workers))
    if resume_dir is not None:  # (after iter(): it draws a seed from the RNG that this restores)
        load_training_state(accelerator, resume_dir)

    bar = tqdm(total=cfg.max_steps, initial=start_step, desc=f"stage {cfg.stage}",
               disable=not (cfg.progress and accelerator.is_main_process), dynamic_ncols=True)
    for step in range(start_step + 1, cfg.max_steps + 1):
        started = time.perf_counter()
        micro_batches = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in
                          cached_features(model, next(batches), features, accelerator).items() if k != "id"}
                         for _ in range(accumulation)]
        # The loss is the mean over all answer tokens of the global batch (each micro-batch's summed loss /
        # the global count): a mean per micro-batch, like a plain loop's or accelerate's accumulate(), would
        # weight short answers more in small micro-batches, so 1 process x 4 and 2 x 2 would train differently.
        labelled = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro_batches)  # shifted, as the loss
        global_items = accelerator.reduce(torch.tensor(labelled, device=device), "sum")
        step_loss = torch.zeros((), device=device)
        for i, batch in enumerate(micro_batches):
            with accelerator.no_sync(wrapped) if i < accumulation - 1 else contextlib.nullcontext():
                loss = wrapped(**batch, num_items_in_batch=global_items, loss_chunk_logits=cfg.loss_chunk_logits).loss
                accelerator.backward(loss * world)  # DDP averages over processes; loss is a share of the global mean
            step_loss += loss.detach().float()
        grad_norm = None if cfg.max_grad_norm is None else float(
            accelerator.clip_grad_norm_([p for g in groups for p in g["params"]], cfg.max_grad_norm))
        optimizer.step()
        if not optimizer.step_was_skipped:  # fp16: the scaler may skip an overflow step
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
        history.append({"step": step, "loss": float(accelerator.reduce(step_loss, "sum")),
                        "lr": optimizer.param_groups[0]["lr"], "projector_lr": lrs.get("projector"),
                        "grad_norm": grad_norm, "tokens": int(global_items), "seconds": time.perf_counter() - started})
        bar.update(1)
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}")
        if cfg.save_every and step % cfg.save_every == 0 and step < cfg.max_steps:
            save_step_checkpoint(accelerator, model, cfg, history, step, run_info)
    bar.close()

    final = Path(cfg.output_dir) / "final"
    if accelerator.is_main_process:
        save_checkpoint(model, final, cfg, history, run_info)
    accelerator.wait_for_everyone()
    for hook in hooks:
        hook.remove()
    accelerator.unwrap_model(wrapped, keep_fp32_wrapper=False)  # drop DDP and the autocast patched onto forward
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_disable()
    model.eval()
    return TrainResult(history=history, checkpoint_dir=final)


def cached_features(model: LlavaMini, batch: dict, cache: dict | None, accelerator) -> dict:
    """batch["pixel_values"] (B, 3, H, W), on the CPU -> batch["image_features"] (B, N, D_vision), each image's
    computed once per run (under the loop's autocast, as the model's forward would) and reused after. Keyed by
    a digest of the pixels: the same image in two records or two epochs hits, an augmented one misses, so a
    hit is always the right features. ``cache`` None: the batch as given."""
    if cache is None or batch.get("pixel_values") is None:  # (a batch of text-only records has no pixels)
        return batch
    pixels = batch.pop("pixel_values")
    keys = [hashlib.blake2b(p.contiguous().view(torch.uint8).numpy(), digest_size=16).digest() for p in pixels]
    new = {key: i for i, key in enumerate(keys) if key not in cache}  # (an image twice in a batch: once)
    if new:
        with torch.no_grad(), accelerator.autocast():
            cache.update(zip(new, model.image_features(pixels[list(new.values())].to(model.device)).cpu()))
    return {**batch, "image_features": torch.stack([cache[key] for key in keys])}


def _accelerator(precision: str):
    """An Accelerator for this precision, which steps no scheduler by itself (train() does, once a step)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, is_initialized

    mixed_precision = {"fp32": "no"}.get(precision, precision)
    if is_initialized() and AcceleratorState().mixed_precision != mixed_precision:
        # accelerate allows one precision per process and has no public way to change it, but a notebook
        # may train fp32 then bf16: forget the precision (the process group, PartialState, is kept).
        AcceleratorState._reset_state(reset_partial_state=False)
    # Under torchrun without a GPU, accelerate joins the process group only when told cpu=True;
    # otherwise every process would train alone and all of them would write the checkpoints.
    launched_on_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    return Accelerator(mixed_precision=mixed_precision, cpu=launched_on_cpu, step_scheduler_with_optimizer=False)
