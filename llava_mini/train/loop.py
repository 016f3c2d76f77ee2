"""Stage 1 (feature alignment) and stage 2 (instruction tuning, LoRA / QLoRA) of LLaVA, in one loop.

    stage 1: vision tower frozen, LM frozen, projector trained            (paper lr 2e-3, v1.5 1e-3)
    stage 2: vision tower frozen, LoRA adapters on every linear layer of the LM (not lm_head),
             projector trained with its own learning rate                  (v1.5: 2e-4 / 2e-5)
             QLoRA: the same, with the LM's linear weights stored in 4-bit NF4 (double quantization);
             the projector stays fp32 and unquantized.

Both stages: AdamW without weight decay, cosine schedule with 3% warmup, gradient clipping at 1.0.

The loop is plain PyTorch driven by ``accelerate.Accelerator``: mixed precision, gradient all-reduce
across processes and device placement come from it, so the same ``train()`` runs in a notebook, under
``accelerate launch`` and under ``torchrun --nproc_per_node N``. What we do ourselves, and why:

* One optimizer step sees ``batch_size`` examples in total (all processes x all accumulation micro-
  batches). The loss is the mean over *all answer tokens of that global batch*: each micro-batch's
  summed cross-entropy is divided by the global token count (``num_items_in_batch``). A mean per
  micro-batch would weight a short answer more in a small micro-batch than in a large one, so 1 process
  x 4 examples and 2 processes x 2 examples would train different models. With the global count they
  give the same gradients (a test checks it).
* Batches come from a stateless sampler: micro-step k of the run reads a fixed slice of a seeded
  permutation. Resuming at step k needs no sampler state, only the step number. Together with the
  saved optimizer, scheduler and RNG states, a resumed run repeats an uninterrupted one exactly.

Checkpoints (``output_dir/step-000100/`` every ``save_every`` steps, ``output_dir/final/`` at the end)::

    run.json                 what to rebuild: stage, base model names, projector type, LoRA / QLoRA settings
    projector.safetensors    the projector (LlavaMini layout)
    adapter/                 peft LoRA adapters of the LM (stage 2); load with PeftModel.from_pretrained
    history.json             the loss history so far
    training_state/          (step checkpoints) trainable weights, optimizer, scheduler, RNG per process
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Sampler

from llava_mini.config import PRECISIONS, TrainConfig
from llava_mini.model.llava import CONFIG_NAME, IGNORE_INDEX, PROJECTOR_WEIGHTS, LlavaMini, build



# ============================================================================ configuration




@dataclass
class TrainResult:
    history: list[dict]       # one row per optimizer step: step, loss, lr, seconds, ...
    checkpoint_dir: Path      # the final checkpoint (projector + adapters)


# ============================================================================ precision


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

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(precision),
    )


# ============================================================================ what is trained


def _base_lm(model: LlavaMini):
    """The transformers LM under a possible peft wrapper."""
    lm = model.language_model
    return lm.get_base_model() if hasattr(lm, "get_base_model") else lm


def is_quantized(model: LlavaMini) -> bool:
    return bool(getattr(_base_lm(model), "is_loaded_in_4bit", False))


def has_lora(model: LlavaMini) -> bool:
    return hasattr(model.language_model, "peft_config")


def freeze_for_stage1(model: LlavaMini) -> LlavaMini:
    """Stage 1: only the projector learns; the vision tower and the LM are frozen."""
    model.requires_grad_(False)
    model.projector.requires_grad_(True)
    return model


def add_lora(model: LlavaMini, cfg: TrainConfig) -> LlavaMini:
    """Stage 2: LoRA adapters on the LM's linear layers, projector trainable, everything else frozen.

    The peft wrapper goes around ``model.language_model`` only, so the vision tower and the projector
    can never receive adapters, and ``model.language_model.save_pretrained`` writes just the adapters.
    With a 4-bit LM (QLoRA), ``prepare_model_for_kbit_training`` runs on the LM alone first: it upcasts
    the LM's remaining small fp16/bf16 weights (norms, embeddings) to fp32 for stable training and
    freezes the base weights; run on the whole model it would also touch the vision tower.
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if has_lora(model):
        raise ValueError("the model already has LoRA adapters")
    model.requires_grad_(False)
    if is_quantized(model):
        # Checkpointing is switched on by train() for every mode alike (non-reentrant, see LlavaMini).
        model.language_model = prepare_model_for_kbit_training(model.language_model, use_gradient_checkpointing=False)
    lora_config = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model.language_model = get_peft_model(model.language_model, lora_config)
    model.projector.requires_grad_(True)
    return model


def merge_lora(model: LlavaMini) -> LlavaMini:
    """Fold the adapters into the LM's weights and drop peft: a plain LlavaMini that
    ``export_to_transformers`` can write. A 4-bit LM cannot be merged exactly: load the checkpoint
    unquantized (``load_checkpoint(dir, qlora=False)``) and merge that."""
    if not has_lora(model):
        return model
    if is_quantized(model):
        raise ValueError(
            "cannot merge adapters into a 4-bit LM exactly: load the checkpoint with load_checkpoint(dir, qlora=False) "
            "(the same adapters on the unquantized LM), then merge"
        )
    model.language_model = model.language_model.merge_and_unload()
    return model


def trainable_parameters(model: LlavaMini) -> dict[str, int]:
    """Counts: {"projector": ..., "lora": ..., "other": ..., "frozen": ...}."""
    counts = {"projector": 0, "lora": 0, "other": 0, "frozen": 0}
    for name, param in model.named_parameters():
        n = param.numel()
        if not param.requires_grad:
            counts["frozen"] += n
        elif name.startswith("projector."):
            counts["projector"] += n
        elif "lora_" in name:
            counts["lora"] += n
        else:
            counts["other"] += n
    return counts


def _param_groups(model: LlavaMini, cfg: TrainConfig) -> list[dict]:
    projector = [p for p in model.projector.parameters() if p.requires_grad]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("projector.")]
    if not projector and not rest:
        raise ValueError("nothing to train: call freeze_for_stage1(model) or add_lora(model, cfg) first")
    if cfg.stage == 1 and rest:
        raise ValueError(f"stage 1 trains the projector only, but {len(rest)} other tensors require grad: "
                         "call freeze_for_stage1(model)")
    if cfg.stage == 2 and not has_lora(model):
        raise ValueError("stage 2 expects LoRA adapters: call add_lora(model, cfg) first")
    groups = []
    if rest:
        groups.append({"params": rest, "lr": cfg.lr, "name": "lora"})
    if projector:
        projector_lr = cfg.projector_lr if (cfg.stage == 2 and cfg.projector_lr is not None) else cfg.lr
        groups.append({"params": projector, "lr": projector_lr, "name": "projector"})
    return groups


# ============================================================================ data order


class StepSampler(Sampler):
    """Micro-batches of indices for one process, as a pure function of the micro-step number.

    Epoch e is a permutation of the dataset seeded with (seed, e), cut into global batches of
    ``batch_size`` (an incomplete last one is dropped); optimizer step s uses global batch s. That batch
    is cut into ``accumulation x num_processes`` micro-batches of ``micro``, and process r's j-th
    micro-step of the step takes piece ``j * num_processes + r``. So every split of the same global batch
    over processes and accumulation sees the same examples per step, and starting at any micro-step
    needs no state, which makes resuming exact.

    With ``lengths``, each run of ``group`` global batches is sorted by length before it is cut (and the
    cut batches are shuffled again), so a batch holds examples of similar length and little padding:
    the same examples, ~20% fewer padded tokens on the course data (HF's group_by_length).
    """

    def __init__(self, dataset_size: int, batch_size: int, micro: int, num_processes: int, process_index: int,
                 seed: int, start: int, stop: int, lengths: list[int] | None = None, group: int = 16):
        if batch_size % (micro * num_processes):
            raise ValueError(f"batch_size {batch_size} is not a multiple of {micro} x {num_processes} processes")
        if dataset_size < batch_size:
            raise ValueError(f"the dataset has {dataset_size} examples, fewer than one batch ({batch_size})")
        self.dataset_size, self.batch_size, self.micro = dataset_size, batch_size, micro
        self.num_processes, self.rank = num_processes, process_index
        self.accumulation = batch_size // (micro * num_processes)
        self.seed, self.start, self.stop = seed, start, stop
        self.per_epoch = dataset_size // batch_size
        self.lengths = None if lengths is None else torch.as_tensor(lengths)
        self.group = group
        self._orders: dict[int, torch.Tensor] = {}

    def _order(self, epoch: int) -> torch.Tensor:
        """The epoch's indices, one global batch after another (a row per optimizer step)."""
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(self.dataset_size, generator=generator)[: self.per_epoch * self.batch_size]
            batches = order.view(self.per_epoch, self.batch_size)
            if self.lengths is not None:
                rows = []
                for chunk in order.split(self.group * self.batch_size):
                    by_length = chunk[torch.argsort(self.lengths[chunk], descending=True, stable=True)]
                    rows.append(by_length.view(-1, self.batch_size))
                batches = torch.cat(rows)
                batches = batches[torch.randperm(len(batches), generator=generator)]
            self._orders = {epoch: batches}
        return self._orders[epoch]

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        for k in range(self.start, self.stop):
            step, j = divmod(k, self.accumulation)
            epoch, position = divmod(step, self.per_epoch)
            piece = j * self.num_processes + self.rank
            yield self._order(epoch)[position, piece * self.micro: (piece + 1) * self.micro].tolist()


def count_labels(labels: torch.Tensor) -> int:
    """Answer tokens that carry a loss: shifted labels that are not -100."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


# ============================================================================ checkpoints


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def backbone_fingerprint(vision: str | Path, lm: str | Path) -> str:
    """A hash of the frozen towers a checkpoint is trained on (weights, configs, tokenizer of local folders;
    the name of hub models). A checkpoint is reused only on the same towers: a projector trained for one
    LM would be silently wrong on another of the same shape."""
    import hashlib

    digest = hashlib.sha256()
    for source in (vision, lm):
        path = Path(str(source))
        if not path.is_dir():
            digest.update(str(source).encode())
            continue
        for f in sorted(path.glob("*.safetensors")) + [path / "config.json", path / "tokenizer.json"]:
            if f.exists():
                digest.update(f.name.encode() + f.read_bytes())
    return digest.hexdigest()[:16]


def _run_info(model: LlavaMini, cfg: TrainConfig) -> dict:
    lm = _base_lm(model)
    return {
        "backbones": backbone_fingerprint(model.vision_tower.config._name_or_path, lm.config._name_or_path),
        "stage": cfg.stage,
        "vision": str(model.vision_tower.config._name_or_path),
        "lm": str(lm.config._name_or_path),
        "qlora": is_quantized(model),
        "llava_mini": model.config.to_dict(),
        "train_config": asdict(cfg),
    }


def save_checkpoint(model: LlavaMini, directory: Path, cfg: TrainConfig, history: list[dict],
                    training_state: dict | None = None) -> Path:
    """Write the model parts that training changed (projector, adapters) + run.json + history.json;
    with ``training_state`` (step, optimizer, scheduler) also what resuming needs."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")  # write aside, then rename: no half checkpoints
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.projector.state_dict().items()},
              tmp / PROJECTOR_WEIGHTS)
    (tmp / CONFIG_NAME).write_text(json.dumps(model.config.to_dict(), indent=2))
    if has_lora(model):
        model.language_model.save_pretrained(tmp / "adapter")
    (tmp / "run.json").write_text(json.dumps(_run_info(model, cfg), indent=2))
    (tmp / "history.json").write_text(json.dumps(history))
    if training_state is not None:
        state_dir = tmp / "training_state"
        state_dir.mkdir()
        trainable = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trainable, state_dir / "trainable.safetensors")
        torch.save(training_state["optimizer"], state_dir / "optimizer.pt")
        torch.save(training_state["scheduler"], state_dir / "scheduler.pt")
        torch.save(_rng_state(), state_dir / "rng_state_0.pt")
        (state_dir / "step.json").write_text(json.dumps({"step": training_state["step"]}))
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    return directory


def load_checkpoint(
    directory: str | Path,
    vision: str | Path | None = None,
    lm: str | Path | None = None,
    qlora: bool | None = None,
    precision: str = "auto",
    device: str | torch.device | None = None,
    trainable: bool = False,
    attn_implementation: str | None = None,
) -> LlavaMini:
    """Rebuild a trained LlavaMini from a checkpoint folder (stage 1 or 2).

    The base towers come from the names recorded in run.json (override with ``vision`` / ``lm``, e.g.
    when the checkpoint moved machines); ``qlora`` overrides whether the LM is loaded in 4-bit (load a
    QLoRA checkpoint with ``qlora=False`` to merge its adapters exactly). ``trainable``: adapters
    trainable (to continue training) instead of frozen for inference.
    """
    from peft import PeftModel

    directory = Path(directory)
    run = json.loads((directory / "run.json").read_text())
    config = run["llava_mini"]
    qlora = run["qlora"] if qlora is None else qlora
    precision = resolve_precision(precision)
    model = build(
        vision or run["vision"], lm or run["lm"],
        projector_type=config["projector_type"], image_token_id=config["image_token_id"],
        torch_dtype=None if precision == "fp32" else compute_dtype(precision),
        quantization_config=qlora_quantization_config(precision) if qlora else None,
        vision_feature_layer=config["vision_feature_layer"], projector_dtype=torch.float32,
        attn_implementation=attn_implementation, device=device,
    )
    model.projector.load_state_dict(load_file(directory / PROJECTOR_WEIGHTS, device=str(model.device)))
    model.requires_grad_(False)
    if (directory / "adapter").exists():
        model.language_model = PeftModel.from_pretrained(model.language_model, directory / "adapter",
                                                         is_trainable=trainable)
        model.projector.requires_grad_(trainable)
    return model.eval()


load_stage2 = load_checkpoint  # the name the notebooks use for LoRA / QLoRA checkpoints


def _step_dirs(output_dir: Path) -> list[Path]:
    return sorted(p for p in output_dir.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest resumable step checkpoint under output_dir, or None."""
    dirs = [p for p in _step_dirs(Path(output_dir)) if (p / "training_state").exists()]
    return dirs[-1] if dirs else None


# ============================================================================ the loop


def train(model: LlavaMini, dataset, collator, cfg: TrainConfig, resume_from: str | Path | None = None,
          accelerator=None) -> TrainResult:
    """Train ``model`` (prepared with ``freeze_for_stage1`` or ``add_lora``) for ``cfg.max_steps``
    optimizer steps on ``dataset`` (items as ``LlavaInstructDataset`` gives them) batched by ``collator``.

    Works unchanged in one process or several (``torchrun`` / ``accelerate launch``): the global batch
    ``cfg.batch_size`` is split across processes. ``resume_from``: a step checkpoint folder (or
    ``"latest"`` for the newest under ``cfg.output_dir``); training continues exactly where it stopped.

    Returns TrainResult(history, checkpoint_dir) with history rows
    ``{"step", "loss", "lr", "projector_lr", "grad_norm", "tokens", "seconds"}``.
    """
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    precision = resolve_precision(cfg.precision)
    if accelerator is None:
        accelerator = _accelerator(precision)
    world, rank = accelerator.num_processes, accelerator.process_index
    accumulation = cfg.accumulation_steps(world)
    micro = cfg.micro_batch(world)
    output_dir = Path(cfg.output_dir)

    torch.manual_seed(cfg.seed + rank)  # dropout differs across processes; data order does not (sampler)
    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)

    groups = _param_groups(model, cfg)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    # Frozen parts in eval mode (no dropout in the frozen tower); the LM keeps train mode for LoRA dropout.
    model.train()
    model.vision_tower.eval()
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
    warmup = math.ceil(cfg.warmup_ratio * cfg.max_steps)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, cfg.max_steps)

    start_step, history, resume_dir = 0, [], None
    if resume_from is not None:
        resume_dir = latest_checkpoint(output_dir) if str(resume_from) == "latest" else Path(resume_from)
        if resume_dir is None:
            raise FileNotFoundError(f"no resumable checkpoint under {output_dir}")
        start_step, history = _load_training_state(model, optimizer, scheduler, Path(resume_dir))

    # The scheduler is not given to accelerate: without split_batches it would step once per process.
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    trainable = [p for group in groups for p in group["params"]]

    lengths = dataset.lengths() if cfg.group_by_length and hasattr(dataset, "lengths") else None
    sampler = StepSampler(len(dataset), cfg.batch_size, micro, world, rank, cfg.seed, start_step * accumulation,
                          cfg.max_steps * accumulation, lengths=lengths)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collator, num_workers=cfg.num_workers)
    batches = iter(loader)  # (draws a base seed from the global RNG: restore the RNG only after this)
    if resume_dir is not None:
        rng_file = Path(resume_dir) / "training_state" / f"rng_state_{rank}.pt"
        if rng_file.exists():
            _set_rng_state(torch.load(rng_file, weights_only=False))

    bar = tqdm(total=cfg.max_steps, initial=start_step, desc=f"stage {cfg.stage}",
               disable=not (cfg.progress and accelerator.is_main_process), dynamic_ncols=True)
    for step in range(start_step + 1, cfg.max_steps + 1):
        started = time.perf_counter()
        micro_batches = [_to_device(next(batches), accelerator.device) for _ in range(accumulation)]
        local_items = sum(count_labels(b["labels"]) for b in micro_batches)
        global_items = accelerator.reduce(torch.tensor(local_items, device=accelerator.device), "sum")
        step_loss = torch.zeros((), device=accelerator.device)
        for i, batch in enumerate(micro_batches):
            batch.pop("id", None)
            last = i == accumulation - 1
            with (accelerator.no_sync(wrapped) if not last else contextlib.nullcontext()):
                loss = wrapped(**batch, num_items_in_batch=global_items).loss  # sum over tokens / global count
                # DDP averages gradients over processes; our loss is already a share of the global mean.
                accelerator.backward(loss * world)
            step_loss += loss.detach().float()
        grad_norm = None
        if cfg.max_grad_norm is not None:
            grad_norm = float(accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm))
        optimizer.step()
        if not getattr(optimizer, "step_was_skipped", False):  # fp16: the scaler may skip an overflow step
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        row = {
            "step": step,
            "loss": float(accelerator.reduce(step_loss, "sum")),
            "lr": optimizer.param_groups[0]["lr"],
            "projector_lr": next(g["lr"] for g in optimizer.param_groups if g["name"] == "projector")
            if any(g["name"] == "projector" for g in optimizer.param_groups) else None,
            "grad_norm": grad_norm,
            "tokens": int(global_items),
            "seconds": time.perf_counter() - started,
        }
        history.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.3f}")

        if cfg.save_every and step % cfg.save_every == 0 and step < cfg.max_steps:
            _save_step(accelerator, model, cfg, history, optimizer, scheduler, step)
    bar.close()

    final = output_dir / "final"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_checkpoint(model, final, cfg, history)
    accelerator.wait_for_everyone()
    # Drop accelerate's wrappers (DDP, the autocast patched onto forward) so later use is plain.
    accelerator.unwrap_model(wrapped, keep_fp32_wrapper=False)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_disable()
    model.eval()
    return TrainResult(history=history, checkpoint_dir=final)


def _accelerator(precision: str):
    """An Accelerator for this precision. accelerate keeps one global state per process and refuses a
    second precision; a notebook may train fp32 then bf16, so the precision part of that state is reset
    (the process group, if any, is kept)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    mixed_precision = {"fp32": "no"}.get(precision, precision)
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, mixed_precision):
        AcceleratorState._reset_state(reset_partial_state=False)
    # Under torchrun without a GPU, accelerate joins the process group only when told cpu=True;
    # otherwise every process would train alone and all of them would write the checkpoints.
    launched_on_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    return Accelerator(mixed_precision=mixed_precision, cpu=launched_on_cpu)


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _save_step(accelerator, model, cfg, history, optimizer, scheduler, step) -> None:
    output_dir = Path(cfg.output_dir)
    directory = output_dir / f"step-{step:06d}"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        optimizer_state = optimizer.state_dict()
        save_checkpoint(model, directory, cfg, history,
                        {"optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "step": step})
        if cfg.keep_checkpoints:
            for old in _step_dirs(output_dir)[:-cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    if accelerator.process_index > 0:  # every process keeps its own RNG stream (dropout)
        torch.save(_rng_state(), directory / "training_state" / f"rng_state_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()


def _load_training_state(model, optimizer, scheduler, directory: Path) -> tuple[int, list[dict]]:
    state_dir = directory / "training_state"
    if not state_dir.exists():
        raise FileNotFoundError(f"{directory} has no training_state/: only step checkpoints can be resumed")
    saved = load_file(state_dir / "trainable.safetensors")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(saved) != set(params):
        missing, extra = sorted(set(params) - set(saved))[:3], sorted(set(saved) - set(params))[:3]
        raise ValueError(f"{directory}: trainable parameters differ from the model's (missing {missing}, extra {extra}); "
                         "prepare the model the same way (freeze_for_stage1 / add_lora with the same settings)")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(saved[name])
    optimizer.load_state_dict(torch.load(state_dir / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(state_dir / "scheduler.pt", weights_only=False))
    step = json.loads((state_dir / "step.json").read_text())["step"]
    history = json.loads((directory / "history.json").read_text())
    return step, history[:step]


# ============================================================================ figures


def plot_loss(history: list[dict], path: str | Path | None = None, title: str | None = None, ax=None):
    """Training loss per step (raw and smoothed) with the learning rate on a second axis; saved to ``path``."""
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in history]
    losses = [row["loss"] for row in history]
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.5))
    else:
        fig = ax.figure
    ax.plot(steps, losses, color="tab:blue", alpha=0.35, lw=1, label="loss")
    window = max(1, len(losses) // 10)
    if window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, color="tab:blue", lw=2, label=f"mean of {window}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer tokens)")
    ax.set_title(title or "training loss")
    lr_ax = ax.twinx()
    lr_ax.plot(steps, [row["lr"] for row in history], color="tab:gray", lw=1, ls="--")
    lr_ax.set_ylabel("learning rate", color="tab:gray")
    lr_ax.tick_params(axis="y", colors="tab:gray")
    ax.legend(loc="upper right")
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


# ============================================================================ the course's checkpoints












# ============================================================================ command line
