"""Where does the model look? Attention from each answer token to the image tokens.

LLaVA's language model reads the image as N ordinary tokens (one per vision patch) spliced into the
prompt. So the LM's own self-attention tells us, for every token it writes, how much weight each
patch got. Four facts make the bookkeeping exact:

* The image tokens are expanded in the ids (``llava_mini.conversation``): they sit at fixed positions
  ``image_positions`` (N of them, in patch order), and patch n is at row ``n // cols``, column
  ``n % cols`` of the vision tower's patch grid (CLIP flattens its patch-embedding map row-major).
* Answer token t (0-based) sits at position ``P + t``, where P is the prompt length. It is *produced*
  by the query one position earlier, ``P - 1 + t``: the logits that chose it were computed there.
  So the attention row that explains token t is row ``P - 1 + t`` (the first answer token is
  explained by the last prompt token, the ``ASSISTANT:`` header).
* Causal attention makes a teacher-forced forward pass over ``prompt + answer`` give exactly the
  rows that generation computed step by step with its KV cache. We generate once, then run one
  forward pass with ``output_attentions=True``.
* Attention weights exist only with ``attn_implementation="eager"`` (see ``use_eager_attention``).

    inspect_answers(model, tokenizer, processor, images, questions)  -> [AnswerAttention]
        .attentions  (layers, heads, answer_len, N)   softmax weights, rows over *all* keys sum to 1
        .image_share (layers, heads, answer_len)      how much of each row lands on the image
        .grid_map()  (rows, cols)                      normalised over image tokens, averaged
    grounding_score(attention, box_coverage(...))   share inside the box / the box's share of the image
    run_grounding(...) / summarize_grounding(...)   per layer, over held-out single-object questions
    masking_experiment(...)                          mask the most-attended patches vs random ones
    attention_rollout(...)                           attention flow through the layers (Abnar & Zuidema)
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image

from llava_mini.model.conversation import (
    IGNORE_INDEX,
    build_prompt,
    collate_prompts,
    encode_conversation,
    expand_to_square,
    image_to_pixel_values,
    mean_colour,
)

# ----------------------------------------------------------------------------- the model side


def unwrap(model):
    """The LlavaMini inside a peft wrapper (LoRA layers stay injected, so they still apply)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def use_eager_attention(model):
    """Switch the LM to eager attention (in place) so ``output_attentions=True`` returns weights.

    Why not sdpa: ``torch.nn.functional.scaled_dot_product_attention`` (and FlashAttention) is a
    fused kernel. It computes softmax(Q K^T / sqrt(d)) V tile by tile with an online softmax and
    never writes the T x T probability matrix to memory -- that is exactly where its speed and
    memory savings come from -- so there is no matrix to hand back, and transformers' sdpa path
    returns ``None`` for the weights. Eager attention does matmul -> softmax -> matmul in plain
    PyTorch, so the probabilities exist as a tensor and can be returned. Same numbers, just slower
    (irrelevant for a few hundred short sequences).
    """
    lm = unwrap(model).language_model
    if getattr(lm.config, "_attn_implementation", None) != "eager":
        lm.set_attn_implementation("eager")
    return model


def patch_grid(model) -> tuple[int, int]:
    """(rows, cols) of the vision tower's patch grid, e.g. (8, 8) for 64 px images and 8 px patches."""
    base = unwrap(model)
    config = base.vision_tower.config
    config = getattr(config, "vision_config", config)
    rows = cols = config.image_size // config.patch_size
    if rows * cols != base.num_image_tokens:
        raise ValueError(f"a {rows}x{cols} patch grid does not match {base.num_image_tokens} image tokens")
    return rows, cols


# ----------------------------------------------------------------------------- extraction


@dataclass
class AnswerAttention:
    """The attention that one answer paid to the image.

    ``attentions[l, h, t, n]``: in LM layer l, head h, the softmax weight that the query producing
    answer token t (the query at position ``prompt_length - 1 + t``) gives to image token n. Rows of
    the full attention matrix sum to 1 over all keys (text and image); this keeps only the N image
    columns, so ``image_share`` (the row sums here) is at most 1.
    """

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
        """A (rows, cols) map: pick a layer / head / answer token, or average over it when None.

        ``normalise=True`` renormalises each row over the image tokens first (where, among the
        patches, did it look?); ``False`` keeps the raw weights (how much did it look at all?).
        """
        att = self.image_distribution() if normalise else self.attentions
        att = att if layer is None else att[layer: layer + 1 or None]
        att = att if head is None else att[:, head: head + 1 or None]
        att = att if token is None else att[:, :, token: token + 1 or None]
        return att.mean(dim=(0, 1, 2)).reshape(self.grid)


def normalise_over_image(attention: torch.Tensor) -> torch.Tensor:
    """(..., N) non-negative weights -> a distribution over the N image tokens (rows of zeros stay 0)."""
    return attention / attention.sum(-1, keepdim=True).clamp(min=1e-12)


def attention_to_image(
    layer_attentions: Sequence[torch.Tensor],
    image_positions: torch.Tensor,
    prompt_length: int,
    answer_length: int,
    batch_index: int = 0,
) -> torch.Tensor:
    """Cut the answer rows and image columns out of the LM's attention matrices.

    Args:
        layer_attentions: one (B, heads, T, T) tensor per layer (``outputs.attentions``), T >=
            prompt_length + answer_length - 1.
        image_positions: (N,) positions of the image tokens.
        prompt_length: P; answer token t sits at position P + t.
    Returns:
        (layers, heads, answer_length, N) float32: row t is query position P - 1 + t, the query
        whose output predicted answer token t.
    """
    if prompt_length < 1:
        raise ValueError("the prompt must hold at least one token")
    queries = torch.arange(answer_length) + (prompt_length - 1)
    rows = []
    for layer in layer_attentions:
        if layer is None:
            raise ValueError("the LM returned no attention weights: switch it to eager attention "
                             "(llava_mini.attention.use_eager_attention(model))")
        matrix = layer[batch_index].float()                       # (heads, T, T)
        if queries.numel() and int(queries[-1]) >= matrix.shape[-2]:
            raise ValueError(f"answer rows up to {int(queries[-1])} need a sequence longer than {matrix.shape[-2]}")
        rows.append(matrix[:, queries][:, :, image_positions.to(matrix.device)].cpu())
    return torch.stack(rows)


def _decode_tokens(tokenizer, ids: Sequence[int]) -> list[str]:
    return [tokenizer.decode([i]) for i in ids]


def _strip_answer(ids: Sequence[int], stop_ids: set[int]) -> list[int]:
    """Generated ids up to (not including) the first stop token (EOS / padding)."""
    out = []
    for i in ids:
        if int(i) in stop_ids:
            break
        out.append(int(i))
    return out


def _stop_ids(tokenizer) -> set[int]:
    return {i for i in (tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None}


@torch.no_grad()
def greedy_answer_ids(
    model,
    tokenizer,
    prompts: Sequence[torch.Tensor],
    pixel_values: torch.Tensor,
    max_new_tokens: int = 16,
    batch_size: int = 32,
) -> list[list[int]]:
    """Greedy answers (new token ids, EOS and after dropped) for prompts (T_i,) and images (B, 3, H, W)."""
    base = unwrap(model).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers = []
    for start in range(0, len(prompts), batch_size):
        batch = collate_prompts(prompts[start: start + batch_size], pad)  # left padding for generation
        new = base.generate(
            batch["input_ids"].to(base.device), pixel_values[start: start + batch_size].to(base.device),
            attention_mask=batch["attention_mask"].to(base.device), max_new_tokens=max_new_tokens,
            do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
        )
        answers += [_strip_answer(row.tolist(), _stop_ids(tokenizer)) for row in new]
    return answers


def _reference_answer_ids(tokenizer, question: str, answer: str, num_image_tokens: int, prompt: torch.Tensor,
                          system_prompt: str | None = None) -> list[int]:
    """The ids of a given answer exactly as they follow the prompt in training (same template)."""
    text = question if "<image>" in question else f"<image>\n{question}"
    record = {"id": "<reference>", "conversations": [{"from": "human", "value": text}, {"from": "gpt", "value": answer}]}
    encoded = encode_conversation(record, tokenizer, num_image_tokens, system_prompt=system_prompt)
    if encoded.input_ids[: len(prompt)] != prompt.tolist():
        raise ValueError("the prompt is not a prefix of the rendered reference conversation")
    return _strip_answer([t for t in encoded.labels if t != IGNORE_INDEX], _stop_ids(tokenizer))


@torch.no_grad()
def answer_attentions(
    model,
    tokenizer,
    prompts: Sequence[torch.Tensor],
    pixel_values: torch.Tensor,
    answers: Sequence[Sequence[int]],
    batch_size: int = 32,
) -> list[AnswerAttention]:
    """One teacher-forced forward pass over ``prompt + answer`` per item; the answer rows' image columns.

    Batches are *right*-padded: every real token keeps the positions 0..T-1 it has unpadded, and
    causal attention means the padding after it cannot change its row.
    """
    base = unwrap(model).eval()
    grid = patch_grid(base)
    image_id = base.config.image_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    results = []
    for start in range(0, len(prompts), batch_size):
        chunk = range(start, min(start + batch_size, len(prompts)))
        sequences = [torch.cat([prompts[i], torch.tensor(list(answers[i]), dtype=torch.long)]) for i in chunk]
        longest = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), longest), pad, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, s in enumerate(sequences):
            input_ids[row, : len(s)], attention_mask[row, : len(s)] = s, 1
        outputs = base(input_ids.to(base.device), pixel_values[start: start + len(sequences)].to(base.device),
                       attention_mask=attention_mask.to(base.device), output_attentions=True)
        for row, i in enumerate(chunk):
            image_positions = (prompts[i] == image_id).nonzero().squeeze(-1)
            answer = [int(t) for t in answers[i]]
            weights = attention_to_image(outputs.attentions, image_positions, len(prompts[i]), len(answer), row)
            results.append(AnswerAttention(
                answer_ids=answer, answer_tokens=_decode_tokens(tokenizer, answer),
                answer_text=tokenizer.decode(answer, skip_special_tokens=True).strip(),
                attentions=weights, grid=grid, image_positions=image_positions, prompt_length=len(prompts[i]),
            ))
    return results


def inspect_answers(
    model,
    tokenizer,
    image_processor,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    answers: Sequence[str] | None = None,
    max_new_tokens: int = 16,
    batch_size: int = 32,
    system_prompt: str | None = None,
) -> list[AnswerAttention]:
    """Ask each question about its image and return where every answer token looked.

    ``answers=None``: the model's own greedy answers. Given strings: the attention while the model
    is *made to say* them (teacher forcing), e.g. the correct answer it failed to give.
    The LM must use eager attention (``use_eager_attention(model)``).
    """
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images but {len(questions)} questions")
    base = unwrap(model)
    n_image = base.num_image_tokens
    prompts = [build_prompt(tokenizer, q, n_image, system_prompt=system_prompt) for q in questions]
    pixel_values = torch.stack([image_to_pixel_values(im, image_processor) for im in images])
    if answers is None:
        answer_ids = greedy_answer_ids(model, tokenizer, prompts, pixel_values, max_new_tokens, batch_size)
    else:
        answer_ids = [_reference_answer_ids(tokenizer, q, a, n_image, p, system_prompt)
                      for q, a, p in zip(questions, answers, prompts)]
    return answer_attentions(model, tokenizer, prompts, pixel_values, answer_ids, batch_size)


def inspect_answer(model, tokenizer, image_processor, image: Image.Image, question: str,
                   answer: str | None = None, **kwargs) -> AnswerAttention:
    """``inspect_answers`` for one image and question."""
    return inspect_answers(model, tokenizer, image_processor, [image], [question],
                           None if answer is None else [answer], **kwargs)[0]


# ----------------------------------------------------------------------------- geometry + grounding


def box_coverage(bbox: Sequence[float], width: int, height: int, grid: tuple[int, int]) -> torch.Tensor:
    """(rows, cols): the fraction of each patch covered by a box given in original-image pixels.

    Follows the image as the model saw it: padded to a square (content centred, as
    ``conversation.expand_to_square`` pastes it), then resized to the tower's input size; the
    processor's centre crop of a square is a no-op.
    """
    x, y, w, h = (float(v) for v in bbox)
    side = max(width, height)
    x += (side - width) // 2
    y += (side - height) // 2
    rows, cols = grid

    def overlap(start: float, length: float, n: int) -> torch.Tensor:
        lo, hi = start / side * n, (start + length) / side * n  # box edges in patch units
        cells = torch.arange(n, dtype=torch.float32)
        return (torch.minimum(torch.tensor(hi), cells + 1) - torch.maximum(torch.tensor(lo), cells)).clamp(min=0)

    return torch.outer(overlap(y, h, rows), overlap(x, w, cols))


def grounding_score(image_attention: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
    """How much better than uniform the attention finds a box.

    Args:
        image_attention: (..., N) non-negative weights on the N image tokens (any scale: each row
            is renormalised over the image tokens, so text attention does not count).
        coverage: (N,) or (rows, cols), the fraction of each patch inside the box (``box_coverage``).
    Returns:
        (...): (sum_n p_n * coverage_n) / (sum_n coverage_n / N). The numerator is the share of the
        image attention inside the box (a half-covered patch counts half); the denominator is the
        box's share of the image. 1.0 = no better than spreading attention uniformly; the maximum,
        all attention on fully covered patches, is 1 / box share.
    """
    coverage = coverage.reshape(-1).to(image_attention)
    if coverage.numel() != image_attention.shape[-1]:
        raise ValueError(f"coverage has {coverage.numel()} patches, the attention {image_attention.shape[-1]}")
    box_share = coverage.sum() / coverage.numel()
    if box_share <= 0:
        raise ValueError("the box covers no patch")
    inside = (normalise_over_image(image_attention) * coverage).sum(-1)
    return inside / box_share


def grounding_by_layer(attention: AnswerAttention, coverage: torch.Tensor) -> torch.Tensor:
    """(layers,): the grounding score of each layer, averaged over heads and answer tokens."""
    return grounding_score(attention.attentions, coverage).mean(dim=(1, 2))


def attention_rollout(layer_attentions: Sequence[torch.Tensor], residual: float = 0.5) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): how much each input token flows into each position.

    Each layer's head-averaged matrix A (T, T) is mixed with the identity for the residual stream,
    ``residual * I + (1 - residual) * A`` (rows still sum to 1), and the layers are multiplied
    from the bottom up. Args: one (heads, T, T) (or (T, T)) tensor per layer. Returns (T, T); row q
    is a distribution over the inputs that reach position q after all layers.
    """
    rollout = None
    for layer in layer_attentions:
        matrix = layer.float().mean(0) if layer.dim() == 3 else layer.float()
        mixed = residual * torch.eye(matrix.shape[-1]) + (1 - residual) * matrix
        rollout = mixed if rollout is None else mixed @ rollout
    return rollout


# ----------------------------------------------------------------------------- held-out questions


@dataclass
class GroundingQuestion:
    """A held-out question about exactly one object, with that object's box."""

    record: object                     # llava_mini.coco.ImageRecord
    question: str
    expected: str                      # the canonical answer ("red", "circle"), see evaluate.is_correct
    kind: str                          # "colour" | "shape"
    category: str                      # the object asked about, e.g. "red circle"
    bbox: tuple[float, float, float, float]


def _target_object(record, kind: str, question: str, expected: str):
    """The one object a colour / shape question of ``llava_mini.evaluate`` is about, or None.

    A colour question names a shape that occurs once ("What colour is the star?", expected "red");
    a shape question names a colour that occurs once ("Which shape is the red object?", "star").
    """
    words = set(re.findall(r"[a-z]+", question.lower()))
    if kind == "colour":
        matches = [o for o in record.objects if o.attributes and o.attributes["color"] == expected
                   and o.attributes["shape"] in words]
    elif kind == "shape":
        matches = [o for o in record.objects if o.attributes and o.attributes["shape"] == expected
                   and o.attributes["color"] in words]
    else:
        raise ValueError(f"{kind!r} questions are not about one object")
    return matches[0] if len(matches) == 1 else None


def grounding_questions(records, n: int = 150, seed: int = 0, kinds: Sequence[str] = ("colour", "shape"),
                        ) -> list[GroundingQuestion]:
    """Up to ``n`` held-out single-object questions with the object's box.

    The questions are notebook 04's (``llava_mini.evaluate.make_questions``: built from the ground
    truth, asked only when the image settles them); we keep the kinds that name exactly one object
    (colour and shape) and look that object up. Counting, relation and existence questions are about
    several objects or none, so "the box" would not be defined.
    """
    from llava_mini.evaluate.core import make_questions

    records = list(records)
    by_id = {r.image_id: r for r in records}
    out = []
    for q in make_questions(records[: max(n, 1)], seed=seed):
        if q.kind not in kinds:
            continue
        record = by_id[q.image_id]
        obj = _target_object(record, q.kind, q.question, q.expected)
        if obj is None:
            continue
        out.append(GroundingQuestion(record, q.question, q.expected, q.kind, obj.category, tuple(obj.bbox)))
        if len(out) == n:
            break
    return out


def default_matcher(kind: str, answer: str, expected: str) -> bool:
    """Notebook 04's answer matching (the first colour / shape word the answer names must be right)."""
    from llava_mini.evaluate.core import is_correct

    return is_correct(kind, answer, expected)


# ----------------------------------------------------------------------------- the held-out experiment


@dataclass
class GroundingResult:
    """One question's answer, whether it was right, where it looked, and its per-layer score."""

    question: GroundingQuestion
    attention: AnswerAttention
    correct: bool
    coverage: torch.Tensor             # (rows, cols)
    by_layer: torch.Tensor             # (layers,) grounding score, averaged over heads and answer tokens
    answer_token: int | None = None    # index of the token that names the answer (first colour/shape word)

    @property
    def by_layer_answer_token(self) -> torch.Tensor | None:
        """(layers,): the grounding score of just the answer-naming token (heads averaged), or None."""
        if self.answer_token is None:
            return None
        weights = self.attention.attentions[:, :, self.answer_token]      # (layers, heads, N)
        return grounding_score(weights, self.coverage).mean(1)

    @property
    def answer(self) -> str:
        return self.attention.answer_text


def answer_word_token(attention: AnswerAttention, kind: str) -> int | None:
    """Index of the answer token that first names a value of ``kind`` (a colour or shape word), or None.

    "The star is red." -> the index of " red": that token carries the answer, the others are grammar.
    Uses notebook 04's term lists (``evaluate.extract_answer``); a word split into several tokens
    is found at its first piece.
    """
    from llava_mini.evaluate.core import extract_answer

    tokens = attention.answer_tokens
    for t in range(len(tokens)):
        if extract_answer(kind, "".join(tokens[: t + 1])) is None:
            continue
        # The term ends at token t; walk back over pieces glued to it ("pur" + "ple") to where it began.
        while t > 0 and tokens[t][:1].isalpha() and tokens[t - 1][-1:].isalpha():
            t -= 1
        return t
    return None


def run_grounding(
    model,
    tokenizer,
    image_processor,
    questions: Sequence[GroundingQuestion],
    matcher: Callable[[str, str, str], bool] = default_matcher,
    max_new_tokens: int = 12,
    batch_size: int = 32,
    progress: bool = False,
    system_prompt: str | None = None,
) -> list[GroundingResult]:
    """Answer every question, extract its attention, and score the grounding on the object's box.

    ``system_prompt``: the one the model was trained with (the preset's), so prompts match training.
    Answers with no tokens (the model stopped at once) have no attention rows and are left out.
    """
    use_eager_attention(model)
    grid = patch_grid(model)
    results = []
    starts = range(0, len(questions), batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="grounding", unit="batch")
    for start in starts:
        chunk = questions[start: start + batch_size]
        attentions = inspect_answers(model, tokenizer, image_processor, [q.record.load_image() for q in chunk],
                                     [q.question for q in chunk], max_new_tokens=max_new_tokens,
                                     batch_size=batch_size, system_prompt=system_prompt)
        for q, att in zip(chunk, attentions):
            if not att.answer_ids:
                continue
            coverage = box_coverage(q.bbox, q.record.width, q.record.height, grid)
            results.append(GroundingResult(q, att, matcher(q.kind, att.answer_text, q.expected), coverage,
                                           grounding_by_layer(att, coverage), answer_word_token(att, q.kind)))
    return results


def _mean_sem(values: torch.Tensor) -> tuple[list[float], list[float]]:
    """Mean and standard error over the first dimension."""
    n = values.shape[0]
    mean = values.mean(0)
    sem = values.std(0) / math.sqrt(n) if n > 1 else torch.zeros_like(mean)
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in sem]


def summarize_grounding(results: Sequence[GroundingResult]) -> dict:
    """Per-layer mean grounding score (and standard error) over questions, overall, for right and for
    wrong answers, plus the per-layer share of attention that went to the image at all."""
    if not results:
        raise ValueError("no grounding results to summarise")
    scores = torch.stack([r.by_layer for r in results])                                  # (Q, layers)
    shares = torch.stack([r.attention.image_share.mean(dim=(1, 2)) for r in results])   # (Q, layers)
    summary = {"n_questions": len(results), "accuracy": round(sum(r.correct for r in results) / len(results), 4)}
    summary["grounding_by_layer"], summary["grounding_sem"] = _mean_sem(scores)
    summary["image_share_by_layer"], _ = _mean_sem(shares)
    summary["grounding_mean_over_layers"] = round(float(scores.mean()), 4)
    named = [r.by_layer_answer_token for r in results if r.answer_token is not None]
    summary["n_answer_word"] = len(named)  # answers that name some colour / shape at all
    summary["grounding_by_layer_answer_word"], summary["grounding_sem_answer_word"] = (
        _mean_sem(torch.stack(named)) if named else (None, None))
    summary["max_possible_mean"] = round(float(torch.tensor(
        [1 / (r.coverage.sum() / r.coverage.numel()) for r in results]).mean()), 4)
    for label, keep in (("correct", True), ("wrong", False)):
        subset = scores[torch.tensor([r.correct == keep for r in results])]
        summary[f"n_{label}"] = int(subset.shape[0])
        summary[f"grounding_by_layer_{label}"] = _mean_sem(subset)[0] if subset.shape[0] else None
    by_kind = {}
    for kind in sorted({r.question.kind for r in results}):
        rows = [r for r in results if r.question.kind == kind]
        by_kind[kind] = {"n": len(rows), "accuracy": round(sum(r.correct for r in rows) / len(rows), 4),
                         "grounding_by_layer": _mean_sem(torch.stack([r.by_layer for r in rows]))[0]}
    summary["by_kind"] = by_kind
    return summary


def write_json(data: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


# ----------------------------------------------------------------------------- masking


def top_patches(attention: AnswerAttention, k: int) -> torch.Tensor:
    """The k patches with the most image attention (normalised, averaged over layers, heads, tokens)."""
    return attention.grid_map().reshape(-1).topk(k).indices


def mask_patches(pixel_values: torch.Tensor, patches: Sequence[int] | torch.Tensor, grid: tuple[int, int],
                 fill: torch.Tensor) -> torch.Tensor:
    """A copy of pixel_values (3, H, W) with the listed patches painted ``fill`` (3,) (normalised values)."""
    out = pixel_values.clone()
    rows, cols = grid
    ph, pw = out.shape[1] // rows, out.shape[2] // cols
    for n in torch.as_tensor(patches).tolist():
        r, c = divmod(int(n), cols)
        out[:, r * ph: (r + 1) * ph, c * pw: (c + 1) * pw] = fill.reshape(3, 1, 1)
    return out


def mean_fill(image_processor) -> torch.Tensor:
    """The processor's mean colour (the padding colour), in normalised pixel values: (3,), about 0."""
    colour = torch.tensor(mean_colour(image_processor), dtype=torch.float32) / 255
    return (colour - torch.tensor(image_processor.image_mean)) / torch.tensor(image_processor.image_std)


@torch.no_grad()
def masking_experiment(
    model,
    tokenizer,
    image_processor,
    results: Sequence[GroundingResult],
    ks: Sequence[int] = (4, 8),
    seed: int = 0,
    matcher: Callable[[str, str, str], bool] = default_matcher,
    max_new_tokens: int = 12,
    batch_size: int = 32,
    system_prompt: str | None = None,
) -> dict:
    """Does the model *need* the patches it attends to? Re-ask every question with patches masked.

    For each k: the k most-attended patches, k random patches (the same k, a fixed seed), and as a
    reference the patches the object's box touches (its own number). Masked patches take the mean
    colour, the colour the model also sees as padding. Returns accuracy and the fraction of answers
    that changed, per condition.
    """
    base = unwrap(model)
    grid = patch_grid(base)
    n_patches = grid[0] * grid[1]
    fill = mean_fill(image_processor)
    rng = torch.Generator().manual_seed(seed)
    prompts = [build_prompt(tokenizer, r.question.question, base.num_image_tokens, system_prompt=system_prompt)
               for r in results]
    clean = torch.stack([image_to_pixel_values(r.question.record.load_image(), image_processor) for r in results])

    def ask(masks: list[torch.Tensor]) -> dict:
        pixel_values = torch.stack([mask_patches(pv, m, grid, fill) for pv, m in zip(clean, masks)])
        answers = greedy_answer_ids(base, tokenizer, prompts, pixel_values, max_new_tokens, batch_size)
        texts = [tokenizer.decode(a, skip_special_tokens=True).strip() for a in answers]
        return {
            "accuracy": round(sum(matcher(r.question.kind, t, r.question.expected) for t, r in zip(texts, results)) / len(results), 4),
            "changed": round(sum(t != r.answer for t, r in zip(texts, results)) / len(results), 4),
            "patches": round(sum(len(m) for m in masks) / len(masks), 2),
        }

    report = {"n_questions": len(results), "unmasked_accuracy": round(sum(r.correct for r in results) / len(results), 4)}
    report["box"] = ask([(r.coverage.reshape(-1) > 0).nonzero().squeeze(-1) for r in results])
    for k in ks:
        report[f"k={k}"] = {
            "top_attended": ask([top_patches(r.attention, k) for r in results]),
            "random": ask([torch.randperm(n_patches, generator=rng)[:k] for _ in results]),
        }
    return report


# ----------------------------------------------------------------------------- drawing


def model_view(image: Image.Image, image_processor) -> Image.Image:
    """The image as the model sees it, before normalisation: padded to a square with the mean colour."""
    return expand_to_square(image.convert("RGB"), mean_colour(image_processor))


def overlay(ax, image: Image.Image, grid_map: torch.Tensor, bbox: Sequence[float] | None = None,
            original_size: tuple[int, int] | None = None, alpha: float = 0.55, cmap: str = "inferno",
            title: str | None = None, vmax: float | None = None, fontsize: int = 8, gray: bool = True):
    """Draw a (rows, cols) attention map as a heatmap over a square image; optionally a box.

    Each cell is one patch, drawn as a flat square (``nearest``): smoothing would invent detail the
    model never had. The colour scale runs from 0 to the map's own maximum unless ``vmax`` is given.
    The image is shown in grey under the heat (``gray=False``: in colour); ``alpha=0`` shows just the image. ``bbox`` is in the coordinates of ``original_size`` (width, height) before
    padding; by default those of ``image``.
    """
    from matplotlib.patches import Rectangle

    side = max(image.size)
    if gray and alpha > 0:
        # A grey image under the heat: the heat's colours cannot be mistaken for the objects' colours.
        ax.imshow(image.convert("L"), extent=(0, side, side, 0), interpolation="nearest", cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(image, extent=(0, side, side, 0), interpolation="nearest")
    heat = grid_map.detach().float().numpy()
    ax.imshow(heat, extent=(0, side, side, 0), cmap=cmap, alpha=alpha, interpolation="nearest",
              vmin=0, vmax=vmax if vmax is not None else max(float(heat.max()), 1e-12))
    if bbox is not None:
        width, height = original_size or image.size
        scale = side / max(width, height)  # the square we draw may be resized from the padded original
        x, y, w, h = bbox
        x += (max(width, height) - width) // 2
        y += (max(width, height) - height) // 2
        ax.add_patch(Rectangle((x * scale, y * scale), w * scale, h * scale, fill=False, edgecolor="cyan",
                               linewidth=1.5))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=fontsize)
    return ax


def _short(text: str, width: int = 34) -> str:
    """The first line of a model answer, cut to ``width`` characters, for figure titles."""
    line = text.strip().split("\n")[0]
    return line if len(line) <= width else line[: width - 1] + "…"


def _save(fig, path):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")


def plot_question_layers(results: Sequence[GroundingResult], image_processor, path=None, title: str | None = None,
                         answer_word: bool = False):
    """One row per question: the image with the object's box, then each layer's map (heads averaged,
    normalised over the image) with its grounding score.

    ``answer_word=False``: averaged over all answer tokens. ``True``: only the token that names the
    answer (" red"), where the answer names one; other rows fall back to all tokens.
    """
    import matplotlib.pyplot as plt

    n_layers = results[0].attention.num_layers
    fig, axes = plt.subplots(len(results), n_layers + 1, figsize=(2.0 * (n_layers + 1), 2.3 * len(results)),
                             squeeze=False)
    for row, r in zip(axes, results):
        q, image = r.question, r.question.record.load_image()
        view = model_view(image, image_processor)
        overlay(row[0], view, torch.zeros(r.attention.grid), q.bbox, image.size, alpha=0)
        mark = "right" if r.correct else f"wrong, expected {q.expected}"
        token = r.answer_token if answer_word else None
        scores = r.by_layer if token is None else r.by_layer_answer_token
        which = "all answer tokens" if token is None else f"token {r.attention.answer_tokens[token].strip()!r}"
        row[0].set_title("\n".join(textwrap.wrap(q.question, 30)) + f"\n-> {_short(r.answer, 28)!r}\n({mark})",
                         fontsize=7)
        for layer in range(n_layers):
            overlay(row[layer + 1], view, r.attention.grid_map(layer=layer, token=token), q.bbox, image.size,
                    title=f"layer {layer}: score {float(scores[layer]):.2f}" + (f"\n{which}" if answer_word and layer == 0 else ""),
                    fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97 if title else 1))  # leave the suptitle its own strip
    _save(fig, path)
    return fig


def plot_token_layers(result: GroundingResult, image_processor, path=None, title: str | None = None,
                      max_tokens: int = 8):
    """Rows: layers; columns: answer tokens (the first ``max_tokens``). Cell (l, t): where the query
    that produced token t looked in layer l (heads averaged). Each column is titled with its token."""
    import matplotlib.pyplot as plt

    att = result.attention
    image = result.question.record.load_image()
    view = model_view(image, image_processor)
    n_layers, n_tokens = att.num_layers, min(len(att.answer_ids), max_tokens)
    fig, axes = plt.subplots(n_layers, n_tokens, figsize=(1.7 * n_tokens, 1.8 * n_layers), squeeze=False)
    share = att.image_share.mean(1)  # (layers, tokens)
    for layer in range(n_layers):
        for t in range(n_tokens):
            ax = axes[layer, t]
            overlay(ax, view, att.grid_map(layer=layer, token=t), result.question.bbox, image.size)
            ax.set_title(f"{att.answer_tokens[t]!r}  img {float(share[layer, t]):.0%}" if layer == 0
                         else f"img {float(share[layer, t]):.0%}", fontsize=7)
            if t == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=8)
    fig.suptitle(title or f"{result.question.question} -> {_short(att.answer_text, 60)!r}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    _save(fig, path)
    return fig


def plot_grounding(summaries: dict[str, dict], path=None):
    """Left: grounding score per layer for each model (error bars: standard error; 1.0 = uniform),
    over all answer tokens (solid) and over just the token that names the answer (dashed). Right: the share of each layer's attention that goes to the image tokens at all."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1.5, 1]})
    for i, (name, s) in enumerate(summaries.items()):
        color = f"C{i}"
        layers = range(len(s["grounding_by_layer"]))
        left.errorbar(layers, s["grounding_by_layer"], yerr=s["grounding_sem"], marker="o", capsize=3, color=color,
                      label=f"{name}: all answer tokens (acc {s['accuracy']:.0%}, n={s['n_questions']})")
        if s.get("grounding_by_layer_answer_word"):
            left.errorbar(layers, s["grounding_by_layer_answer_word"], yerr=s["grounding_sem_answer_word"],
                          marker="s", capsize=3, color=color, linestyle="--", alpha=0.8,
                          label=f"{name}: the answer word only (n={s['n_answer_word']})")
        right.plot(layers, s["image_share_by_layer"], marker="o", label=name, color=color)
    left.axhline(1.0, color="gray", linestyle="--", linewidth=1, label="uniform attention")
    left.set(xlabel="LM layer", ylabel="grounding score (x uniform)", title="Attention inside the object's box")
    right.set(xlabel="LM layer", ylabel="share of attention on image tokens", title="How much it looks at the image",
              ylim=(0, 1))
    for ax in (left, right):
        ax.set_xticks(list(range(len(next(iter(summaries.values()))["grounding_by_layer"]))))
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    return fig


def plot_grounding_by_correctness(summaries: dict[str, dict], path=None):
    """Grounding per layer, split into right and wrong answers, one panel per model."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summaries), figsize=(4.6 * len(summaries), 3.4), squeeze=False, sharey=True)
    for ax, (name, s) in zip(axes[0], summaries.items()):
        for label, style in (("correct", "-o"), ("wrong", "--s")):
            values = s.get(f"grounding_by_layer_{label}")
            if values:
                ax.plot(range(len(values)), values, style, label=f"{label} (n={s[f'n_{label}']})")
        ax.axhline(1.0, color="gray", linestyle=":", linewidth=1)
        ax.set(title=name, xlabel="LM layer")
        ax.set_xticks(list(range(len(s["grounding_by_layer"]))))
        ax.legend(fontsize=8)
    axes[0, 0].set_ylabel("grounding score")
    fig.tight_layout()
    _save(fig, path)
    return fig


def plot_masking(report: dict, path=None, title: str | None = None):
    """Left: accuracy with nothing masked, the object's box masked, and for each k the top-attended vs
    random patches masked. Right: the share of answers that changed at all."""
    import matplotlib.pyplot as plt

    conditions = [("object's box\n(%.0f patches)" % report["box"]["patches"], report["box"], "tab:purple")]
    for key, entry in report.items():
        if key.startswith("k="):
            k = key[2:]
            conditions += [(f"top {k}\nattended", entry["top_attended"], "tab:red"),
                           (f"{k}\nrandom", entry["random"], "tab:blue")]
    fig, (left, right) = plt.subplots(1, 2, figsize=(2.2 * len(conditions) + 2, 3.4))
    panels = [
        (left, ["nothing"] + [c[0] for c in conditions], [report["unmasked_accuracy"]] + [c[1]["accuracy"] for c in conditions],
         ["tab:gray"] + [c[2] for c in conditions], "accuracy"),
        (right, [c[0] for c in conditions], [c[1]["changed"] for c in conditions], [c[2] for c in conditions],
         "answers that changed"),
    ]
    for ax, labels, values, colors, ylabel in panels:
        bars = ax.bar(range(len(labels)), values, color=colors)
        for bar, v in zip(bars, values):
            ax.text(bar.get_x() + bar.get_width() / 2, v + 0.01, f"{v:.0%}", ha="center", fontsize=8)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, fontsize=7)
        ax.set(ylabel=ylabel, ylim=(0, 1))
    left.set_title("accuracy after masking", fontsize=9)
    right.set_title("answers that changed", fontsize=9)
    fig.suptitle(title or f"Masking patches (n={report['n_questions']})", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return fig


def pixels_to_image(pixel_values: torch.Tensor, image_processor) -> Image.Image:
    """Undo the processor's normalisation: (3, H, W) -> a PIL image (to show what the model was given)."""
    mean = torch.tensor(image_processor.image_mean).reshape(3, 1, 1)
    std = torch.tensor(image_processor.image_std).reshape(3, 1, 1)
    array = ((pixel_values.float() * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array)


@torch.no_grad()
def plot_masking_example(model, tokenizer, image_processor, result: GroundingResult, k: int = 4, seed: int = 0,
                         path=None, system_prompt: str | None = None, max_new_tokens: int = 12):
    """One question three ways: the image as given, its k most-attended patches masked, k random
    patches masked; each panel titled with the model's answer to that version."""
    import matplotlib.pyplot as plt

    base = unwrap(model)
    grid = patch_grid(base)
    clean = image_to_pixel_values(result.question.record.load_image(), image_processor)
    fill = mean_fill(image_processor)
    random_patches = torch.randperm(grid[0] * grid[1], generator=torch.Generator().manual_seed(seed))[:k]
    versions = {
        "as given": clean,
        f"top {k} attended masked": mask_patches(clean, top_patches(result.attention, k), grid, fill),
        f"{k} random masked": mask_patches(clean, random_patches, grid, fill),
    }
    prompt = build_prompt(tokenizer, result.question.question, base.num_image_tokens, system_prompt=system_prompt)
    answers = greedy_answer_ids(base, tokenizer, [prompt] * len(versions), torch.stack(list(versions.values())),
                                max_new_tokens)
    fig, axes = plt.subplots(1, len(versions) + 1, figsize=(2.9 * (len(versions) + 1), 3.1))
    view = pixels_to_image(clean, image_processor)
    record = result.question.record
    overlay(axes[0], view, result.attention.grid_map(), result.question.bbox, (record.width, record.height),
            title="attention (all layers)", fontsize=8)
    for ax, (name, pixel_values), ids in zip(axes[1:], versions.items(), answers):
        ax.imshow(pixels_to_image(pixel_values, image_processor), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{name}\n-> {_short(tokenizer.decode(ids, skip_special_tokens=True), 28)!r}", fontsize=8)
    fig.suptitle(f"{result.question.question}  (expected: {result.question.expected})", fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    return fig
