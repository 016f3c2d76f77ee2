"""The binding probe on synthetic patch tokens whose answer is known."""

from types import SimpleNamespace

import pytest
import torch

from llava_mini.evaluate import RelationRead, binding_questions, fit_attention_read, relation_questions

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


CATEGORIES = [f"{c} {s}" for c in COLOURS for s in SHAPES]


def placed_scenes(n: int, seed: int):
    """Scenes of 2-3 distinct objects, each with a box (x, y, w, h) in a 64-pixel image."""
    rng = torch.Generator().manual_seed(seed)
    out = []
    for objects in scenes(n, seed):
        for o in objects:
            x, y = (int(v) for v in torch.randint(0, 56, (2,), generator=rng))
            o.bbox, o.category = (x, y, 8, 8), f"{o.color} {o.shape}"
        out.append(objects)
    return out


def placed_tokens(objects_per_image, placed: bool = True, seed: int = 0) -> torch.Tensor:
    """tokens() plus each object's centre (x, y in 0..1) on its patch; placed=False leaves the centre out."""
    base = tokens(objects_per_image, seed=seed)
    where = torch.zeros(*base.shape[:2], 2)
    for i, objects in enumerate(objects_per_image):
        for p, o in enumerate(objects):
            x, y, w, h = o.bbox
            where[i, p] = torch.tensor([(x + w / 2) / 64, (y + h / 2) / 64]) * 3 if placed else 0
    return torch.cat([base, where], -1)


def test_relation_questions_ask_clear_pairs_of_unique_objects():
    a = SimpleNamespace(shape="star", color="red", bbox=(0, 0, 8, 8), category="red star")
    b = SimpleNamespace(shape="circle", color="blue", bbox=(40, 2, 8, 8), category="blue circle")
    near = SimpleNamespace(shape="square", color="green", bbox=(2, 2, 8, 8), category="green square")  # no clear relation to a
    rows = relation_questions([[a, b, near]], [(64, 64)], CATEGORIES).tolist()
    red_star, blue_circle = CATEGORIES.index("red star"), CATEGORIES.index("blue circle")
    assert [red_star, blue_circle, 0, 0, 1] in [r[1:] for r in rows]  # red star left of the blue circle, 3 objects
    assert [blue_circle, red_star, 0, 1, 1] in [r[1:] for r in rows]
    assert not any({r[1], r[2]} == {red_star, CATEGORIES.index("green square")} for r in rows)
    twin = SimpleNamespace(shape="star", color="red", bbox=(0, 50, 8, 8), category="red star")
    assert relation_questions([[a, twin]], [(64, 64)], CATEGORIES).shape == (0, 6)  # 'the red star' names neither


def test_relation_read_needs_the_position_in_the_tokens():
    train, test = placed_scenes(600, 0), placed_scenes(200, 1)
    q_train, q_test = (relation_questions(s, [(64, 64)] * len(s), CATEGORIES) for s in (train, test))
    n, dim = len(CATEGORIES), len(SHAPES) + len(COLOURS) + 2
    placed = fit_attention_read(placed_tokens(train), q_train, placed_tokens(test, seed=1), q_test, n, 2, steps=300,
                                model=RelationRead(n, dim))
    assert placed.accuracy > 0.9
    unplaced = fit_attention_read(placed_tokens(train, placed=False), q_train, placed_tokens(test, False, seed=1),
                                  q_test, n, 2, steps=300, model=RelationRead(n, dim))
    assert unplaced.accuracy < 0.65  # the objects are found, but nothing says where they are
