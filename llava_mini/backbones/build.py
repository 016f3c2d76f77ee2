"""Tiny pretrained backbones for the offline track: the stand-ins for CLIP and Vicuna.

LLaVA downloads a web-scale CLIP and a chat LM; the offline track builds small ones on the shapes world as
`save_pretrained` folders (data/backbones/vision: CLIPModel + processor + CLIP's tokenizer; tokenizer/, lm/:
LlamaForCausalLM) that the course loads with `from_pretrained` like hub models. README gives the running times."""

import argparse
import json
import random
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from llava_mini.backbones.lm import (
    INSTRUCTION_WORDS, make_lm, pack_examples, pretrain_lm, render_chat, scene_record, text_scene_records,
    train_tokenizer, with_context, world_text_corpus,
)
from llava_mini.backbones.probes import probe_patches, retrieval_top1
from llava_mini.backbones.recipe import BackboneRecipe
from llava_mini.backbones.vision import PatchHeads, image_processor_for, make_clip, pretrain_vision, render_pool
from llava_mini.files import read_json, write_json
from llava_mini.paths import DATA_DIR
from llava_mini.world import WorldConfig, scene_with_captions

BACKBONES_DIR = DATA_DIR / "backbones"


def build_language_model(out_dir: Path, recipe: BackboneRecipe, device: str, log=print) -> dict:
    """Tokenizer + Llama-style LM pretrained on world text (no images): captions as plain documents, and chats
    about scenes it reads as text (``text_scene_records``), learned on their answers only. Saves out_dir/tokenizer
    and out_dir/lm; returns its part of the report, with the text reference's accuracy on held-out scenes."""
    from llava_mini.evaluate import evaluate_text_scene, make_questions
    from llava_mini.model import answer_labels
    config, split, t0 = WorldConfig(), recipe.lm_scenes, time.time()
    # scenes of the world's "lm" stream, numbered 1..n and never drawn: the LM's corpus needs no pixels
    pairs = [scene_with_captions(recipe.seed, "lm", i, config) for i in range(recipe.lm_scenes + recipe.lm_test_scenes)]
    scenes, captions = [replace(scene, image_id=i + 1) for i, (scene, _) in enumerate(pairs)], [c for _, c in pairs]
    documents = [" ".join(caps) for caps in captions[:split]]
    records, contexts = text_scene_records(scenes[:split], captions[:split], config, recipe.seed, recipe.lm_drills)
    chats = [with_context(r, contexts[r["image"]]) for r in records]
    if recipe.lm_init:  # continue training an LM on the current corpus (e.g. after the teacher's answers changed)
        from transformers import AutoModelForCausalLM, AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(Path(recipe.lm_init) / "tokenizer")
    else:
        tokenizer = train_tokenizer(documents + [render_chat(m) for m in chats] + [INSTRUCTION_WORDS], recipe.vocab_size)
    docs = [ids + [tokenizer.eos_token_id] for ids in tokenizer(documents, add_special_tokens=False)["input_ids"]]
    examples = [(ids, ids) for ids in docs] + [answer_labels(tokenizer, m, r["id"]) for m, r in zip(chats, records)]
    random.Random(recipe.seed).shuffle(examples)
    rows, labels = pack_examples(examples, recipe.lm_seq_len, tokenizer.pad_token_id)
    corpus = {"scenes": split, "documents": len(documents), "chats": len(chats), "rows": len(rows),
              "tokens": int((rows != tokenizer.pad_token_id).sum()), "learned_tokens": int((labels != -100).sum()),
              "seconds": round(time.time() - t0, 1)}
    log(json.dumps({"lm_corpus": corpus}))
    t0 = time.time()
    lm = (AutoModelForCausalLM.from_pretrained(Path(recipe.lm_init) / "lm", dtype=torch.float32) if recipe.lm_init
          else make_lm(recipe, tokenizer))
    tokenizer.save_pretrained(out_dir / "snapshots" / "tokenizer")  # snapshots are LMs beside it: ask them on val

    def snapshot(step: int):
        lm.save_pretrained(out_dir / "snapshots" / f"lm_step{step}")
        lm.train()  # (save_pretrained leaves the mode alone; be explicit, training goes on)
    lm_log = pretrain_lm(lm, rows, recipe, device, log, labels=labels, snapshot=snapshot)
    held_out = [scene_record(scene, caps, config) for scene, caps in zip(scenes[split:], captions[split:])]
    reference = evaluate_text_scene(lm, tokenizer, held_out, make_questions(held_out, seed=recipe.seed),
                                    max_new_tokens=recipe.lm_answer_tokens)
    for folder in ("tokenizer", "lm"):
        tokenizer.save_pretrained(out_dir / folder)
    lm.save_pretrained(out_dir / "lm")
    return {"lm_corpus": corpus, "lm_seconds": round(time.time() - t0, 1), "lm_log": lm_log,
            "lm_text_reference": {k: reference[k] for k in ("accuracy", "n", "micro", "macro")}}


def build_vision_tower(out_dir: Path, recipe: BackboneRecipe, device: str, workers: int | None, log=print) -> dict:
    """CLIP (ViT + text tower, with CLIP's own tokenizer) trained contrastively plus the per-patch attribute
    loss. Saves out_dir/vision; returns its part of the report."""
    config, n, t0 = WorldConfig(), recipe.n_scenes, time.time()
    log(f"rendering {n} scenes ...")
    images, targets, captions, scenes = render_pool(n, recipe.seed, config, recipe.patch_size, workers)
    n_test = max(8, min(500, n // 10))
    train, test = slice(0, n - n_test), slice(n - n_test, n)
    timings = {"render_s": round(time.time() - t0, 1)}
    tokenizer = train_tokenizer(world_text_corpus(scenes[train], captions[train], config), recipe.vocab_size)
    t0 = time.time()
    processor = image_processor_for(images[:2000], config.image_size)
    clip = make_clip(recipe, config, tokenizer)
    heads = PatchHeads(recipe.vision_hidden, config, config.image_size // recipe.patch_size)
    vision_log = pretrain_vision(clip, heads, images[train], targets[train], captions[train], tokenizer, processor,
                                 recipe, device, log)
    timings["vision_s"] = round(time.time() - t0, 1)
    for part in (clip, processor, tokenizer):
        part.save_pretrained(out_dir / "vision")
    n_probe = min(n - n_test, 2000)
    return {
        "timings": timings,
        "retrieval_top1": retrieval_top1(clip, processor, tokenizer, images[test], [c[0] for c in captions[test]]),
        "retrieval_candidates": n_test,
        "patch_probe": probe_patches(clip.vision_model, processor, (images[:n_probe], targets[:n_probe]),
                                     (images[test], targets[test]), config),
        "vision_log": vision_log,
    }


def build_backbones(out_dir: str | Path = BACKBONES_DIR, recipe: BackboneRecipe | None = None,
                    device: str | None = None, workers: int | None = None, parts: tuple[str, ...] = ("vision", "lm"),
                    log=print) -> dict:
    """Build the vision tower and/or the LM (each with its own tokenizer, as CLIP and Vicuna have), save
    them under out_dir and merge their measurements into out_dir/report.json."""
    out_dir, recipe = Path(out_dir), recipe or BackboneRecipe()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    report_file = out_dir / "report.json"
    report = read_json(report_file) if report_file.exists() else {}
    if "vision" in parts:
        report.update({"device": name, **build_vision_tower(out_dir, recipe, device, workers, log)},
                      vision_recipe=asdict(recipe))
    if "lm" in parts:
        report.update({"lm_device": name, **build_language_model(out_dir, recipe, device, log)},
                      lm_recipe=asdict(recipe))
    write_json(report_file, report, indent=1)
    log(json.dumps({k: v for k, v in report.items() if not k.endswith("_log")}, indent=1))
    return report


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a.split("=")[0] == "--retune-text" for a in argv):  # a one-off repair of the shipped text tower, not a build
        raise SystemExit("the text-tower retune is a script now: python scripts/retune_text_tower.py " + " ".join(argv))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(BACKBONES_DIR))
    parser.add_argument("--device")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--toy", action="store_true", help="a seconds-long run at toy size (tests)")
    parser.add_argument("--parts", default="vision,lm", help="which backbones to build: vision, lm or both")
    for field_name, value in asdict(BackboneRecipe()).items():
        parser.add_argument("--" + field_name.replace("_", "-"), type=type(value))
    args = parser.parse_args(argv)
    recipe = BackboneRecipe.toy() if args.toy else BackboneRecipe()
    recipe = replace(recipe, **{k: getattr(args, k) for k in asdict(recipe) if getattr(args, k) is not None})
    build_backbones(args.out, recipe, args.device, args.workers, parts=tuple(args.parts.split(",")))
