"""Binding: can one attention read answer "what colour is the star?" from frozen patch tokens?

A linear probe (data/backbones/report.json) shows that every object patch carries its object's shape
and colour. A question about one object needs more: *find* the star's patches, then *read* their
colour — the attribute asked about is bound to the one named. This module trains the smallest model
that can do that on top of frozen patch tokens:

    tokens (B, P, D) --key--> (B, P, W) . query(named value) (B, W) --softmax over P--> weights (B, P)
    weights . value(tokens) (B, W) --out--> logits over the answers (B, A)

in both directions:

    colour-by-shape   named = a shape ("star"),  answer = its colour   (shapes that occur once)
    shape-by-colour   named = a colour ("red"),  answer = its shape    (colours that occur once)

Held-out accuracy near 100% says the patch tokens hold what the question needs and one attention hop
fetches it; what a trained LLaVA model then gets wrong on those questions is its LM not (yet) learning
that hop, not the vision tower. ``with_distractor`` counts only images where a wrong answer is there to
be picked (another colour in the image), the cases a bag-of-attributes reading gets wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from llava_mini.world.coco import ImageRecord

DIRECTIONS = {  # name -> (attribute named in the question, attribute answered)
    "colour-by-shape": ("shape", "color"),
    "shape-by-colour": ("color", "shape"),
}


@torch.no_grad()
def patch_tokens(vision_tower, image_processor, records: Sequence[ImageRecord], image_dir: str | Path,
                 layer: int = -2) -> torch.Tensor:
    """(N, P, D): the patch tokens of ``layer`` (CLS dropped) that LlavaMini's projector reads."""
    from llava_mini.backbones.build import patch_features
    from llava_mini.model.conversation import load_image
    from llava_mini.evaluate.core import prepare_images

    images = [load_image(Path(image_dir) / r.file_name, record_id=r.image_id) for r in records]
    return patch_features(vision_tower, prepare_images(images, image_processor), layer=layer)


def binding_questions(objects_per_image: Sequence[Sequence], named: str, answered: str,
                      named_values: Sequence[str], answer_values: Sequence[str]) -> torch.Tensor:
    """(Q, 4) rows (image index, named value index, answer index, distractor 0/1), one per value of
    ``named`` that occurs exactly once in an image. ``objects_per_image``: objects with .shape/.color."""
    rows = []
    for i, objects in enumerate(objects_per_image):
        for o in objects:
            if getattr(o, named) not in named_values or getattr(o, answered) not in answer_values:
                raise ValueError(f"image {i}: object {getattr(o, named)!r} / {getattr(o, answered)!r} is outside "
                                 f"the probe's vocabulary ({list(named_values)} / {list(answer_values)})")
        for value in sorted({getattr(o, named) for o in objects}):
            matches = [getattr(o, answered) for o in objects if getattr(o, named) == value]
            if len(matches) == 1:
                distractor = len({getattr(o, answered) for o in objects}) > 1
                rows.append((i, named_values.index(value), answer_values.index(matches[0]), int(distractor)))
    return torch.tensor(rows, dtype=torch.long).view(-1, 4)


class AttentionRead(nn.Module):
    """One softmax attention over the patches, queried by the named value, then a linear read-out."""

    def __init__(self, n_named: int, n_answers: int, dim: int, width: int = 64):
        super().__init__()
        self.query = nn.Embedding(n_named, width)
        self.key, self.value = nn.Linear(dim, width), nn.Linear(dim, width)
        self.out = nn.Linear(width, n_answers)

    def forward(self, tokens: torch.Tensor, named: torch.Tensor) -> torch.Tensor:
        """tokens (B, P, D), named (B,) -> logits (B, n_answers)."""
        scores = torch.einsum("bpw,bw->bp", self.key(tokens), self.query(named)) / self.query.embedding_dim ** 0.5
        return self.out(torch.einsum("bp,bpw->bw", scores.softmax(-1), self.value(tokens)))


@dataclass
class BindingResult:
    accuracy: float          # held-out, all questions
    with_distractor: float   # held-out, questions whose image holds a wrong answer to pick
    questions: int
    steps_to_95: int | None  # first checked step (every 25) with held-out accuracy >= 95%


def fit_attention_read(train_tokens: torch.Tensor, train_q: torch.Tensor, test_tokens: torch.Tensor,
                       test_q: torch.Tensor, n_named: int, n_answers: int, steps: int = 500, batch: int = 128,
                       lr: float = 3e-3, seed: int = 0) -> BindingResult:
    """Train an AttentionRead on (tokens, questions) and score it on the held-out pair."""
    torch.manual_seed(seed)
    model = AttentionRead(n_named, n_answers, train_tokens.shape[-1])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)

    def accuracy(rows: torch.Tensor) -> float:
        if len(rows) == 0:
            return float("nan")
        with torch.no_grad():
            return (model(test_tokens[rows[:, 0]], rows[:, 1]).argmax(-1) == rows[:, 2]).float().mean().item()

    reached = None
    for step in range(1, steps + 1):
        rows = train_q[torch.randint(len(train_q), (batch,), generator=generator)]
        loss = nn.functional.cross_entropy(model(train_tokens[rows[:, 0]], rows[:, 1]), rows[:, 2])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if reached is None and step % 25 == 0 and accuracy(test_q) >= 0.95:
            reached = step
    return BindingResult(accuracy(test_q), accuracy(test_q[test_q[:, 3] == 1]), len(test_q), reached)


def binding_probe(vision_tower, image_processor, train_records: Sequence[ImageRecord], train_dir,
                  test_records: Sequence[ImageRecord], test_dir, steps: int = 500) -> dict[str, BindingResult]:
    """Both directions of DIRECTIONS on world images (records of the shapes world)."""
    from llava_mini.evaluate.core import scene_objects
    from llava_mini.world.shapes import COLORS, SHAPES

    values = {"shape": list(SHAPES), "color": list(COLORS)}
    train_tokens = patch_tokens(vision_tower, image_processor, train_records, train_dir)
    test_tokens = patch_tokens(vision_tower, image_processor, test_records, test_dir)
    train_objects = [scene_objects(r) for r in train_records]
    test_objects = [scene_objects(r) for r in test_records]
    results = {}
    for name, (named, answered) in DIRECTIONS.items():
        args = (named, answered, values[named], values[answered])
        results[name] = fit_attention_read(train_tokens, binding_questions(train_objects, *args),
                                           test_tokens, binding_questions(test_objects, *args),
                                           len(values[named]), len(values[answered]), steps=steps)
    return results
