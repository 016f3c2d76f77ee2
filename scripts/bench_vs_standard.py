"""Benchmark: stage-2 LoRA training with llava_mini against the standard route (transformers'
``LlavaForConditionalGeneration`` + peft), same weights, same batches, same settings (issue 13).

    python scripts/bench_vs_standard.py --shape tiny --steps 4
    python scripts/bench_vs_standard.py --shape colab --steps 3 --layers 6
    python scripts/bench_vs_standard.py --shape paper --batch 4          # on a GPU

1. ``prepare`` (its own process): a LlavaMini of the shape's towers with random weights
   (``scripts/bench_shapes/<shape>.json``: public hyper-parameters, no download), written twice:
   ``save_pretrained`` (ours) and ``export_to_transformers`` (standard), so both routes start identical.
2. For gradient checkpointing off and on, each route trains ``--steps`` optimizer steps in its own process:
     ours      LlavaMini.from_pretrained + add_lora + llava_mini.train.train (labelled-only LM head)
     standard  LlavaForConditionalGeneration.from_pretrained + peft get_peft_model (LoRA on every linear
               layer of the LM, the same rank / alpha / dropout), projector trainable, a plain accelerate
               loop with the same optimizer, schedule, clipping and data order (llava_mini's StepSampler)
   Settings are the preset's stage-2 ``lora`` TrainConfig (precision, LoRA, learning rates), changed by
   the shape file's "train", except that one optimizer step is one micro-batch (no accumulation).
   Both routes: sdpa attention, non-reentrant checkpointing, projector weights in fp32, ``use_cache=False``.
3. Prints, per route: tokens/s, peak memory, the ratios ours/standard and the losses of every step, which
   must agree within ``--tolerance`` (else it exits with an error, after writing the JSON).

Tokens counted: every non-padding input position, image tokens included (the attention mask's sum), over the
timed steps: all but the first (warm-up) when there are two or more.
Peak memory: on a GPU ``torch.cuda.max_memory_allocated`` over the loop (reset at its start; weights included);
on the CPU the loop's resident peak: Linux's RSS high-water mark (VmHWM) after resetting it to the current RSS
at the loop's start (``/proc/self/clear_refs``); where that reset is refused, the process's ``ru_maxrss``.
"loop +GiB" is the peak above the memory at the loop's start; on the CPU that still holds most weights,
which from_pretrained maps from their files and which become resident when the first step reads them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

SHAPES_DIR = Path(__file__).resolve().parent / "bench_shapes"
DEFAULT_OUT = ROOT / "docs" / "results" / "bench_vs_standard.json"
ROUTES = ("ours", "standard")
TOLERANCE = {"fp32": 1e-3, "bf16": 5e-2, "fp16": 5e-2}  # max |loss difference| of a step, by precision
PROMPT_TOKENS = 5  # text before the image in every synthetic example (a system / user prefix)
GIB = 2 ** 30


# ============================================================================ the shape and the settings


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


def train_config(shape: dict, args, checkpointing: bool = False, output_dir: str = "unused"):
    """The preset's stage-2 LoRA TrainConfig with the shape's and the command line's changes; one optimizer
    step is one micro-batch (the preset's micro_batch_size), ``args.steps`` of them."""
    from llava_mini.config import get_preset

    changes = dict(shape.get("train", {}))
    changes.update({k: v for k, v in (("precision", args.precision), ("batch_size", args.batch)) if v})
    cfg = get_preset(shape["preset"]).train_config("lora", **changes)
    if args.batch:
        cfg.micro_batch_size = args.batch
    if args.cpu and cfg.precision == "auto":  # (auto would say bf16 on a machine that has a GPU)
        cfg.precision = "fp32"
    micro = cfg.micro_batch()
    return replace(cfg, batch_size=micro, micro_batch_size=micro, max_steps=args.steps, save_every=None,
                   gradient_checkpointing=checkpointing, output_dir=output_dir, progress=False)


def device_of(args) -> str | None:
    """"cuda" when there is a GPU (and --cpu was not given), else None: the CPU, as build() takes it."""
    import torch

    return "cuda" if torch.cuda.is_available() and not args.cpu else None


# ============================================================================ the data


class SyntheticInstructData:
    """Random stand-ins for LlavaInstructDataset items, identical in every process (seeded): each is
    [PROMPT_TOKENS text][N image tokens][question][answer], the answer ``answer_fraction`` of the text and the
    only labelled part; text lengths uniform in ``text_tokens``. Items: input_ids (T,), labels (T,),
    pixel_values (3, S, S)."""

    def __init__(self, n: int, shape: dict, meta: dict, seed: int = 0):
        import torch

        from llava_mini.model import IGNORE_INDEX

        generator = torch.Generator().manual_seed(seed)
        low, high = shape["text_tokens"]
        size, n_image = shape["vision"]["image_size"], meta["num_image_tokens"]
        self.items = []
        for _ in range(n):
            text = int(torch.randint(low, high + 1, (1,), generator=generator))
            answer = max(1, round(text * shape["answer_fraction"]))
            ids = torch.randint(meta["first_text_id"], shape["lm"]["vocab_size"], (n_image + text,), generator=generator)
            ids[PROMPT_TOKENS:PROMPT_TOKENS + n_image] = meta["image_token_id"]
            labels = torch.full_like(ids, IGNORE_INDEX)
            labels[-answer:] = ids[-answer:]
            self.items.append({"input_ids": ids, "labels": labels,
                               "pixel_values": torch.randn(3, size, size, generator=generator)})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]

    def lengths(self) -> list[int]:  # for length-grouped batches, as LlavaInstructDataset
        return [len(item["input_ids"]) for item in self.items]


def step_batches(data, cfg, collator):
    """The batches train() draws for ``cfg`` (one process, no accumulation): the same StepSampler."""
    from torch.utils.data import DataLoader

    from llava_mini.train import StepSampler

    lengths = data.lengths() if cfg.group_by_length else None
    sampler = StepSampler(len(data), cfg.batch_size, cfg.micro_batch(), 1, 0, cfg.seed, 0, cfg.max_steps,
                          lengths=lengths)
    return DataLoader(data, batch_sampler=sampler, collate_fn=collator)


def batch_counts(data, cfg, collator) -> list[dict]:
    """Per step: input tokens (non-padding, image tokens included), padded positions, labelled targets."""
    from llava_mini.model import IGNORE_INDEX

    return [{"tokens": int(b["attention_mask"].sum()), "positions": b["input_ids"].numel(),
             "labelled": int((b["labels"][:, 1:] != IGNORE_INDEX).sum())} for b in step_batches(data, cfg, collator)]


# ============================================================================ one process each


class PeakMemory:
    """Peak memory of a block, weights included (see the module docstring)."""

    def __init__(self, device: str | None):
        self.device = device

    def __enter__(self):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.method, self.start = "torch.cuda.max_memory_allocated", torch.cuda.memory_allocated()
            return self
        try:
            Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: VmHWM := current RSS
            self.method = "VmHWM (resident peak), reset to the RSS at the loop's start"
        except OSError:
            self.method = "ru_maxrss (the process's resident peak since it started)"
        self.start = _status_bytes("VmRSS")
        return self

    def __exit__(self, *exc):
        import resource

        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        elif self.method.startswith("VmHWM"):
            self.peak = _status_bytes("VmHWM")
        else:
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return False

    def result(self) -> dict:
        return {"peak_memory_bytes": self.peak, "memory_at_loop_start_bytes": self.start, "memory_method": self.method}


def _status_bytes(field: str) -> int:
    """A field of /proc/self/status (kB there) in bytes; 0 where there is no /proc."""
    try:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    except (OSError, StopIteration):
        return 0
    return int(line.split()[1]) * 1024


def prepare(shape: dict, args, folder: Path) -> dict:
    """Random towers of the shape -> folder/ours (save_pretrained) and folder/standard (the export)."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, CLIPImageProcessor

    from llava_mini.config import get_preset
    from llava_mini.course import load_processors
    from llava_mini.model import LlavaMini, export_to_transformers, image_token_id
    from llava_mini.train import compute_dtype, resolve_precision

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
    import torch

    from llava_mini.model import LlavaMini
    from llava_mini.train import add_lora, compute_dtype, train, trainable_parameters

    model = LlavaMini.from_pretrained(folder / "ours", torch_dtype=compute_dtype(cfg.precision),
                                      projector_dtype=torch.float32, device=device)
    torch.manual_seed(cfg.seed)  # the LoRA initialisation both routes draw
    add_lora(model, cfg)
    counts = trainable_parameters(model)
    with PeakMemory(device) as memory:
        history = train(model, data, collator, cfg).history
    return {"losses": [row["loss"] for row in history], "step_seconds": [row["seconds"] for row in history],
            "labelled": [row["tokens"] for row in history], "trainable_parameters": counts["projector"] + counts["lora"],
            **memory.result()}


def run_standard(folder: Path, cfg, data, collator, device) -> dict:
    """The standard route: transformers' LLaVA + peft, and the loop train() runs, written plainly."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from peft import LoraConfig, get_peft_model
    from transformers import LlavaForConditionalGeneration, get_cosine_schedule_with_warmup

    from llava_mini.model.export import LM_PREFIX
    from llava_mini.train import compute_dtype, resolve_precision

    if cfg.lora_targets != "all-linear":
        raise SystemExit(f"lora_targets {cfg.lora_targets!r}: this benchmark maps only 'all-linear' to the standard route")
    precision = resolve_precision(cfg.precision)
    model = LlavaForConditionalGeneration.from_pretrained(folder / "standard", dtype=compute_dtype(precision),
                                                          device_map=None if device is None else {"": device})
    projector = model.model.multi_modal_projector.float()  # trained weights in fp32, as ours
    if cfg.gradient_checkpointing:  # (activation_checkpointing_enable: the name since transformers 5.2x)
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)({"use_reentrant": False})
    # peft's "all-linear" of the LM alone: every Linear of its body (the LLaVA's lm_head is outside it)
    lm_linears = [n for n, m in model.named_modules() if n.startswith(LM_PREFIX + ".") and isinstance(m, torch.nn.Linear)]
    torch.manual_seed(cfg.seed)
    model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                             target_modules=lm_linears, bias="none", task_type="CAUSAL_LM"))
    projector.requires_grad_(True)
    lora = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    trainable = [p for p in model.parameters() if p.requires_grad]
    projector_lr = cfg.lr if cfg.projector_lr is None else cfg.projector_lr
    with PeakMemory(device) as memory:
        accelerator = Accelerator(mixed_precision={"fp32": "no"}.get(precision, precision),
                                  step_scheduler_with_optimizer=False)
        set_seed(cfg.seed)  # as train(): the same dropout masks follow
        optimizer = torch.optim.AdamW([{"params": lora, "lr": cfg.lr}, {"params": list(projector.parameters()),
                                      "lr": projector_lr}], weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
        scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * cfg.max_steps),
                                                    cfg.max_steps)
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
            **memory.result()}


def child(args) -> None:
    """One process: prepare the weights, or train one route with one checkpointing setting."""
    import torch

    from llava_mini.model import LlavaCollator

    if args.threads:
        torch.set_num_threads(args.threads)
    shape, folder = load_shape(args.shape, args.layers), Path(args._folder)
    if args._child == "prepare":
        result = prepare(shape, args, folder)
    else:
        meta = json.loads((folder / "prepare.json").read_text())
        with tempfile.TemporaryDirectory() as output_dir:
            cfg = train_config(shape, args, args._checkpointing == "on", output_dir)
            data = SyntheticInstructData(cfg.max_steps * cfg.batch_size, shape, meta, args.seed)
            collator = LlavaCollator(meta["pad_token_id"])
            run = run_ours if args._child == "ours" else run_standard
            result = {**run(folder, cfg, data, collator, device_of(args)), "steps": batch_counts(data, cfg, collator),
                      "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg()}
        if "labelled" in result and result.pop("labelled") != [s["labelled"] for s in result["steps"]]:
            raise SystemExit("train() saw other batches than step_batches() builds: the benchmark's copy of its sampler is stale")
    name = args._child if args._child == "prepare" else f"{args._child}-{args._checkpointing}"
    (folder / f"{name}.json").write_text(json.dumps(result))


# ============================================================================ the parent: compare and report


def machine() -> dict:
    import torch

    cpu = platform.processor()
    try:
        cpu = next(x.split(":", 1)[1].strip() for x in open("/proc/cpuinfo") if x.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "gpu": gpu, "platform": platform.platform()}


def versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "transformers", "peft", "accelerate")} | {
        "python": platform.python_version()}


def summarise(route: dict) -> dict:
    """tokens/s over the timed steps (all but the first when there are two or more)."""
    timed = slice(1, None) if len(route["step_seconds"]) > 1 else slice(None)
    tokens = sum(s["tokens"] for s in route["steps"][timed])
    return {**route, "tokens_per_s": tokens / sum(route["step_seconds"][timed])}


def compare(ours: dict, standard: dict, checkpointing: bool) -> dict:
    if ours["steps"] != standard["steps"]:
        raise SystemExit("the two routes trained on different batches")
    if ours["trainable_parameters"] != standard["trainable_parameters"]:
        raise SystemExit(f"trainable parameters differ: ours {ours['trainable_parameters']:,}, standard "
                         f"{standard['trainable_parameters']:,} (LoRA targets or the projector)")
    ours, standard = summarise(ours), summarise(standard)
    return {"gradient_checkpointing": checkpointing, "ours": ours, "standard": standard,
            "speed_ratio": ours["tokens_per_s"] / standard["tokens_per_s"],
            "memory_ratio": ours["peak_memory_bytes"] / standard["peak_memory_bytes"],
            "max_loss_difference": max(abs(a - b) for a, b in zip(ours["losses"], standard["losses"]))}


def print_report(report: dict) -> None:
    s, runs = report["settings"], report["runs"]
    steps = runs[0]["ours"]["steps"]
    print(f"\nshape {report['shape']} ({report['about']}){' cut to ' + str(report['layers']) + ' layers' if report['layers'] else ''}")
    print(f"batch {s['batch_size']} x ({s['image_tokens']} image + {s['text_tokens'][0]}-{s['text_tokens'][1]} text tokens), "
          f"{s['precision']}, LoRA r={s['lora_r']} alpha={s['lora_alpha']} dropout={s['lora_dropout']}, "
          f"{len(steps)} steps ({max(1, len(steps) - 1)} timed), on {report['device']}")
    print(f"tokens: {report['tokens_counted']}; memory: {runs[0]['ours']['memory_method']}")
    print(f"{'checkpointing':<14}{'route':<10}{'tokens/s':>10}{'peak GiB':>10}{'(loop +GiB)':>12}  losses per step")
    for run in runs:
        for route in ROUTES:
            r = run[route]
            print(f"{'on' if run['gradient_checkpointing'] else 'off':<14}{route:<10}{r['tokens_per_s']:>10.1f}"
                  f"{r['peak_memory_bytes'] / GIB:>10.2f}{(r['peak_memory_bytes'] - r['memory_at_loop_start_bytes']) / GIB:>12.2f}"
                  "  " + " ".join(f"{x:.5f}" for x in r["losses"]))
        print(f"{'':<14}ours/standard: speed {run['speed_ratio']:.2f}x, memory {run['memory_ratio']:.2f}x, "
              f"max |loss difference| {run['max_loss_difference']:.2e} (tolerance {report['tolerance']:.0e})")


def spawn(role: str, argv: list[str], folder: str, checkpointing: str | None = None) -> None:
    command = [sys.executable, __file__, *argv, "--_child", role, "--_folder", folder]
    subprocess.run(command + (["--_checkpointing", checkpointing] if checkpointing else []), check=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tiny", help="a name in scripts/bench_shapes (toy, tiny, colab, paper) or a .json path")
    parser.add_argument("--layers", type=int, default=None, help="cut both towers to at most K layers (a quick run)")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per route (the first is not timed)")
    parser.add_argument("--batch", type=int, default=None, help="examples per step (default: the preset's micro-batch)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=None,
                        help="default: the preset's (auto: bf16 / fp16 on a GPU, fp32 on the CPU)")
    parser.add_argument("--checkpointing", choices=["both", "off", "on"], default="both")
    parser.add_argument("--tolerance", type=float, default=None, help="max |loss difference| (default by precision)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process (default: torch's)")
    parser.add_argument("--cpu", action="store_true", help="use the CPU even when there is a GPU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    for hidden in ("--_child", "--_folder", "--_checkpointing"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args._child:
        return child(args)

    shape = load_shape(args.shape, args.layers)
    cfg = train_config(shape, args)
    settings = [False, True] if args.checkpointing == "both" else [args.checkpointing == "on"]
    with tempfile.TemporaryDirectory(prefix="bench_vs_standard_") as folder:
        spawn("prepare", argv, folder)
        meta = json.loads((Path(folder) / "prepare.json").read_text())
        runs = []
        for checkpointing in settings:
            flag = "on" if checkpointing else "off"
            for route in ROUTES:
                spawn(route, argv, folder, flag)
            ours, standard = (json.loads((Path(folder) / f"{r}-{flag}.json").read_text()) for r in ROUTES)
            runs.append(compare(ours, standard, checkpointing))
    precision = meta["precision"]
    tolerance = args.tolerance if args.tolerance is not None else TOLERANCE[precision]
    report = {
        "shape": shape["name"], "shape_file": shape["file"], "about": shape.get("about", ""), "layers": args.layers,
        "device": meta["machine"]["gpu"] or f"CPU ({meta['machine']['cpu']}, {runs[0]['ours']['torch_threads']} torch threads)",
        "machine": meta["machine"], "versions": meta["versions"], "parameters": meta["parameters"],
        "settings": {"preset": shape["preset"], "batch_size": cfg.batch_size, "precision": precision,
                     "lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha, "lora_dropout": cfg.lora_dropout,
                     "lr": cfg.lr, "projector_lr": cfg.projector_lr, "group_by_length": cfg.group_by_length,
                     "image_tokens": meta["num_image_tokens"], "text_tokens": shape["text_tokens"],
                     "answer_fraction": shape["answer_fraction"], "attention": "sdpa", "seed": args.seed,
                     "vision": shape["vision"], "lm": shape["lm"]},
        "tokens_counted": "non-padding input positions, image tokens included (attention_mask sum); first step untimed",
        "tolerance": tolerance, "runs": runs,
    }
    print_report(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    worst = max(run["max_loss_difference"] for run in runs)
    if worst > tolerance:
        raise SystemExit(f"LOSSES DISAGREE: max |ours - standard| = {worst:.3g} > tolerance {tolerance:g}")


if __name__ == "__main__":
    main()
