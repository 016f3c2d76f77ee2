"""Benchmark: stage-2 LoRA training, llava_mini against the standard route (transformers'
``LlavaForConditionalGeneration`` + peft), same weights, batches and settings, each route in its own process.

    python scripts/bench_vs_standard.py --shape tiny --steps 4        # shapes: scripts/bench_shapes/*.json
    python scripts/bench_vs_standard.py --shape colab --steps 3 --layers 6
    python scripts/bench_vs_standard.py --shape paper --batch 4       # on a GPU
    python scripts/bench_vs_standard.py --shape tiny --image-reuse 4 \
        --variant loss_chunk_logits=null --variant cache_image_features=true --variant checkpoint_every=2

``prepare`` writes a LlavaMini of the shape's towers (public hyper-parameters, random weights, no download)
twice: ``save_pretrained`` (ours) and ``export_to_transformers`` (standard). Then, checkpointing off and on,
ours trains with LlavaMini.from_pretrained + add_lora + train() (labelled-only head); standard with
LlavaForConditionalGeneration + peft's get_peft_model (LoRA on every linear layer of the LM, same rank, alpha,
dropout; projector trainable) in a plain accelerate loop with train()'s optimizer, schedule, clipping and data
order. Settings: the preset's ``lora`` TrainConfig changed by the shape's "train", one micro-batch per step;
both use their default attention (sdpa; each run reports what its towers use), non-reentrant checkpointing, fp32
projector weights. Step losses must agree within --tolerance.

Ours runs with TrainConfig's defaults (e.g. the chunked labelled-only head); each ``--variant`` adds a run of ours
with some of them changed (``KEY=VALUE,...``, JSON values: ``loss_chunk_logits=null`` is the head in one pass), so
one run measures each option on and off beside the standard route. ``--image-reuse R``: each synthetic image
appears in R examples (R epochs, or R records of one picture), what ``cache_image_features`` can reuse.

Tokens: non-padding input positions, image tokens included, of the timed steps (all but the first, if two
or more). Peak memory, weights included: GPU ``torch.cuda.max_memory_allocated`` (reset at the loop's start);
CPU the loop's resident peak, Linux's VmHWM reset to the current RSS at the loop's start (/proc/self/clear_refs;
else the process's ru_maxrss). "loop +GiB": the peak above the loop's start; on the CPU that includes most
weights: from_pretrained maps them from their files, and the first step makes them resident, and the features
that cache_image_features keeps in host RAM (on a GPU they are not counted).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import fields, replace
from importlib.metadata import version
from pathlib import Path

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from llava_mini.config import TrainConfig, get_preset  # noqa: E402
from llava_mini.model import (IGNORE_INDEX, LlavaCollator, LlavaMini, export_to_transformers,  # noqa: E402
                              image_token_id)
from llava_mini.model.export import LM_PREFIX  # noqa: E402
from llava_mini.train import (StepSampler, add_lora, compute_dtype, resolve_precision, train,  # noqa: E402
                              trainable_parameters)

SHAPES_DIR = Path(__file__).resolve().parent / "bench_shapes"
DEFAULT_OUT = ROOT / "docs" / "results" / "bench_vs_standard.json"
ROUTES = ("ours", "standard")
TOLERANCE = {"fp32": 1e-3, "bf16": 5e-2, "fp16": 5e-2}  # max |loss difference| of a step, by precision
PROMPT_TOKENS = 5  # text before the image in every synthetic example (a system / user prefix)
GIB = 2 ** 30
# Allocator settings both routes' processes inherit from the environment: the report records those that are set
ALLOCATOR_ENV = ("THP_MEM_ALLOC_ENABLE", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES",
                 "LD_PRELOAD", "PYTORCH_CUDA_ALLOC_CONF")



def load_shape(name_or_path: str, layers: int | None = None) -> dict:
    """A shape file (a name in scripts/bench_shapes, or a path): the towers' configs, the preset whose
    stage-2 settings apply, and the text lengths. ``layers``: cut both towers to at most that many layers."""
    path = Path(name_or_path) if name_or_path.endswith(".json") else SHAPES_DIR / f"{name_or_path}.json"
    if not path.exists():
        known = sorted(p.stem for p in SHAPES_DIR.glob("*.json"))
        raise SystemExit(f"{path}: no such shape file (known shapes: {known})")
    shape = json.loads(path.read_text())
    missing = {"preset", "vision", "lm", "text_tokens", "answer_fraction"} - set(shape)
    if missing:
        raise SystemExit(f"{path}: missing keys {sorted(missing)}")
    if not all("model_type" in shape[t] and "num_hidden_layers" in shape[t] for t in ("vision", "lm")):
        raise SystemExit(f"{path}: 'vision' and 'lm' each need 'model_type' and 'num_hidden_layers'")
    shape["name"], shape["file"] = path.stem, str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    if layers:
        for tower in ("vision", "lm"):
            shape[tower]["num_hidden_layers"] = min(layers, shape[tower]["num_hidden_layers"])
    return shape


def train_config(shape: dict, args, checkpointing: bool = False, output_dir: str = "unused",
                 variant: dict | None = None):
    """The preset's stage-2 LoRA TrainConfig with the shape's and the command line's changes (and ours'
    ``variant``); one optimizer step is one micro-batch (the preset's micro_batch_size), ``args.steps`` of them."""
    changes = {**shape.get("train", {}), **({"precision": args.precision} if args.precision else {})}
    cfg = get_preset(shape["preset"]).train_config("lora", **changes)
    if args.cpu and cfg.precision == "auto":  # (auto would say bf16 on a machine that has a GPU)
        cfg.precision = "fp32"
    micro = args.batch or cfg.micro_batch()
    return replace(cfg, batch_size=micro, micro_batch_size=micro, max_steps=args.steps, save_every=None,
                   gradient_checkpointing=checkpointing, output_dir=output_dir, progress=False, **(variant or {}))


def parse_variant(text: str) -> dict:
    """"loss_chunk_logits=null,checkpoint_every=2" -> {"loss_chunk_logits": None, "checkpoint_every": 2}."""
    changes = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        try:
            changes[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            changes[key.strip()] = value
    unknown = set(changes) - {f.name for f in fields(TrainConfig)}
    fixed = {"batch_size", "micro_batch_size", "max_steps", "gradient_checkpointing"} & set(changes)
    if unknown or fixed:
        raise SystemExit(f"--variant {text}: " + (f"TrainConfig has no {sorted(unknown)}" if unknown else
                                                  f"{sorted(fixed)} are set by the benchmark itself"))
    return changes


def device_of(args) -> str | None:
    """"cuda" when there is a GPU (and --cpu was not given), else None: the CPU, as build() takes it."""
    return "cuda" if torch.cuda.is_available() and not args.cpu else None



class SyntheticInstructData(list):
    """Seeded stand-ins for LlavaInstructDataset items (input_ids (T,), labels (T,), pixel_values (3, S, S)), the
    same in every process: [PROMPT_TOKENS text][N image tokens][question][answer: ``answer_fraction`` of the
    text, the only labelled part]; text lengths uniform in ``text_tokens``; each image in ``image_reuse``
    consecutive examples."""

    def __init__(self, n: int, shape: dict, meta: dict, seed: int = 0, image_reuse: int = 1):
        generator = torch.Generator().manual_seed(seed)
        low, high = shape["text_tokens"]
        size, n_image = shape["vision"]["image_size"], meta["num_image_tokens"]
        for i in range(n):
            text = int(torch.randint(low, high + 1, (1,), generator=generator))
            answer = max(1, round(text * shape["answer_fraction"]))
            ids = torch.randint(meta["first_text_id"], shape["lm"]["vocab_size"], (n_image + text,),
                                generator=generator)
            ids[PROMPT_TOKENS:PROMPT_TOKENS + n_image] = meta["image_token_id"]
            labels = torch.full_like(ids, IGNORE_INDEX)
            labels[-answer:] = ids[-answer:]
            if i % image_reuse == 0:
                image = torch.randn(3, size, size, generator=generator)
            self.append({"input_ids": ids, "labels": labels, "pixel_values": image})

    def lengths(self) -> list[int]:  # for length-grouped batches, as LlavaInstructDataset
        return [len(item["input_ids"]) for item in self]


def step_batches(data, cfg, collator):
    """The batches train() draws for ``cfg`` (one process, no accumulation): the same StepSampler."""
    sampler = StepSampler(len(data), cfg.batch_size, cfg.micro_batch(), 1, 0, cfg.seed, 0, cfg.max_steps,
                          lengths=data.lengths() if cfg.group_by_length else None)
    return DataLoader(data, batch_sampler=sampler, collate_fn=collator)


def batch_counts(data, cfg, collator) -> list[dict]:
    """Per step: input tokens (non-padding, image tokens included), padded positions, labelled targets."""
    return [{"tokens": int(b["attention_mask"].sum()), "positions": b["input_ids"].numel(),
             "labelled": int((b["labels"][:, 1:] != IGNORE_INDEX).sum())} for b in step_batches(data, cfg, collator)]



@contextlib.contextmanager
def peak_memory(device: str | None):
    """Yields a dict that gets the block's peak memory, weights included (see the module docstring)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        found = {"memory_method": "torch.cuda.max_memory_allocated",
                 "memory_at_loop_start_bytes": torch.cuda.memory_allocated()}
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: VmHWM := current RSS
            method = "VmHWM (resident peak), reset to the RSS at the loop's start"
        except OSError:
            method = "ru_maxrss (the process's resident peak since it started)"
        found = {"memory_method": method, "memory_at_loop_start_bytes": _status_bytes("VmRSS")}
    yield found
    if device == "cuda":
        torch.cuda.synchronize()
        found["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
    else:
        found["peak_memory_bytes"] = (_status_bytes("VmHWM") if found["memory_method"].startswith("VmHWM")
                                      else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def _status_bytes(field: str) -> int:
    """A field of /proc/self/status (kB there) in bytes; 0 where there is no /proc."""
    status = Path("/proc/self/status")
    lines = [x for x in status.read_text().splitlines() if x.startswith(field + ":")] if status.exists() else []
    return int(lines[0].split()[1]) * 1024 if lines else 0


def prepare(shape: dict, args, folder: Path) -> dict:
    """Random towers of the shape -> folder/ours (save_pretrained) and folder/standard (the export)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, CLIPImageProcessor

    from llava_mini.course import load_processors  # (the course layer imports the world and the teachers)

    cfg, settings = train_config(shape, args), get_preset(shape["preset"]).model
    tokenizer, _ = load_processors("tiny")  # the shipped tokenizer: its <image> id (3) fits every vocabulary
    size = shape["vision"]["image_size"]
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    configs = {t: AutoConfig.for_model(**shape[t]) for t in ("vision", "lm")}
    torch.manual_seed(args.seed)
    dtype = compute_dtype(cfg.precision)  # frozen weights in the training precision, as load_base
    with torch.device(device_of(args) or "cpu"):  # initialise where they will run (fast on a GPU)
        vision = AutoModel.from_config(configs["vision"], dtype=dtype)
        lm = AutoModelForCausalLM.from_config(configs["lm"], dtype=dtype)
        model = LlavaMini(vision, lm, image_token_id(tokenizer), settings.projector_type,
                          settings.vision_feature_layer, projector_dtype=torch.float32)
    model.save_pretrained(folder / "ours")
    export_to_transformers(model, folder / "standard", tokenizer, processor)
    return {"num_image_tokens": model.num_image_tokens, "image_token_id": model.config.image_token_id,
            "pad_token_id": tokenizer.pad_token_id, "first_text_id": max(tokenizer.all_special_ids) + 1,
            "parameters": sum(p.numel() for p in model.parameters()), "precision": resolve_precision(cfg.precision),
            "machine": machine(), "versions": versions()}


def run_ours(folder: Path, cfg, data, collator, device) -> dict:
    """llava_mini as the course trains: LlavaMini + add_lora + train()."""
    model = LlavaMini.from_pretrained(folder / "ours", torch_dtype=compute_dtype(cfg.precision),
                                      projector_dtype=torch.float32, device=device)
    attention = attention_of(model.vision_tower, model.language_model)
    torch.manual_seed(cfg.seed)  # the LoRA initialisation both routes draw
    add_lora(model, cfg)
    counts = trainable_parameters(model)
    with peak_memory(device) as memory:
        history = train(model, data, collator, cfg).history
    return {"losses": [row["loss"] for row in history], "step_seconds": [row["seconds"] for row in history],
            "labelled": [row["tokens"] for row in history],
            "trainable_parameters": counts["projector"] + counts["lora"], "attention": attention, **memory}


def attention_of(vision, lm) -> dict:
    """The attention kernel each tower runs (its config's resolved attn_implementation)."""
    return {"vision": vision.config._attn_implementation, "lm": lm.config._attn_implementation}


def run_standard(folder: Path, cfg, data, collator, device) -> dict:
    """The standard route: transformers' LLaVA + peft, and the loop train() runs, written plainly."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from peft import LoraConfig, get_peft_model
    from transformers import LlavaForConditionalGeneration, get_cosine_schedule_with_warmup

    if cfg.lora_targets != "all-linear":
        raise SystemExit(f"lora_targets {cfg.lora_targets!r}: only 'all-linear' is mapped to the standard route")
    precision = resolve_precision(cfg.precision)
    model = LlavaForConditionalGeneration.from_pretrained(folder / "standard", dtype=compute_dtype(precision),
                                                          device_map=None if device is None else {"": device})
    projector = model.model.multi_modal_projector.float()  # trained weights in fp32, as ours
    attention = attention_of(model.model.vision_tower, model.model.language_model)
    if cfg.gradient_checkpointing:  # (activation_checkpointing_enable: the name since transformers 5.2x)
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)({"use_reentrant": False})
    # peft's "all-linear" of the LM alone: every Linear of its body (the LLaVA's lm_head is outside it)
    lm_linears = [n for n, m in model.named_modules()
                  if n.startswith(LM_PREFIX + ".") and isinstance(m, torch.nn.Linear)]
    torch.manual_seed(cfg.seed)
    model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                             target_modules=lm_linears, bias="none", task_type="CAUSAL_LM"))
    projector.requires_grad_(True)
    lora = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": lora, "lr": cfg.lr},
              {"params": list(projector.parameters()), "lr": cfg.lr if cfg.projector_lr is None else cfg.projector_lr}]
    warmup = math.ceil(cfg.warmup_ratio * cfg.max_steps)
    with peak_memory(device) as memory:
        accelerator = Accelerator(mixed_precision={"fp32": "no"}.get(precision, precision),
                                  step_scheduler_with_optimizer=False)
        set_seed(cfg.seed)  # as train(): the same dropout masks follow
        optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
        scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, cfg.max_steps)
        model.train()
        wrapped, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        batches, losses, seconds = iter(step_batches(data, cfg, collator)), [], []
        for _ in range(cfg.max_steps):
            started = time.perf_counter()
            batch = {k: v.to(accelerator.device) for k, v in next(batches).items()}
            loss = wrapped(**batch, use_cache=False).loss
            accelerator.backward(loss)
            if cfg.max_grad_norm is not None:
                accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)
            optimizer.step()
            if not optimizer.step_was_skipped:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            seconds.append(time.perf_counter() - started)
    return {"losses": losses, "step_seconds": seconds, "trainable_parameters": sum(p.numel() for p in trainable),
            "attention": attention, **memory}


def child(args) -> None:
    """One process: prepare the weights, or train one route with one checkpointing setting."""
    if args.threads:
        torch.set_num_threads(args.threads)
    shape, folder = load_shape(args.shape, args.layers), Path(args._folder)
    if args._child == "prepare":
        result = prepare(shape, args, folder)
    else:
        meta = json.loads((folder / "prepare.json").read_text())
        with tempfile.TemporaryDirectory() as output_dir:
            variant = parse_variant(args.variant[int(args._variant)]) if args._variant else None
            cfg = train_config(shape, args, args._checkpointing == "on", output_dir, variant)
            data = SyntheticInstructData(cfg.max_steps * cfg.batch_size, shape, meta, args.seed, args.image_reuse)
            collator = LlavaCollator(meta["pad_token_id"])
            run = run_ours if args._child == "ours" else run_standard
            result = {**run(folder, cfg, data, collator, device_of(args)), "steps": batch_counts(data, cfg, collator),
                      "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg()}
        if "labelled" in result and result.pop("labelled") != [s["labelled"] for s in result["steps"]]:
            raise SystemExit("train() saw other batches than step_batches() builds: its copy of the sampler is stale")
    name = args._child if args._child == "prepare" else f"{args._child}-{args._checkpointing}{args._variant or ''}"
    (folder / f"{name}.json").write_text(json.dumps(result))



def machine() -> dict:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    cpus = [x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")] or [platform.processor()]
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpus[0], "cpu_count": os.cpu_count(), "gpu": gpu, "platform": platform.platform()}


def versions() -> dict:
    names = ("torch", "transformers", "peft", "accelerate")
    return {n: version(n) for n in names} | {"python": platform.python_version()}


def compare(ours: dict, standard: dict, checkpointing: bool) -> dict:
    if ours["steps"] != standard["steps"]:
        raise SystemExit("the two routes trained on different batches")
    if ours["trainable_parameters"] != standard["trainable_parameters"]:
        raise SystemExit(f"trainable parameters differ: ours {ours['trainable_parameters']:,}, standard "
                         f"{standard['trainable_parameters']:,} (LoRA targets or the projector)")
    timed = slice(1, None) if len(ours["step_seconds"]) > 1 else slice(None)  # the first step warms up
    for route in (ours, standard):
        route["tokens_per_s"] = sum(s["tokens"] for s in route["steps"][timed]) / sum(route["step_seconds"][timed])
    return {"gradient_checkpointing": checkpointing, "ours": ours, "standard": standard,
            "speed_ratio": ours["tokens_per_s"] / standard["tokens_per_s"],
            "memory_ratio": ours["peak_memory_bytes"] / standard["peak_memory_bytes"],
            "max_loss_difference": max(abs(a - b) for a, b in zip(ours["losses"], standard["losses"]))}


def compare_variant(variant: dict, run: dict, changes: dict) -> dict:
    """A run of ours with some TrainConfig ``changes``: its ratios to the standard route and to ours as is."""
    against = compare(variant, run["standard"], run["gradient_checkpointing"])
    return {"changes": changes, "ours": variant, **{k: against[k] for k in ("speed_ratio", "memory_ratio",
                                                                             "max_loss_difference")},
            "speed_vs_ours": variant["tokens_per_s"] / run["ours"]["tokens_per_s"],
            "memory_vs_ours": variant["peak_memory_bytes"] / run["ours"]["peak_memory_bytes"]}


def print_report(report: dict) -> None:
    s, runs = report["settings"], report["runs"]
    steps = runs[0]["ours"]["steps"]
    cut = f" cut to {report['layers']} layers" if report["layers"] else ""
    print(f"\nshape {report['shape']} ({report['about']}){cut}")
    text = "-".join(map(str, s["text_tokens"]))
    print(f"batch {s['batch_size']} x ({s['image_tokens']} image + {text} text tokens), "
          f"{s['precision']}, LoRA r={s['lora_r']} alpha={s['lora_alpha']} dropout={s['lora_dropout']}, "
          f"{len(steps)} steps ({max(1, len(steps) - 1)} timed), on {report['device']}")
    print(f"tokens: {report['tokens_counted']}; memory: {runs[0]['ours']['memory_method']}")
    if report.get("environment"):
        print(f"environment (both routes): {report['environment']}")
    print(f"ours: {s['ours_defaults']}; images: each in {s['image_reuse']} example(s); attention: "
          + "; ".join(f"{route} {runs[0][route]['attention']}" for route in ROUTES))
    width = max([10] + [len(variant_name(v["changes"])) + 2 for run in runs for v in run["variants"]])
    print(f"{'checkpointing':<14}{'route':<{width}}{'tokens/s':>10}{'peak GiB':>10}{'(loop +GiB)':>12}  "
          "losses per step")
    for run in runs:
        rows = [(route, run[route]) for route in ROUTES]
        rows += [(variant_name(v["changes"]), v["ours"]) for v in run["variants"]]
        for name, r in rows:
            print(f"{'on' if run['gradient_checkpointing'] else 'off':<14}{name:<{width}}{r['tokens_per_s']:>10.1f}"
                  f"{r['peak_memory_bytes'] / GIB:>10.2f}"
                  f"{(r['peak_memory_bytes'] - r['memory_at_loop_start_bytes']) / GIB:>12.2f}"
                  "  " + " ".join(f"{x:.5f}" for x in r["losses"]))
        print(f"{'':<14}ours/standard: speed {run['speed_ratio']:.2f}x, memory {run['memory_ratio']:.2f}x, "
              f"max |loss difference| {run['max_loss_difference']:.2e} (tolerance {report['tolerance']:.0e})")
        for v in run["variants"]:
            print(f"{'':<14}{variant_name(v['changes'])}: /standard speed {v['speed_ratio']:.2f}x, memory "
                  f"{v['memory_ratio']:.2f}x; /ours speed {v['speed_vs_ours']:.2f}x, memory "
                  f"{v['memory_vs_ours']:.2f}x; max |loss difference| {v['max_loss_difference']:.2e}")


def variant_name(changes: dict) -> str:
    return "ours[" + ",".join(f"{k}={json.dumps(v)}" for k, v in changes.items()) + "]"


def spawn(role: str, argv: list[str], folder: str, checkpointing: str | None = None,
          variant: int | None = None) -> None:
    command = [sys.executable, __file__, *argv, "--_child", role, "--_folder", folder]
    command += ["--_checkpointing", checkpointing] if checkpointing else []
    subprocess.run(command + (["--_variant", str(variant)] if variant is not None else []), check=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tiny", help="toy, tiny, colab, paper (scripts/bench_shapes) or a .json")
    parser.add_argument("--layers", type=int, default=None, help="cut both towers to at most K layers (a quick run)")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per route (the first is not timed)")
    parser.add_argument("--batch", type=int, default=None, help="examples per step (default: the preset's micro-batch)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], help="default: the preset's")
    parser.add_argument("--checkpointing", choices=["both", "off", "on"], default="both")
    parser.add_argument("--tolerance", type=float, default=None, help="max |loss difference| (default by precision)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process (default: torch's)")
    parser.add_argument("--cpu", action="store_true", help="use the CPU even when there is a GPU")
    parser.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE,...",
                        help="one more run of ours with these TrainConfig changes (JSON values; repeatable)")
    parser.add_argument("--image-reuse", type=int, default=1, help="examples per synthetic image (default: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    for hidden in ("--_child", "--_folder", "--_checkpointing", "--_variant"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv := sys.argv[1:] if argv is None else argv)
    if args._child:
        return child(args)

    shape = load_shape(args.shape, args.layers)
    cfg = train_config(shape, args)
    variants = [parse_variant(text) for text in args.variant]
    for changes in variants:
        train_config(shape, args, variant=changes)  # (a bad value fails here, not in a child)
    settings = [False, True] if args.checkpointing == "both" else [args.checkpointing == "on"]
    with tempfile.TemporaryDirectory(prefix="bench_vs_standard_") as folder:
        spawn("prepare", argv, folder)
        meta = json.loads((Path(folder) / "prepare.json").read_text())
        runs = []
        for checkpointing in settings:
            flag = "on" if checkpointing else "off"
            for route in ROUTES:
                spawn(route, argv, folder, flag)
            for i in range(len(variants)):
                spawn("ours", argv, folder, flag, i)
            ours, standard = (json.loads((Path(folder) / f"{r}-{flag}.json").read_text()) for r in ROUTES)
            runs.append(run := compare(ours, standard, checkpointing))
            run["variants"] = [compare_variant(json.loads((Path(folder) / f"ours-{flag}{i}.json").read_text()), run,
                                               changes) for i, changes in enumerate(variants)]
    precision = meta["precision"]
    tolerance = TOLERANCE[precision] if args.tolerance is None else args.tolerance
    report = {
        "shape": shape["name"], "shape_file": shape["file"], "about": shape.get("about", ""), "layers": args.layers,
        "device": meta["machine"]["gpu"]
        or f"CPU ({meta['machine']['cpu']}, {runs[0]['ours']['torch_threads']} torch threads)",
        "machine": meta["machine"], "versions": meta["versions"], "parameters": meta["parameters"],
        "environment": {k: os.environ[k] for k in ALLOCATOR_ENV if k in os.environ},
        "settings": {"preset": shape["preset"], "batch_size": cfg.batch_size, "precision": precision,
                     "lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha, "lora_dropout": cfg.lora_dropout,
                     "lr": cfg.lr, "projector_lr": cfg.projector_lr, "group_by_length": cfg.group_by_length,
                     "image_tokens": meta["num_image_tokens"], "text_tokens": shape["text_tokens"],
                     "answer_fraction": shape["answer_fraction"], "seed": args.seed, "image_reuse": args.image_reuse,
                     "attention": {route: runs[0][route]["attention"] for route in ROUTES},
                     "ours_defaults": {k: getattr(cfg, k) for k in ("loss_chunk_logits", "cache_image_features",
                                                                    "checkpoint_every", "keep_matmul_outputs",
                                                                    "host_mmap_threshold")},
                     "vision": shape["vision"], "lm": shape["lm"]},
        "tokens_counted": "non-padding input positions, image tokens included (attention_mask sum); first step untimed",
        "tolerance": tolerance, "runs": runs,
    }
    print_report(report)
    (out := Path(args.out)).parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    worst = max(r["max_loss_difference"] for run in runs for r in [run, *run["variants"]])
    if worst > tolerance:
        raise SystemExit(f"LOSSES DISAGREE: max |ours - standard| = {worst:.3g} > tolerance {tolerance:g}")


if __name__ == "__main__":
    main()
