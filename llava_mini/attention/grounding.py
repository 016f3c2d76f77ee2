"""Does the attention find the object? ``grounding_score`` = the attention's share inside the object's box
over the box's share of the image, per layer, over held-out one-object questions (``run_grounding``)."""

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from llava_mini.attention.extract import AnswerAttention, inspect_answers, normalise_over_image, patch_grid
from llava_mini.attention.extract import use_eager_attention
from llava_mini.english import article
from llava_mini.evaluate import conclusion, extract_answer, is_correct, make_questions


def square_box(bbox: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    """A box (x, y, w, h) in original-image pixels -> in the centred square the model's image is padded to."""
    x, y, w, h = (float(v) for v in bbox)
    return x + (max(width, height) - width) // 2, y + (max(width, height) - height) // 2, w, h


def box_coverage(bbox: Sequence[float], width: int, height: int, grid: tuple[int, int]) -> torch.Tensor:
    """(rows, cols): the fraction of each patch covered by a box in original-image pixels (the image padded to a
    square, then resized; the processor's centre crop of a square is a no-op)."""
    x, y, w, h = square_box(bbox, width, height)
    side, (rows, cols) = max(width, height), grid

    def overlap(start: float, length: float, n: int) -> torch.Tensor:
        lo, hi = start / side * n, (start + length) / side * n  # box edges in patch units
        cells = torch.arange(n, dtype=torch.float32)
        return (torch.minimum(torch.tensor(hi), cells + 1) - torch.maximum(torch.tensor(lo), cells)).clamp(min=0)
    return torch.outer(overlap(y, h, rows), overlap(x, w, cols))


def grounding_score(image_attention: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
    """(..., N) attention (renormalised over the image: text does not count), coverage (N,) or (rows, cols) -> (...):
    the share inside the box (half-covered patches count half) / the box's share. 1.0 = uniform, max 1 / box share."""
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
    """Attention rollout (Abnar & Zuidema, 2020): (heads, T, T) or (T, T) per layer -> (T, T), row q the inputs that
    reach position q: ``residual * I + (1 - residual) * A`` per layer (the residual stream), multiplied bottom up."""
    rollout = None
    for layer in layer_attentions:
        matrix = layer.float().mean(0) if layer.dim() == 3 else layer.float()
        mixed = residual * torch.eye(matrix.shape[-1]) + (1 - residual) * matrix
        rollout = mixed if rollout is None else mixed @ rollout
    return rollout


@dataclass
class GroundingQuestion:
    """A held-out question about exactly one object, with that object's box."""

    record: object                     # llava_mini.world.ImageRecord
    question: str
    expected: str                      # the canonical answer ("red", "circle"), see evaluate.is_correct
    kind: str                          # "colour" | "shape"
    category: str                      # the object asked about, e.g. "red circle"
    bbox: tuple[float, float, float, float]


def _target_object(record, kind: str, question: str, expected: str):
    """The one object a colour / shape question is about, or None: a colour question names a shape that
    occurs once ("What colour is the star?"), a shape question a colour ("Which shape is the red object?")."""
    if kind not in ("colour", "shape"):
        raise ValueError(f"{kind!r} questions are not about one object")
    asked, named = ("color", "shape") if kind == "colour" else ("shape", "color")
    words = set(re.findall(r"[a-z]+", question.lower()))
    matches = [o for o in record.objects if o.attributes and o.attributes[asked] == expected
               and o.attributes[named] in words]
    return matches[0] if len(matches) == 1 else None


def grounding_questions(records, n: int = 150, seed: int = 0, kinds: Sequence[str] = ("colour", "shape"),
                        ) -> list[GroundingQuestion]:
    """Up to ``n`` of notebook 04's held-out questions (``make_questions``) about exactly one object, with its box."""
    records = list(records)
    by_id, out = {r.image_id: r for r in records}, []
    for q in make_questions(records[: max(n, 1)], seed=seed):
        obj = _target_object(by_id[q.image_id], q.kind, q.question, q.expected) if q.kind in kinds else None
        if obj is not None and len(out) < n:
            out.append(GroundingQuestion(by_id[q.image_id], q.question, q.expected, q.kind, obj.category, tuple(obj.bbox)))
    return out


def coco_grounding_questions(records, n: int = 150) -> list[GroundingQuestion]:
    """Grounding questions for COCO images, which have no colour or shape to ask about: "Is there a <category> in
    the image?" (expected "yes"; kind "existence"), about the largest object whose category has one box in the
    image (not a crowd), so the box is what the question names. One per image, up to ``n``."""
    out = []
    for record in records:
        boxes = Counter(o.category for o in record.objects)
        single = [o for o in record.objects if boxes[o.category] == 1 and not o.iscrowd]
        if single and len(out) < n:
            obj = max(single, key=lambda o: o.bbox[2] * o.bbox[3])
            out.append(GroundingQuestion(record, f"Is there {article(obj.category)} in the image?", "yes", "existence",
                                         obj.category, tuple(obj.bbox)))
    return out


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
    """Index of the answer token that first names a ``kind`` word in the answer's conclusion (notebook 04's
    ``extract_answer``), or None: "The star is red." -> " red", the token that carries the answer; in "The blue
    one is a cross, so the cross is blue." the second " blue". A word in several pieces: its first."""
    tokens = attention.answer_tokens
    text = "".join(tokens)
    start = len(text) - len(conclusion(text))  # the steps before it name other objects' colours
    for t in range(len(tokens)):
        if len(prefix := "".join(tokens[: t + 1])) <= start or extract_answer(kind, prefix[start:]) is None:
            continue
        # The term ends at token t; walk back over pieces glued to it ("pur" + "ple") to where it began.
        while t > 0 and tokens[t][:1].isalpha() and tokens[t - 1][-1:].isalpha():
            t -= 1
        return t
    return None


def run_grounding(model, tokenizer, image_processor, questions: Sequence[GroundingQuestion],
                  matcher: Callable[[str, str, str], bool] = is_correct, max_new_tokens: int = 48, batch_size: int = 32,
                  progress: bool = False, system_prompt: str | None = None) -> list[GroundingResult]:
    """Answer every question, extract its attention, and score the grounding on the object's box. ``matcher``:
    notebook 04's by default; ``system_prompt``: the training one. Empty answers have no attention rows: left out."""
    use_eager_attention(model)
    grid = patch_grid(model)
    attentions = inspect_answers(model, tokenizer, image_processor, [q.record.load_image() for q in questions],
                                 [q.question for q in questions], max_new_tokens=max_new_tokens, batch_size=batch_size,
                                 system_prompt=system_prompt, progress=progress)
    results = []
    for q, att in zip(questions, attentions):
        if att.answer_ids:
            coverage = box_coverage(q.bbox, q.record.width, q.record.height, grid)
            results.append(GroundingResult(q, att, matcher(q.kind, att.answer_text, q.expected), coverage,
                                           grounding_by_layer(att, coverage), answer_word_token(att, q.kind)))
    return results


def _mean_sem(values: torch.Tensor) -> tuple[list[float], list[float]]:
    """Mean and standard error over the first dimension."""
    n, mean = values.shape[0], values.mean(0)
    sem = values.std(0) / math.sqrt(n) if n > 1 else torch.zeros_like(mean)
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in sem]


def summarize_grounding(results: Sequence[GroundingResult]) -> dict:
    """Per-layer mean grounding (and standard error): overall, the answer word alone, right / wrong, per kind."""
    if not results:
        raise ValueError("no grounding results to summarise")
    scores = torch.stack([r.by_layer for r in results])                                  # (Q, layers)
    shares = torch.stack([r.attention.image_share.mean(dim=(1, 2)) for r in results])   # (Q, layers)
    summary = {"n_questions": len(results), "accuracy": round(sum(r.correct for r in results) / len(results), 4)}
    summary["grounding_by_layer"], summary["grounding_sem"] = _mean_sem(scores)
    summary["image_share_by_layer"] = _mean_sem(shares)[0]
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
    summary["by_kind"] = {}
    for kind in sorted({r.question.kind for r in results}):
        rows = [r for r in results if r.question.kind == kind]
        summary["by_kind"][kind] = {"n": len(rows), "accuracy": round(sum(r.correct for r in rows) / len(rows), 4),
                                    "grounding_by_layer": _mean_sem(torch.stack([r.by_layer for r in rows]))[0]}
    return summary
