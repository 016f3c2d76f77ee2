"""What is trained: the projector (stage 1), and LoRA adapters in a peft wrapper around ``model.language_model``
only (stage 2). ``unwrap`` / ``base_language_model``: the package's one way under a peft wrapper."""

from __future__ import annotations

from llava_mini.config import TrainConfig
from llava_mini.model import LlavaMini


def unwrap(model):
    """The model inside a peft wrapper (its LoRA layers stay injected, so they still apply); others as given."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def base_language_model(model: LlavaMini):
    """The transformers LM of a LlavaMini, from under its peft wrapper if it has one."""
    return unwrap(unwrap(model).language_model)


def is_quantized(model: LlavaMini) -> bool:
    return bool(getattr(base_language_model(model), "is_loaded_in_4bit", False))


def has_lora(model: LlavaMini) -> bool:
    return hasattr(unwrap(model).language_model, "peft_config")


def freeze_for_stage1(model: LlavaMini) -> LlavaMini:
    """Stage 1: only the projector learns; the vision tower and the LM are frozen."""
    model.requires_grad_(False)
    model.projector.requires_grad_(True)
    return model


def add_lora(model: LlavaMini, cfg: TrainConfig) -> LlavaMini:
    """Stage 2: LoRA adapters on the LM's linear layers (``cfg.lora_*``), projector trainable, the rest frozen.

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
    model.language_model = get_peft_model(model.language_model, LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=cfg.lora_targets,
        bias="none", task_type="CAUSAL_LM"))
    model.projector.requires_grad_(True)
    return model


def merge_lora(model: LlavaMini) -> LlavaMini:
    """Fold the adapters into the LM's weights and drop peft: a plain LlavaMini for ``export_to_transformers``."""
    if not has_lora(model):
        return model
    if is_quantized(model):
        raise ValueError("cannot merge adapters into a 4-bit LM exactly: load the checkpoint with "
                         "load_checkpoint(dir, qlora=False) (the same adapters on the unquantized LM), then merge")
    model.language_model = model.language_model.merge_and_unload()
    return model


def trainable_parameters(model: LlavaMini) -> dict[str, int]:
    """Counts: {"projector": ..., "lora": ..., "other": ..., "frozen": ...}."""
    counts = dict.fromkeys(("projector", "lora", "other", "frozen"), 0)
    for name, param in model.named_parameters():
        kind = ("frozen" if not param.requires_grad else "projector" if name.startswith("projector.")
                else "lora" if "lora_" in name else "other")
        counts[kind] += param.numel()
    return counts


def param_groups(model: LlavaMini, cfg: TrainConfig) -> list[dict]:
    """The optimizer's groups: the LM's trainable tensors at ``cfg.lr``, the projector at its own rate
    (stage 2's ``projector_lr``). Refuses a model that was not prepared for ``cfg.stage``."""
    projector = [p for p in model.projector.parameters() if p.requires_grad]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("projector.")]
    if not projector and not rest:
        raise ValueError("nothing to train: call freeze_for_stage1(model) or add_lora(model, cfg) first")
    if cfg.stage == 1 and rest:
        raise ValueError(f"stage 1 trains the projector only, but {len(rest)} other tensors require grad: "
                         "call freeze_for_stage1(model)")
    if cfg.stage == 2 and not has_lora(model):
        raise ValueError("stage 2 expects LoRA adapters: call add_lora(model, cfg) first")
    projector_lr = cfg.projector_lr if (cfg.stage == 2 and cfg.projector_lr is not None) else cfg.lr
    return ([{"params": rest, "lr": cfg.lr, "name": "lora"}] if rest else []) + \
        ([{"params": projector, "lr": projector_lr, "name": "projector"}] if projector else [])
