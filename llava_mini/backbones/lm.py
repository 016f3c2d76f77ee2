"""The stand-in for Vicuna: its world-text corpus (captions, symbolic contexts, text-only chats), the byte-level
BPE tokenizer with a Vicuna-like chat template (CLIP gets one of its own), the Llama model and its pretraining."""

import math

import jinja2
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from llava_mini.backbones.recipe import BackboneRecipe, train_in_budget
from llava_mini.teacher import IMAGE_TOKEN, drill_records, generate_instruct_data
from llava_mini.world import ImageRecord, ObjectAnnotation, Scene, WorldConfig, context_text

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
# Words of the instruction-tuning turns that captions never use, so BPE gives them whole tokens.
INSTRUCTION_WORDS = (
    "USER: ASSISTANT: What colour color is the object? What shape is it? How many objects are there? "
    "Is there a shape in the image? Yes, there is. No, there is not. Is it to the left or to the right of, "
    "above or below? Describe the image in detail. Give a brief description of the picture. "
    "Summarize the scene. The image shows shapes on a light background. Which one is the largest? "
    "Explain step by step. First, second, then, therefore, so the answer is. zero one two three four five six"
)


def scene_record(scene: Scene, captions: list[str], config: WorldConfig) -> ImageRecord:
    """The scene as the COCO-style record the teachers read."""
    return ImageRecord(scene.image_id, f"{scene.image_id}.png", config.image_size, config.image_size, list(captions),
                       [ObjectAnnotation(o.category, tuple(map(float, o.bbox))) for o in scene.objects])


def world_text_corpus(scenes: list[Scene], captions: list[list[str]], config: WorldConfig) -> list[str]:
    """World text for the tokenizer and the LM (no images): per scene, its captions as one document and
    its symbolic context (captions + boxes) as the paper's text-only teacher read it; last, INSTRUCTION_WORDS."""
    contexts = [context_text(scene_record(scene, caps, config), boxes=True) for scene, caps in zip(scenes, captions)]
    return [doc for caps, context in zip(captions, contexts) for doc in (" ".join(caps), context)] + [INSTRUCTION_WORDS]


def text_scene_records(scenes: list[Scene], captions: list[list[str]], config: WorldConfig, seed: int = 0,
                       drills: int = 1) -> tuple[list[dict], dict[str, str]]:
    """Instruction records about scenes the LM will read as text, and each image's symbolic context
    (captions + boxes) by file name: the symbolic teacher's three response types, plus ``drills`` records per
    scene of the held-out question kinds (``teacher.write_drill``: relations and near misses weighted up).

    This is what makes the stand-in LM a *chat* model that reasons over a scene it reads, as Vicuna was before
    LLaVA; stage 2 then teaches it to read the scene from image tokens instead (the same records, with pixels)."""
    records = [scene_record(scene, caps, config) for scene, caps in zip(scenes, captions)]
    contexts = {r.file_name: context_text(r, boxes=True) for r in records}
    out = generate_instruct_data(records, seed=seed, progress=False).records + drill_records(records, seed, drills)
    return out, contexts


def with_context(record: dict, context: str) -> list[dict]:
    """The record's chat messages with the scene's symbolic context standing where its image is."""
    from llava_mini.model import to_messages  # here, as transformers below: importing it takes seconds
    messages = to_messages(record)
    messages[0]["content"] = messages[0]["content"].replace(IMAGE_TOKEN, context).strip()
    return messages


def render_chat(messages: list[dict]) -> str:
    """Chat text as CHAT_TEMPLATE renders it, before any tokenizer exists (the tokenizer is trained on it)."""
    return jinja2.Template(CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=False)


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE (any text encodes; no unknown words) wrapped as a transformers fast tokenizer."""
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # </s> gets id 4, not 2: CLIP's text tower treats eos_token_id == 2 as a legacy config and pools at
    # the *largest token id* instead of at </s> (transformers keeps that for old checkpoints).
    pad, bos, unk, eos = (SPECIAL_TOKENS[k] for k in ("pad_token", "bos_token", "unk_token", "eos_token"))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[pad, bos, unk, IMAGE_TOKEN, eos],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS, additional_special_tokens=[IMAGE_TOKEN],
                                   chat_template=CHAT_TEMPLATE)  # pads on the right, the default


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
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    stream = [t for ids in tokenizer(docs, add_special_tokens=False)["input_ids"] for t in (bos, *ids, eos)]
    n = len(stream) // seq_len
    return torch.tensor(stream[: n * seq_len]).view(n, seq_len)


def pack_examples(examples: list[tuple[list[int], list[int]]], seq_len: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, labels) examples packed whole, in order, into (n, seq_len) rows (padding: label -100); an
    example longer than seq_len is cut. Documents without masks are ``(ids, ids)``."""
    rows, row = [], ([], [])
    for ids, labels in examples:
        if len(row[0]) + len(ids) > seq_len and row[0]:
            rows.append(row)
            row = ([], [])
        row[0].extend(ids[:seq_len])
        row[1].extend(labels[:seq_len])
    rows.append(row)
    ids = torch.full((len(rows), seq_len), pad_id)
    labels = torch.full((len(rows), seq_len), -100)
    for k, (a, b) in enumerate(rows):
        ids[k, :len(a)], labels[k, :len(b)] = torch.tensor(a), torch.tensor(b)
    return ids, labels


def pretrain_lm(lm, rows: torch.Tensor, recipe: BackboneRecipe, device: str, log=print,
                labels: torch.Tensor | None = None, snapshot=lambda step: None) -> list[dict]:
    """Next-token prediction on packed rows (n, seq_len), on ``labels`` (-100: not learned; default the rows
    themselves). ``snapshot(step)`` runs every ``recipe.lm_snapshot_every`` steps. Returns a log every 50 steps."""
    rows, labels = rows.to(device), (rows if labels is None else labels).to(device)
    gen = torch.Generator(device=device).manual_seed(recipe.seed)

    def loss_fn(logging: bool):
        pick = torch.randint(len(rows), (recipe.lm_batch,), generator=gen, device=device)
        loss = lm(input_ids=rows[pick], labels=labels[pick]).loss
        return loss, {"loss": loss}

    every = recipe.lm_snapshot_every
    return train_in_budget([lm], loss_fn, device, recipe.lm_lr, recipe.lm_steps, recipe.lm_minutes, log,
                           after_step=lambda step: every and (step + 1) % every == 0 and snapshot(step + 1),
                           weight_decay=0.1, betas=(0.9, 0.95))


@torch.no_grad()
def perplexity(lm, rows: torch.Tensor, batch: int = 32) -> float:
    """exp of the mean next-token loss over rows (n, seq_len), e.g. from pack_corpus."""
    device = next(lm.parameters()).device
    total = sum(lm(input_ids=x, labels=x).loss.item() * len(x) for x in rows.to(device).split(batch))
    return math.exp(total / len(rows))
