"""LLaVA-Instruct records (checked by ``llava_mini.teacher.validate_record``) -> ``input_ids`` and ``labels``.

1. human -> ``user``, gpt -> ``assistant`` (plus an optional system message), rendered with the
   tokenizer's own chat template (Vicuna-like on the tiny track, ChatML for Qwen, ...).
2. Label masks cannot drift with the tokenizer (the "tokenization mismatch" bug of the original code,
   which used hard-coded offsets): for every assistant turn we render the conversation *up to* that turn
   with ``add_generation_prompt=True`` (where the answer starts) and *including* it (where it ends), and
   check that each is a token prefix of the whole conversation. Everything outside the answers is -100
   (system prompt, user turns, role headers, image tokens). An answer keeps its end-of-turn token
   (``</s>``, ``<|im_end|>``) so the model learns to stop; whitespace after it is not learned.
3. The single ``<image>`` token is expanded to N copies (one per patch), so the model can splice the N
   projected patch features in place and every text token keeps its position (as transformers' LLaVA).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from llava_mini.teacher import IMAGE_TOKEN, ROLES, RecordError, record_id, validate_record

IGNORE_INDEX = -100  # label value that cross-entropy skips


class TokenizationMismatch(RecordError):
    """The chat template rendered a prefix whose ids are not a prefix of the full conversation."""


class RecordTooLong(RecordError):
    """Even the first question/answer pair does not fit into ``max_length`` tokens."""


def to_messages(record: dict, system_prompt: str | None = None) -> list[dict[str, str]]:
    """LLaVA record -> chat messages ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``."""
    validate_record(record)
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [{"role": ROLES[t["from"]], "content": t["value"]} for t in record["conversations"]]
    return messages


def image_token_id(tokenizer, image_token: str = IMAGE_TOKEN) -> int:
    """The id of ``image_token``; it must be a single (added/special) token of the tokenizer."""
    ids = tokenizer.encode(image_token, add_special_tokens=False)
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no single token for {image_token!r} (it encodes to {ids}); "
                         "add it first with llava_mini.model.add_image_token(tokenizer)")
    return ids[0]


def add_image_token(tokenizer, image_token: str = IMAGE_TOKEN) -> int:
    """Add ``image_token`` as a special token (hub tokenizers lack it) and return its id. If the vocabulary
    grew, resize the LM's embeddings afterwards (``model.language_model.resize_token_embeddings(len(tokenizer))``)."""
    if image_token not in tokenizer.get_vocab():
        tokenizer.add_tokens([image_token], special_tokens=True)
    return image_token_id(tokenizer, image_token)


def render_ids(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    """Render messages with the chat template, then tokenize the text as is: the template writes every special
    token it wants (BOS, role markers, EOS), so ``add_special_tokens=False``, as ``apply_chat_template`` does."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _expand_image_token(ids: list[int], labels: list[int], image_id: int, num_image_tokens: int, rid):
    """Replace the single image token by ``num_image_tokens`` copies (labels: -100 on all of them)."""
    positions = [i for i, t in enumerate(ids) if t == image_id]
    if len(positions) != 1:
        raise RecordError(rid, f"expected one image token (id {image_id}) in the rendered ids, found {len(positions)}")
    p = positions[0]
    return (ids[:p] + [image_id] * num_image_tokens + ids[p + 1:],
            labels[:p] + [IGNORE_INDEX] * num_image_tokens + labels[p + 1:])


@dataclass
class EncodedConversation:
    """One tokenized record. ``input_ids`` and ``labels`` have the same length T (image tokens expanded)."""

    input_ids: list[int]
    labels: list[int]            # -100 except on assistant answer tokens (+ their end-of-turn token)
    num_answers: int             # assistant turns kept (fewer than the record's when truncated)
    num_answers_dropped: int     # trailing question/answer pairs dropped to fit max_length


def answer_spans(tokenizer, messages: list[dict], rid="?") -> tuple[list[int], list[tuple[int, int, int]]]:
    """The rendered ids of ``messages`` and, per assistant turn, (answer start, turn end, label end) in them,
    found by incremental rendering; TokenizationMismatch (naming ``rid``) if a prefix does not stay a prefix."""
    full_ids = render_ids(tokenizer, messages, add_generation_prompt=False)
    spans: list[tuple[int, int, int]] = []
    for i in [i for i, message in enumerate(messages) if message["role"] == "assistant"]:
        prompt_ids = render_ids(tokenizer, messages[:i], add_generation_prompt=True)
        upto_ids = render_ids(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if upto_ids[:len(prompt_ids)] != prompt_ids or full_ids[:len(upto_ids)] != upto_ids:
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
    return full_ids, spans


def answer_labels(tokenizer, messages: list[dict], rid="?") -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a whole text-only chat: labels -100 except on the assistant answers."""
    ids, spans = answer_spans(tokenizer, messages, rid)
    labels = [IGNORE_INDEX] * len(ids)
    for start, _, end in spans:
        labels[start:end] = ids[start:end]
    return ids, labels


def encode_conversation(record: dict, tokenizer, num_image_tokens: int, max_length: int | None = None,
                        system_prompt: str | None = None, image_token: str = IMAGE_TOKEN) -> EncodedConversation:
    """Tokenize a LLaVA record with the tokenizer's chat template and mask everything but the answers.

    tokenizer: with a ``chat_template`` and a single-token ``<image>``; num_image_tokens: N patch tokens
    per image; max_length: longest sequence *after* image expansion (None: no limit), reached by dropping
    whole trailing question/answer pairs; system_prompt: an optional system message (rendered, never
    learned). Returns input_ids / labels of length T <= max_length. Raises RecordError (bad record),
    TokenizationMismatch (the template is not prefix-stable) or RecordTooLong, each naming the record.
    """
    rid = record_id(record)
    image_id = image_token_id(tokenizer, image_token)
    full_ids, spans = answer_spans(tokenizer, to_messages(record, system_prompt), rid)

    # Truncation: keep the QA pairs whose turn ends fit (a leading run: the ends grow); image tokens count N each.
    extra = num_image_tokens - 1  # the one <image> id becomes N ids
    keep = sum(max_length is None or turn_end + extra <= max_length for _, turn_end, _ in spans)
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
    return EncodedConversation(*_expand_image_token(ids, labels, image_id, num_image_tokens, rid),
                               num_answers=keep, num_answers_dropped=len(spans) - keep)


def build_prompt(tokenizer, question: str, num_image_tokens: int, system_prompt: str | None = None,
                 history: Iterable[tuple[str, str]] = (), image_position: str = "before",
                 image_token: str = IMAGE_TOKEN) -> torch.LongTensor:
    """Token ids of a generation prompt: [system] [history] user(question + <image>) + assistant header.

    question: if it already holds ``<image>`` it is used as is, otherwise ``<image>\\n`` is put
    ``"before"`` the text (or ``"\\n<image>"`` ``"after"`` it). history: earlier (question, answer) pairs;
    the image goes into the first question. Returns ``input_ids`` (T,), the image token expanded to N
    copies: the same ids that training saw before the answer (same template, same expansion).
    """
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for q, a in history:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    messages.append({"role": "user", "content": question})
    first = next(m for m in messages if m["role"] == "user")
    if image_token not in first["content"]:
        if image_position not in ("before", "after"):
            raise ValueError(f"image_position must be 'before' or 'after', got {image_position!r}")
        q = first["content"]
        first["content"] = f"{image_token}\n{q}" if image_position == "before" else f"{q}\n{image_token}"
    ids = render_ids(tokenizer, messages, add_generation_prompt=True)
    ids, _ = _expand_image_token(ids, [IGNORE_INDEX] * len(ids), image_token_id(tokenizer, image_token),
                                 num_image_tokens, "<prompt>")
    return torch.tensor(ids, dtype=torch.long)
