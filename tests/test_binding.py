"""The binding probe on synthetic patch tokens whose answer is known."""

from types import SimpleNamespace

import pytest
import torch

from llava_mini.evaluate import binding_questions, fit_attention_read

SHAPES, COLOURS = ["circle", "square", "star"], ["red", "green", "blue", "yellow"]


def scenes(n: int, seed: int):
    rng = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(2, 4, (1,), generator=rng))
        shapes = torch.randperm(len(SHAPES), generator=rng)[:k]
        colours = torch.randint(len(COLOURS), (k,), generator=rng)
        out.append([SimpleNamespace(shape=SHAPES[s], color=COLOURS[c]) for s, c in zip(shapes, colours)])
    return out


def tokens(objects_per_image, patches: int = 8, bound: bool = True, seed: int = 0) -> torch.Tensor:
    """One patch per object, one-hot shape and colour (+ noise); bound=False shuffles the colours over
    the object patches at random, so shape and colour are both present but no longer tied together."""
    rng = torch.Generator().manual_seed(seed)
    out = torch.randn(len(objects_per_image), patches, len(SHAPES) + len(COLOURS), generator=rng) * 0.1
    for i, objects in enumerate(objects_per_image):
        colours = [o.color for o in objects]
        if not bound:
            colours = [colours[j] for j in torch.randperm(len(colours), generator=rng)]
        for p, (o, colour) in enumerate(zip(objects, colours)):
            out[i, p, SHAPES.index(o.shape)] += 3
            out[i, p, len(SHAPES) + COLOURS.index(colour)] += 3
    return out


def test_questions_are_asked_only_when_the_named_value_is_unique():
    objects = [[SimpleNamespace(shape="star", color="red"), SimpleNamespace(shape="star", color="blue"),
                SimpleNamespace(shape="circle", color="red")]]
    rows = binding_questions(objects, "shape", "color", SHAPES, COLOURS).tolist()
    assert rows == [[0, SHAPES.index("circle"), COLOURS.index("red"), 1]]  # the two stars settle nothing
    assert binding_questions([[]], "shape", "color", SHAPES, COLOURS).shape == (0, 4)
    with pytest.raises(ValueError, match="image 0: object 'hexagon'"):
        binding_questions([[SimpleNamespace(shape="hexagon", color="red")]], "shape", "color", SHAPES, COLOURS)


def test_one_attention_read_learns_bound_attributes_and_fails_on_unbound_ones():
    train, test = scenes(400, 0), scenes(200, 1)
    args = ("shape", "color", SHAPES, COLOURS)
    q_train, q_test = binding_questions(train, *args), binding_questions(test, *args)
    bound = fit_attention_read(tokens(train), q_train, tokens(test, seed=1), q_test, len(SHAPES), len(COLOURS),
                               steps=200)
    assert bound.accuracy > 0.95 and bound.with_distractor > 0.95 and bound.steps_to_95 is not None
    unbound = fit_attention_read(tokens(train, bound=False), q_train, tokens(test, bound=False, seed=1), q_test,
                                 len(SHAPES), len(COLOURS), steps=200)
    assert unbound.with_distractor < 0.6  # the colours are there, the binding is not: no better than a guess
