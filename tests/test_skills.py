"""The skills probe's parts: its questions, the forced-choice score and the position-code arm."""

import math

import pytest
import torch
from PIL import Image

from stand_ins import IMAGE_SIZE, bpe_tokenizer, one_thread, tiny_llama, tiny_llava, tiny_processor, tiny_vision  # noqa: F401

from llava_mini.evaluate import scene_objects
from llava_mini.evaluate.skills import (
    SIDE_MARGIN, PositionCode, ProbeItem, answer_log_likelihood, as_records, forced_choice, relation_items,
    shape_items, side_items,
)
from llava_mini.world import generate_world, read_split


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    generate_world(root, {"train": 40}, seed=3)
    return read_split(root, "train").records


def test_side_items_name_the_side_of_the_object_and_skip_the_midline(world):
    items = side_items(world)
    assert items
    by_file = {r.file_name: r for r in world}
    for item in items:
        record = by_file[item.file_name]
        name = item.question.removeprefix("Is the ").removesuffix(" on the left or on the right of the picture?")
        (obj,) = [o for o in scene_objects(record) if name.endswith(o.category)
                  and (name == o.category or name == f"{o.size} {o.category}")]
        x = obj.center[0] / record.width
        assert abs(x - 0.5) >= SIDE_MARGIN
        assert item.right == f"The {name} is on the {'left' if x < 0.5 else 'right'}."
        assert item.wrong == f"The {name} is on the {'right' if x < 0.5 else 'left'}."
    one, several = side_items(world, "one"), side_items(world, "several")
    assert {len(by_file[i.file_name].objects) for i in one} == {1}
    assert min(len(by_file[i.file_name].objects) for i in several) >= 2 and len(one) + len(several) == len(items)
    with pytest.raises(ValueError, match="objects must be"):
        side_items(world, "two")


def test_relation_and_shape_items_differ_from_their_wrong_answer_in_one_term(world):
    relations, shapes = relation_items(world), shape_items(world)
    assert relations and shapes
    for item in relations:
        pairs = {("left", "right"), ("right", "left"), ("above", "below"), ("below", "above")}
        changed = [(a, b) for a, b in zip(item.right.split(), item.wrong.split()) if a != b]
        assert len(changed) == 1 and changed[0] in pairs
    assert all(i.right != i.wrong and i.right.split()[:4] == i.wrong.split()[:4] for i in shapes)
    records = as_records(shapes[:3], "s")
    assert [r["conversations"][1]["value"] for r in records] == [i.right for i in shapes[:3]]
    assert all("<image>" in r["conversations"][0]["value"] and r["image"] == i.file_name for r, i in zip(records, shapes))


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for k, colour in enumerate(("red", "blue")):
        Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), colour).save(folder / f"{k}.png")
    tokenizer = bpe_tokenizer(["USER: What colour is the circle? ASSISTANT: The circle is red. The circle is blue."])
    model = tiny_llava(tiny_vision(), tiny_llama(len(tokenizer)), tokenizer, projector_std=0.3, seed=2).eval()
    return model, tokenizer, tiny_processor(), folder


def test_the_log_likelihood_is_the_answer_tokens_log_probabilities_summed(stand_in):
    from llava_mini.evaluate.run import prepare_images
    from llava_mini.model.conversation import build_prompt

    model, tokenizer, processor, folder = stand_in
    pixels = prepare_images([Image.open(folder / "0.png").convert("RGB")], processor)
    question, answer = "What colour is the circle?", "The circle is red."
    prompt = build_prompt(tokenizer, question, model.num_image_tokens)
    answer_ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    ids = torch.cat([prompt, torch.tensor(answer_ids)])[None]
    with torch.no_grad():
        logits = model(ids, pixels, return_logits=True).logits[0]
    expected = sum(float(logits[len(prompt) - 1 + k].log_softmax(-1)[t]) for k, t in enumerate(answer_ids))
    assert answer_log_likelihood(model, tokenizer, pixels, question, answer) == pytest.approx(expected, abs=1e-4)


def test_forced_choice_counts_the_likelier_answer_and_restores_the_mode(stand_in):
    model, tokenizer, processor, folder = stand_in
    items = [ProbeItem(f"{k}.png", "What colour is the circle?", f"The circle is {a}.", f"The circle is {b}.")
             for k in range(2) for a, b in (("red", "blue"), ("blue", "red"))]
    model.train()
    score = forced_choice(model, tokenizer, processor, items, folder)
    assert model.training
    assert score == pytest.approx(0.5)  # each image is asked both ways round: one of each pair is right
    first = forced_choice(model, tokenizer, processor, items[:1], folder)
    swapped = forced_choice(model, tokenizer, processor, items[1:2], folder)
    assert first + swapped == 1
    assert math.isnan(forced_choice(model, tokenizer, processor, [], folder))  # no items: no score, not 0


def test_the_position_code_is_a_row_plus_a_column_embedding_added_to_the_projector():
    projector = torch.nn.Linear(6, 8)
    coded = PositionCode(projector, grid=3, dim=8, norm=5.0)
    features = torch.randn(2, 9, 6, requires_grad=True)
    out = coded(features)
    code = coded.code()
    assert torch.allclose(out, projector(features) + code)
    assert code.norm(dim=-1).mean().item() == pytest.approx(5.0, rel=1e-5)
    grid = code.view(3, 3, 8)  # moving one column changes the code alike in every row
    assert torch.allclose(grid[0, 1] - grid[0, 0], grid[2, 1] - grid[2, 0], atol=1e-6)
    out.sum().backward()
    assert coded.rows.grad is not None and coded.cols.grad is not None and projector.weight.grad is not None


def test_column_r2_is_one_where_tokens_say_their_column_and_low_where_they_do_not(world):
    from llava_mini.evaluate.skills import column_r2

    grid, generator = 8, torch.Generator().manual_seed(0)
    noise = torch.randn(len(world), grid * grid, 16, generator=generator)
    placed = noise.clone()
    placed[..., 0] = (torch.arange(grid * grid) % grid).float()  # every patch token carries its own column
    assert column_r2(placed, world) == pytest.approx(1.0, abs=1e-4)
    assert column_r2(noise, world) < 0.5


def test_side_items_by_colour_name_only_objects_whose_colour_is_unique(world):
    for record in world:
        colours = [o.color for o in scene_objects(record)]
        items = side_items([record], by_colour=True)
        named = [i.question.split()[2] for i in items]  # "Is the <colour> object on ..."
        assert all(colours.count(c) == 1 for c in named)
        assert all(i.question.startswith(f"Is the {c} object ") for i, c in zip(items, named))
