"""The stand-in for CLIP: world scenes as training arrays, the CLIP model and its pretraining.

The LM reads the *patch tokens* (layer -2, CLS dropped), so they must carry each object's shape, colour and
place. Contrastive image<->caption training alone put colour there but hardly shape (four prototypes, ~55%
QA), so beside CLIP's loss a per-patch head learns, on layer -2, the shape / colour / size of the object under
each patch and the patch's row and column: the honest stand-in for what web-scale pretraining gives CLIP.
"""

import json
import math
import time
from dataclasses import replace
from multiprocessing import Pool

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from llava_mini.backbones.recipe import BackboneRecipe, BudgetedCosine
from llava_mini.world import Scene, WorldConfig, make_captions, render_scene, sample_scene
from llava_mini.world.shapes import _rng  # the world's seeding rule, so scenes stay what they were


def patch_coverage(scene: Scene, config: WorldConfig, patch: int) -> np.ndarray:
    """(n_objects, grid*grid) share of each patch's pixels covered by each object's drawn shape."""
    mask_config = replace(config, colors={"mask": (255, 255, 255)}, backgrounds=((0, 0, 0),))
    grid = config.image_size // patch
    out = np.zeros((len(scene.objects), grid * grid), dtype=np.float32)
    for k, obj in enumerate(scene.objects):
        alone = replace(scene, objects=(replace(obj, color="mask"),), background=((0, 0, 0), (0, 0, 0)))
        mask = np.asarray(render_scene(alone, mask_config))[..., 0].astype(np.float32) / 255.0
        out[k] = mask.reshape(grid, patch, grid, patch).mean(axis=(1, 3)).reshape(-1)
    return out


def _scene_arrays(args):
    """One training example: image, per-patch targets and captions. Runs in a worker process."""
    seed, index, config, patch = args
    rng = _rng(seed, "backbone", index)
    scene = sample_scene(config, rng, index)
    image = np.asarray(render_scene(scene, config), dtype=np.uint8)
    captions = make_captions(scene, rng, image_size=config.image_size)
    # targets per patch: shape, colour, size of the object covering most of it; background = last class
    vocabularies = (list(config.shapes), list(config.colors), list(config.sizes))
    targets = np.array([[len(v)] * (config.image_size // patch) ** 2 for v in vocabularies], dtype=np.int64)
    if scene.objects:
        cover = patch_coverage(scene, config, patch)
        best = cover.argmax(0)
        for p in np.nonzero(cover.max(0) >= 0.25)[0]:
            obj = scene.objects[best[p]]
            targets[:, p] = [v.index(a) for v, a in zip(vocabularies, (obj.shape, obj.color, obj.size))]
    return image, targets, captions, scene


def render_pool(n: int, seed: int, config: WorldConfig, patch: int, workers: int | None = None):
    """Render n scenes in parallel: images (n, H, W, 3) uint8, targets (n, 3, grid*grid), captions, scenes."""
    jobs = [(seed, i, config, patch) for i in range(n)]
    if workers == 1 or n < 256:
        results = [_scene_arrays(j) for j in jobs]
    else:
        with Pool(workers) as pool:
            results = pool.map(_scene_arrays, jobs, chunksize=256)
    images, targets, captions, scenes = zip(*results)
    return np.stack(images), np.stack(targets), list(captions), list(scenes)


def clip_embeds(out) -> torch.Tensor:
    """get_image_features / get_text_features return a tensor or, in newer transformers, an output object."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def contrastive_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE. image_embeds, text_embeds: (B, D); row i of each is a matching pair."""
    image_embeds = F.normalize(image_embeds, dim=-1)
    text_embeds = F.normalize(text_embeds, dim=-1)
    logits = logit_scale.exp() * image_embeds @ text_embeds.T  # (B, B)
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class PatchHeads(nn.Module):
    """Linear heads on each patch token: shape, colour, size (each + background) and row, column."""

    def __init__(self, hidden: int, config: WorldConfig, grid: int):
        super().__init__()
        self.grid = grid
        classes = {"shape": len(config.shapes) + 1, "color": len(config.colors) + 1, "size": len(config.sizes) + 1,
                   "row": grid, "col": grid}
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, n) for name, n in classes.items()})

    def forward(self, patches: torch.Tensor, targets: torch.Tensor, accuracy: bool = False) -> tuple[torch.Tensor, dict]:
        """patches: (B, P, D) layer-(-2) patch tokens; targets: (B, 3, P). Returns the summed loss and, when
        asked (it syncs the GPU, so only at logging steps), each head's accuracy."""
        B, P, _ = patches.shape
        pos = torch.arange(P, device=patches.device)
        wanted = {"shape": targets[:, 0], "color": targets[:, 1], "size": targets[:, 2],
                  "row": (pos // self.grid).expand(B, P), "col": (pos % self.grid).expand(B, P)}
        loss, acc = 0.0, {}
        for name, head in self.heads.items():
            logits = head(patches)
            loss = loss + F.cross_entropy(logits.flatten(0, 1).float(), wanted[name].flatten())
            if accuracy:
                acc[name] = (logits.argmax(-1) == wanted[name]).float().mean().item()
        return loss, acc


def make_clip(recipe: BackboneRecipe, config: WorldConfig, tokenizer):
    from transformers import CLIPConfig, CLIPModel

    if tokenizer.eos_token_id == 2:
        raise ValueError("CLIP's text tower pools at the largest token id when eos_token_id == 2; give </s> another id")
    clip_config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=recipe.text_hidden,
                         intermediate_size=4 * recipe.text_hidden, num_hidden_layers=recipe.text_layers,
                         num_attention_heads=2, max_position_embeddings=64,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=recipe.vision_hidden, intermediate_size=4 * recipe.vision_hidden,
                           num_hidden_layers=recipe.vision_layers, num_attention_heads=recipe.vision_heads,
                           image_size=config.image_size, patch_size=recipe.patch_size, num_channels=3),
        projection_dim=recipe.embed_dim,
    )
    torch.manual_seed(recipe.seed)
    return CLIPModel(clip_config)


def image_processor_for(images: np.ndarray, image_size: int):
    """A CLIPImageProcessor whose mean/std are the world's (the mean is also the padding colour)."""
    from transformers import CLIPImageProcessor

    pixels = images.reshape(-1, 3).astype(np.float32) / 255.0
    return CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": image_size}, do_center_crop=True,
        crop_size={"height": image_size, "width": image_size}, do_normalize=True,
        image_mean=pixels.mean(0).round(4).tolist(), image_std=pixels.std(0).round(4).tolist(), do_convert_rgb=True,
    )


def to_pixels(images: np.ndarray | torch.Tensor, processor, device=None) -> torch.Tensor:
    """uint8 (B, H, W, 3) already at the tower's size -> normalised float (B, 3, H, W), like the processor."""
    x = torch.as_tensor(images, device=device).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(processor.image_mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def tokenize_captions(tokenizer, captions: list[str], max_len: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), each (B, T): </s> appended (CLIP's text tower pools at the end token), right padding."""
    ids = [tokenizer.encode(c, add_special_tokens=False)[: max_len - 1] + [tokenizer.eos_token_id] for c in captions]
    batch = tokenizer.pad({"input_ids": ids}, padding_side="right", return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def pretrain_vision(clip, heads: PatchHeads, images, targets, captions, tokenizer, processor,
                    recipe: BackboneRecipe, device: str, log=print) -> list[dict]:
    """Contrastive image<->caption loss + per-patch attribute loss on layer -2. Returns a log every 50 steps."""
    clip.to(device).train()
    heads.to(device).train()
    params = list(clip.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=recipe.vision_lr, weight_decay=0.05, betas=(0.9, 0.98))
    sched = BudgetedCosine(opt, recipe.vision_steps, recipe.vision_minutes, recipe.vision_lr)
    # Everything lives on the device once: the loop only indexes.
    images_t = torch.as_tensor(images, device=device)
    targets_t = torch.as_tensor(targets, device=device)
    n, k = len(captions), len(captions[0])
    ids, mask = tokenize_captions(tokenizer, [c for caps in captions for c in caps])
    ids, mask = ids.view(n, k, -1).to(device), mask.view(n, k, -1).to(device)
    gen = torch.Generator(device=device).manual_seed(recipe.seed)
    history, start = [], time.time()
    amp = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast("cpu", enabled=False)
    step = 0
    while True:
        idx = torch.randint(n, (recipe.vision_batch,), generator=gen, device=device)
        # half the time the complete first caption, else a random (partial) one
        pick = torch.randint(k, (recipe.vision_batch,), generator=gen, device=device)
        pick = torch.where(torch.rand(recipe.vision_batch, generator=gen, device=device) < 0.5, 0, pick)
        text_ids, text_mask = ids[idx, pick], mask[idx, pick]
        logging = step % 50 == 0
        with amp:
            vis = clip.vision_model(pixel_values=to_pixels(images_t[idx], processor), output_hidden_states=True)
            image_embeds = clip.visual_projection(vis.pooler_output)
            text_embeds = clip_embeds(clip.get_text_features(input_ids=text_ids, attention_mask=text_mask))
            c_loss = contrastive_loss(image_embeds.float(), text_embeds.float(), clip.logit_scale)
            p_loss, acc = heads(vis.hidden_states[-2][:, 1:], targets_t[idx], accuracy=logging)
            loss = c_loss + p_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, math.log(100))
        more = sched.step()
        if logging or not more:
            history.append({"step": step, "planned": sched.total, "contrastive": round(c_loss.item(), 4),
                            "patch": round(p_loss.item(), 4), **{f"acc_{a}": round(v, 4) for a, v in acc.items()},
                            "seconds": round(time.time() - start, 1)})
            if step % 500 == 0 or not more:
                log(json.dumps(history[-1]))
        step += 1
        if not more:
            break
    clip.eval()
    return history
