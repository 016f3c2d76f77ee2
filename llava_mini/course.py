"""The course layer: what the notebooks and the command line share.

    course_world()            the shapes world under the work folder, generated once, then reused
    course_instruct_data()    its instruction data (symbolic teacher), generated once, then reused
    load_processors(preset)   tokenizer (chat template, <image> token) + image processor
    load_base(preset, ...)    a LlavaMini of the preset's two towers with a fresh projector
    training_data(preset)     the stage-1 / instruction files and their image folder
    course_model(stage)       the trained checkpoint of a stage: loaded when it is there, trained when not
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from llava_mini.config import Preset, TrainConfig, get_preset
from llava_mini.train import estimate_memory
from llava_mini.model import LlavaCollator, LlavaInstructDataset, add_image_token, image_token_id
from llava_mini.teacher import load_records
from llava_mini.model import build
from llava_mini.paths import work_dir
from llava_mini.teacher import generate_instruct_data, record_type
from llava_mini.teacher import BRIEF_INSTRUCTIONS, DETAILED_INSTRUCTIONS, RESPONSE_TYPES, SYSTEM_MESSAGES, load_seeds
from llava_mini.teacher import SymbolicTeacher, Teacher
from llava_mini.train import (
    add_lora, backbone_fingerprint, compute_dtype, freeze_for_stage1, load_checkpoint,
    qlora_quantization_config, resolve_precision, train,
)
from llava_mini.world import read_split
from llava_mini.world import WorldConfig, generate_world

COURSE_SIZES = {"train": 4000, "val": 300, "test": 500}


def course_world(seed: int = 0, sizes: dict[str, int] | None = None, config: WorldConfig | None = None) -> Path:
    """The world every notebook shares, under the work folder: generated once, then reused."""

    root = work_dir() / "world"
    generate_world(root, sizes or COURSE_SIZES, seed=seed, config=config)
    return root


def _course_fingerprint(teacher: Teacher, types, seed: int, split: str, world_root: Path) -> str:
    stamp = {
        "teacher": teacher.identity, "types": list(types), "seed": seed, "split": split,
        "prompts": SYSTEM_MESSAGES, "instructions": [BRIEF_INSTRUCTIONS, DETAILED_INSTRUCTIONS],
        "seeds": {t: load_seeds(t) for t in types},
        "world": json.loads((world_root / "world.json").read_text()) if (world_root / "world.json").exists() else None,
        "format": 1,
    }
    return hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:16]


def course_instruct_data(
    seed: int = 0,
    split: str = "train",
    types: Iterable[str] = RESPONSE_TYPES,
    teacher: Teacher | None = None,
    world_root: str | Path | None = None,
    out_dir: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    world_sizes: dict[str, int] | None = None,
) -> dict[str, Path]:
    """The course's instruction data for one split of the shapes world, generated once and then reused.

    Returns {"instruct": LLaVA-Instruct JSON (conversation + detail + complex records),
             "stage1": caption JSON (one record per caption), "summary": summary JSON,
             "images": the split's image folder (what each record's "image" is relative to)}.
    Files live under work_dir()/"instruct" (or `out_dir`); they are reused when the world, seed, teacher,
    prompts and seeds are unchanged, and regenerated otherwise (the response cache keeps that cheap).
    The world is `world_root`, or the shared course world (`course_world(seed, world_sizes)`, made if missing).
    """

    teacher = teacher or SymbolicTeacher(seed)
    types = tuple(types)
    world_root = Path(world_root) if world_root else course_world(seed=seed, sizes=world_sizes)
    out_dir = Path(out_dir) if out_dir else work_dir() / "instruct"
    paths = {
        "instruct": out_dir / f"llava_instruct_{split}.json",
        "stage1": out_dir / f"stage1_captions_{split}.json",
        "summary": out_dir / f"summary_{split}.json",
        "images": world_root / "images" / split,
    }
    stamp_file = out_dir / f"stamp_{split}.json"
    fingerprint = _course_fingerprint(teacher, types, seed, split, world_root)
    fresh = (not force and stamp_file.exists() and json.loads(stamp_file.read_text()).get("fingerprint") == fingerprint
             and all(paths[k].exists() for k in ("instruct", "stage1", "summary")))
    if fresh:
        return paths
    dataset = read_split(world_root, split)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", teacher.identity).strip("-")[:60]
    result = generate_instruct_data(
        dataset.records, teacher, out_file=paths["instruct"], stage1_file=paths["stage1"],
        summary_file=paths["summary"], cache_file=out_dir / "cache" / f"{slug}.jsonl", types=types, seed=seed,
        progress=progress,
    )
    if result.summary["missing"] == 0:
        stamp_file.write_text(json.dumps({"fingerprint": fingerprint}))
    return paths


def load_processors(preset: str | Preset = "tiny"):
    """(tokenizer, image_processor) for a preset: the tokenizer gets a chat template (if it has none),
    a pad token (if it has none) and a single ``<image>`` token (hub tokenizers lack it; the model
    never embeds its id, so the LM needs no new embedding row)."""
    from transformers import AutoImageProcessor, AutoTokenizer

    preset = get_preset(preset)
    tokenizer = AutoTokenizer.from_pretrained(preset.tokenizer or preset.lm)
    if not getattr(tokenizer, "chat_template", None):
        if preset.chat_template is None:
            raise ValueError(f"the tokenizer of {preset.lm!r} has no chat template and preset {preset.name!r} gives none")
        tokenizer.chat_template = preset.chat_template
    if tokenizer.pad_token is None:  # Llama / Vicuna: LLaVA pads with unk
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    add_image_token(tokenizer)
    image_processor = AutoImageProcessor.from_pretrained(preset.vision)
    return tokenizer, image_processor


def load_base(preset: str | Preset, tokenizer, qlora: bool = False, precision: str = "auto",
              device: str | torch.device | None = None):
    """A LlavaMini of the preset's two towers with a fresh fp32 projector.

    Frozen weights in the training precision (fp32 on the CPU, bf16 / fp16 on a GPU); with ``qlora``
    the LM's linear layers in 4-bit NF4 with double quantization (vision tower and projector are not
    quantized). On a GPU the model is loaded straight onto it (4-bit weights are quantized there).
    """

    preset = get_preset(preset)
    precision = resolve_precision(precision)
    if device is None and torch.cuda.is_available():
        device = "cuda"
    return build(
        preset.vision, preset.lm,
        projector_type=preset.projector_type,
        image_token_id=image_token_id(tokenizer),
        torch_dtype=None if precision == "fp32" else compute_dtype(precision),
        quantization_config=qlora_quantization_config(precision) if qlora else None,
        projector_dtype=torch.float32,
        device=device,
    )


def training_data(preset: str | Preset = "tiny") -> dict[str, Path]:
    """{"stage1": caption records, "instruct": instruction records, "images": their image folder}."""
    preset = get_preset(preset)
    if preset.data == "course":

        paths = course_instruct_data(progress=False, world_sizes=preset.world_sizes)
        return {"stage1": paths["stage1"], "instruct": paths["instruct"], "images": paths["images"]}
    root = work_dir()
    paths = {"stage1": root / preset.stage1_file, "instruct": root / preset.instruct_file,
             "images": root / preset.image_folder}
    missing = [f"{k}: {v}" for k, v in paths.items() if not v.exists()]
    if missing:
        raise FileNotFoundError(f"preset {preset.name!r} needs its data under {root}; missing " + "; ".join(missing))
    return paths


STAGES = ("stage1", "lora", "qlora")  # the course's three checkpoints


def repeat_types(records: list[dict], repeats: dict[str, int] | None) -> list[dict]:
    """Each record as often as ``repeats`` says for its response type (instruct.record_type; default 1)."""

    if not repeats:
        return records
    found = {record_type(r) for r in records}
    unknown = set(repeats) - found
    if unknown:
        raise ValueError(f"type_repeats names {sorted(unknown)}, but the records have types {sorted(found)}")
    if any(not isinstance(k, int) or k < 0 for k in repeats.values()):
        raise ValueError(f"type_repeats must be whole numbers >= 0, got {repeats}")
    return [r for r in records for _ in range(repeats.get(record_type(r), 1))]


def _subsample(records: list[dict], n: int, seed: int) -> list[dict]:
    """n records in a seeded random order (tokenizing all 32K course records would take ~20 s)."""
    order = np.random.default_rng(seed).permutation(len(records))[:n]
    return [records[i] for i in order]


def course_model(stage: str = "stage1", preset: str = "tiny", retrain: bool = False, progress: bool = True,
                 **overrides):
    """The course's trained model for ``stage`` ("stage1", "lora" or "qlora"), trained once, then reused.

    Loads ``work_dir()/"checkpoints"/<stage>/final`` when it is there (and ``retrain`` is False);
    otherwise trains it: stage 1 from the preset's backbones, stage 2 from the stage-1 projector (which
    is itself loaded or trained first). ``overrides`` change the preset's TrainConfig for this stage
    (max_steps=..., batch_size=...): a changed config retrains instead of loading a stale checkpoint.

    Returns (model, tokenizer, image_processor), the model in eval mode.
    """

    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    spec = get_preset(preset)
    cfg = spec.train_config(stage, **overrides)
    name = stage if spec.name == "tiny" else f"{spec.name}-{stage}"
    cfg.output_dir = str(work_dir() / "checkpoints" / name)
    cfg.progress = progress
    final = Path(cfg.output_dir) / "final"
    tokenizer, image_processor = load_processors(spec)
    data = training_data(spec)
    records_file = data["stage1"] if stage == "stage1" else data["instruct"]
    data_id = file_fingerprint(records_file)

    if final.exists() and not retrain and _same_config(final, cfg, backbone_fingerprint(spec.vision, spec.lm), data_id):
        model = load_checkpoint(final, vision=spec.vision, lm=spec.lm, precision=cfg.precision)
        return model, tokenizer, image_processor

    if progress:
        print(estimate_memory(spec, mode=stage, batch_size=cfg.micro_batch(), precision=resolve_precision(cfg.precision)))
    torch.manual_seed(cfg.seed)
    if stage == "stage1":
        model = load_base(spec, tokenizer, precision=cfg.precision)
        freeze_for_stage1(model)
    else:
        stage1_model, _, _ = course_model("stage1", preset, progress=progress)
        model = load_base(spec, tokenizer, qlora=stage == "qlora", precision=cfg.precision)
        model.projector.load_state_dict(stage1_model.projector.state_dict())
        del stage1_model
        add_lora(model, cfg)
    records = repeat_types(load_records(records_file), cfg.type_repeats if stage != "stage1" else None)
    records = _subsample(records, int(cfg.max_steps * cfg.batch_size * 1.1) + cfg.batch_size, cfg.seed)
    dataset = LlavaInstructDataset(records, data["images"], tokenizer, image_processor, model.num_image_tokens,
                                   max_length=spec.max_length, system_prompt=spec.system_prompt, skip_invalid=True)
    collator = LlavaCollator(tokenizer.pad_token_id)
    train(model, dataset, collator, cfg)
    run_file = final / "run.json"  # which records it learned from: other data (a bigger world) retrains
    run_file.write_text(json.dumps({**json.loads(run_file.read_text()), "data": data_id}, indent=2))
    return model.eval(), tokenizer, image_processor


def file_fingerprint(path: str | Path) -> str:
    """A hash of a file's bytes (the training records a checkpoint was trained on)."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _same_config(checkpoint: Path, cfg: TrainConfig, backbones: str | None = None, data: str | None = None) -> bool:
    """Was this checkpoint trained with cfg on these backbones and this data (ignoring where it was written
    and whether a bar was shown)?"""
    try:
        run = json.loads((checkpoint / "run.json").read_text())
        saved = run["train_config"]
    except (OSError, KeyError, json.JSONDecodeError):
        return False
    if backbones is not None and run.get("backbones") != backbones:
        return False
    if data is not None and run.get("data") != data:
        return False
    ignore = {"output_dir", "progress", "num_workers", "save_every", "keep_checkpoints"}
    current = {k: v for k, v in json.loads(json.dumps(asdict(cfg))).items() if k not in ignore}
    return all(saved.get(k) == v for k, v in current.items())


def course_history(stage: str = "stage1", preset: str = "tiny") -> list[dict]:
    """The per-step loss history of a course checkpoint that ``course_model`` trained."""

    spec = get_preset(preset)
    name = stage if spec.name == "tiny" else f"{spec.name}-{stage}"
    path = work_dir() / "checkpoints" / name / "final" / "history.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no history; train the checkpoint first with course_model({stage!r})")
    return json.loads(path.read_text())
