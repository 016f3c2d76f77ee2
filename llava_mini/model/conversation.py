"""LLaVA-Instruct records -> (input_ids, labels, pixel_values) tensors.

A record (the LLaVA-Instruct JSON format)::

    {"id": "000123", "image": "000123.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat colour is the circle?"},
                       {"from": "gpt",   "value": "The circle is red."}, ...]}

Turns alternate human / gpt, starting with human; ``<image>`` appears exactly once, in the first human
turn, before or after the text (we keep it where it is).

How a record becomes tensors
----------------------------
1. human -> ``user``, gpt -> ``assistant`` (plus an optional system message), rendered with the
   tokenizer's own chat template (Vicuna-like on the tiny track, ChatML for Qwen, ...).
2. Label masks are computed so they cannot drift with the tokenizer (the "tokenization mismatch"
   bug of the original code, which used hard-coded offsets): for every assistant turn we render
   the conversation *up to* that turn with ``add_generation_prompt=True`` (where the answer starts)
   and *including* that turn (where it ends), tokenize both and check that each is a prefix of the
   full conversation's ids. Everything outside the answer spans is -100: system prompt, user
   turns, role headers and the image tokens. An answer span keeps its end-of-turn token
   (``</s>``, ``<|im_end|>``) so the model learns to stop; whitespace the template puts after
   it (``\\n``) is not learned.
3. The single ``<image>`` token is expanded to N copies in the ids (N = number of patch tokens of
   the vision tower), so the model can splice the N projected patch features in place and every
   text token keeps a fixed position (transformers' LLaVA does the same).
4. Images are padded to a square with the processor's mean colour (LLaVA v1.5 "pad"), then
   the image processor gives ``pixel_values``.

Truncation policy (``max_length``): whole trailing question/answer pairs are dropped until the
sequence (image tokens included) fits. Image tokens are never cut. If even the first answer does
not fit, ``RecordTooLong`` is raised (the dataset can skip such records and count them instead).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from PIL import Image

from llava_mini.teacher.records import IMAGE_TOKEN, ROLES, RecordError, load_records, record_id, validate_record

IGNORE_INDEX = -100  # label value that cross-entropy skips


# ----------------------------------------------------------------------------- errors




class TokenizationMismatch(RecordError):
    """The chat template rendered a prefix whose ids are not a prefix of the full conversation."""


class RecordTooLong(RecordError):
    """Even the first question/answer pair does not fit into ``max_length`` tokens."""


# ----------------------------------------------------------------------------- records






def to_messages(record: dict, system_prompt: str | None = None) -> list[dict[str, str]]:
    """LLaVA record -> chat messages ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``."""
    validate_record(record)
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [{"role": ROLES[t["from"]], "content": t["value"]} for t in record["conversations"]]
    return messages




# ----------------------------------------------------------------------------- tokenization


def image_token_id(tokenizer, image_token: str = IMAGE_TOKEN) -> int:
    """The id of ``image_token``; it must be a single (added/special) token of the tokenizer."""
    ids = tokenizer.encode(image_token, add_special_tokens=False)
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        raise ValueError(
            f"the tokenizer has no single token for {image_token!r} (it encodes to {ids}); "
            "add it first with llava_mini.conversation.add_image_token(tokenizer)"
        )
    return ids[0]


def add_image_token(tokenizer, image_token: str = IMAGE_TOKEN) -> int:
    """Add ``image_token`` as a special token (hub tokenizers lack it) and return its id.

    If the vocabulary grew, resize the LM's embeddings afterwards
    (``model.language_model.resize_token_embeddings(len(tokenizer))``).
    """
    if image_token not in tokenizer.get_vocab():
        tokenizer.add_tokens([image_token], special_tokens=True)
    return image_token_id(tokenizer, image_token)


def render_ids(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    """Render messages with the chat template, then tokenize the text as is.

    The template itself writes every special token it wants (BOS, role markers, EOS), so we
    tokenize with ``add_special_tokens=False``, as ``apply_chat_template(tokenize=True)`` does.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _is_prefix(prefix: Sequence[int], ids: Sequence[int]) -> bool:
    return len(prefix) <= len(ids) and list(ids[: len(prefix)]) == list(prefix)


def _expand_image_token(ids: list[int], labels: list[int], image_id: int, num_image_tokens: int, rid):
    """Replace the single image token by ``num_image_tokens`` copies (labels: -100 on all of them)."""
    positions = [i for i, t in enumerate(ids) if t == image_id]
    if len(positions) != 1:
        raise RecordError(rid, f"expected one image token (id {image_id}) in the rendered ids, found {len(positions)}")
    p = positions[0]
    ids = ids[:p] + [image_id] * num_image_tokens + ids[p + 1:]
    labels = labels[:p] + [IGNORE_INDEX] * num_image_tokens + labels[p + 1:]
    return ids, labels


@dataclass
class EncodedConversation:
    """One tokenized record. ``input_ids`` and ``labels`` have the same length T (image tokens expanded)."""

    input_ids: list[int]
    labels: list[int]            # -100 except on assistant answer tokens (+ their end-of-turn token)
    num_answers: int             # assistant turns kept (fewer than the record's when truncated)
    num_answers_dropped: int     # trailing question/answer pairs dropped to fit max_length


def encode_conversation(
    record: dict,
    tokenizer,
    num_image_tokens: int,
    max_length: int | None = None,
    system_prompt: str | None = None,
    image_token: str = IMAGE_TOKEN,
) -> EncodedConversation:
    """Tokenize a LLaVA record with the tokenizer's chat template and mask everything but the answers.

    Args:
        record: a LLaVA-Instruct record (see the module docstring).
        tokenizer: a transformers tokenizer with a ``chat_template`` and a single-token ``<image>``.
        num_image_tokens: N, the number of patch tokens the vision tower gives per image.
        max_length: longest allowed sequence *after* image expansion; trailing QA pairs are dropped
            to fit, ``RecordTooLong`` if the first answer does not fit. ``None``: no limit.
        system_prompt: optional system message (rendered by the template, never learned).

    Returns:
        ``EncodedConversation`` with ``input_ids`` / ``labels`` of length T <= max_length.

    Raises:
        RecordError (bad record), TokenizationMismatch (the template is not prefix-stable),
        RecordTooLong — each naming the record id.
    """
    rid = record_id(record)
    messages = to_messages(record, system_prompt)
    image_id = image_token_id(tokenizer, image_token)
    full_ids = render_ids(tokenizer, messages, add_generation_prompt=False)

    # Answer spans [start, end) in full_ids, found by incremental rendering.
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt_ids = render_ids(tokenizer, messages[:i], add_generation_prompt=True)
        upto_ids = render_ids(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not (_is_prefix(prompt_ids, upto_ids) and _is_prefix(upto_ids, full_ids)):
            raise TokenizationMismatch(
                rid,
                f"tokenization mismatch at assistant turn {len(spans)}: the chat template's rendering up to "
                "this turn is not a token prefix of the whole conversation, so answer masks would drift",
            )
        start, end = len(prompt_ids), len(upto_ids)
        # Do not learn whitespace the template writes after the end-of-turn token ("</s>\n").
        while end > start and not tokenizer.decode(full_ids[end - 1: end]).strip():
            end -= 1
        if end <= start:
            raise RecordError(rid, f"assistant turn {len(spans)} renders to no tokens")
        spans.append((start, len(upto_ids), end))  # (answer start, turn end, label end)

    # Truncation: keep the longest run of leading QA pairs that fits (image tokens count N each).
    extra = num_image_tokens - 1  # the one <image> id becomes N ids
    keep = len(spans)
    if max_length is not None:
        while keep > 0 and spans[keep - 1][1] + extra > max_length:
            keep -= 1
        if keep == 0:
            raise RecordTooLong(
                rid, f"the first question and answer need {spans[0][1] + extra} tokens (max_length={max_length})"
            )
    cut = spans[keep - 1][1]  # end of the last kept assistant turn: a verified prefix of full_ids
    ids = full_ids[:cut]
    labels = [IGNORE_INDEX] * cut
    for start, _, end in spans[:keep]:
        labels[start:end] = ids[start:end]
    if image_id in ids[spans[0][0]:]:
        raise RecordError(rid, f"{image_token} must come before the first answer")
    ids, labels = _expand_image_token(ids, labels, image_id, num_image_tokens, rid)
    return EncodedConversation(ids, labels, num_answers=keep, num_answers_dropped=len(spans) - keep)


def build_prompt(
    tokenizer,
    question: str,
    num_image_tokens: int,
    system_prompt: str | None = None,
    history: Iterable[tuple[str, str]] = (),
    image_position: str = "before",
    image_token: str = IMAGE_TOKEN,
) -> torch.LongTensor:
    """Token ids of a generation prompt: [system] [history] user(question + <image>) + assistant header.

    Args:
        question: the user's question; if it already holds ``<image>`` it is used as is, otherwise
            ``<image>\\n`` is put ``"before"`` the text (or ``"\\n<image>"`` ``"after"`` it).
        history: earlier (question, answer) pairs; the image goes into the first question.
    Returns:
        ``input_ids`` (T,) with the image token expanded to ``num_image_tokens`` copies; the same
        ids that training saw before the first answer (same template, same expansion).
    """
    turns = [*history, (question, None)]
    first_q = turns[0][0]
    if image_token not in first_q:
        if image_position not in ("before", "after"):
            raise ValueError(f"image_position must be 'before' or 'after', got {image_position!r}")
        first_q = f"{image_token}\n{first_q}" if image_position == "before" else f"{first_q}\n{image_token}"
        turns[0] = (first_q, turns[0][1])
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for q, a in turns:
        messages.append({"role": "user", "content": q})
        if a is not None:
            messages.append({"role": "assistant", "content": a})
    ids = render_ids(tokenizer, messages, add_generation_prompt=True)
    ids, _ = _expand_image_token(ids, [IGNORE_INDEX] * len(ids), image_token_id(tokenizer, image_token),
                                 num_image_tokens, "<prompt>")
    return torch.tensor(ids, dtype=torch.long)


def collate_prompts(prompts: Sequence[torch.Tensor], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Left-pad prompts (T_i,) for batched generation -> ``input_ids``, ``attention_mask`` (B, T)."""
    longest = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for row, p in enumerate(prompts):
        input_ids[row, longest - len(p):] = p
        attention_mask[row, longest - len(p):] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


# ----------------------------------------------------------------------------- images


def expand_to_square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Pad an image to a square (content centred) with ``background`` (LLaVA v1.5 "pad")."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), background)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def mean_colour(image_processor) -> tuple[int, int, int]:
    """The processor's normalisation mean as an RGB colour (so padding becomes ~0 after normalising).

    Truncated with ``int`` like LLaVA and transformers' ``LlavaImageProcessor(do_pad=True)``, so an
    exported processor pads identically.
    """
    return tuple(int(m * 255) for m in image_processor.image_mean)


def image_to_pixel_values(image: Image.Image, image_processor) -> torch.Tensor:
    """PIL image -> ``pixel_values`` (3, H, W): pad to a square with the mean colour, then the processor."""
    image = expand_to_square(image.convert("RGB"), mean_colour(image_processor))
    return image_processor(images=image, return_tensors="pt")["pixel_values"][0]


def load_image(path: str | Path, record_id: Any = "<unknown>") -> Image.Image:
    """Open an image as RGB; an unreadable or missing file raises ``RecordError`` naming the record."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as error:  # PIL raises many kinds (OSError, UnidentifiedImageError, ...)
        raise RecordError(record_id, f"cannot read image {str(path)!r}: {error}") from error


# ----------------------------------------------------------------------------- dataset + collator


class LlavaInstructDataset(torch.utils.data.Dataset):
    """A torch Dataset over LLaVA-Instruct records.

    Text is tokenized once, here in ``__init__`` (cheap, and it gives errors and lengths up front);
    images are read in ``__getitem__``.

    Args:
        records: a list of records, or a path to a LLaVA-Instruct JSON file.
        image_folder: folder that record["image"] is relative to.
        tokenizer, image_processor: transformers tokenizer (chat template, ``<image>`` token) and
            image processor (e.g. CLIPImageProcessor).
        num_image_tokens: N patch tokens per image (the model's ``num_image_tokens``).
        max_length: see the truncation policy in the module docstring.
        system_prompt: optional system message.
        skip_invalid: skip bad / too-long / mismatching records and count them in ``self.skipped``
            (a Counter of problem kinds; ``self.skipped_ids`` lists the ids) instead of raising.
        check_images: also open every image in ``__init__`` (unreadable ones are errors or skips).

    Items: ``{"id", "input_ids": (T,) long, "labels": (T,) long, "pixel_values": (3, H, W) float}``.
    """

    def __init__(
        self,
        records: list[dict] | str | Path,
        image_folder: str | Path,
        tokenizer,
        image_processor,
        num_image_tokens: int,
        max_length: int | None = None,
        system_prompt: str | None = None,
        skip_invalid: bool = False,
        check_images: bool = False,
    ):
        if isinstance(records, (str, Path)):
            records = load_records(records)
        self.image_folder = Path(image_folder)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.num_image_tokens = num_image_tokens
        self.skipped: Counter = Counter()
        self.skipped_ids: list = []
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
    """Dynamic right padding of a list of dataset items into a batch.

    Returns ``input_ids`` (B, T) padded with ``pad_token_id``, ``labels`` (B, T) padded with -100,
    ``attention_mask`` (B, T) 1 on real tokens, and ``pixel_values`` (B, 3, H, W); T is the longest
    item of this batch (optionally rounded up to a multiple of ``pad_to_multiple_of``).
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        if pad_token_id is None:
            raise ValueError("pad_token_id is None: give the tokenizer a pad token (or pass eos_token_id)")
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(item["input_ids"]) for item in items)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch_size = len(items)
        input_ids = torch.full((batch_size, longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch_size, longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch_size, longest), dtype=torch.long)
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            input_ids[row, :n] = item["input_ids"]
            labels[row, :n] = item["labels"]
            attention_mask[row, :n] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "pixel_values": torch.stack([item["pixel_values"] for item in items]),
        }


# ----------------------------------------------------------------------------- a picture of one sequence


def draw_token_layout(input_ids: Sequence[int], labels: Sequence[int], tokenizer, image_token_id: int,
                      width: int = 32, ax=None, title: str | None = None):
    """Draw a sequence as a grid of cells, one per token: image tokens, prompt text (-100, not learned)
    and answer tokens (labelled, learned). input_ids, labels: (T,). Returns the matplotlib axes."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    ids, labs = [int(t) for t in input_ids], [int(t) for t in labels]
    kind = [2 if lab != IGNORE_INDEX else 1 if tok == image_token_id else 0 for tok, lab in zip(ids, labs)]
    rows = -(-len(ids) // width)
    grid = torch.full((rows * width,), -1.0)
    grid[: len(kind)] = torch.tensor(kind, dtype=torch.float)
    if ax is None:
        _, ax = plt.subplots(figsize=(width * 0.42, rows * 0.42 + 0.8))
    cmap = ListedColormap(["white", "#dddddd", "#9ecae1", "#fdae6b"])
    ax.imshow(grid.view(rows, width) + 1, cmap=cmap, vmin=0, vmax=3)
    for t, tok in enumerate(ids):
        text = "img" if tok == image_token_id else tokenizer.decode([tok]).replace("\n", "\\n").strip() or "␣"
        ax.text(t % width, t // width, text[:5], ha="center", va="center", fontsize=5.5)
    ax.set_xticks([]), ax.set_yticks([])
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in ("#dddddd", "#9ecae1", "#fdae6b")]
    ax.legend(handles, ["text, label -100", "image token, label -100", "answer, learned"],
              loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=3, fontsize=8, frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    return ax
