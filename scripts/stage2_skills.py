"""Which skills stage 2 teaches the language model to read from image tokens, and which it does not.

    python scripts/stage2_skills.py [--steps 300] [--items 100] [--out work/stage2_skills]

Each arm trains LoRA with the tiny preset's stage-2 settings from the course's stage-1 model on one kind of
question only, then scores forced choices (the right answer's log-likelihood against the wrong one's,
llava_mini.evaluate.skills) on train images it saw, on held-out val images and on the val images of a world drawn
with another seed, before and after:

    shape by colour           the control: what is there, bound to a colour (the course answers 90%+)
    side, one object          "is the red circle on the left or on the right?" with nothing else in the picture
    side, several objects     the same question about one of several objects (trained on all images)
    side, several ... + code  the same, a learned row + column code added to every image token (PositionCode)
    side by colour, several   the same, each object named by its colour alone ("the red object"), as the control
    relation                  the teacher's verdict-only relation drills; scored on the held-out questions

The side arms ask where a thing is, the simplest place question there is. Prints each arm's line and writes
results.json to --out (README's "What stage 2 does not teach" quotes it). Also prints how plainly each
object's token says its column (``skills.column_r2``), in the vision tower and after the stage-1 projector.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def arms(train, held_out: dict):
    """name -> (training items, {split: scored items} (train images it saw, then each held-out set), with the
    position code). The relation arm trains on the teacher's drills instead of items (None)."""
    from llava_mini.evaluate import skills

    side, relation = skills.side_items, skills.relation_items

    def scored(items, train_images=300):
        return {"train": items(train[:train_images]), **{split: items(records) for split, records in held_out.items()}}

    return {
        "shape by colour": (skills.shape_items(train), scored(skills.shape_items), False),
        "side, one object": (side(train, "one"), scored(lambda r: side(r, "one"), 1200), False),
        "side, several objects": (side(train, "any"), scored(lambda r: side(r, "several")), False),
        "side, several objects + code": (side(train, "any"), scored(lambda r: side(r, "several")), True),
        "side by colour, several objects": (side(train, "any", by_colour=True),
                                            scored(lambda r: side(r, "several", by_colour=True)), False),
        "relation": (None, scored(relation), False),
    }


def skipped_note(dataset) -> str:
    """", 3 skipped (RecordTooLong 3)" where the dataset skipped records, else nothing."""
    if not dataset.skipped:
        return ""
    return f", {sum(dataset.skipped.values())} skipped (" + ", ".join(f"{k} {v}" for k, v in dataset.skipped.items()) + ")"


def shares(accuracy: dict) -> str:
    return ", ".join(f"{split} {value:.0%}" for split, value in accuracy.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="LoRA steps per arm (batch 16)")
    parser.add_argument("--items", type=int, default=100, help="scored items per split and arm")
    parser.add_argument("--out", default=str(ROOT / "work" / "stage2_skills"))
    parser.add_argument("--arms", nargs="*", help="only these arms (default: all; --arms alone: none, only the column probe)")
    parser.add_argument("--fresh-seed", type=int, default=1, help="also score the val split of this seed's world")
    args = parser.parse_args()

    import torch

    from llava_mini.config import get_preset
    from llava_mini.course import course_model, instruct_dataset, load_base, training_data
    from llava_mini.evaluate import skills
    from llava_mini.model.data import LlavaCollator
    from llava_mini.teacher import drill_records
    from llava_mini.train.adapters import add_lora
    from llava_mini.train.loop import train as train_loop
    from llava_mini.world import generate_world, read_split

    spec = get_preset("tiny")
    stage1, tokenizer, processor = course_model("stage1", preset=spec, progress=False)
    images = training_data(spec)["images"]  # <world>/images/train
    world = images.parents[1]
    train_records, val_records = read_split(world, "train").records, read_split(world, "val").records
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fresh = out / f"world_seed{args.fresh_seed}"  # the same vocabulary, other scenes
    generate_world(fresh, {"val": len(val_records)}, seed=args.fresh_seed)
    held_out = {"val": val_records, "fresh val": read_split(fresh, "val").records}
    dirs = {"train": images, "val": world / "images" / "val", "fresh val": fresh / "images" / "val"}
    with torch.no_grad():  # is the place in the tokens, and how loud is the content (the code's starting size)
        from llava_mini.evaluate.run import prepare_images
        from llava_mini.model.images import load_image
        sample = train_records[:400]
        features = stage1.image_features(prepare_images([load_image(images / r.file_name) for r in sample], processor))
        image_tokens = stage1.projector(features)
        norm = float(image_tokens.norm(dim=-1).mean())
    grid = int(stage1.num_image_tokens ** 0.5)
    place = {"vision tower (layer -2)": skills.column_r2(features, sample),
             "stage-1 image tokens (projector)": skills.column_r2(image_tokens, sample)}
    print("R^2 of the column of each object's centre patch, read linearly from its token (400 train images, "
          "fitted on 300): " + ", ".join(f"{k} {v:.2f}" for k, v in place.items()))
    print(f"image tokens' mean norm {norm:.1f}, the LM's word embeddings' "
          f"{float(stage1.get_input_embeddings().weight.norm(dim=-1).mean()):.1f}")
    results = {"settings": {"steps": args.steps, "batch_size": 16, "items": args.items, "code_norm": round(norm, 1),
                            "device": f"{platform.processor() or 'cpu'} ({os.cpu_count()} cores)",
                            "torch": torch.__version__}, "column_r2": place, "arms": {}}
    chosen = arms(train_records, held_out)
    if unknown := set(args.arms or ()) - set(chosen):
        parser.error(f"unknown arms {sorted(unknown)}: choose from {list(chosen)}")
    for name, (train_items, scored, with_code) in chosen.items():
        if args.arms is not None and name not in args.arms:
            continue
        scored = {split: (items[: args.items], dirs[split]) for split, items in scored.items()}
        system = spec.model.system_prompt
        before = {split: skills.forced_choice(stage1, tokenizer, processor, items, d, system)
                  for split, (items, d) in scored.items()}
        model = load_base(spec, tokenizer)
        model.projector.load_state_dict(stage1.projector.state_dict())
        with tempfile.TemporaryDirectory() as folder:
            cfg = spec.train_config("lora", max_steps=args.steps, output_dir=folder, progress=False, type_repeats=None)
            add_lora(model, cfg)
            if with_code:  # after add_lora, which leaves the projector (and so the code) trainable
                model.projector = skills.PositionCode(model.projector, grid, model.config.text_hidden_size, norm)
            records = (skills.as_records(train_items, "skill") if train_items is not None else
                       drill_records(train_records, seed=1, weights={"relation": 1.0}, relation_steps="verdict"))
            dataset = instruct_dataset(spec, records, images, tokenizer, processor, model.num_image_tokens)
            start = time.time()
            train_loop(model, dataset, LlavaCollator(tokenizer.pad_token_id), cfg)
        seconds = time.time() - start
        after = {split: skills.forced_choice(model, tokenizer, processor, items, d, system)
                 for split, (items, d) in scored.items()}
        results["arms"][name] = {"before": before, "after": after, "train_s": round(seconds, 1),
                                 "training_records": len(dataset), "skipped_records": dict(dataset.skipped),
                                 "scored": {s: len(i) for s, (i, _) in scored.items()},
                                 "position_code": with_code}
        print(f"{name:30} before: {shares(before)}   after {args.steps} steps: {shares(after)}   "
              f"({len(dataset)} records{skipped_note(dataset)}, {seconds:.0f} s)", flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
