"""Locked-image tuning (LiT) of CLIP's text tower: the one-off repair of the shipped data/backbones/vision.

The H100 build of the vision tower had a broken joint text tower (a CLIP text config whose eos_token_id
is 2 pools at the largest token id); the shipped text tower was retrained with this script on a 2-core CPU
(README gives the numbers). It keeps the trained vision tower, gives CLIP a fresh tokenizer and text tower,
and trains only the text side (+ both projections) contrastively against the frozen image embeddings.

    python scripts/retune_text_tower.py [--retune-text data/backbones/vision] [--retune-minutes 6]
                                        [--device cpu] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from llava_mini.backbones import (
    BACKBONES_DIR, BackboneRecipe, contrastive_loss, make_clip, render_pool, retrieval_top1, to_pixels,
    tokenize_captions, train_in_budget, train_tokenizer, world_text_corpus,
)
from llava_mini.files import read_json, write_json
from llava_mini.world import WorldConfig


def retune_text_tower(vision_dir: str | Path = BACKBONES_DIR / "vision", n_scenes: int = 20_000, minutes: float = 6.0,
                      batch: int = 256, lr: float = 1e-3, seed: int = 1, device: str = "cpu",
                      workers: int | None = None, log=print) -> dict:
    """Retrain the text tower of the CLIP in vision_dir against its locked image tower; save it in place and
    update the retrieval numbers in vision_dir/../report.json. Returns that report.

    CLIP's two towers need not share the LM's tokenizer (real CLIP and Vicuna don't), so this repairs or
    replaces a text tower without touching what the LM reads. Cheap on a CPU: the image side is computed once.
    """
    from transformers import CLIPImageProcessor, CLIPModel

    vision_dir = Path(vision_dir)
    config = WorldConfig()
    old = CLIPModel.from_pretrained(vision_dir, dtype=torch.float32)
    processor = CLIPImageProcessor.from_pretrained(vision_dir)
    t0 = time.time()
    images, _, captions, scenes = render_pool(n_scenes, seed, config, old.config.vision_config.patch_size, workers)
    n_test = 500
    tokenizer = train_tokenizer(world_text_corpus(scenes[:-n_test], captions[:-n_test], config), 2048)
    recipe = BackboneRecipe(seed=seed, text_hidden=old.config.text_config.hidden_size,
                            text_layers=old.config.text_config.num_hidden_layers, embed_dim=old.config.projection_dim,
                            vision_hidden=old.config.vision_config.hidden_size,
                            vision_layers=old.config.vision_config.num_hidden_layers,
                            vision_heads=old.config.vision_config.num_attention_heads,
                            patch_size=old.config.vision_config.patch_size)
    clip = make_clip(recipe, config, tokenizer)
    clip.vision_model.load_state_dict(old.vision_model.state_dict())
    clip.visual_projection.load_state_dict(old.visual_projection.state_dict())
    clip.to(device)
    clip.vision_model.requires_grad_(False)
    with torch.no_grad():  # the locked image side, once: (n, vision_hidden) pooled CLS features
        chunks = (to_pixels(images[i: i + 512], processor, device) for i in range(0, n_scenes, 512))
        pooled = torch.cat([clip.vision_model(pixel_values=x).pooler_output for x in chunks])
    log(f"rendered and encoded {n_scenes} images in {time.time() - t0:.0f} s")
    ids, mask = tokenize_captions(tokenizer, [c for caps in captions for c in caps])
    ids, mask = ids.view(n_scenes, 5, -1).to(device), mask.view(n_scenes, 5, -1).to(device)
    gen = torch.Generator().manual_seed(seed)
    n_train, start = n_scenes - n_test, time.time()

    def loss_fn(logging: bool):
        idx = torch.randint(n_train, (batch,), generator=gen)
        pick = torch.where(torch.rand(batch, generator=gen) < 0.5, 0, torch.randint(5, (batch,), generator=gen))
        text = clip.get_text_features(input_ids=ids[idx, pick], attention_mask=mask[idx, pick]).pooler_output
        loss = contrastive_loss(clip.visual_projection(pooled[idx]), text, clip.logit_scale)
        return loss, {"contrastive": loss}

    # AdamW skips the locked tower (no gradients); unlike the build, no gradient clipping and no autocast
    history = train_in_budget([clip], loss_fn, device, lr, 100_000, minutes, log, weight_decay=0.05,
                              after_step=lambda step: clip.logit_scale.data.clamp_(0, math.log(100)), max_grad_norm=None,
                              bf16=False)
    step = history[-1]["step"] + 1
    test = slice(n_train, n_scenes)
    retrieval = retrieval_top1(clip, processor, tokenizer, images[test], [c[0] for c in captions[test]])
    clip.save_pretrained(vision_dir)
    tokenizer.save_pretrained(vision_dir)
    report_file = vision_dir.parent / "report.json"
    report = read_json(report_file) if report_file.exists() else {}
    report["text_tower_retuned"] = {"how": "LiT: vision tower locked, fresh tokenizer + text tower", "device": device,
                                    "steps": step, "seconds": round(time.time() - start, 1), "n_scenes": n_scenes}
    report["retrieval_top1"] = retrieval
    report["retrieval_candidates"] = n_test
    write_json(report_file, report, indent=1)
    log(json.dumps({"retrieval_top1": retrieval}))
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--retune-text", metavar="VISION_DIR", default=str(BACKBONES_DIR / "vision"),
                        help="the CLIP folder whose text tower is retrained against its locked vision tower (LiT)")
    parser.add_argument("--retune-minutes", type=float, default=6.0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    retune_text_tower(args.retune_text, minutes=args.retune_minutes, device=args.device or "cpu", workers=args.workers)


if __name__ == "__main__":
    main()
