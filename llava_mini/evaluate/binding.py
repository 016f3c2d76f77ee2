"""Binding: can one attention read answer "what colour is the star?" from frozen patch tokens? Each object patch
carries its shape and colour (data/backbones/report.json's linear probe); the question needs more: *find* the
star's patches, then *read* their colour. The smallest model that does it, in both directions of DIRECTIONS:

    tokens (B, P, D) --key--> (B, P, W) . query(named value) (B, W) --softmax over P--> weights (B, P)
    weights . value(tokens) (B, W) --out--> logits over the answers (B, A)

Held-out accuracy near 100% says one attention hop fetches the answer, so what a trained LLaVA model gets wrong
there is its LM not (yet) learning that hop. ``with_distractor`` counts only images with a wrong answer to pick
(another colour), the cases a bag-of-attributes reading gets wrong.

A relation ("is the red circle left or right of the blue square?") needs two such hops and a comparison:
``RelationRead`` finds both named objects with the same attention, then a small MLP compares what it read,
told the axis asked about. Near 100% held out says the patch tokens carry where each object is, so a model that
answers relations at chance has not learnt to read position out of them.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from llava_mini.evaluate.questions import scene_objects
from llava_mini.evaluate.run import prepare_images
from llava_mini.model import load_image
from llava_mini.world import COLORS, SHAPES, ImageRecord, relation

DIRECTIONS = {"colour-by-shape": ("shape", "color"), "shape-by-colour": ("color", "shape")}  # (named, answered)


@torch.no_grad()
def patch_tokens(vision_tower, image_processor, records: Sequence[ImageRecord], image_dir: str | Path,
                 layer: int = -2) -> torch.Tensor:
    """(N, P, D): the patch tokens of ``layer`` (CLS dropped) that LlavaMini's projector reads."""
    from llava_mini.backbones import patch_features  # a sibling layer: imported only when probing

    images = [load_image(Path(image_dir) / r.file_name, record_id=r.image_id) for r in records]
    return patch_features(vision_tower, prepare_images(images, image_processor), layer=layer)


def binding_questions(objects_per_image: Sequence[Sequence], named: str, answered: str,
                      named_values: Sequence[str], answer_values: Sequence[str]) -> torch.Tensor:
    """(Q, 4) rows (image, named value, answer, distractor 0/1), one per value of ``named`` that occurs
    exactly once in an image; ``objects_per_image``: objects with .shape and .color."""
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

    def read(self, tokens: torch.Tensor, named: torch.Tensor) -> torch.Tensor:
        """tokens (B, P, D), named (B,) -> what the attention fetched of the named object (B, width)."""
        scores = torch.einsum("bpw,bw->bp", self.key(tokens), self.query(named)) / self.query.embedding_dim ** 0.5
        return torch.einsum("bp,bpw->bw", scores.softmax(-1), self.value(tokens))

    def forward(self, tokens: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        """tokens (B, P, D), question (B, 1): the named value -> logits (B, n_answers)."""
        return self.out(self.read(tokens, question[:, 0]))


class RelationRead(AttentionRead):
    """Two reads with one attention (each named object found alike), then an MLP on both reads and the axis."""

    def __init__(self, n_named: int, dim: int, width: int = 64):
        super().__init__(n_named, 2, dim, width)
        self.axis = nn.Embedding(2, width)
        self.out = nn.Sequential(nn.Linear(3 * width, width), nn.GELU(), nn.Linear(width, 2))

    def forward(self, tokens: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        """tokens (B, P, D), question (B, 3): object a, object b, axis (0: left/right, 1: above/below) ->
        logits (B, 2): a is left of / above b, a is right of / below b."""
        reads = [self.read(tokens, question[:, 0]), self.read(tokens, question[:, 1]), self.axis(question[:, 2])]
        return self.out(torch.cat(reads, -1))


@dataclass
class BindingResult:
    accuracy: float          # held-out, all questions
    with_distractor: float   # held-out, questions whose image holds a wrong answer to pick
    questions: int
    steps_to_95: int | None  # first checked step (every 25) with held-out accuracy >= 95%


def relation_questions(objects_per_image: Sequence[Sequence], sizes: Sequence[tuple[int, int]],
                       categories: Sequence[str]) -> torch.Tensor:
    """(Q, 6) rows (image, object a, object b, axis, answer, distractor), one per ordered pair of objects whose
    categories ('red circle') occur once in their image and whose relation is clear (world.relation on box
    centres in fractions of the image ``sizes`` (width, height)). axis 0 asks left/right, 1 above/below; answer
    0 says a is left of / above b. distractor: the image holds a third object, one a read could fetch instead."""
    rows = []
    for i, (objects, (width, height)) in enumerate(zip(objects_per_image, sizes)):
        names = [o.category for o in objects]
        centres = [((x + w / 2) / width, (y + h / 2) / height) for x, y, w, h in (o.bbox for o in objects)]
        for a, b in ((a, b) for a in range(len(objects)) for b in range(len(objects)) if a != b):
            rel = relation(centres[a], centres[b])
            if rel is None or names.count(names[a]) > 1 or names.count(names[b]) > 1:
                continue
            rows.append((i, categories.index(names[a]), categories.index(names[b]), int(rel in ("above", "below")),
                         int(rel in ("to the right of", "below")), int(len(objects) > 2)))
    return torch.tensor(rows, dtype=torch.long).view(-1, 6)


def fit_attention_read(train_tokens: torch.Tensor, train_q: torch.Tensor, test_tokens: torch.Tensor,
                       test_q: torch.Tensor, n_named: int, n_answers: int, steps: int = 500, batch: int = 128,
                       lr: float = 3e-3, seed: int = 0, model: nn.Module | None = None) -> BindingResult:
    """Train an AttentionRead (or ``model``, called as model(tokens, question columns)) on (tokens, questions),
    rows (image, question..., answer, distractor), and score it on the held-out pair."""
    torch.manual_seed(seed)
    model = model or AttentionRead(n_named, n_answers, train_tokens.shape[-1])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)

    def accuracy(rows: torch.Tensor) -> float:
        if len(rows) == 0:
            return float("nan")
        with torch.no_grad():
            return (model(test_tokens[rows[:, 0]], rows[:, 1:-2]).argmax(-1) == rows[:, -2]).float().mean().item()

    reached = None
    for step in range(1, steps + 1):
        rows = train_q[torch.randint(len(train_q), (batch,), generator=generator)]
        loss = nn.functional.cross_entropy(model(train_tokens[rows[:, 0]], rows[:, 1:-2]), rows[:, -2])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if reached is None and step % 25 == 0 and accuracy(test_q) >= 0.95:
            reached = step
    return BindingResult(accuracy(test_q), accuracy(test_q[test_q[:, -1] == 1]), len(test_q), reached)


def binding_probe(vision_tower, image_processor, train_records: Sequence[ImageRecord], train_dir,
                  test_records: Sequence[ImageRecord], test_dir, steps: int = 500) -> dict[str, BindingResult]:
    """Both directions of DIRECTIONS, and "relation-by-names" (RelationRead), on world images (records of the
    shapes world)."""
    values = {"shape": list(SHAPES), "color": list(COLORS)}
    train_tokens = patch_tokens(vision_tower, image_processor, train_records, train_dir)
    test_tokens = patch_tokens(vision_tower, image_processor, test_records, test_dir)
    results = {}
    for name, (named, answered) in DIRECTIONS.items():
        vocab = (named, answered, values[named], values[answered])
        train_q, test_q = (binding_questions([scene_objects(r) for r in records], *vocab)
                           for records in (train_records, test_records))
        results[name] = fit_attention_read(train_tokens, train_q, test_tokens, test_q, len(values[named]),
                                           len(values[answered]), steps=steps)
    categories = [f"{c} {s}" for c in COLORS for s in SHAPES]
    train_q, test_q = (relation_questions([scene_objects(r) for r in records], [(r.width, r.height) for r in records],
                                          categories) for records in (train_records, test_records))
    results["relation-by-names"] = fit_attention_read(
        train_tokens, train_q, test_tokens, test_q, len(categories), 2, steps=steps,
        model=RelationRead(len(categories), train_tokens.shape[-1]))
    return results
