"""Can the tiny language model learn each question kind when it is *told* the scene?

Stage 2 must teach the LM two things at once: to read the scene from image tokens, and to answer each kind
of question about it. This script takes the first away. It LoRA-tunes the language model alone on the
course's instruction records with every image replaced by its symbolic context (captions + boxes, as in
the text-only chats the LM was pretrained on), with the stage-2 recipe of `scripts/tiny_results.py` (steps,
batch, rank, learning rate, data mix), then answers the same held-out questions from text
(`evaluate.evaluate_text_scene`), before and after tuning. A kind that stays low here is limited by what the
tiny LM learns at this budget, not by the vision tower or the projector.

    python scripts/text_scene_tuning.py [--steps 1800] [--out work/text_scene]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "work" / "text_scene"))
    parser.add_argument("--steps", type=int, default=1800)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lora-r", type=int, default=32)
    parser.add_argument("--test-images", type=int, default=500)
    parser.add_argument("--per-kind", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="training order and question sample (the world is the course's)")
    args = parser.parse_args()
    out = Path(args.out)

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup

    from llava_mini import evaluate
    from llava_mini.world import read_split, context_text
    from llava_mini.teacher import IMAGE_TOKEN, RecordError, load_records
    from llava_mini.model import encode_conversation
    from llava_mini.config import get_preset
    from llava_mini.course import load_processors, training_data, repeat_types

    torch.manual_seed(args.seed)
    spec = get_preset("tiny")
    stage2 = spec.train_config("lora")
    tokenizer, _ = load_processors(spec)
    data = training_data(spec)
    root = data["images"].parents[1]  # the world the training records were written from
    contexts = {r.file_name: context_text(r, boxes=True) for r in read_split(root, "train").records}

    # The stage-2 records, each image replaced by its context. "<image>" stays in front of the context and
    # expands to 0 tokens, so the labels are computed exactly as for the image records.
    examples, skipped = [], 0
    for record in repeat_types(load_records(data["instruct"]), stage2.type_repeats):
        if record.get("image") not in contexts:
            raise ValueError(f"{data['instruct']}: record {record.get('id')!r} names image {record.get('image')!r}, "
                             f"which is not in the train split of {root}")
        turns = [dict(t) for t in record["conversations"]]
        turns[0]["value"] = turns[0]["value"].replace(IMAGE_TOKEN, IMAGE_TOKEN + contexts[record["image"]])
        try:
            encoded = encode_conversation({**record, "conversations": turns}, tokenizer, num_image_tokens=0,
                                          max_length=384, system_prompt=spec.model.system_prompt)
        except RecordError:  # the first answer does not fit: counted, reported
            skipped += 1
            continue
        examples.append((encoded.input_ids, encoded.labels))
    print(f"{len(examples)} text records ({skipped} too long, skipped)", flush=True)

    test = read_split(root, "test").records[: args.test_images]
    questions = evaluate.make_questions(test, seed=args.seed, max_per_kind=args.per_kind)
    lm = AutoModelForCausalLM.from_pretrained(spec.model.lm)
    results = {"LM alone, scene as text": evaluate.evaluate_text_scene(
        lm, tokenizer, test, questions, system_prompt=spec.model.system_prompt, batch_size=64)}

    lm = get_peft_model(lm, LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
                                       target_modules=stage2.lora_targets, task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(0.03 * args.steps), args.steps)
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(examples), generator=generator).tolist()
    pad = tokenizer.pad_token_id
    lm.train()
    start, history = time.time(), []
    for step in range(args.steps):
        batch = [examples[order[(step * args.batch_size + k) % len(order)]] for k in range(args.batch_size)]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        attention_mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
        loss = lm(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        history.append(round(loss.item(), 4))
        if (step + 1) % 200 == 0:
            print(f"step {step + 1}: loss {sum(history[-200:]) / 200:.4f} ({time.time() - start:.0f} s)", flush=True)
    train_s = round(time.time() - start, 1)

    results["LM tuned on text scenes"] = evaluate.evaluate_text_scene(
        lm, tokenizer, test, questions, system_prompt=spec.model.system_prompt, batch_size=64)
    print(evaluate.results_table(results, blind_name="none"))
    out.mkdir(parents=True, exist_ok=True)
    evaluate.save_results(results, out / "results.json", blind_name="none")
    settings = {"args": vars(args), "train_s": train_s, "records": len(examples), "skipped_too_long": skipped,
                "type_repeats": stage2.type_repeats, "loss_every_step": history}
    (out / "settings.json").write_text(json.dumps(settings))
    print(f"trained {args.steps} steps in {train_s} s; wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
