"""`python -m llava_mini.backbones`: flags become the recipe, and the retired --retune-text names its script."""

import subprocess
import sys

import pytest

import llava_mini.backbones.build as build_module
from llava_mini import backbones


def test_flags_override_the_recipe(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(build_module, "build_backbones", lambda *args, **kwargs: calls.append((args, kwargs)))
    backbones.main(["--toy", "--out", str(tmp_path), "--lm-steps", "7", "--vision-lr", "0.5", "--parts", "lm"])
    (out, recipe, device, workers), kwargs = calls[0]
    assert out == str(tmp_path) and device is None and workers is None and kwargs == {"parts": ("lm",)}
    toy = backbones.BackboneRecipe.toy()
    assert (recipe.lm_steps, recipe.vision_lr, recipe.vocab_size) == (7, 0.5, toy.vocab_size)


def test_retune_flag_points_at_the_script():
    with pytest.raises(SystemExit, match="python scripts/retune_text_tower.py --retune-text data/backbones/vision"):
        backbones.main(["--retune-text", "data/backbones/vision", "--retune-minutes", "6"])


def test_module_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "llava_mini.backbones", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--vision-minutes" in done.stdout
