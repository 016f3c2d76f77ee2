"""The stand-in for Vicuna: its world-text corpus (captions, symbolic contexts, text-only chats), the
Llama-style model, and its next-token pretraining."""

import json
import math
import time

import torch

from llava_mini.backbones.recipe import BackboneRecipe, BudgetedCosine
from llava_mini.backbones.tokenizer import CHAT_TEMPLATE
from llava_mini.teacher import IMAGE_TOKEN
from llava_mini.world import ImageRecord, ObjectAnnotation, Scene, WorldConfig, context_text, make_captions, sample_scene
from llava_mini.world.shapes import _rng  # the world's seeding rule, so scenes stay what they were

# Words of the instruction-tuning turns that captions never use, so BPE gives them whole tokens.
INSTRUCTION_WORDS = (
    "USER: ASSISTANT: What colour color is the object? What shape is it? How many objects are there? "
    "Is there a shape in the image? Yes, there is. No, there is not. Is it to the left or to the right of, "
    "above or below? Describe the image in detail. Give a brief description of the picture. "
    "Summarize the scene. The image shows shapes on a light background. Which one is the largest? "
    "Explain step by step. First, second, then, therefore, so the answer is. zero one two three four five six"
)


def world_scenes(n: int, seed: int, config: WorldConfig, stream: str = "lm") -> tuple[list[Scene], list[list[str]]]:
    """n scenes and their captions without drawing them (the LM's corpus needs no pixels)."""
    scenes, captions = [], []
    for i in range(n):
        rng = _rng(seed, stream, i)
        scenes.append(sample_scene(config, rng, i + 1))
        captions.append(make_captions(scenes[-1], rng, image_size=config.image_size))
    return scenes, captions


def _record(scene: Scene, captions: list[str], config: WorldConfig) -> ImageRecord:
    """The scene as the COCO-style record the teachers read."""
    return ImageRecord(scene.image_id, f"{scene.image_id}.png", config.image_size, config.image_size, list(captions),
                       [ObjectAnnotation(o.category, tuple(map(float, o.bbox))) for o in scene.objects])


def world_text_corpus(scenes: list[Scene], captions: list[list[str]], config: WorldConfig) -> list[str]:
    """World text for the tokenizer and the LM (no images): per scene, its captions as one document and
    its symbolic context (captions + boxes) as the paper's text-only teacher read it; last, INSTRUCTION_WORDS."""
    docs = []
    for scene, caps in zip(scenes, captions):
        docs += [" ".join(caps), context_text(_record(scene, caps, config), boxes=True)]
    return docs + [INSTRUCTION_WORDS]


def text_only_chats(scenes: list[Scene], captions: list[list[str]], config: WorldConfig, seed: int = 0) -> list[str]:
    """The symbolic teacher's conversations, descriptions and reasoning with the scene's symbolic context
    written where the image will later go, rendered with the chat template.

    This is what makes the stand-in LM a *chat* model, as Vicuna was before LLaVA: it has learned to follow
    instructions about a scene it reads as text. LLaVA's stage 2 then teaches it to read the scene from
    image tokens instead.
    """
    import jinja2

    from llava_mini.model import to_messages
    from llava_mini.teacher import generate_instruct_data

    records = [_record(scene, caps, config) for scene, caps in zip(scenes, captions)]
    contexts = {r.file_name: context_text(r, boxes=True) for r in records}
    template = jinja2.Template(CHAT_TEMPLATE)  # the tokenizer is trained on these chats, so it cannot render them
    chats = []
    for record in generate_instruct_data(records, seed=seed, progress=False).records:
        messages = to_messages(record)
        messages[0]["content"] = messages[0]["content"].replace(IMAGE_TOKEN, contexts[record["image"]]).strip()
        chats.append(template.render(messages=messages, add_generation_prompt=False))
    return chats


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
    for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        stream += [tokenizer.bos_token_id] + ids + [tokenizer.eos_token_id]
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
    """exp of the mean next-token loss over rows (n, seq_len), e.g. from pack_corpus."""
    device = next(lm.parameters()).device
    total = sum(lm(input_ids=x, labels=x).loss.item() * len(x) for x in rows.to(device).split(batch))
    return math.exp(total / len(rows))
