"""Checkpoints: what training changed, as safetensors + JSON, read back; step checkpoints resume exactly.

    output_dir/final/, output_dir/step-000100/, ...:  run.json (what to rebuild: stage, towers, LoRA / QLoRA),
    llava_mini.json (LlavaMini's config), projector.safetensors, adapter/ (peft, stage 2), history.json (the losses);
    step checkpoints add training_state/: accelerate's save_state (the trainable tensors only, a hook drops
    the frozen towers; optimizer, scheduler, fp16 scaler, each process's RNG) and step.json.

Nothing there is unpickled as an arbitrary object: tensors are safetensors, the rest JSON or
``torch.load(weights_only=True)`` (containers, tensors, numbers, numpy arrays), which refuses anything else.
"""

from __future__ import annotations

import pickle
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch.serialization import get_unsafe_globals_in_checkpoint

from llava_mini.config import TrainConfig
from llava_mini.files import file_fingerprint, fingerprint, read_json, write_json
from llava_mini.model import LlavaMini
from llava_mini.train.adapters import base_language_model, has_lora, is_quantized
from llava_mini.train.precision import compute_dtype, qlora_quantization_config, resolve_precision

STATE = "training_state"
__all__ = ["backbone_fingerprint", "save_checkpoint", "load_checkpoint", "latest_checkpoint"]


def backbone_fingerprint(vision: str | Path, lm: str | Path) -> str:
    """A hash of the frozen towers a checkpoint is trained on (weights, configs, tokenizer of local folders;
    the name of hub models): a projector trained for one LM would be silently wrong on another of its shape."""
    parts = ("*.safetensors", "config.json", "tokenizer.json")
    return fingerprint([file_fingerprint(s, parts) if Path(str(s)).is_dir() else str(s) for s in (vision, lm)])


def save_checkpoint(model: LlavaMini, directory: str | Path, cfg: TrainConfig, history: list[dict],
                    run_info: dict | None = None) -> Path:
    """Write the model parts that training changed (projector, adapters) + run.json + history.json, aside
    and then renamed (never half a checkpoint). ``run_info``: JSON-able entries added to run.json."""
    directory = Path(directory)
    vision, lm = model.vision_tower.config._name_or_path, base_language_model(model).config._name_or_path
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, towers=False)  # llava_mini.json, projector.safetensors
    if has_lora(model):
        model.language_model.save_pretrained(tmp / "adapter")
    run = {"backbones": backbone_fingerprint(vision, lm), "stage": cfg.stage, "vision": str(vision), "lm": str(lm),
           "qlora": is_quantized(model), "llava_mini": model.config.to_dict(), "train_config": asdict(cfg)}
    write_json(tmp / "run.json", run | (run_info or {}), indent=2)
    write_json(tmp / "history.json", history)
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    return directory


def load_checkpoint(directory: str | Path, vision: str | Path | None = None, lm: str | Path | None = None,
                    qlora: bool | None = None, precision: str = "auto", device: str | torch.device | None = None,
                    trainable: bool = False, attn_implementation: str | None = None) -> LlavaMini:
    """Rebuild a trained LlavaMini from a checkpoint folder (stage 1 or 2), on the towers named in run.json
    (or ``vision`` / ``lm``, e.g. when it moved machines). ``qlora``: load the LM in 4-bit or not (a QLoRA
    checkpoint with ``qlora=False`` merges its adapters exactly); ``trainable``: adapters trainable."""
    from peft import PeftModel

    directory, precision = Path(directory), resolve_precision(precision)
    run = read_json(directory / "run.json")
    qlora = run["qlora"] if qlora is None else qlora
    model = LlavaMini.from_pretrained(
        directory, vision=vision or run["vision"], lm=lm or run["lm"], device=device, projector_dtype=torch.float32,
        torch_dtype=compute_dtype(precision), attn_implementation=attn_implementation,
        quantization_config=qlora_quantization_config(precision) if qlora else None)
    model.requires_grad_(False)
    if (directory / "adapter").exists():  # (peft reads safetensors)
        model.language_model = PeftModel.from_pretrained(model.language_model, directory / "adapter",
                                                         is_trainable=trainable)
        model.projector.requires_grad_(trainable)
    return model.eval()


def step_dirs(output_dir: str | Path) -> list[Path]:
    return sorted(p for p in Path(output_dir).glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest resumable step checkpoint under output_dir, or None."""
    return next((p for p in reversed(step_dirs(output_dir)) if (p / STATE).exists()), None)


def keep_trainable_only(accelerator) -> list:
    """Hooks: save_state / load_state keep only the prepared models' trainable tensors. Returns the handles."""

    def save(models, weights, output_dir):
        for i, model in enumerate(models):
            named = accelerator.unwrap_model(model).named_parameters()
            weights[i] = {n: p.detach().contiguous().cpu() for n, p in named if p.requires_grad}

    def load(models, input_dir):
        for i in reversed(range(len(models))):  # popped: accelerate then loads none of them itself
            model = accelerator.unwrap_model(models.pop(i))
            file = Path(input_dir) / ("model.safetensors" if i == 0 else f"model_{i}.safetensors")
            saved, params = load_file(file), {n for n, p in model.named_parameters() if p.requires_grad}
            if set(saved) != params:
                missing, extra = sorted(params - set(saved))[:3], sorted(set(saved) - params)[:3]
                raise ValueError(f"{file}: trainable tensors differ from the model's (missing {missing}, extra "
                                 f"{extra}): prepare the model the same way (freeze_for_stage1 / add_lora settings)")
            model.load_state_dict(saved, strict=False)  # the trainable tensors only

    return [accelerator.register_save_state_pre_hook(save), accelerator.register_load_state_pre_hook(load)]


def save_step_checkpoint(accelerator, model: LlavaMini, cfg: TrainConfig, history: list[dict], step: int,
                         run_info: dict | None = None) -> Path:
    """Every process: a step checkpoint to resume from. The main process writes the model's parts, then
    accelerate writes training_state/ (each process its RNG) aside, renamed when whole; the newest
    ``cfg.keep_checkpoints`` are kept."""
    directory = Path(cfg.output_dir) / f"step-{step:06d}"
    if accelerator.is_main_process:
        save_checkpoint(model, directory, cfg, history, run_info)
    accelerator.wait_for_everyone()
    accelerator.save_state(directory / f"{STATE}.tmp")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(directory / f"{STATE}.tmp" / "step.json", {"step": step})
        (directory / f"{STATE}.tmp").rename(directory / STATE)
        for old in step_dirs(cfg.output_dir)[:-cfg.keep_checkpoints] if cfg.keep_checkpoints else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return directory


def resume_point(resume_from: str | Path, output_dir: str | Path) -> tuple[Path, int, list[dict]]:
    """The step checkpoint to resume from ("latest": the newest under output_dir), its step, and the loss
    history up to that step."""
    directory = latest_checkpoint(output_dir) if str(resume_from) == "latest" else Path(resume_from)
    if directory is None or not (directory / STATE).exists():
        raise FileNotFoundError(f"{directory or output_dir}: no step checkpoint to resume from (with {STATE}/)")
    step = read_json(directory / STATE / "step.json")["step"]
    return directory, step, read_json(directory / "history.json")[:step]


def load_training_state(accelerator, directory: Path) -> None:
    """Restore the prepared model's trainable tensors, optimizer, scheduler and this process's RNG.
    A file that holds a pickled object (not only tensors and numbers) raises ValueError, unexecuted."""
    from accelerate.utils import load

    state = directory / STATE
    rng = state / f"random_states_{accelerator.process_index}.pkl"
    try:
        if rng.exists():  # accelerate would swallow a failure here and resume with other random numbers
            load(rng, weights_only=True)
        accelerator.load_state(state, load_kwargs={"weights_only": True})
    except pickle.UnpicklingError as error:
        name = (re.findall(r"GLOBAL (\S+)", str(error)) or ["object"])[0]
        culprits = [f for f in sorted(state.iterdir())  # (scanned without unpickling anything)
                    if f.suffix in (".bin", ".pkl", ".pt") and name in get_unsafe_globals_in_checkpoint(f)]
        raise ValueError(f"{culprits[0] if culprits else state}: refusing to resume from a file that holds a pickled "
                         f"{name}, not only tensors and numbers") from None
