"""The explorer of notebooks 04 and 05: one answer and its attention maps on set values (what nbval runs), the
model's attention kernel left as it was, and the ipywidgets controls asking again about a new scene."""

import sys

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from llava_mini.attention import ask_and_show, explorer, new_scene  # noqa: E402
from llava_mini.world import generate_world, read_split  # noqa: E402
from stand_ins import bpe_tokenizer, tiny_llama, tiny_llava, tiny_processor, tiny_vision  # noqa: E402


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    tokenizer = bpe_tokenizer(["USER: What colour is the circle? ASSISTANT: The circle is red."] * 4)
    lm = tiny_llama(len(tokenizer), seed=None, num_hidden_layers=2, attn_implementation="sdpa")
    model = tiny_llava(tiny_vision(seed=0), lm, tokenizer, projector_std=0.5).eval()
    root = tmp_path_factory.mktemp("world")
    generate_world(root, {"test": 3}, seed=0)
    return model, tokenizer, tiny_processor(), read_split(root, "test").records


def test_ask_and_show_answers_reads_attention_and_leaves_the_kernel_as_it_was(parts, capsys):
    model, tokenizer, processor, records = parts
    att = ask_and_show(model, tokenizer, processor, records[0].load_image(), "What colour is the circle?", max_new_tokens=4)
    assert f"A: {att.answer_text}" in capsys.readouterr().out
    assert att.attentions.shape[0] == model.language_model.config.num_hidden_layers
    assert np.allclose(att.grid_map(layer=0).sum().item(), 1.0, atol=1e-5)
    assert model.language_model.config._attn_implementation == "sdpa"  # switched back after reading


def test_new_scene_is_a_fixed_picture_per_seed():
    assert new_scene(3).tobytes() == new_scene(3).tobytes() != new_scene(4).tobytes()
    assert new_scene(3).size == (64, 64)


def test_explorer_runs_once_without_ipywidgets(parts, monkeypatch, capsys):
    model, tokenizer, processor, records = parts
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import fails, as in a plain Python run
    assert explorer(model, tokenizer, processor, records, "Is there a red circle?", index=1) is None
    assert "Q: Is there a red circle?" in capsys.readouterr().out


def test_explorer_controls_ask_again_about_a_new_scene(parts, capsys):
    pytest.importorskip("ipywidgets")
    model, tokenizer, processor, records = parts
    box = explorer(model, tokenizer, processor, records, "What colour is the circle?")
    (pick, seed), (text, button) = box.children[0].children, box.children[1].children
    pick.value, seed.value, text.value = -1, 7, "How many shapes are there?"
    capsys.readouterr()
    button.click()  # in a kernel the answer goes to the Output widget; without one, Output passes it through
    shown = capsys.readouterr().out + "".join(o.get("text", "") for o in box.children[2].outputs)
    assert "Q: How many shapes are there?" in shown and "What colour" not in shown
