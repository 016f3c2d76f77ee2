"""Where does the model look? Attention from each answer token to the image tokens.

The LM reads the image as N ordinary tokens (one per patch, row-major, at ``image_positions``) in the prompt, so
its own self-attention says how much weight each patch got. Answer token t sits at ``P + t`` (P = prompt length)
and is *produced* by the query at ``P - 1 + t``: that row explains it. Causally, one teacher-forced pass over
``prompt + answer`` gives exactly the rows generation computed with its KV cache: generate, then one pass.
"""

from dataclasses import dataclass
from itertools import takewhile
from typing import Sequence

import torch
from PIL import Image
from torch.nn.utils.rnn import pad_sequence

from llava_mini.model import IGNORE_INDEX, build_prompt, decode, encode_conversation, generate_ids, pad_id
from llava_mini.model import image_to_pixel_values
from llava_mini.train import unwrap  # the peft wrapper's LlavaMini (LoRA layers stay injected)


def use_eager_attention(model):
    """Switch the LM to eager attention (in place) so ``output_attentions`` returns weights: sdpa / FlashAttention
    never write the T x T probabilities to memory (hence their speed); eager's matmul -> softmax -> matmul does."""
    lm = unwrap(model).language_model
    if getattr(lm.config, "_attn_implementation", None) != "eager":
        lm.set_attn_implementation("eager")
    return model


def patch_grid(model) -> tuple[int, int]:
    """(rows, cols) of the vision tower's patch grid, e.g. (8, 8) for 64 px images and 8 px patches."""
    base = unwrap(model)
    config = getattr(base.vision_tower.config, "vision_config", base.vision_tower.config)
    rows = cols = config.image_size // config.patch_size
    if rows * cols != base.num_image_tokens:
        raise ValueError(f"a {rows}x{cols} patch grid does not match {base.num_image_tokens} image tokens")
    return rows, cols


@dataclass
class AnswerAttention:
    """``attentions[l, h, t, n]``: layer l, head h, the softmax weight from the query producing answer token t to
    image token n. Full rows sum to 1 over all keys; only the image columns are kept (``image_share`` <= 1)."""

    answer_ids: list[int]
    answer_tokens: list[str]          # decoded one by one, for axis labels
    answer_text: str
    attentions: torch.Tensor          # (layers, heads, answer_len, N) float32
    grid: tuple[int, int]             # (rows, cols); image token n is patch (n // cols, n % cols)
    image_positions: torch.Tensor     # (N,) long: positions of the image tokens in the sequence
    prompt_length: int                # P: answer token t sits at P + t, produced by the query at P - 1 + t

    @property
    def num_layers(self) -> int:
        return self.attentions.shape[0]

    @property
    def image_share(self) -> torch.Tensor:
        """(layers, heads, answer_len): attention mass on image tokens (the rest went to text)."""
        return self.attentions.sum(-1)

    def image_distribution(self) -> torch.Tensor:
        """(layers, heads, answer_len, N): each row renormalised over the image tokens (sums to 1)."""
        return normalise_over_image(self.attentions)

    def grid_map(self, layer: int | None = None, head: int | None = None, token: int | None = None,
                 normalise: bool = True) -> torch.Tensor:
        """A (rows, cols) map: pick a layer / head / answer token, or average over it when None. ``normalise``:
        rows renormalised over the image first (where did it look?); False: raw (how much did it look?)."""
        att = self.image_distribution() if normalise else self.attentions
        att = att if layer is None else att[layer: layer + 1 or None]
        att = att if head is None else att[:, head: head + 1 or None]
        att = att if token is None else att[:, :, token: token + 1 or None]
        return att.mean(dim=(0, 1, 2)).reshape(self.grid)


def normalise_over_image(attention: torch.Tensor) -> torch.Tensor:
    """(..., N) non-negative weights -> a distribution over the N image tokens (rows of zeros stay 0)."""
    return attention / attention.sum(-1, keepdim=True).clamp(min=1e-12)


def attention_to_image(layer_attentions: Sequence[torch.Tensor], image_positions: torch.Tensor, prompt_length: int,
                       answer_length: int, batch_index: int = 0) -> torch.Tensor:
    """One (B, heads, T, T) tensor per layer -> the answer rows (query P - 1 + t for answer token t, P the
    prompt length) and image columns: (layers, heads, answer_length, N) float32."""
    if prompt_length < 1:
        raise ValueError("the prompt must hold at least one token")
    queries = torch.arange(answer_length) + (prompt_length - 1)
    rows = []
    for layer in layer_attentions:
        if layer is None:
            raise ValueError("the LM returned no attention weights: switch it to eager (use_eager_attention(model))")
        matrix = layer[batch_index].float()                       # (heads, T, T)
        if queries.numel() and int(queries[-1]) >= matrix.shape[-2]:
            raise ValueError(f"answer rows up to {int(queries[-1])} need a sequence longer than {matrix.shape[-2]}")
        rows.append(matrix[:, queries][:, :, image_positions.to(matrix.device)].cpu())
    return torch.stack(rows)


def _reference_answer_ids(tokenizer, question: str, answer: str, n_image: int, prompt: torch.Tensor,
                          system_prompt: str | None = None) -> list[int]:
    """The ids of a given answer exactly as they follow the prompt in training (same template), EOS dropped."""
    text = question if "<image>" in question else f"<image>\n{question}"
    record = {"id": "<reference>", "conversations": [{"from": "human", "value": text}, {"from": "gpt", "value": answer}]}
    encoded = encode_conversation(record, tokenizer, n_image, system_prompt=system_prompt)
    if encoded.input_ids[: len(prompt)] != prompt.tolist():
        raise ValueError("the prompt is not a prefix of the rendered reference conversation")
    stop = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    return list(takewhile(lambda t: t not in stop, (int(t) for t in encoded.labels if t != IGNORE_INDEX)))


@torch.no_grad()
def answer_attentions(model, tokenizer, prompts: Sequence[torch.Tensor], pixel_values: torch.Tensor,
                      answers: Sequence[Sequence[int]], batch_size: int = 32) -> list[AnswerAttention]:
    """One teacher-forced pass over ``prompt + answer`` per item, right-padded (causal: padding changes no row)."""
    base = unwrap(model).eval()
    grid, image_id, results = patch_grid(base), base.config.image_token_id, []
    for start in range(0, len(prompts), batch_size):
        chunk = range(start, min(start + batch_size, len(prompts)))
        sequences = [torch.cat([prompts[i], torch.tensor(list(answers[i]), dtype=torch.long)]) for i in chunk]
        input_ids = pad_sequence(sequences, batch_first=True, padding_value=pad_id(tokenizer))
        attention_mask = pad_sequence([torch.ones_like(s) for s in sequences], batch_first=True)
        outputs = base(input_ids.to(base.device), pixel_values[chunk.start: chunk.stop].to(base.device),
                       attention_mask=attention_mask.to(base.device), output_attentions=True)
        for row, i in enumerate(chunk):
            image_positions = (prompts[i] == image_id).nonzero().squeeze(-1)
            answer, P = [int(t) for t in answers[i]], len(prompts[i])
            weights = attention_to_image(outputs.attentions, image_positions, P, len(answer), row)
            results.append(AnswerAttention(answer, [tokenizer.decode([t]) for t in answer], decode(tokenizer, answer),
                                           weights, grid, image_positions, P))
    return results


def inspect_answers(model, tokenizer, image_processor, images: Sequence[Image.Image], questions: Sequence[str],
                    answers: Sequence[str] | None = None, max_new_tokens: int = 16, batch_size: int = 32,
                    system_prompt: str | None = None, progress: bool = False) -> list[AnswerAttention]:
    """Where every answer token looked; ``answers=None``: the model's own greedy answers, else the given strings
    (teacher forcing: the model is *made to say* them, e.g. the right answer it missed). Needs eager attention."""
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images but {len(questions)} questions")
    base = unwrap(model)
    prompts = [build_prompt(tokenizer, q, base.num_image_tokens, system_prompt=system_prompt) for q in questions]
    pixel_values = torch.stack([image_to_pixel_values(im, image_processor) for im in images])
    if answers is None:
        answer_ids = generate_ids(base, tokenizer, prompts, pixel_values=pixel_values, max_new_tokens=max_new_tokens,
                                  batch_size=batch_size, progress=progress, desc="answering")
    else:
        answer_ids = [_reference_answer_ids(tokenizer, q, a, base.num_image_tokens, p, system_prompt)
                      for q, a, p in zip(questions, answers, prompts)]
    return answer_attentions(model, tokenizer, prompts, pixel_values, answer_ids, batch_size)


def inspect_answer(model, tokenizer, image_processor, image: Image.Image, question: str,
                   answer: str | None = None, **kwargs) -> AnswerAttention:
    """``inspect_answers`` for one image and question."""
    return inspect_answers(model, tokenizer, image_processor, [image], [question],
                           None if answer is None else [answer], **kwargs)[0]
