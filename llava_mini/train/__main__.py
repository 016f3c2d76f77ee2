"""``python -m llava_mini.train``: one training stage from the command line (also under torchrun).

    python -m llava_mini.train --preset tiny --stage 1 --max-steps 50
    python -m llava_mini.train --preset tiny --stage 2 [--qlora] [--lr 2e-4 ...]

It goes through ``course.course_model``, so the checkpoint lands where the notebooks look for it
(``<work>/checkpoints/<preset>-<stage>-<key>``) and a finished run with the same configuration is reused.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

from llava_mini.config import TrainConfig, get_preset
from llava_mini.course import course_model, plan_run
from llava_mini.files import read_json
from llava_mini.train.plots import plot_loss
from llava_mini.train.adapters import trainable_parameters

FIXED = ("stage", "qlora", "output_dir")  # decided by --stage / --qlora and the naming rule


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--stage", type=int, choices=(1, 2), default=1)
    parser.add_argument("--qlora", action="store_true", help="stage 2: LM in 4-bit NF4 (QLoRA)")
    parser.add_argument("--projector-from", help="stage 2: start from this stage-1 checkpoint folder's projector")
    parser.add_argument("--resume", help="'latest': continue an interrupted run from its newest step checkpoint")
    parser.add_argument("--retrain", action="store_true", help="train even if a finished run with this config exists")
    parser.add_argument("--max-records", type=int, help="train on a seeded sample of this many records")
    for f in fields(TrainConfig):  # every TrainConfig field can be overridden: --max-steps 50 --lr 2e-4 ...
        if f.name not in FIXED:
            parser.add_argument("--" + f.name.replace("_", "-"), type=_parse_value, dest=f.name, default=None,
                                help=f"TrainConfig.{f.name} (the preset's value by default)")
    args = parser.parse_args(argv)

    spec = get_preset(args.preset)
    if args.max_records:
        spec = get_preset(spec, data={"max_records": args.max_records})
    stage = "stage1" if args.stage == 1 else ("qlora" if args.qlora else "lora")
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
                 if f.name not in FIXED and getattr(args, f.name) is not None}
    progress = overrides.pop("progress", True)
    model, _, _ = course_model(stage, spec, retrain=args.retrain, progress=progress,
                               projector_from=args.projector_from, resume=args.resume, **overrides)
    print({k: f"{v:,}" for k, v in trainable_parameters(model).items()})
    _, folder, _ = plan_run(stage, spec, args.projector_from, **overrides)
    history = read_json(folder / "final" / "history.json")
    plot_loss(history, folder / "loss.png", title=f"{spec.name} {stage}")
    print(f"final loss {history[-1]['loss']:.4f}; checkpoint: {folder / 'final'}")


def _parse_value(text: str):
    """CLI values: ints, floats, booleans, None, JSON objects/lists ('{"conversation": 3}'), else the string."""
    if text.lstrip().startswith(("{", "[")):
        return json.loads(text)
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


if __name__ == "__main__":
    main()
