"""Tiny pretrained backbones for the offline track: the stand-ins for CLIP and Vicuna.

LLaVA downloads a web-scale CLIP and a chat LM; the offline track cannot, so this module builds small
ones on the shapes world and saves them as ordinary `save_pretrained` folders under `data/backbones/`:

    tokenizer/   byte-level BPE trained on world text, with <s> </s> <pad> <image> and a chat template
    vision/      CLIPModel (ViT vision tower + small text tower) + CLIPImageProcessor
    lm/          LlamaForCausalLM pretrained on world text (no images)

The course then loads them with `from_pretrained`, exactly the path a hub model takes.

What the vision tower must learn. The LM reads the *patch tokens* (second-to-last layer, CLS dropped),
not the pooled embedding, so the patch tokens must carry each object's shape, colour and place.
Contrastive image<->caption training alone put colour there but hardly shape (four prototypes, ~55%
QA). So beside CLIP's contrastive loss we train a per-patch head on the layer-(-2) features: for every
patch, the shape / colour / size of the object covering it (or background) and the patch's own row and
column. This is the honest stand-in for what web-scale CLIP pretraining gives real patch tokens.

Run `python -m llava_mini.backbones --help`; README gives the commands and running times.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from llava_mini.paths import DATA_DIR
from llava_mini.world.shapes import Scene, WorldConfig, make_captions, render_scene, sample_scene, _rng
from llava_mini.teacher.records import IMAGE_TOKEN

BACKBONES_DIR = DATA_DIR / "backbones"
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
# Vicuna-like: "USER: ... \nASSISTANT: ...</s>\n". The answer is everything after "ASSISTANT:".
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n"
    "{% elif m['role'] == 'user' %}USER: {{ m['content'] }}\n"
    "{% else %}ASSISTANT: {{ m['content'] }}</s>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass
class BackboneRecipe:
    """Sizes and budgets. `tiny()` is what ships; `toy()` is for tests."""

    seed: int = 0
    vocab_size: int = 2048
    # vision tower: ViT on 64 px images with 8 px patches -> 8x8 = 64 patch tokens
    vision_hidden: int = 256
    vision_layers: int = 6
    vision_heads: int = 4
    patch_size: int = 8
    # CLIP text tower (only used for the contrastive objective and retrieval)
    text_hidden: int = 128
    text_layers: int = 2
    embed_dim: int = 128
    # language model
    lm_hidden: int = 256
    lm_layers: int = 4
    lm_heads: int = 4
    lm_intermediate: int = 768
    # data and budgets
    n_scenes: int = 60_000
    vision_steps: int = 12_000
    vision_batch: int = 128
    vision_lr: float = 1e-3
    lm_steps: int = 3_000
    lm_batch: int = 64
    lm_lr: float = 2e-3
    lm_seq_len: int = 256
    lm_scenes: int = 20_000       # scenes whose captions, contexts and text-only chats the LM reads
    lm_test_scenes: int = 300
    # wall-clock budgets: after a few steps the step count is cut so each phase ends within its budget
    # (the cosine schedule then spans the steps that fit), so one recipe runs on a CPU or a GPU
    vision_minutes: float = 25.0
    lm_minutes: float = 5.0

    @classmethod
    def toy(cls) -> "BackboneRecipe":
        return cls(vocab_size=400, vision_hidden=32, vision_layers=2, vision_heads=2, text_hidden=32,
                   text_layers=1, embed_dim=16, lm_hidden=32, lm_layers=2, lm_heads=2, lm_intermediate=64,
                   n_scenes=64, vision_steps=3, vision_batch=16, lm_steps=3, lm_batch=4, lm_seq_len=64,
                   lm_scenes=40, lm_test_scenes=8)


# ----------------------------------------------------------------------------- world scenes -> arrays


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
    grid = config.image_size // patch
    # targets per patch: shape, colour, size of the object covering most of it; background = last class
    shapes, colors, sizes = list(config.shapes), list(config.colors), list(config.sizes)
    targets = np.stack([
        np.full(grid * grid, len(shapes)), np.full(grid * grid, len(colors)), np.full(grid * grid, len(sizes))
    ]).astype(np.int64)
    if scene.objects:
        cover = patch_coverage(scene, config, patch)
        best = cover.argmax(0)
        for p in np.nonzero(cover.max(0) >= 0.25)[0]:
            obj = scene.objects[best[p]]
            targets[:, p] = (shapes.index(obj.shape), colors.index(obj.color), sizes.index(obj.size))
    return image, targets, captions, scene


def render_pool(n: int, seed: int, config: WorldConfig, patch: int, workers: int | None = None):
    """Render n scenes in parallel: images (n, H, W, 3) uint8, targets (n, 3, grid*grid), captions, scenes."""
    jobs = [(seed, i, config, patch) for i in range(n)]
    if workers == 1 or n < 256:
        results = [_scene_arrays(j) for j in jobs]
    else:
        with Pool(workers) as pool:
            results = pool.map(_scene_arrays, jobs, chunksize=256)
    images = np.stack([r[0] for r in results])
    targets = np.stack([r[1] for r in results])
    return images, targets, [r[2] for r in results], [r[3] for r in results]


# ----------------------------------------------------------------------------- tokenizer


def world_text_corpus(scenes: list[Scene], captions: list[list[str]], config: WorldConfig) -> list[str]:
    """World text for the tokenizer and the LM (no images): per scene, its captions as one document and
    its symbolic context (captions + boxes) as the paper's text-only teacher read it."""
    from llava_mini.world.coco import ImageRecord, ObjectAnnotation
    from llava_mini.world.symbolic import context_text

    docs = []
    for scene, caps in zip(scenes, captions):
        docs.append(" ".join(caps))
        record = ImageRecord(scene.image_id, "", config.image_size, config.image_size, list(caps),
                             [ObjectAnnotation(o.category, tuple(map(float, o.bbox))) for o in scene.objects])
        docs.append(context_text(record, boxes=True))
    # Words of the instruction-tuning turns that captions never use, so BPE gives them whole tokens.
    docs.append(
        "USER: ASSISTANT: What colour color is the object? What shape is it? How many objects are there? "
        "Is there a shape in the image? Yes, there is. No, there is not. Is it to the left or to the right of, "
        "above or below? Describe the image in detail. Give a brief description of the picture. "
        "Summarize the scene. The image shows shapes on a light background. Which one is the largest? "
        "Explain step by step. First, second, then, therefore, so the answer is. zero one two three four five six"
    )
    return docs


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE (any text encodes; no unknown words) wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # </s> must not get id 2: CLIP's text tower treats eos_token_id == 2 as a legacy config and pools at
    # the *largest token id* instead of at </s> (transformers keeps that for old checkpoints).
    specials = [SPECIAL_TOKENS[k] for k in ("pad_token", "bos_token", "unk_token")] + [IMAGE_TOKEN, SPECIAL_TOKENS["eos_token"]]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS,
                                   additional_special_tokens=[IMAGE_TOKEN])
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "right"
    return fast


# ----------------------------------------------------------------------------- vision tower


def _embeds(out) -> torch.Tensor:
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
        self.heads = nn.ModuleDict({
            "shape": nn.Linear(hidden, len(config.shapes) + 1),
            "color": nn.Linear(hidden, len(config.colors) + 1),
            "size": nn.Linear(hidden, len(config.sizes) + 1),
            "row": nn.Linear(hidden, grid),
            "col": nn.Linear(hidden, grid),
        })

    def forward(self, patches: torch.Tensor, targets: torch.Tensor, accuracy: bool = False) -> tuple[torch.Tensor, dict]:
        """patches: (B, P, D) layer-(-2) patch tokens; targets: (B, 3, P). Returns the summed loss and, when
        asked (it syncs the GPU, so only at logging steps), each head's accuracy."""
        B, P, _ = patches.shape
        pos = torch.arange(P, device=patches.device)
        wanted = {
            "shape": targets[:, 0], "color": targets[:, 1], "size": targets[:, 2],
            "row": (pos // self.grid).expand(B, P), "col": (pos % self.grid).expand(B, P),
        }
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
    mean, std = pixels.mean(0).round(4).tolist(), pixels.std(0).round(4).tolist()
    return CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": image_size}, do_center_crop=True,
        crop_size={"height": image_size, "width": image_size}, do_normalize=True,
        image_mean=mean, image_std=std, do_convert_rgb=True,
    )


def to_pixels(images: np.ndarray | torch.Tensor, processor, device=None) -> torch.Tensor:
    """uint8 (B, H, W, 3) already at the tower's size -> normalised float (B, 3, H, W), like the processor."""
    x = torch.as_tensor(images, device=device).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(processor.image_mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def tokenize_captions(tokenizer, captions: list[str], max_len: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids with </s> appended (CLIP's text tower pools at the end token) and right padding."""
    ids = [tokenizer.encode(c, add_special_tokens=False)[: max_len - 1] + [tokenizer.eos_token_id] for c in captions]
    width = max(map(len, ids))
    out = torch.full((len(ids), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        out[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return out, mask


class BudgetedCosine:
    """Linear warmup then cosine decay over `total` steps, where `total` is cut once the first steps
    show that it would not fit in `minutes` of wall-clock time."""

    def __init__(self, optimizer, total: int, minutes: float, base_lr: float, warmup_share: float = 0.03):
        self.optimizer, self.total, self.minutes, self.base_lr = optimizer, total, minutes, base_lr
        self.warmup_share = warmup_share
        self.step_count = 0
        self._set_lr()

    def lr(self, step: int) -> float:
        warmup = max(1, int(self.warmup_share * self.total))
        if step < warmup:
            return self.base_lr * (step + 1) / warmup
        return self.base_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, self.total - warmup))))

    def step(self) -> bool:
        """Set the learning rate for the next step; False when training should stop."""
        self.step_count += 1
        if self.step_count in (20, 60) and torch.cuda.is_available():
            torch.cuda.synchronize()  # time finished work, not queued kernels
        if self.step_count == 20:  # the first steps include warm-up overheads; measure the next 40
            self._t20 = time.time()
        if self.step_count == 60:
            per_step = (time.time() - self._t20) / 40
            fit = int(self.minutes * 60 / per_step)
            self.total = max(60, min(self.total, fit))
        self._set_lr()
        return self.step_count < self.total

    def _set_lr(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr(self.step_count)


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
            text_embeds = _embeds(clip.get_text_features(input_ids=text_ids, attention_mask=text_mask))
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
            row = {"step": step, "planned": sched.total, "contrastive": round(c_loss.item(), 4), "patch": round(p_loss.item(), 4),
                   **{f"acc_{a}": round(v, 4) for a, v in acc.items()}, "seconds": round(time.time() - start, 1)}
            history.append(row)
            if step % 500 == 0 or not more:
                log(json.dumps(row))
        step += 1
        if not more:
            break
    clip.eval()
    return history


# ----------------------------------------------------------------------------- language model


def make_lm(recipe: BackboneRecipe, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=recipe.lm_hidden, intermediate_size=recipe.lm_intermediate,
        num_hidden_layers=recipe.lm_layers, num_attention_heads=recipe.lm_heads, num_key_value_heads=recipe.lm_heads,
        max_position_embeddings=512, tie_word_embeddings=True, rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(recipe.seed)
    return LlamaForCausalLM(config)


def pack_corpus(tokenizer, docs: list[str], seq_len: int) -> torch.Tensor:
    """Concatenate <s> doc </s> ... and cut into (n, seq_len) rows, GPT-style packing."""
    stream: list[int] = []
    for d in docs:
        stream += [tokenizer.bos_token_id] + tokenizer.encode(d, add_special_tokens=False) + [tokenizer.eos_token_id]
    n = len(stream) // seq_len
    return torch.tensor(stream[: n * seq_len]).view(n, seq_len)


def pretrain_lm(lm, rows: torch.Tensor, recipe: BackboneRecipe, device: str, log=print) -> list[dict]:
    """Next-token prediction on packed world text rows (n, seq_len). Returns a log every 50 steps."""
    lm.to(device).train()
    opt = torch.optim.AdamW(lm.parameters(), lr=recipe.lm_lr, weight_decay=0.1, betas=(0.9, 0.95))
    sched = BudgetedCosine(opt, recipe.lm_steps, recipe.lm_minutes, recipe.lm_lr)
    rows = rows.to(device)
    gen = torch.Generator(device=device).manual_seed(recipe.seed)
    amp = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast("cpu", enabled=False)
    history, start, step = [], time.time(), 0
    while True:
        batch = rows[torch.randint(len(rows), (recipe.lm_batch,), generator=gen, device=device)]
        with amp:
            loss = lm(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        more = sched.step()
        if step % 50 == 0 or not more:
            history.append({"step": step, "planned": sched.total, "loss": round(loss.item(), 4), "seconds": round(time.time() - start, 1)})
            if step % 500 == 0 or not more:
                log(json.dumps(history[-1]))
        step += 1
        if not more:
            break
    lm.eval()
    return history


@torch.no_grad()
def perplexity(lm, rows: torch.Tensor, batch: int = 32) -> float:
    device = next(lm.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(rows), batch):
        x = rows[i: i + batch].to(device)
        total += lm(input_ids=x, labels=x).loss.item() * len(x)
        count += len(x)
    return math.exp(total / count)


# ----------------------------------------------------------------------------- evaluation of the tower


@torch.no_grad()
def patch_features(vision_model, pixels: torch.Tensor, layer: int = -2, batch: int = 256) -> torch.Tensor:
    """(B, 3, H, W) -> (B, P, D) patch tokens of `layer` (CLS dropped), what the LM will read."""
    out = []
    for i in range(0, len(pixels), batch):
        hs = vision_model(pixel_values=pixels[i: i + batch], output_hidden_states=True).hidden_states
        out.append(hs[layer][:, 1:].float().cpu())
    return torch.cat(out)


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

    train/test: (images uint8 (n, H, W, 3), targets (n, 3, P)) from `render_pool`.
    """
    feats = {}
    for name, (images, targets) in (("train", train), ("test", test)):
        x = patch_features(vision_model, to_pixels(images, processor, next(vision_model.parameters()).device))
        y = torch.as_tensor(targets).permute(0, 2, 1).reshape(-1, 3)  # (n*P, 3)
        x = x.reshape(-1, x.shape[-1])
        keep = y[:, 0] < len(config.shapes)  # object patches only
        feats[name] = (x[keep], y[keep])
    result = {}
    for k, (attr, n) in enumerate((("shape", len(config.shapes)), ("color", len(config.colors)), ("size", len(config.sizes)))):
        result[attr] = linear_probe(feats["train"][0], feats["train"][1][:, k], feats["test"][0], feats["test"][1][:, k], n)
    return result


@torch.no_grad()
def retrieval_top1(clip, processor, tokenizer, images: np.ndarray, captions: list[str]) -> dict[str, float]:
    """Image->text and text->image top-1 accuracy among len(images) candidates."""
    device = next(clip.parameters()).device
    img = _embeds(clip.get_image_features(pixel_values=to_pixels(images, processor, device)))
    ids, mask = tokenize_captions(tokenizer, captions)
    txt = _embeds(clip.get_text_features(input_ids=ids.to(device), attention_mask=mask.to(device)))
    sim = F.normalize(img.float(), dim=-1) @ F.normalize(txt.float(), dim=-1).T
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
    pixels = to_pixels(images, processor)
    show = slice(n_images, n_images + n_show)

    @torch.no_grad()
    def similarity():
        img = _embeds(clip.get_image_features(pixel_values=pixels[show]))
        txt = _embeds(clip.get_text_features(input_ids=ids[show], attention_mask=mask[show]))
        return (F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T).numpy()

    before = similarity()
    gen, losses = torch.Generator().manual_seed(seed), []
    for _ in range(steps):
        idx = torch.randint(n_images, (batch,), generator=gen)
        img = _embeds(clip.get_image_features(pixel_values=pixels[idx]))
        txt = _embeds(clip.get_text_features(input_ids=ids[idx], attention_mask=mask[idx]))
        loss = contrastive_loss(img, txt, clip.logit_scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return {"losses": losses, "before": before, "after": similarity(), "images": images[show],
            "captions": [c[0] for c in captions[show]], "chance_loss": math.log(batch)}


# ----------------------------------------------------------------------------- the whole build


def world_scenes(n: int, seed: int, config: WorldConfig, stream: str = "lm") -> tuple[list[Scene], list[list[str]]]:
    """n scenes and their captions without drawing them (the LM's corpus needs no pixels)."""
    scenes, captions = [], []
    for i in range(n):
        rng = _rng(seed, stream, i)
        scenes.append(sample_scene(config, rng, i + 1))
        captions.append(make_captions(scenes[-1], rng, image_size=config.image_size))
    return scenes, captions


def text_only_chats(scenes: list[Scene], captions: list[list[str]], config: WorldConfig, seed: int = 0) -> list[str]:
    """The symbolic teacher's conversations, descriptions and reasoning with the scene's symbolic context
    written where the image will later go, rendered with the chat template.

    This is what makes the stand-in LM a *chat* model, as Vicuna was before LLaVA: it has learned to follow
    instructions about a scene it reads as text. LLaVA's stage 2 then teaches it to read the scene from
    image tokens instead.
    """
    import jinja2

    from llava_mini.world.coco import ImageRecord, ObjectAnnotation
    from llava_mini.teacher.records import IMAGE_TOKEN
    from llava_mini.model.conversation import to_messages
    from llava_mini.teacher.instruct import generate_instruct_data
    from llava_mini.world.symbolic import context_text

    records = [ImageRecord(scene.image_id, f"{scene.image_id}.png", config.image_size, config.image_size, list(caps),
                           [ObjectAnnotation(o.category, tuple(map(float, o.bbox))) for o in scene.objects])
               for scene, caps in zip(scenes, captions)]
    contexts = {r.file_name: context_text(r, boxes=True) for r in records}
    result = generate_instruct_data(records, seed=seed, progress=False)
    template = jinja2.Template(CHAT_TEMPLATE)
    chats = []
    for record in result.records:
        messages = to_messages(record)
        messages[0]["content"] = messages[0]["content"].replace(IMAGE_TOKEN, contexts[record["image"]]).strip()
        chats.append(template.render(messages=messages, add_generation_prompt=False))
    return chats


def build_language_model(out_dir: str | Path = BACKBONES_DIR, recipe: BackboneRecipe | None = None,
                         device: str | None = None, log=print) -> dict:
    """Tokenizer + Llama-style LM pretrained on world text (no images): captions, symbolic contexts and
    text-only chats. Saves out_dir/tokenizer and out_dir/lm; returns its part of the report."""
    recipe = recipe or BackboneRecipe()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out_dir = Path(out_dir)
    config = WorldConfig()
    t0 = time.time()
    scenes, captions = world_scenes(recipe.lm_scenes + recipe.lm_test_scenes, recipe.seed, config)
    split = recipe.lm_scenes
    train_docs = world_text_corpus(scenes[:split], captions[:split], config) + text_only_chats(scenes[:split], captions[:split], config, recipe.seed)
    test_docs = world_text_corpus(scenes[split:], captions[split:], config)[:-1] + text_only_chats(scenes[split:], captions[split:], config, recipe.seed + 1)
    tokenizer = train_tokenizer(train_docs, recipe.vocab_size)
    corpus_s = round(time.time() - t0, 1)
    t0 = time.time()
    lm = make_lm(recipe, tokenizer)
    train_rows = pack_corpus(tokenizer, train_docs, recipe.lm_seq_len)
    test_rows = pack_corpus(tokenizer, test_docs, recipe.lm_seq_len)
    lm_log = pretrain_lm(lm, train_rows, recipe, device, log)
    report = {
        "lm_device": torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)",
        "lm_corpus": {"scenes": split, "documents": len(train_docs), "tokens": int(train_rows.numel()), "seconds": corpus_s},
        "lm_perplexity_heldout": perplexity(lm, test_rows) if len(test_rows) else None,
        "lm_seconds": round(time.time() - t0, 1),
        "lm_log": lm_log,
    }
    for folder in ("tokenizer", "lm"):
        tokenizer.save_pretrained(out_dir / folder)
    lm.save_pretrained(out_dir / "lm")
    return report


def build_vision_tower(out_dir: str | Path = BACKBONES_DIR, recipe: BackboneRecipe | None = None,
                       device: str | None = None, workers: int | None = None, log=print) -> dict:
    """CLIP (ViT + text tower, with CLIP's own tokenizer) trained contrastively plus the per-patch attribute
    loss. Saves out_dir/vision; returns its part of the report."""
    recipe = recipe or BackboneRecipe()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out_dir = Path(out_dir)
    config = WorldConfig()
    t0 = time.time()
    log(f"rendering {recipe.n_scenes} scenes ...")
    images, targets, captions, scenes = render_pool(recipe.n_scenes, recipe.seed, config, recipe.patch_size, workers)
    n_test = max(8, min(500, recipe.n_scenes // 10))
    train_sl, test_sl = slice(0, recipe.n_scenes - n_test), slice(recipe.n_scenes - n_test, recipe.n_scenes)
    timings = {"render_s": round(time.time() - t0, 1)}
    tokenizer = train_tokenizer(world_text_corpus(scenes[train_sl], captions[train_sl], config), recipe.vocab_size)
    t0 = time.time()
    processor = image_processor_for(images[:2000], config.image_size)
    clip = make_clip(recipe, config, tokenizer)
    heads = PatchHeads(recipe.vision_hidden, config, config.image_size // recipe.patch_size)
    vision_log = pretrain_vision(clip, heads, images[train_sl], targets[train_sl], captions[train_sl],
                                 tokenizer, processor, recipe, device, log)
    timings["vision_s"] = round(time.time() - t0, 1)
    for part in (clip, processor, tokenizer):
        part.save_pretrained(out_dir / "vision")
    n_probe = min(len(images) - n_test, 2000)
    return {
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)",
        "timings": timings,
        "retrieval_top1": retrieval_top1(clip, processor, tokenizer, images[test_sl], [c[0] for c in captions[test_sl]]),
        "retrieval_candidates": n_test,
        "patch_probe": probe_patches(clip.vision_model, processor, (images[:n_probe], targets[:n_probe]),
                                     (images[test_sl], targets[test_sl]), config),
        "vision_log": vision_log,
    }


def build_backbones(out_dir: str | Path = BACKBONES_DIR, recipe: BackboneRecipe | None = None,
                    device: str | None = None, workers: int | None = None, parts: tuple[str, ...] = ("vision", "lm"),
                    log=print) -> dict:
    """Build the vision tower and/or the LM (each with its own tokenizer, as CLIP and Vicuna have), save
    them under out_dir and merge their measurements into out_dir/report.json."""
    recipe = recipe or BackboneRecipe()
    out_dir = Path(out_dir)
    report_file = out_dir / "report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    if "vision" in parts:
        report.update(build_vision_tower(out_dir, recipe, device, workers, log), vision_recipe=asdict(recipe))
    if "lm" in parts:
        report.update(build_language_model(out_dir, recipe, device, log), lm_recipe=asdict(recipe))
    out_dir.mkdir(parents=True, exist_ok=True)
    report_file.write_text(json.dumps(report, indent=1))
    log(json.dumps({k: v for k, v in report.items() if not k.endswith("_log")}, indent=1))
    return report


def retune_text_tower(vision_dir: str | Path = BACKBONES_DIR / "vision", n_scenes: int = 20_000, minutes: float = 6.0,
                      batch: int = 256, lr: float = 1e-3, seed: int = 1, device: str = "cpu", workers: int | None = None,
                      log=print) -> dict:
    """Locked-image tuning (LiT): keep a trained vision tower, give CLIP a fresh tokenizer and text tower,
    and train only the text side (+ both projections) contrastively against the frozen image embeddings.

    CLIP's two towers need not share the LM's tokenizer (real CLIP and Vicuna don't), so this repairs or
    replaces a text tower without touching what the LM reads. Cheap on a CPU: the image side is computed once.
    """
    from transformers import CLIPModel, CLIPImageProcessor

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
        pooled = torch.cat([clip.vision_model(pixel_values=to_pixels(images[i: i + 512], processor, device)).pooler_output
                            for i in range(0, n_scenes, 512)])
    log(f"rendered and encoded {n_scenes} images in {time.time() - t0:.0f} s")
    ids, mask = tokenize_captions(tokenizer, [c for caps in captions for c in caps])
    ids, mask = ids.view(n_scenes, 5, -1).to(device), mask.view(n_scenes, 5, -1).to(device)
    params = [p for p in clip.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    sched = BudgetedCosine(opt, 100_000, minutes, lr)
    gen = torch.Generator().manual_seed(seed)
    clip.train()
    n_train, step, start = n_scenes - n_test, 0, time.time()
    while True:
        idx = torch.randint(n_train, (batch,), generator=gen)
        pick = torch.where(torch.rand(batch, generator=gen) < 0.5, 0, torch.randint(5, (batch,), generator=gen))
        text = _embeds(clip.get_text_features(input_ids=ids[idx, pick], attention_mask=mask[idx, pick]))
        loss = contrastive_loss(clip.visual_projection(pooled[idx]), text, clip.logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, math.log(100))
        more = sched.step()
        if step % 200 == 0 or not more:
            log(json.dumps({"step": step, "planned": sched.total, "contrastive": round(loss.item(), 4),
                            "seconds": round(time.time() - start, 1)}))
        step += 1
        if not more:
            break
    clip.eval()
    test = slice(n_train, n_scenes)
    retrieval = retrieval_top1(clip, processor, tokenizer, images[test], [c[0] for c in captions[test]])
    clip.save_pretrained(vision_dir)
    tokenizer.save_pretrained(vision_dir)
    report_file = vision_dir.parent / "report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    report["text_tower_retuned"] = {"how": "LiT: vision tower locked, fresh tokenizer + text tower", "device": device,
                                    "steps": step, "seconds": round(time.time() - start, 1), "n_scenes": n_scenes}
    report["retrieval_top1"] = retrieval
    report["retrieval_candidates"] = n_test
    report_file.write_text(json.dumps(report, indent=1))
    log(json.dumps({"retrieval_top1": retrieval}))
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(BACKBONES_DIR))
    parser.add_argument("--device", default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--toy", action="store_true", help="a seconds-long run at toy size (tests)")
    parser.add_argument("--retune-text", metavar="VISION_DIR", default=None,
                        help="only retrain CLIP's text tower against the locked vision tower in VISION_DIR (LiT)")
    parser.add_argument("--retune-minutes", type=float, default=6.0)
    parser.add_argument("--parts", default="vision,lm", help="which backbones to build: vision, lm or both")
    for field_name, value in asdict(BackboneRecipe()).items():
        parser.add_argument("--" + field_name.replace("_", "-"), type=type(value), default=None)
    args = parser.parse_args(argv)
    if args.retune_text:
        retune_text_tower(args.retune_text, minutes=args.retune_minutes, device=args.device or "cpu", workers=args.workers)
        return
    recipe = BackboneRecipe.toy() if args.toy else BackboneRecipe()
    overrides = {k: getattr(args, k) for k in asdict(recipe) if getattr(args, k) is not None}
    recipe = replace(recipe, **overrides)
    build_backbones(args.out, recipe, args.device, args.workers, parts=tuple(args.parts.split(",")))


if __name__ == "__main__":
    main()
