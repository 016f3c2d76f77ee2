"""Can the frozen patch tokens answer a *binding* question with one attention read?

    python scripts/binding_probe.py [--train-images 3000] [--test-images 500] [--steps 500]

A linear probe (data/backbones/report.json) shows that every object patch carries its object's shape
and colour. Answering "what colour is the star?" needs more: find the star's patches, then read their
colour. This script trains the smallest model that can do that on top of the frozen vision tower's
layer -2 patch tokens (the ones the LM reads): a learned query per asked attribute value, one softmax
attention over the 64 patches, a linear read-out. Both directions are probed:

    colour-by-shape   query = a shape ("star"),  answer = its colour   (only shapes that occur once)
    shape-by-colour   query = a colour ("red"),  answer = its shape    (only colours that occur once)

Held-out accuracy near 100% means the information the question needs is in the patch tokens and one
attention hop can fetch it; what the trained LLaVA model then gets wrong is the LM not learning that
hop, not the vision tower. Prints accuracies (all images, and images where a wrong object is there to
pick) and the step at which each first passes 95%.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]


def patch_tokens(root: Path, split: str, n: int, processor, tower) -> tuple[torch.Tensor, list]:
    from llava_mini.coco import read_split
    from llava_mini.conversation import image_to_pixel_values, load_image

    records = read_split(root, split).records[:n]
    pixels = torch.stack([image_to_pixel_values(load_image(root / "images" / split / r.file_name), processor)
                          for r in records])
    with torch.no_grad():
        tokens = torch.cat([tower(pixel_values=pixels[i:i + 256], output_hidden_states=True).hidden_states[-2][:, 1:]
                            for i in range(0, len(pixels), 256)])
    return tokens, records  # (n, 64, D)


def questions(records, key: str, value: str, keys: list[str], values: list[str]):
    """(image index, query index, answer index, distractor present) for every `key` that occurs once."""
    from llava_mini.evaluate import scene_objects

    rows = []
    for i, record in enumerate(records):
        objects = scene_objects(record)
        for k in {getattr(o, key) for o in objects}:
            matches = [getattr(o, value) for o in objects if getattr(o, key) == k]
            if len(matches) == 1:
                distractor = len({getattr(o, value) for o in objects}) > 1
                rows.append((i, keys.index(k), values.index(matches[0]), distractor))
    return torch.tensor(rows)


class AttentionRead(nn.Module):
    """query(key value) . W_k patches -> softmax over patches -> W_v patches -> logits over answers."""

    def __init__(self, n_queries: int, n_answers: int, dim: int, width: int = 64):
        super().__init__()
        self.query = nn.Embedding(n_queries, width)
        self.key, self.value = nn.Linear(dim, width), nn.Linear(dim, width)
        self.out = nn.Linear(width, n_answers)

    def forward(self, tokens: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        scores = torch.einsum("bpd,bd->bp", self.key(tokens), self.query(query)) / self.query.embedding_dim ** 0.5
        return self.out(torch.einsum("bp,bpd->bd", scores.softmax(-1), self.value(tokens)))


def probe(train, test, n_queries, n_answers, steps: int, seed: int = 0) -> dict:
    (train_tokens, train_q), (test_tokens, test_q) = train, test
    torch.manual_seed(seed)
    model = AttentionRead(n_queries, n_answers, train_tokens.shape[-1])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    reached = None

    def accuracy(rows):
        with torch.no_grad():
            right = model(test_tokens[rows[:, 0]], rows[:, 1]).argmax(-1) == rows[:, 2]
        return right.float().mean().item()

    for step in range(1, steps + 1):
        batch = train_q[torch.randint(len(train_q), (128,))]
        loss = nn.functional.cross_entropy(model(train_tokens[batch[:, 0]], batch[:, 1]), batch[:, 2])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if reached is None and step % 25 == 0 and accuracy(test_q) >= 0.95:
            reached = step
    return {"accuracy": accuracy(test_q), "with_distractor": accuracy(test_q[test_q[:, 3] == 1]),
            "questions": len(test_q), "steps_to_95": reached}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-images", type=int, default=3000)
    parser.add_argument("--test-images", type=int, default=500)
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args()

    from llava_mini.model import load_vision_tower
    from llava_mini.presets import get_preset, load_processors
    from llava_mini.world import COLORS, SHAPES, course_world

    spec = get_preset("tiny")
    _, processor = load_processors(spec)
    tower = load_vision_tower(spec.vision).eval()
    root = course_world(seed=0)
    start = time.time()
    train_tokens, train_records = patch_tokens(root, "train", args.train_images, processor, tower)
    test_tokens, test_records = patch_tokens(root, "test", args.test_images, processor, tower)
    print(f"patch tokens of {args.train_images} + {args.test_images} images: {time.time() - start:.0f} s")
    shapes, colours = list(SHAPES), list(COLORS)
    for name, key, value, keys, values in (("colour-by-shape", "shape", "color", shapes, colours),
                                           ("shape-by-colour", "color", "shape", colours, shapes)):
        start = time.time()
        result = probe((train_tokens, questions(train_records, key, value, keys, values)),
                       (test_tokens, questions(test_records, key, value, keys, values)),
                       len(keys), len(values), args.steps)
        print(f"{name}: held-out {result['accuracy']:.1%} ({result['questions']} questions), "
              f"{result['with_distractor']:.1%} where another {value} is in the image; "
              f">= 95% after {result['steps_to_95']} steps of batch 128 ({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
