"""A torch Dataset over LLaVA-Instruct records and the collator that pads its items into batches."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from llava_mini.model.conversation import IGNORE_INDEX, EncodedConversation, encode_conversation
from llava_mini.model.images import image_to_pixel_values, load_image
from llava_mini.teacher import RecordError, load_records, record_id


class LlavaInstructDataset(torch.utils.data.Dataset):
    """LLaVA-Instruct records (a list, or a JSON file) as training items
    ``{"id", "input_ids": (T,) long, "labels": (T,) long, "pixel_values": (3, H, W) float}``.

    Text is tokenized once, in ``__init__`` (cheap, and it gives errors and lengths up front); images
    (relative to ``image_folder``) are read in ``__getitem__``. ``num_image_tokens``, ``max_length``,
    ``system_prompt``: as in ``encode_conversation``. ``skip_invalid``: skip bad / too-long / mismatching
    records and count them in ``self.skipped`` (a Counter of problem kinds; ``self.skipped_ids``: the ids)
    instead of raising. ``check_images``: also open every image in ``__init__`` (errors or skips).
    """

    def __init__(self, records: list[dict] | str | Path, image_folder: str | Path, tokenizer, image_processor,
                 num_image_tokens: int, max_length: int | None = None, system_prompt: str | None = None,
                 skip_invalid: bool = False, check_images: bool = False):
        if isinstance(records, (str, Path)):
            records = load_records(records, validate=not skip_invalid)
        self.image_folder, self.tokenizer, self.image_processor = Path(image_folder), tokenizer, image_processor
        self.num_image_tokens = num_image_tokens
        self.skipped, self.skipped_ids = Counter(), []
        self.num_answers_dropped = 0  # QA pairs removed by truncation, over the whole dataset
        self.examples: list[tuple[dict, EncodedConversation]] = []
        for record in records:
            try:
                if not record.get("image"):
                    raise RecordError(record_id(record), "has no 'image' file name")
                encoded = encode_conversation(record, tokenizer, num_image_tokens, max_length, system_prompt)
                if check_images:
                    load_image(self.image_folder / record["image"], record_id(record))
            except RecordError as error:
                if not skip_invalid:
                    raise
                self.skipped[type(error).__name__] += 1
                self.skipped_ids.append(error.record_id)
                continue
            self.num_answers_dropped += encoded.num_answers_dropped
            self.examples.append((record, encoded))

    def __len__(self) -> int:
        return len(self.examples)

    def lengths(self) -> list[int]:
        """Sequence length of every example (for length-grouped batching)."""
        return [len(encoded.input_ids) for _, encoded in self.examples]

    def __getitem__(self, index: int) -> dict[str, Any]:
        record, encoded = self.examples[index]
        image = load_image(self.image_folder / record["image"], record_id(record))
        return {
            "id": record.get("id"),
            "input_ids": torch.tensor(encoded.input_ids, dtype=torch.long),
            "labels": torch.tensor(encoded.labels, dtype=torch.long),
            "pixel_values": image_to_pixel_values(image, self.image_processor),
        }


class LlavaCollator:
    """Dataset items -> a batch, right-padded: ``input_ids`` (B, T) with ``pad_token_id``, ``labels`` (B, T)
    with -100, ``attention_mask`` (B, T) 1 on real tokens, ``pixel_values`` (B, 3, H, W). T: the longest
    item of the batch, rounded up to a multiple of ``pad_to_multiple_of`` when given."""

    # Not transformers' DataCollatorForSeq2Seq: it pads on the tokenizer's padding_side (LlamaTokenizer's default
    # is left, training needs right), pads labels by hand too, and needs the tokenizer where callers pass a pad id.
    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        if pad_token_id is None:
            raise ValueError("pad_token_id is None: give the tokenizer a pad token (or pass eos_token_id)")
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        lengths = torch.tensor([len(item["input_ids"]) for item in items])
        longest = int(lengths.max())
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of

        def right_pad(key: str, value: int) -> torch.Tensor:  # (T_i,) each -> (B, longest)
            return torch.stack([F.pad(torch.as_tensor(item[key], dtype=torch.long), (0, longest - len(item[key])),
                                      value=value) for item in items])

        return {
            "input_ids": right_pad("input_ids", self.pad_token_id),
            "attention_mask": (torch.arange(longest) < lengths[:, None]).long(),
            "labels": right_pad("labels", IGNORE_INDEX),
            "pixel_values": torch.stack([item["pixel_values"] for item in items]),
        }
