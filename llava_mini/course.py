"""The course layer: what the notebooks and the command line share, so both find the same things.

    course_world()            the shapes world under the work folder, generated once, then reused
    course_instruct_data()    its instruction data (symbolic teacher), generated once, then reused
    coco_instruct_data()      the same for a subset of COCO 2017 (hub presets), held-out images: coco_subsets()
    load_processors(preset)   tokenizer (chat template, <image> token) + image processor
    load_base(preset, ...)    a LlavaMini of the preset's two towers with a fresh projector
    training_data(preset)     the stage-1 / instruction files and their image folder
    course_model(stage)       the trained model of a stage: loaded when its checkpoint is there, else trained

One naming rule for checkpoints (``checkpoint_dir``): ``<work>/checkpoints/<preset>-<stage>-<key>``, where
the key is the fingerprint of the run's whole configuration (config.RunConfig) with the towers and the
training records it saw. ``python -m llava_mini.train`` and the notebooks both go through ``course_model``,
so a model trained from the command line is the one a notebook loads, and the other way round.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from llava_mini.config import STAGES, Preset, RunConfig, get_preset
from llava_mini.files import file_fingerprint, fingerprint, read_json, write_json
from llava_mini.model import LlavaCollator, LlavaInstructDataset, add_image_token, build, image_token_id
from llava_mini.paths import work_dir
from llava_mini.teacher import (
    BRIEF_INSTRUCTIONS, DETAILED_INSTRUCTIONS, ENV_API_KEY, ENV_BASE_URL, ENV_MODEL, RESPONSE_TYPES, SYSTEM_MESSAGES,
    SymbolicTeacher, Teacher, drill_records, generate_instruct_data, load_records, load_seeds, record_type,
    teacher_from_env,
)
from llava_mini.train import (
    add_lora, backbone_fingerprint, compute_dtype, estimate_memory, freeze_for_stage1, load_checkpoint,
    qlora_quantization_config, resolve_precision, train,
)
from llava_mini.world import CocoDataset, ImageRecord, WorldConfig, context_text, generate_world, read_split

# ============================================================================ data


def course_world(seed: int = 0, sizes: dict[str, int] | None = None, config: WorldConfig | None = None) -> Path:
    """The world every notebook shares, under the work folder: generated once, then reused."""
    root = work_dir() / "world"
    generate_world(root, sizes or get_preset("tiny").world.sizes, seed=seed, config=config)
    return root


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
    records: Sequence[ImageRecord] | None = None,
    prefix: str = "",
    workers: int = 1,
    relation_steps: str = "verdict",
    colour_steps: str = "scan",
    drill_weights: dict[str, float] | None = None,
) -> dict[str, Path]:
    """The course's instruction data for one split of the shapes world, generated once and then reused.

    Returns {"instruct": LLaVA-Instruct JSON (conversation + detail + complex records),
             "stage1": caption JSON (one record per caption), "summary": summary JSON,
             "drills": short questions of the held-out kinds (teacher.drill_records; stage 2 mixes them in;
                       none for ``records``),
             "images": the split's image folder (what each record's "image" is relative to)}.
    Files live under work_dir()/"instruct" (or ``out_dir``), named ``<prefix>llava_instruct_<split>.json`` and so
    on; they are reused while the images, seed, teacher, prompts and seed examples are unchanged, and regenerated
    otherwise (the response cache keeps that cheap). ``relation_steps`` / ``colour_steps``: how the drills' relation
    and colour answers reach their verdict (teacher.RELATION_STEPS / COLOUR_STEPS; config.DataSettings);
    ``drill_weights``: how often each kind of drill question is drawn (None: teacher.DRILL_WEIGHTS). ``records``
    (COCO's, say) stand in for the world's split: the world is then neither made nor read. ``workers``: concurrent
    teacher calls (for a remote server).
    """
    teacher = teacher or SymbolicTeacher(seed)
    types = tuple(types)
    out_dir = Path(out_dir) if out_dir else work_dir() / "instruct"
    from_world = records is None
    if from_world:  # the world's split, read only when the data must be made
        world_root = Path(world_root) if world_root else course_world(seed=seed, sizes=world_sizes)
        images, world_stamp = world_root / "images" / split, world_root / "world.json"
        source = read_json(world_stamp) if world_stamp.exists() else None
    else:  # what the teacher reads of each image: another subset or other annotations are other data
        records = list(records)
        images, source = records[0].image_dir if records else None, [(r.file_name, context_text(r)) for r in records]
    paths = {key: out_dir / f"{prefix}{stem}_{split}.json" for key, stem in (
        ("instruct", "llava_instruct"), ("stage1", "stage1_captions"), ("summary", "summary"), ("drills", "drills"))}
    paths["images"] = images
    stamp_file = out_dir / f"{prefix}stamp_{split}.json"
    key = fingerprint({
        "teacher": teacher.identity, "types": types, "seed": seed, "split": split, "prompts": SYSTEM_MESSAGES,
        "instructions": [BRIEF_INSTRUCTIONS, DETAILED_INSTRUCTIONS], "seeds": {t: load_seeds(t) for t in types},
        "world": source, "drill_steps": [relation_steps, colour_steps],
        "drill_weights": drill_weights,
    })
    if not force and stamp_file.exists() and read_json(stamp_file).get("fingerprint") == key and all(
            paths[k].exists() for k in ("instruct", "stage1", "summary", "drills")):
        return paths
    records = read_split(world_root, split).records if from_world else records
    # The drills read the shapes world's sentences; of a photo they would state falsehoods ("zero objects").
    write_json(paths["drills"], drill_records(records, seed, weights=drill_weights, relation_steps=relation_steps,
                                                 colour_steps=colour_steps) if from_world else [])
    slug = re.sub(r"[^A-Za-z0-9]+", "-", teacher.identity).strip("-")[:60]
    result = generate_instruct_data(
        records, teacher, out_file=paths["instruct"], stage1_file=paths["stage1"],
        summary_file=paths["summary"], cache_file=out_dir / "cache" / f"{slug}.jsonl", types=types, seed=seed,
        progress=progress, workers=workers,
    )
    if result.summary["missing"] == 0:  # a run cut short must not vouch for its files
        write_json(stamp_file, {"fingerprint": key})
    return paths


# COCO 2017 for the hub presets: notebook 02 writes instruction data for one subset, notebook 04 evaluates on another.
TEACHER_NEEDED = (f"a teacher: {ENV_API_KEY} or OPENAI_API_KEY (or {ENV_BASE_URL} for a local server) and "
                  f"{ENV_MODEL} in the environment, or a local chat model (teacher.TransformersTeacher, on a GPU)")


def coco_needs(preset: str | Preset = "colab", teacher: bool = False) -> str | None:
    """What a preset's COCO path still lacks, in words, or None: a hub preset, COCO 2017's annotations and
    pictures under the work folder, and (with ``teacher``) a teacher configured in the environment."""
    spec = get_preset(preset)
    if spec.data.source == "course":
        return f"a hub preset (PRESET 'colab' or 'paper'; {spec.name!r} trains on the shapes world)"
    folder = work_dir() / spec.data.image_folder
    if not (folder.is_dir() and (folder.parent / "annotations" / f"captions_{folder.name}.json").is_file()):
        return f"COCO 2017 in {folder.parent} (`python -m llava_mini.world.prepare --preset {spec.name}` lists it)"
    try:
        return TEACHER_NEEDED if teacher and teacher_from_env() is None else None
    except ValueError as e:  # configured in part (a key but no model)
        return f"a teacher ({e})"


def coco_subsets(preset: str | Preset = "colab") -> dict[str, CocoDataset]:
    """The preset's COCO images as two disjoint seeded subsets of ``preset.world.sizes`` images: "train" (notebook
    02 writes instruction data for them) and "test" (held out for notebook 04). colab draws both from val2017,
    the 5,000 pictures that ``python -m llava_mini.world.prepare --preset colab`` lists (train2017 is 19 GB).
    Annotations that cannot be right are skipped and counted (``.skipped``)."""
    spec = get_preset(preset)
    folder = work_dir() / spec.data.image_folder
    coco = read_split(folder.parent, folder.name, errors="skip")
    n, seed = spec.world.sizes, spec.world.seed
    if len(coco) < n["train"] + n["test"]:
        raise ValueError(f"{folder.parent / 'annotations'}: {len(coco)} images of {folder.name} annotated, fewer than "
                         f"the {n['train']} + {n['test']} that preset {spec.name!r} draws (its world.sizes)")
    return {"train": coco.subset(n["train"], seed), "test": coco.subset(n["test"], seed, start=n["train"])}


def coco_instruct_data(preset: str | Preset = "colab", teacher: Teacher | None = None, workers: int = 1,
                       force: bool = False, progress: bool = True) -> dict[str, Path]:
    """Notebook 02 on COCO: ``course_instruct_data`` for ``coco_subsets(preset)["train"]``, through the resumable
    response cache, written where the colab preset reads it (work/instruct/coco_llava_instruct_train.json and
    coco_stage1_captions_train.json). ``teacher``: default the OpenAI-compatible server of the environment; a
    SymbolicTeacher only restates captions on real photos (the summary's "teacher" says who wrote the data)."""
    teacher = teacher or teacher_from_env()
    if teacher is None:
        raise ValueError(f"no teacher for the COCO data; it needs {TEACHER_NEEDED}")
    spec = get_preset(preset)
    return course_instruct_data(spec.world.seed, teacher=teacher, records=coco_subsets(spec)["train"], prefix="coco_",
                                force=force, progress=progress, workers=workers)


def training_data(preset: str | Preset = "tiny") -> dict[str, Path]:
    """{"stage1": caption records, "instruct": instruction records, "images": their image folder}, and for the
    course's own world "drills" (short questions; stage 2 trains on them beside the instruction records)."""
    preset = get_preset(preset)
    data = preset.data
    if data.source == "course":
        if data.teacher == "symbolic":
            teacher = SymbolicTeacher(preset.world.seed)
        elif data.teacher == "env" and (teacher := teacher_from_env()) is None:
            raise ValueError("data.teacher 'env' needs LLAVA_MINI_TEACHER_BASE_URL / _MODEL (and a key) in the environment")
        elif data.teacher not in ("symbolic", "env"):
            raise ValueError(f"data.teacher must be 'symbolic' or 'env' (an OpenAI-compatible server), not {data.teacher!r}")
        paths = course_instruct_data(seed=preset.world.seed, teacher=teacher, progress=False,
                                     world_sizes=preset.world.sizes, relation_steps=data.drill_relation_steps,
                                     colour_steps=data.drill_colour_steps, drill_weights=data.drill_weights)
        return {k: paths[k] for k in ("stage1", "instruct", "drills", "images")}
    root = work_dir()
    paths = {"stage1": root / data.stage1_file, "instruct": root / data.instruct_file, "images": root / data.image_folder}
    missing = [f"{k}: {v}" for k, v in paths.items() if not v.exists()]
    if missing:
        raise FileNotFoundError(f"preset {preset.name!r} needs its data under {root}; missing " + "; ".join(missing))
    return paths


def repeat_types(records: list[dict], repeats: dict[str, int] | None) -> list[dict]:
    """Each record as often as ``repeats`` says for its response type (teacher.record_type; default 1)."""
    if not repeats:
        return records
    found = {record_type(r) for r in records}
    unknown = set(repeats) - found
    if unknown:
        raise ValueError(f"type_repeats names {sorted(unknown)}, but the records have types {sorted(found)}")
    if any(not isinstance(k, int) or k < 0 for k in repeats.values()):
        raise ValueError(f"type_repeats must be whole numbers >= 0, got {repeats}")
    return [r for r in records for _ in range(repeats.get(record_type(r), 1))]


def subsample(records: list[dict], n: int, seed: int) -> list[dict]:
    """n records in a seeded random order (tokenizing all 32K course records would take ~20 s)."""
    order = np.random.default_rng(seed).permutation(len(records))[:n]
    return [records[i] for i in order]


def stage_files(run: RunConfig, data: dict[str, Path]) -> list[Path]:
    """The record files a run trains on: stage 1 the captions; stage 2 those ``run.data.stage2_records`` names
    (default the instruction records and the drills, where the data has them)."""
    names = ["stage1"] if run.stage == "stage1" else run.data.stage2_records
    return [data[k] for k in names if k in data]


def training_records(run: RunConfig, data: dict[str, Path]) -> list[dict]:
    """The records a run trains on: its stage's files, types repeated as its TrainConfig says (stage 2),
    then a seeded sample: ``data.max_records`` of them, or about what its steps will read."""
    cfg = run.train
    # the dataset checks each record, counting what it skips
    records = [r for f in stage_files(run, data) for r in load_records(f, validate=False)]
    if run.stage != "stage1":
        records = repeat_types(records, cfg.type_repeats)
    n = run.data.max_records or int(cfg.max_steps * cfg.batch_size * 1.1) + cfg.batch_size
    return subsample(records, n, cfg.seed)


# ============================================================================ the towers


def load_processors(preset: str | Preset = "tiny"):
    """(tokenizer, image_processor) for a preset: the tokenizer gets a chat template (if it has none),
    a pad token (if it has none) and a single ``<image>`` token (hub tokenizers lack it; the model
    never embeds its id, so the LM needs no new embedding row)."""
    from transformers import AutoImageProcessor, AutoTokenizer

    preset = get_preset(preset)
    model = preset.model
    tokenizer = AutoTokenizer.from_pretrained(model.tokenizer or model.lm)
    if not getattr(tokenizer, "chat_template", None):
        if model.chat_template is None:
            raise ValueError(f"the tokenizer of {model.lm!r} has no chat template and preset {preset.name!r} gives none")
        tokenizer.chat_template = model.chat_template
    if tokenizer.pad_token is None:  # Llama / Vicuna: LLaVA pads with unk
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    add_image_token(tokenizer)
    return tokenizer, AutoImageProcessor.from_pretrained(model.vision)


def load_base(preset: str | Preset, tokenizer, qlora: bool = False, precision: str = "auto",
              device: str | torch.device | None = None):
    """A LlavaMini of the preset's two towers with a fresh fp32 projector.

    Frozen weights in the training precision (``resolve_precision``: fp32 on the CPU, bf16 / fp16 on a GPU);
    with ``qlora`` the LM's linear layers in 4-bit NF4 with double quantization, computing in that precision
    (vision tower and projector are not quantized). On a GPU both towers load straight onto it in that dtype,
    never as a full copy in host RAM. The projector computes in that precision under the loop's autocast; its
    weights stay fp32, as trained weights must (a GradScaler cannot unscale fp16 gradients).
    """
    model = get_preset(preset).model
    precision = resolve_precision(precision)
    if device is None and torch.cuda.is_available():
        device = "cuda"
    return build(
        model.vision, model.lm, projector_type=model.projector_type, image_token_id=image_token_id(tokenizer),
        torch_dtype=compute_dtype(precision),  # (transformers 5's default is the checkpoint's own dtype)
        quantization_config=qlora_quantization_config(precision) if qlora else None,
        vision_feature_layer=model.vision_feature_layer, projector_dtype=torch.float32, device=device,
    )


# ============================================================================ checkpoints


def plan_run(stage: str = "stage1", preset: str | Preset = "tiny", projector_from: str | Path | None = None,
             **overrides) -> tuple[RunConfig, Path, dict[str, Path]]:
    """The run config of ``stage``, the checkpoint folder it belongs in, and its training data.

    A stage-2 run starts from the course's stage-1 run (its key is part of the config), or from the
    projector in the checkpoint folder ``projector_from``."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    spec = get_preset(preset)
    run = spec.run_config(stage, **overrides)
    data = training_data(spec)
    if stage != "stage1":
        if projector_from is not None:
            run.init_from = "projector " + file_fingerprint(Path(projector_from) / "projector.safetensors")
        else:
            run.init_from = checkpoint_dir(spec.run_config("stage1"), data).name
    return run, checkpoint_dir(run, data), data


def checkpoint_dir(run: RunConfig, data: dict[str, Path]) -> Path:
    """``<work>/checkpoints/<preset>-<stage>-<key>``: the one place a run's checkpoints go."""
    records = fingerprint([file_fingerprint(f) for f in stage_files(run, data)])
    key = run.key(backbone_fingerprint(run.model.vision, run.model.lm), records)
    return work_dir() / "checkpoints" / f"{run.preset}-{run.stage}-{key}"


def course_model(stage: str = "stage1", preset: str | Preset = "tiny", retrain: bool = False, progress: bool = True,
                 projector_from: str | Path | None = None, resume: str | Path | None = None, **overrides):
    """The trained model of ``stage`` ("stage1", "lora" or "qlora"): loaded from its checkpoint folder
    (``checkpoint_dir``) when a finished run with the same key is there, trained otherwise.

    Stage 2 starts from the projector of the course's stage-1 model (loaded or trained first) or of
    ``projector_from``. ``overrides`` change the stage's TrainConfig (max_steps=..., lr=...): another
    config is another key, so it trains instead of loading a stale checkpoint. ``resume="latest"``
    continues an interrupted run from its newest step checkpoint. Returns (model, tokenizer,
    image_processor), the model in eval mode.
    """
    spec = get_preset(preset)
    run, folder, data = plan_run(stage, spec, projector_from, **overrides)
    final, key = folder / "final", folder.name.rsplit("-", 1)[-1]
    tokenizer, image_processor = load_processors(spec)
    if not retrain and (final / "run.json").exists() and read_json(final / "run.json").get("key") == key:
        if progress:
            print(f"reusing {folder}")
        return load_checkpoint(final, vision=spec.model.vision, lm=spec.model.lm,
                               precision=run.train.precision), tokenizer, image_processor

    cfg = run.train
    cfg.output_dir, cfg.progress = str(folder), progress
    print(run)
    if progress:
        print(estimate_memory(spec, mode=stage, batch_size=cfg.micro_batch(), precision=resolve_precision(cfg.precision)))
    torch.manual_seed(cfg.seed)
    model = load_base(spec, tokenizer, qlora=stage == "qlora", precision=cfg.precision)
    if stage == "stage1":
        freeze_for_stage1(model)
    else:
        if projector_from is not None:
            start = load_checkpoint(projector_from, vision=spec.model.vision, lm=spec.model.lm, precision="fp32")
        else:
            start, _, _ = course_model("stage1", spec, progress=progress)
        model.projector.load_state_dict(start.projector.state_dict())
        del start
        add_lora(model, cfg)
    dataset = instruct_dataset(spec, training_records(run, data), data["images"], tokenizer, image_processor,
                               model.num_image_tokens)
    train(model, dataset, LlavaCollator(tokenizer.pad_token_id), cfg, resume_from=resume,
          run_info={"key": key, "run_config": run.to_dict(), "skipped_records": dict(dataset.skipped)})
    return model.eval(), tokenizer, image_processor


def instruct_dataset(preset: str | Preset, records: list[dict], image_folder: str | Path, tokenizer, image_processor,
                     num_image_tokens: int) -> LlavaInstructDataset:
    """``records`` as training items under the preset's sequence rules (length, system prompt); a bad or too-long
    record is skipped and counted in ``dataset.skipped``."""
    spec = get_preset(preset)
    return LlavaInstructDataset(records, image_folder, tokenizer, image_processor, num_image_tokens,
                                max_length=spec.data.max_length, system_prompt=spec.model.system_prompt,
                                skip_invalid=True)


def course_history(stage: str = "stage1", preset: str | Preset = "tiny", **overrides) -> list[dict]:
    """The per-step loss history of the checkpoint ``course_model(stage, preset, **overrides)`` trained."""
    _, folder, _ = plan_run(stage, preset, **overrides)
    path = folder / "final" / "history.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no history; train the checkpoint first with course_model({stage!r})")
    return read_json(path)
