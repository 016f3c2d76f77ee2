"""The tiny track's headline numbers: stage 1, stage 2 LoRA and QLoRA, and a blind baseline, evaluated on
held-out world images, beside the language model alone reading each scene as text (what its reasoning
allows when vision is perfect). Prints the table and writes results.json + a chart for README to quote.

    python scripts/tiny_results.py [--lora-steps 1800] [--no-qlora] [--type-repeats JSON] [--train-images N]
                                   [--split val|test] [--fresh-seed 1] [--bar course|long] [--out work/results]

Every model is scored with the strict matcher and, per kind, as a relative score: its accuracy divided by the
text reference's on the same questions (LLaVA-Bench's protocol, offline). Choose settings with --split val;
report --split test, with --fresh-seed for a freshly drawn world beside it.

Unlike notebook 04, which must fit the course's time budget on a CPU, this script may train longer; it
uses its own work folder (<out>/work) so it never replaces the notebooks' checkpoints. It runs on a CPU or
a GPU (QLoRA needs bitsandbytes, and is skipped with a message where it is not installed).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "work" / "results"))
    parser.add_argument("--work", help="the work folder (default <out>/work); the course's work/ reuses the "
                                       "checkpoints `make course` trained when the settings are the course's")
    parser.add_argument("--stage1-steps", type=int, default=300)
    parser.add_argument("--lora-steps", type=int, default=1800)
    parser.add_argument("--no-qlora", action="store_true", help="skip QLoRA (notebook 04 compares it at the course's budget)")
    parser.add_argument("--qlora-steps", type=int, default=None, help="default: as many as LoRA")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lora-r", type=int, default=32)
    parser.add_argument("--type-repeats", type=json.loads, default=None,
                        help='stage-2 data mix, e.g. \'{"conversation": 3}\' (default: the tiny preset\'s)')
    parser.add_argument("--train-images", type=int, default=None,
                        help="world images to train on (default: the course's 4,000); the test split stays the same")
    parser.add_argument("--test-images", type=int, default=500)
    parser.add_argument("--per-kind", type=int, default=100, help="questions per kind (balanced)")
    parser.add_argument("--descriptions", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0, help="training and question sample (the world is the course's)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (a GPU run wants several)")
    parser.add_argument("--split", default="test", choices=("val", "test"), help="val to choose settings, test to report")
    parser.add_argument("--fresh-seed", type=int, default=-1, help="also evaluate on this seed's freshly drawn world")
    parser.add_argument("--bar", default="long", choices=("course", "long"), help="which of issue #11's bars to check")
    parser.add_argument("--lm", help="another language model folder (e.g. a build snapshot); its tokenizer: --tokenizer")
    parser.add_argument("--tokenizer")
    parser.add_argument("--stage1-lr", type=float, default=None)
    parser.add_argument("--projector-lr", type=float, default=None)
    parser.add_argument("--drill-relation-steps", default=None, choices=("verdict", "centres"),
                        help="how the drills' relation answers reach their verdict (default: the tiny preset's)")
    parser.add_argument("--drill-weights", type=json.loads, default=None, metavar="JSON",
                        help='how often each kind of drill question is drawn, e.g. \'{"relation": 6, "region": 6}\' '
                             "(keys: teacher.DRILL_KINDS; default: teacher.DRILL_WEIGHTS)")
    parser.add_argument("--drill-colour-steps", default=None, choices=("scan", "direct"),
                        help="how the drills' colour answers reach their verdict (default: the tiny preset's)")
    args = parser.parse_args()

    out = Path(args.out)
    os.environ["LLAVA_MINI_WORK"] = str(args.work or out / "work")  # read by llava_mini.paths at call time
    import torch

    from llava_mini import evaluate
    from llava_mini.config import get_preset
    from llava_mini.course import course_model, load_processors, training_data
    from llava_mini.world import generate_world, read_split

    # the tiny preset with this run's budgets (course_model trains stage 2 from *this* stage 1)
    base = get_preset("tiny")
    stage2 = dict(max_steps=args.lora_steps, batch_size=args.batch_size, lr=args.lr, lora_r=args.lora_r,
                  lora_alpha=2 * args.lora_r, seed=args.seed, num_workers=args.num_workers)
    if args.type_repeats is not None:
        stage2["type_repeats"] = args.type_repeats
    if args.projector_lr is not None:
        stage2["projector_lr"] = args.projector_lr
    stages = {name: dict(cfg) for name, cfg in base.stages.items()}
    stages["stage1"].update(max_steps=args.stage1_steps, seed=args.seed, num_workers=args.num_workers)
    if args.stage1_lr is not None:
        stages["stage1"]["lr"] = args.stage1_lr
    stages["lora"].update(stage2)
    stages["qlora"].update(stage2, max_steps=args.qlora_steps or args.lora_steps)
    sizes = {**base.world.sizes, "train": args.train_images or base.world.sizes["train"]}
    model = {k: v for k, v in (("lm", args.lm), ("tokenizer", args.tokenizer)) if v}
    steps = {"drill_relation_steps": args.drill_relation_steps, "drill_colour_steps": args.drill_colour_steps,
             "drill_weights": args.drill_weights}
    data = {k: v for k, v in steps.items() if v}
    spec = get_preset(base, stages=stages, world={"sizes": sizes}, model=model, data=data,
                      evaluation={"images": args.test_images, "max_per_kind": args.per_kind, "split": args.split,
                                  "n_descriptions": args.descriptions, "seed": args.seed})
    ev = spec.evaluation
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{platform.processor() or 'cpu'} ({os.cpu_count()} cores)"
    variants = ["stage1", "lora"]
    if args.no_qlora:
        pass
    elif importlib.util.find_spec("bitsandbytes"):
        variants.append("qlora")
    else:
        print("bitsandbytes is not installed here: QLoRA skipped", file=sys.stderr)
    names = {"stage1": "stage 1 only", "lora": "stage 2 LoRA", "qlora": "stage 2 QLoRA"}

    root = training_data(spec)["images"].parents[1]  # the world the training records were written from
    worlds = {"": root}
    if args.fresh_seed >= 0:  # the same vocabulary, other scenes: does the result hold on a new draw?
        worlds[f" (fresh world, seed {args.fresh_seed})"] = fresh = out / "work" / f"world_seed{args.fresh_seed}"
        generate_world(fresh, {ev.split: ev.images}, seed=args.fresh_seed)
    sets = {}
    for suffix, world in worlds.items():
        test = read_split(world, ev.split).records[: ev.images]
        sets[suffix] = (test, evaluate.make_questions(test, seed=ev.seed, max_per_kind=ev.max_per_kind), world)
    common = dict(n_descriptions=ev.n_descriptions, system_prompt=spec.model.system_prompt,
                  max_new_tokens=ev.max_new_tokens, batch_size=64)
    results, timings = {}, {}
    settings = {"device": device, "torch": torch.__version__, "args": vars(args), "timings": timings, "split": ev.split,
                "questions": {s or "course world": len(q) for s, (_, q, _) in sets.items()}, "world_sizes": sizes,
                "matcher": "strict (evaluate.is_correct)"}
    out.mkdir(parents=True, exist_ok=True)
    # The LM alone, told each scene as text (captions + boxes): the text reference each model is divided by.
    from transformers import AutoModelForCausalLM

    tokenizer, _ = load_processors(spec)
    language_model = AutoModelForCausalLM.from_pretrained(spec.model.lm)
    for suffix, (test, questions, _) in sets.items():
        start = time.time()
        results[TEXT_SCENE + suffix] = evaluate.evaluate_text_scene(
            language_model, tokenizer, test, questions, system_prompt=spec.model.system_prompt,
            max_new_tokens=ev.max_new_tokens, batch_size=64)
        timings[TEXT_SCENE + suffix] = {"eval_s": round(time.time() - start, 1)}
        _print(TEXT_SCENE + suffix, results[TEXT_SCENE + suffix])
    del language_model
    for stage in variants:
        name = names[stage]
        start = time.time()
        model, tokenizer, processor = course_model(stage, preset=spec, progress=False)
        timings[name] = {"train_s": round(time.time() - start, 1)}
        for suffix, (test, questions, world) in sets.items():
            run = dict(image_dir=world / "images" / ev.split, questions=questions, **common)
            if name == "stage 2 LoRA":  # the blind baseline: the best model, with every image blanked out
                results["blind" + suffix] = evaluate.evaluate_model(model, tokenizer, processor, test, blind=True, **run)
            start = time.time()
            results[name + suffix] = {**evaluate.evaluate_model(model, tokenizer, processor, test, **run),
                                      "relative_to": TEXT_SCENE + suffix}
            timings[name][f"eval{suffix}_s"] = round(time.time() - start, 1)
            _print(name + suffix, results[name + suffix], results[TEXT_SCENE + suffix])
        # after every model, so a run cut short still leaves what it measured
        evaluate.save_results(results, out / "results.json")
        (out / "settings.json").write_text(json.dumps(settings, indent=1))

    evaluate.plot_comparison(results, out / "results.png")
    print(evaluate.results_table(results))
    print(json.dumps(settings, indent=1))
    print(bar_report(results, args.bar))
    return 0


TEXT_SCENE = "LM alone, scene as text"


BARS = {  # issue #11: (micro, every kind, CHAIR_i at most, relative score at least)
    "course": (0.75, 0.60, 0.15, None),
    "long": (0.90, 0.80, None, 0.90),
}


def _print(name: str, r: dict, reference: dict | None = None):
    from llava_mini import evaluate

    line = f"{name}: micro {r['micro']:.1%}  " + " ".join(f"{k} {v:.1%}" for k, v in r["accuracy"].items())
    if reference is not None:
        line += f"  | relative score {evaluate.relative_score(r, reference)['micro']:.2f}"
    if r.get("description"):
        line += f"  | CHAIR_i {r['description']['chair_i']:.1%}"
    print(line, flush=True)


def bar_report(results: dict, bar: str) -> str:
    """Issue #11's bar, checked on what was measured, for every stage-2 model that sees the image."""
    from llava_mini import evaluate

    micro, every, chair_max, relative_min = BARS[bar]
    lines = [f"Bar ({bar}): micro >= {micro:.0%}, every kind >= {every:.0%}"
             + (f", CHAIR_i <= {chair_max:.0%}" if chair_max is not None else "")
             + (f", relative score >= {relative_min}" if relative_min is not None else "")]
    for name, r in results.items():
        if not name.startswith("stage 2"):
            continue
        short = {k: round(v, 3) for k, v in r["accuracy"].items() if v < every}
        chair = (r.get("description") or {}).get("chair_i")
        rel = evaluate.relative_score(r, results[r["relative_to"]])["micro"]
        met = (r["micro"] >= micro and not short and (chair_max is None or (chair is not None and chair <= chair_max))
               and (relative_min is None or (rel is not None and rel >= relative_min)))
        lines.append(f"  {name}: micro {r['micro']:.1%}, kinds below {every:.0%}: {short or 'none'}, CHAIR_i "
                     f"{'-' if chair is None else f'{chair:.1%}'}, relative score {rel:.2f} -> {'met' if met else 'not met'}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
