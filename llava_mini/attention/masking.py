"""Does the model *need* the patches it attends to? Re-ask each question with patches masked."""

from typing import Callable, Sequence

import torch

from llava_mini.attention.extract import AnswerAttention, patch_grid
from llava_mini.attention.grounding import GroundingResult
from llava_mini.evaluate import is_correct
from llava_mini.model import build_prompt, decode, generate_ids, image_to_pixel_values, mean_colour
from llava_mini.train import unwrap


def top_patches(attention: AnswerAttention, k: int) -> torch.Tensor:
    """The k patches with the most image attention (normalised, averaged over layers, heads, tokens)."""
    return attention.grid_map().reshape(-1).topk(k).indices


def mask_patches(pixel_values: torch.Tensor, patches: Sequence[int] | torch.Tensor, grid: tuple[int, int],
                 fill: torch.Tensor) -> torch.Tensor:
    """A copy of pixel_values (3, H, W) with the listed patches painted ``fill`` (3,) (normalised values)."""
    out = pixel_values.clone()
    ph, pw = out.shape[1] // grid[0], out.shape[2] // grid[1]
    for n in torch.as_tensor(patches).tolist():
        r, c = divmod(int(n), grid[1])
        out[:, r * ph: (r + 1) * ph, c * pw: (c + 1) * pw] = fill.reshape(3, 1, 1)
    return out


def mean_fill(image_processor) -> torch.Tensor:
    """The processor's mean colour (the padding colour), in normalised pixel values: (3,), about 0."""
    colour = torch.tensor(mean_colour(image_processor), dtype=torch.float32) / 255
    return (colour - torch.tensor(image_processor.image_mean)) / torch.tensor(image_processor.image_std)


def _ask_masked(model, tokenizer, image_processor, questions: Sequence[str], clean: torch.Tensor, masks: Sequence,
                max_new_tokens: int, batch_size: int = 32, system_prompt: str | None = None):
    """Question i about clean[i] (3, H, W) with the patches masks[i] masked -> (pixel_values (B, 3, H, W), answers)."""
    base, grid, fill = unwrap(model), patch_grid(model), mean_fill(image_processor)
    pixel_values = torch.stack([mask_patches(pv, m, grid, fill) for pv, m in zip(clean, masks)])
    prompts = [build_prompt(tokenizer, q, base.num_image_tokens, system_prompt=system_prompt) for q in questions]
    ids = generate_ids(base, tokenizer, prompts, pixel_values=pixel_values, max_new_tokens=max_new_tokens,
                       batch_size=batch_size)
    return pixel_values, [decode(tokenizer, a) for a in ids]


def masking_experiment(model, tokenizer, image_processor, results: Sequence[GroundingResult], ks: Sequence[int] = (4, 8),
                       seed: int = 0, matcher: Callable[[str, str, str], bool] = is_correct, max_new_tokens: int = 48,
                       batch_size: int = 32, system_prompt: str | None = None) -> dict:
    """Accuracy and answers changed with the object's box masked and, per k, the k most-attended vs k random
    patches (seeded); masked patches take the mean colour, which the model also sees as padding."""
    rows, cols = patch_grid(model)
    rng = torch.Generator().manual_seed(seed)
    questions = [r.question.question for r in results]
    clean = torch.stack([image_to_pixel_values(r.question.record.load_image(), image_processor) for r in results])

    def ask(masks: list[torch.Tensor]) -> dict:
        _, texts = _ask_masked(model, tokenizer, image_processor, questions, clean, masks, max_new_tokens, batch_size,
                               system_prompt)
        right = sum(matcher(r.question.kind, t, r.question.expected) for t, r in zip(texts, results))
        changed = sum(t != r.answer for t, r in zip(texts, results))
        return {"accuracy": round(right / len(results), 4), "changed": round(changed / len(results), 4),
                "patches": round(sum(len(m) for m in masks) / len(masks), 2)}
    report = {"n_questions": len(results), "unmasked_accuracy": round(sum(r.correct for r in results) / len(results), 4)}
    report["box"] = ask([(r.coverage.reshape(-1) > 0).nonzero().squeeze(-1) for r in results])
    for k in ks:
        report[f"k={k}"] = {"top_attended": ask([top_patches(r.attention, k) for r in results]),
                            "random": ask([torch.randperm(rows * cols, generator=rng)[:k] for _ in results])}
    return report


def masking_example(model, tokenizer, image_processor, result: GroundingResult, k: int = 4, seed: int = 0,
                    system_prompt: str | None = None, max_new_tokens: int = 48) -> dict[str, tuple]:
    """One question three ways, {name: (pixel_values (3, H, W), answer)}: as given, top k / k random (seeded) masked."""
    grid = patch_grid(model)
    random_patches = torch.randperm(grid[0] * grid[1], generator=torch.Generator().manual_seed(seed))[:k]
    masks = {"as given": [], f"top {k} attended masked": top_patches(result.attention, k),
             f"{k} random masked": random_patches}
    clean = image_to_pixel_values(result.question.record.load_image(), image_processor)
    pixel_values, texts = _ask_masked(model, tokenizer, image_processor, [result.question.question] * len(masks),
                                      [clean] * len(masks), list(masks.values()), max_new_tokens, system_prompt=system_prompt)
    return {name: (pv, text) for name, pv, text in zip(masks, pixel_values, texts)}


def interpret(summaries: dict[str, dict], masking: dict, before: str, after: str) -> str:
    """Markdown sentences from the numbers (``summarize_grounding`` per model, ``masking_experiment`` of
    ``after``): does the answer word's attention point at the object, and does the model need those patches?"""
    word = {m: max(summaries[m]["grounding_by_layer_answer_word"] or [float("nan")]) for m in (before, after)}
    lines = [f"- Accuracy on these questions: {before} {summaries[before]['accuracy']:.0%}, "
             f"{after} {summaries[after]['accuracy']:.0%}.",
             f"- The answer word's best layer puts {word[after]:.2f}x the uniform share of its image attention on the "
             f"object ({before}: {word[before]:.2f}x; the most possible is about {summaries[after]['max_possible_mean']:.0f}x): "
             + ("stage 2 points at the object more than stage 1." if word[after] > 1.1 * word[before] else
                "stage 2 does not point at the object more than stage 1.")]
    base, box = masking["unmasked_accuracy"], masking["box"]["accuracy"]
    for k in [key for key in masking if key.startswith("k=")]:
        top, rnd = masking[k]["top_attended"]["changed"], masking[k]["random"]["changed"]
        lines.append(f"- Hiding the {k[2:]} most-attended patches changes {top:.0%} of the answers, {k[2:]} random "
                     f"ones {rnd:.0%}: " + ("the attended patches matter more than others." if top > rnd + 0.05
                                           else "about the same, so the attention maps do not show what it uses."))
    lines.append(f"- Hiding the object's box takes accuracy from {base:.0%} to {box:.0%}: "
                 + ("the answers come from the object's pixels." if box < base - 0.15 else
                    "the answers barely depend on the object's pixels."))
    return "\n".join(lines)
