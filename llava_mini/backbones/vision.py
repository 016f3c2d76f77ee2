"""The stand-in for CLIP: world scenes as training arrays, the CLIP model and its pretraining.

The LM reads the *patch tokens* (layer -2, CLS dropped), so they must carry each object's shape, colour and
place. Contrastive image<->caption training alone put colour there but hardly shape (four prototypes, ~55%
QA), so beside CLIP's loss a per-patch head learns, on layer -2, the shape / colour / size of the object under
each patch and the patch's row and column: the honest stand-in for what web-scale pretraining gives CLIP.
"""

import math
from dataclasses import replace
from multiprocessing import Pool

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from llava_mini.backbones.recipe import BackboneRecipe, train_in_budget
from llava_mini.world import Scene, WorldConfig, render_scene, scene_with_captions


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
    scene, captions = scene_with_captions(seed, "backbone", index, config)
    scene = replace(scene, image_id=index)
    image = np.asarray(render_scene(scene, config), dtype=np.uint8)
    # per patch, the object covering most of it if >= 25%, else background (a last row at 25% that loses ties)
    vocabularies = (list(config.shapes), list(config.colors), list(config.sizes))
    labels = np.array([[v.index(a) for v, a in zip(vocabularies, (o.shape, o.color, o.size))] for o in scene.objects]
                      + [[len(v) for v in vocabularies]], dtype=np.int64)  # (n_objects + 1, 3)
    cover = np.vstack([patch_coverage(scene, config, patch), np.full((1, (config.image_size // patch) ** 2), 0.25)])
    targets = labels[cover.argmax(0)].T  # (3, grid*grid)
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


def contrastive_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE. image_embeds, text_embeds: (B, D); row i of each is a matching pair."""
    image_embeds, text_embeds = F.normalize(image_embeds, dim=-1), F.normalize(text_embeds, dim=-1)
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

    def forward(self, patches: torch.Tensor, targets: torch.Tensor, accuracy: bool = False) -> tuple:
        """patches: (B, P, D) layer-(-2) patch tokens; targets: (B, 3, P). Returns the summed loss and, when
        asked (at logging steps), each head's accuracy as a 0-dim tensor."""
        B, P, _ = patches.shape
        pos = torch.arange(P, device=patches.device)
        wanted = {"shape": targets[:, 0], "color": targets[:, 1], "size": targets[:, 2],
                  "row": (pos // self.grid).expand(B, P), "col": (pos % self.grid).expand(B, P)}
        logits = {name: head(patches) for name, head in self.heads.items()}
        loss = sum(F.cross_entropy(logits[name].flatten(0, 1).float(), wanted[name].flatten()) for name in logits)
        acc = {k: (logits[k].argmax(-1) == wanted[k]).float().mean() for k in logits} if accuracy else {}
        return loss, acc


def make_clip(recipe: BackboneRecipe, config: WorldConfig, tokenizer):
    from transformers import CLIPConfig, CLIPModel  # here, not at the top: importing them takes seconds
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
    from transformers import CLIPImageProcessor  # here too (it also warns when torchvision is missing)
    pixels = images.reshape(-1, 3).astype(np.float32) / 255.0
    return CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                              image_mean=pixels.mean(0).round(4).tolist(), image_std=pixels.std(0).round(4).tolist())


def to_pixels(images: np.ndarray | torch.Tensor, processor, device=None) -> torch.Tensor:
    """uint8 (B, H, W, 3) already at the tower's size -> normalised float (B, 3, H, W), like the processor."""
    x = torch.as_tensor(images, device=device).permute(0, 3, 1, 2).float() / 255.0
    mean, std = (torch.tensor(v, device=x.device).view(1, 3, 1, 1) for v in (processor.image_mean, processor.image_std))
    return (x - mean) / std


def tokenize_captions(tokenizer, captions: list[str], max_len: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), each (B, T): </s> appended (CLIP's text tower pools at the end token), right padding."""
    ids = [tokenizer.encode(c, add_special_tokens=False)[: max_len - 1] + [tokenizer.eos_token_id] for c in captions]
    batch = tokenizer.pad({"input_ids": ids}, padding_side="right", return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def pretrain_vision(clip, heads: PatchHeads, images, targets, captions, tokenizer, processor,
                    recipe: BackboneRecipe, device: str, log=print) -> list[dict]:
    """Contrastive image<->caption loss + per-patch attribute loss on layer -2. Returns a log every 50 steps."""
    # Everything lives on the device once: the loop only indexes.
    images, targets = torch.as_tensor(images, device=device), torch.as_tensor(targets, device=device)
    n, k, batch = len(captions), len(captions[0]), recipe.vision_batch
    ids, mask = tokenize_captions(tokenizer, [c for caps in captions for c in caps])
    ids, mask = ids.view(n, k, -1).to(device), mask.view(n, k, -1).to(device)
    gen = torch.Generator(device=device).manual_seed(recipe.seed)

    def loss_fn(logging: bool):
        idx = torch.randint(n, (batch,), generator=gen, device=device)
        # half the time the complete first caption, else a random (partial) one
        pick = torch.randint(k, (batch,), generator=gen, device=device)
        pick = torch.where(torch.rand(batch, generator=gen, device=device) < 0.5, 0, pick)
        vis = clip.vision_model(pixel_values=to_pixels(images[idx], processor), output_hidden_states=True)
        image_embeds = clip.visual_projection(vis.pooler_output)
        text_embeds = clip.get_text_features(input_ids=ids[idx, pick], attention_mask=mask[idx, pick]).pooler_output
        c_loss = contrastive_loss(image_embeds.float(), text_embeds.float(), clip.logit_scale)
        p_loss, acc = heads(vis.hidden_states[-2][:, 1:], targets[idx], accuracy=logging)
        return c_loss + p_loss, {"contrastive": c_loss, "patch": p_loss, **{f"acc_{a}": v for a, v in acc.items()}}

    return train_in_budget([clip, heads], loss_fn, device, recipe.vision_lr, recipe.vision_steps, recipe.vision_minutes,
                           log, after_step=lambda step: clip.logit_scale.data.clamp_(0, math.log(100)),  # CLIP's cap
                           weight_decay=0.05, betas=(0.9, 0.98))
