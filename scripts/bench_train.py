"""Step time of stage 1 / LoRA / QLoRA at the tiny size, on the course data (prints a table; writes JSON).

    python scripts/bench_train.py [--steps 8] [--threads 2] [--out work/bench/train.json]

Each row trains ``--steps`` optimizer steps of the tiny preset (shipped backbones, course records) and
reports the median step time (data loading included) and text tokens per second; the first step is
dropped (warm-up). Also: the frozen vision tower's share of a step (forward only, no grad), which is
what caching its outputs per image could save at best. Timings on a shared CPU are noisy: compare rows
of one run, and say which machine (and its load) produced them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from llava_mini.model import LlavaCollator, LlavaInstructDataset
    from llava_mini.teacher import load_records
    from llava_mini.paths import work_dir
    from llava_mini.config import get_preset
    from llava_mini.course import load_base, load_processors, training_data, subsample
    from llava_mini.train import add_lora, freeze_for_stage1, train

    spec = get_preset("tiny")
    tokenizer, processor = load_processors(spec)
    data = training_data(spec)
    records = {"stage1": load_records(data["stage1"]), "instruct": load_records(data["instruct"])}
    collator = LlavaCollator(tokenizer.pad_token_id)

    cases = [  # (name, stage, batch, changes)
        ("stage1", "stage1", 16, {}),
        ("stage1", "stage1", 32, {}),
        ("stage1 no length grouping", "stage1", 32, {"group_by_length": False}),
        ("stage1 bf16 autocast", "stage1", 32, {"precision": "bf16"}),
        ("lora", "lora", 16, {}),
        ("lora dropout 0.05", "lora", 16, {"lora_dropout": 0.05}),
        ("lora no length grouping", "lora", 16, {"group_by_length": False}),
        ("lora bf16 autocast", "lora", 16, {"precision": "bf16"}),
        ("lora", "lora", 32, {}),
        ("qlora", "qlora", 16, {}),
        ("qlora bf16", "qlora", 16, {"precision": "bf16"}),
    ]
    rows = []
    print(f"{'case':<28} {'batch':>5} {'s/step':>7} {'text tok/s':>10} {'vision share':>12}")
    for name, stage, batch, changes in cases:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = spec.train_config(stage, max_steps=args.steps, batch_size=batch, output_dir=tmp, progress=False,
                                    **changes)
            torch.manual_seed(0)
            model = load_base(spec, tokenizer, qlora=cfg.qlora, precision=cfg.precision)
            freeze_for_stage1(model) if stage == "stage1" else add_lora(model, cfg)
            pool = records["stage1" if stage == "stage1" else "instruct"]
            dataset = LlavaInstructDataset(subsample(pool, args.steps * batch, 0), data["images"], tokenizer, processor,
                                           model.num_image_tokens, max_length=spec.data.max_length, skip_invalid=True)
            history = train(model, dataset, collator, cfg).history
            step = float(np.median([r["seconds"] for r in history[1:]]))
            lengths = np.mean(dataset.lengths()) - model.num_image_tokens
            pixels = collator([dataset[i] for i in range(batch)])["pixel_values"]
            with torch.no_grad():
                model.image_features(pixels)
                started = time.perf_counter()
                for _ in range(3):
                    model.image_features(pixels)
                vision = (time.perf_counter() - started) / 3
        row = {"case": name, "batch": batch, "seconds_per_step": round(step, 3),
               "text_tokens_per_s": round(batch * lengths / step), "vision_share": round(vision / step, 3),
               "final_loss": round(history[-1]["loss"], 3)}
        rows.append(row)
        print(f"{name:<28} {batch:>5} {step:>7.2f} {row['text_tokens_per_s']:>10} {row['vision_share']:>12.0%}", flush=True)

    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "load_average": os.getloadavg()}
    print(machine)
    out = Path(args.out) if args.out else work_dir() / "bench" / "train.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "steps": args.steps, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
