"""Greedy decoding, written once (evaluation, chat, attention maps, the text-scene check, the local teacher).

    prompts (T_i,) each --left-pad--> (B, T) --[LlavaMini: splice image tokens]--> LM.generate --> new ids

Left padding puts every row's last prompt token at the same position, so generation continues all rows
together. Each distinct image of a batch goes through the vision tower once.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def left_pad(prompts: Sequence[torch.Tensor], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Prompts (T_i,) -> ``input_ids`` and ``attention_mask`` (B, T), padded on the left."""
    lengths = torch.tensor([len(p) for p in prompts])
    longest = int(lengths.max())
    input_ids = torch.stack([F.pad(torch.as_tensor(p, dtype=torch.long), (longest - len(p), 0), value=pad_token_id)
                             for p in prompts])
    return {"input_ids": input_ids, "attention_mask": (torch.arange(longest) >= longest - lengths[:, None]).long()}


@torch.no_grad()
def generate_ids(model, tokenizer, prompts: Sequence[torch.Tensor], pixel_values: torch.Tensor | None = None,
                 images: Sequence | None = None, to_pixels: Callable | None = None, max_new_tokens: int = 24,
                 batch_size: int = 32, progress: bool = False, desc: str = "generating", **sampling) -> list[list[int]]:
    """Greedy continuations (new token ids, cut before the first EOS / pad) of each prompt (T_i,).

    model: a LlavaMini, with ``pixel_values`` (B, 3, H, W) one row per prompt, or ``images`` (one per prompt;
    the same object for prompts about one image) and ``to_pixels`` (list of images -> pixel values); or a plain
    causal LM with text prompts. ``sampling``: other ``generate`` options (``do_sample=True, temperature=...``).
    """
    lm = getattr(model, "language_model", model)
    was_training = model.training
    model.eval()
    pad = pad_id(tokenizer)
    stop = {i for i in (tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None}
    batches = [range(k, min(k + batch_size, len(prompts))) for k in range(0, len(prompts), batch_size)]
    out: list[list[int]] = []
    try:
        for batch in tqdm(batches, desc=desc, disable=not progress):
            inputs = {k: v.to(lm.device) for k, v in left_pad([prompts[i] for i in batch], pad).items()}
            if pixel_values is not None:
                features = model.encode_images(pixel_values[batch.start:batch.stop].to(lm.device))
                inputs["inputs_embeds"] = model.splice(inputs.pop("input_ids"), features)
            elif images is not None:
                distinct = {id(images[i]): images[i] for i in batch}  # in first-seen order
                slot = {key: row for row, key in enumerate(distinct)}
                features = model.encode_images(to_pixels(list(distinct.values())).to(lm.device))
                rows = [slot[id(images[i])] for i in batch]
                inputs["inputs_embeds"] = model.splice(inputs.pop("input_ids"), features[rows])
            new = lm.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=pad,
                              eos_token_id=tokenizer.eos_token_id, **{"do_sample": False, **sampling})
            if "input_ids" in inputs:  # given ids (not embeddings), generate returns prompt + continuation
                new = new[:, inputs["input_ids"].shape[1]:]
            out += [next((row[:k] for k, token in enumerate(row) if token in stop), row) for row in new.tolist()]
    finally:
        model.train(was_training)
    return out


def decode(tokenizer, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True).strip()
