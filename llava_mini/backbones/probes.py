"""What the vision tower learned: linear probes on its patch tokens, caption retrieval, and CLIP's
contrastive objective live at a small size (notebook 03)."""

import math
from dataclasses import replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from llava_mini.backbones.recipe import BackboneRecipe
from llava_mini.backbones.vision import contrastive_loss, make_clip, render_pool, to_pixels, tokenize_captions
from llava_mini.world import WorldConfig


@torch.no_grad()
def patch_features(vision_model, pixels: torch.Tensor, layer: int = -2, batch: int = 256) -> torch.Tensor:
    """(B, 3, H, W) -> (B, P, D) patch tokens of `layer` (CLS dropped), what the LM will read."""
    return torch.cat([vision_model(pixel_values=x, output_hidden_states=True).hidden_states[layer][:, 1:].float().cpu()
                      for x in pixels.split(batch)])


def linear_probe(train_x, train_y, test_x, test_y, classes: int, steps: int = 300, seed: int = 0) -> float:
    """Fit a linear classifier on frozen features (full-batch Adam); return held-out accuracy."""
    torch.manual_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    probe = nn.Linear(train_x.shape[1], classes)
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2)
    xt = (train_x - mean) / std
    with torch.enable_grad():  # callers often hold no_grad for the frozen features
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(probe(xt), train_y).backward()
            opt.step()
    with torch.no_grad():
        return (probe((test_x - mean) / std).argmax(-1) == test_y).float().mean().item()


def probe_patches(vision_model, processor, train, test, config: WorldConfig) -> dict[str, float]:
    """Linear probes on frozen patch features for the object under each patch (patches >= 25% covered).
    train/test: (images uint8 (n, H, W, 3), targets (n, 3, P)) from `render_pool`."""
    feats = []
    for images, targets in (train, test):
        x = patch_features(vision_model, to_pixels(images, processor, next(vision_model.parameters()).device))
        y = torch.as_tensor(targets).permute(0, 2, 1).reshape(-1, 3)  # (n*P, 3)
        keep = y[:, 0] < len(config.shapes)  # object patches only
        feats.append((x.reshape(-1, x.shape[-1])[keep], y[keep]))
    (train_x, train_y), (test_x, test_y) = feats
    classes = {"shape": len(config.shapes), "color": len(config.colors), "size": len(config.sizes)}
    return {attr: linear_probe(train_x, train_y[:, k], test_x, test_y[:, k], n)
            for k, (attr, n) in enumerate(classes.items())}


@torch.no_grad()
def _similarity(clip, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(n, n) cosine similarity of n images and n captions in CLIP's joint space."""
    img = clip.get_image_features(pixel_values=pixels).pooler_output
    txt = clip.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
    return F.normalize(img.float(), dim=-1) @ F.normalize(txt.float(), dim=-1).T


def retrieval_top1(clip, processor, tokenizer, images: np.ndarray, captions: list[str]) -> dict[str, float]:
    """Image->text and text->image top-1 accuracy among len(images) candidates."""
    device = next(clip.parameters()).device
    ids, mask = tokenize_captions(tokenizer, captions)
    sim = _similarity(clip, to_pixels(images, processor, device), ids.to(device), mask.to(device))
    target = torch.arange(len(sim), device=sim.device)
    return {"image_to_text": (sim.argmax(1) == target).float().mean().item(),
            "text_to_image": (sim.argmax(0) == target).float().mean().item()}


def contrastive_demo(tokenizer, processor, n_images: int = 512, steps: int = 80, batch: int = 64,
                     n_show: int = 8, seed: int = 0) -> dict:
    """CLIP's objective, live and small: a fresh two-layer CLIP trained on world images and their complete
    captions for `steps` steps. Returns the loss curve and the image x caption similarity of `n_show`
    held-out pairs before and after (the diagonal should light up)."""
    config = WorldConfig()
    recipe = replace(BackboneRecipe.toy(), vision_hidden=64, vision_layers=2, text_hidden=64, embed_dim=64, seed=seed)
    images, _, captions, _ = render_pool(n_images + n_show, seed + 7, config, recipe.patch_size, workers=1)
    clip = make_clip(recipe, config, tokenizer)
    opt = torch.optim.AdamW(clip.parameters(), lr=2e-3)
    ids, mask = tokenize_captions(tokenizer, [c[0] for c in captions])
    pixels, show = to_pixels(images, processor), slice(n_images, n_images + n_show)
    held_out = (pixels[show], ids[show], mask[show])  # the n_show pairs whose similarity is shown
    before, gen, losses = _similarity(clip, *held_out).numpy(), torch.Generator().manual_seed(seed), []
    for _ in range(steps):
        rows = torch.randint(n_images, (batch,), generator=gen)
        image_embeds = clip.get_image_features(pixel_values=pixels[rows]).pooler_output
        text_embeds = clip.get_text_features(input_ids=ids[rows], attention_mask=mask[rows]).pooler_output
        loss = contrastive_loss(image_embeds, text_embeds, clip.logit_scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return {"losses": losses, "before": before, "after": _similarity(clip, *held_out).numpy(), "images": images[show],
            "captions": [c[0] for c in captions[show]], "chance_loss": math.log(batch)}
