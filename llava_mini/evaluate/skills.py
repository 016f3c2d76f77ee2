"""What stage 2 can teach the language model to read from the image tokens, one skill at a time
(``scripts/stage2_skills.py``).

Each skill is one kind of question. A probe trains LoRA (as stage 2 does) from the course's stage-1 model
on that kind alone, then scores it as a *forced choice*: the model's log-likelihood of the right answer
against that of the one wrong answer, on images it trained on and on held-out ones. A forced choice needs
no answer parsing, and 50% is a coin (the side and relation skills) or the share a one-sided guess gets.

    items     ProbeItem(file_name, question, right, wrong): shape_items, side_items, relation_items
    records   as_records(items): one LLaVA record per item (the question and the right answer)
    score     forced_choice(model, tokenizer, image_processor, items, image_dir) -> accuracy
    arm       PositionCode: a learned row + column embedding added to the projector's output

The side skill asks where one named object is ("on the left" / "on the right" half); its answers name
no other object, so a failure there is a failure to read *where*, not to compare.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from llava_mini.english import article
from llava_mini.evaluate.questions import make_questions, scene_objects
from llava_mini.model.conversation import build_prompt
from llava_mini.model.images import load_image
from llava_mini.world import OPPOSITE, SHAPES, ImageRecord, unique_name
from llava_mini.teacher.records import make_record

# An object this close to the vertical midline (in fractions of the width) is on neither side.
SIDE_MARGIN = 0.1


@dataclass(frozen=True)
class ProbeItem:
    file_name: str
    question: str
    right: str
    wrong: str


def shape_items(records: Sequence[ImageRecord]) -> list[ProbeItem]:
    """The control: "What shape is the red object?", about each object whose colour occurs once; the wrong
    answer names another shape of the world (seeded by the image and colour)."""
    items = []
    for r in records:
        objects = scene_objects(r)
        colours = [o.color for o in objects]
        for o in (o for o in objects if colours.count(o.color) == 1):
            other = random.Random(f"{r.file_name}:{o.color}").choice([s for s in SHAPES if s != o.shape])
            items.append(ProbeItem(r.file_name, f"What shape is the {o.color} object?",
                                   f"The {o.color} object is {article(o.shape)}.", f"The {o.color} object is {article(other)}."))
    return items


def side_items(records: Sequence[ImageRecord], objects: str = "any", by_colour: bool = False) -> list[ProbeItem]:
    """"Is the red circle on the left or on the right of the picture?", about each uniquely named object at
    least SIDE_MARGIN from the midline. ``objects``: "one" (images of a single object), "several", or "any";
    ``by_colour``: name each object by its colour alone ("the red object"), where no other object has it."""
    if objects not in ("one", "several", "any"):
        raise ValueError(f"objects must be 'one', 'several' or 'any', got {objects!r}")
    items = []
    for r in records:
        objs = scene_objects(r)
        if (objects == "one" and len(objs) != 1) or (objects == "several" and len(objs) < 2):
            continue
        colours = [o.color for o in objs]
        for i, o in enumerate(objs):
            x = o.center[0] / r.width
            name = (f"{o.color} object" if colours.count(o.color) == 1 else None) if by_colour else unique_name(objs, i)
            if name and abs(x - 0.5) >= SIDE_MARGIN:
                side, other = ("left", "right") if x < 0.5 else ("right", "left")
                items.append(ProbeItem(r.file_name, f"Is the {name} on the left or on the right of the picture?",
                                       f"The {name} is on the {side}.", f"The {name} is on the {other}."))
    return items


def relation_items(records: Sequence[ImageRecord], seed: int = 0, n: int | None = None) -> list[ProbeItem]:
    """The held-out relation questions (``make_questions``, its own wordings), the wrong answer the opposite
    relation: "The red circle is to the left of the blue square." against "... to the right of ..."."""
    items = []
    for q in make_questions(records, seed=seed, max_per_kind=n):
        if q.kind == "relation":
            rel = next(r for r in OPPOSITE if f" is {r} the " in q.reference)
            items.append(ProbeItem(q.file_name, q.question, q.reference,
                                   q.reference.replace(f" is {rel} the ", f" is {OPPOSITE[rel]} the ")))
    return items


def as_records(items: Sequence[ProbeItem], prefix: str, seed: int = 0) -> list[dict]:
    """One single-turn LLaVA record per item: its question, its right answer."""
    rng = random.Random(seed)
    return [make_record(f"{prefix}{k}", item.file_name, [(item.question, item.right)], rng)
            for k, item in enumerate(items)]


@torch.no_grad()
def answer_log_likelihood(model, tokenizer, pixel_values: torch.Tensor, question: str, answer: str,
                          system_prompt: str | None = None) -> float:
    """log p(answer | image, question), summed over the answer's tokens. pixel_values (1, 3, H, W)."""
    prompt = build_prompt(tokenizer, question, model.num_image_tokens, system_prompt=system_prompt)
    # the template writes "ASSISTANT: <answer>": the answer's first token carries its leading space
    answer_ids = torch.tensor(tokenizer(" " + answer, add_special_tokens=False)["input_ids"])
    input_ids = torch.cat([prompt, answer_ids])[None].to(model.device)
    labels = input_ids.clone()
    labels[:, : len(prompt)] = -100
    loss = model(input_ids, pixel_values.to(model.device), labels=labels).loss  # the mean over answer tokens
    return -float(loss) * len(answer_ids)


def forced_choice(model, tokenizer, image_processor, items: Sequence[ProbeItem], image_dir: str | Path,
                  system_prompt: str | None = None) -> float:
    """The share of items whose right answer the model finds likelier than the wrong one (nan: no items)."""
    from llava_mini.evaluate.run import prepare_images

    if not items:
        return float("nan")
    was_training = model.training
    model.eval()
    right = 0
    for item in items:
        pixels = prepare_images([load_image(Path(image_dir) / item.file_name, item.file_name)], image_processor)
        right_ll, wrong_ll = (answer_log_likelihood(model, tokenizer, pixels, item.question, answer, system_prompt)
                              for answer in (item.right, item.wrong))
        right += right_ll > wrong_ll
    model.train(was_training)
    return right / len(items)


class PositionCode(nn.Module):
    """The projector, plus a learned embedding of each patch's row and one of its column added to its
    output: where a patch is, written loudly into its image token. (B, N, D_vision) -> (B, N, D_text).

    Not LLaVA (whose LM sees the patches' places only through the vision features), and not exportable to
    ``LlavaForConditionalGeneration``: an arm of the skills probe, to ask whether the LM fails to read where
    things are because the place is too faint in the tokens. ``norm``: each patch's code at the start (the
    stage-1 projector's output norm makes the code as loud as the content)."""

    def __init__(self, projector: nn.Module, grid: int, dim: int, norm: float, seed: int = 0):
        super().__init__()
        self.projector, self.grid = projector, grid
        generator = torch.Generator().manual_seed(seed)
        rows, cols = torch.randn(grid, dim, generator=generator), torch.randn(grid, dim, generator=generator)
        scale = norm / (rows[:, None] + cols[None]).norm(dim=-1).mean()
        self.rows, self.cols = nn.Parameter(rows * scale), nn.Parameter(cols * scale)

    def code(self) -> torch.Tensor:
        """(N, D_text), patches in row-major order, as the vision tower emits them."""
        return (self.rows[:, None] + self.cols[None]).reshape(self.grid * self.grid, -1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.projector(features)
        return out + self.code().to(out.dtype)


def column_r2(tokens: torch.Tensor, records: Sequence[ImageRecord], fit_share: float = 0.75) -> float:
    """How plainly each object's token says which column it is in: R^2 of a least-squares line from the
    token under the object's centre to that patch's column, fitted on the first ``fit_share`` of the images
    and scored on the rest. tokens (B, N, D), row-major patches of a square grid, one row per record."""
    grid = int(tokens.shape[1] ** 0.5)
    rows, columns, images = [], [], []
    for b, r in enumerate(records):
        for o in scene_objects(r):
            x, y = o.center
            column, row = int(x / r.width * grid), int(y / r.height * grid)
            rows.append(tokens[b, row * grid + column].float())
            columns.append(float(column))
            images.append(b)
    X = torch.cat([torch.stack(rows), torch.ones(len(rows), 1)], 1)  # with an intercept
    y, fit = torch.tensor(columns), torch.tensor(images) < int(len(records) * fit_share)
    weights = torch.linalg.lstsq(X[fit], y[fit, None]).solution
    residual = (X[~fit] @ weights).squeeze(1) - y[~fit]
    return float(1 - residual.pow(2).mean() / y[~fit].var())
