"""``python -m llava_mini.train``: one training stage from the command line (also under torchrun)."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

from safetensors.torch import load_file

from llava_mini.config import TrainConfig, get_preset
from llava_mini.train.memory import estimate_memory
from llava_mini.course import _subsample, load_base, load_processors, repeat_types, training_data
from llava_mini.model import LlavaCollator, LlavaInstructDataset
from llava_mini.teacher import load_records
from llava_mini.model import PROJECTOR_WEIGHTS
from llava_mini.train.loop import add_lora, freeze_for_stage1, plot_loss, train, trainable_parameters

def main(argv=None) -> None:
    """``python -m llava_mini.train --preset tiny --stage 1|2 [--qlora]`` (also under torchrun / accelerate launch)."""

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--stage", type=int, choices=(1, 2), default=1)
    parser.add_argument("--qlora", action="store_true", help="stage 2: LM in 4-bit NF4 (QLoRA)")
    parser.add_argument("--projector-from", help="stage 2: a stage-1 checkpoint folder (its projector)")
    parser.add_argument("--output-dir")
    parser.add_argument("--resume", help="a step checkpoint folder, or 'latest'")
    parser.add_argument("--max-records", type=int, help="use only this many training records")
    for f in fields(TrainConfig):  # every TrainConfig field can be overridden: --max-steps 50 --lr 2e-4 ...
        if f.name in ("stage", "qlora", "output_dir"):
            continue
        parser.add_argument("--" + f.name.replace("_", "-"), type=_parse_value, dest=f.name, default=None,
                            help=f"TrainConfig.{f.name} (preset's value by default)")
    args = parser.parse_args(argv)

    spec = get_preset(args.preset)
    stage = "stage1" if args.stage == 1 else ("qlora" if args.qlora else "lora")
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
                 if f.name not in ("stage", "qlora", "output_dir") and getattr(args, f.name, None) is not None}
    cfg = spec.train_config(stage, **overrides)
    cfg.output_dir = args.output_dir or str(Path("checkpoints") / f"{spec.name}-{stage}")
    print(estimate_memory(spec, mode=stage, batch_size=cfg.micro_batch(), gradient_checkpointing=cfg.gradient_checkpointing))

    tokenizer, image_processor = load_processors(spec)
    model = load_base(spec, tokenizer, qlora=cfg.qlora, precision=cfg.precision)
    if cfg.stage == 1:
        freeze_for_stage1(model)
    else:
        if args.projector_from:
            model.projector.load_state_dict(load_file(Path(args.projector_from) / PROJECTOR_WEIGHTS))
        add_lora(model, cfg)
    print({k: f"{v:,}" for k, v in trainable_parameters(model).items()})
    data = training_data(spec)
    records = load_records(data["stage1" if cfg.stage == 1 else "instruct"])
    if cfg.stage == 2:
        records = repeat_types(records, cfg.type_repeats)
    if args.max_records:
        records = _subsample(records, args.max_records, cfg.seed)
    dataset = LlavaInstructDataset(records, data["images"], tokenizer, image_processor, model.num_image_tokens,
                                   max_length=spec.max_length, system_prompt=spec.system_prompt, skip_invalid=True)
    result = train(model, dataset, LlavaCollator(tokenizer.pad_token_id), cfg, resume_from=args.resume)
    plot_loss(result.history, Path(cfg.output_dir) / "loss.png", title=f"{spec.name} {stage}")
    print(f"final loss {result.history[-1]['loss']:.4f}; checkpoint: {result.checkpoint_dir}")


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
