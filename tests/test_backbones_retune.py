"""scripts/retune_text_tower.py (LiT: a fresh text tower against a locked vision tower) at toy size."""

import json

import torch

from llava_mini import backbones
from llava_mini.files import write_json
from llava_mini.paths import REPO_ROOT
from llava_mini.world import WorldConfig
import stand_ins

SCRIPT = REPO_ROOT / "scripts" / "retune_text_tower.py"


def load_script():
    return stand_ins.load_script("retune_text_tower")


def test_retune_keeps_the_vision_tower_and_replaces_the_text_side(tmp_path):
    config, recipe = WorldConfig(), backbones.BackboneRecipe.toy()
    images, _, captions, scenes = backbones.render_pool(16, 0, config, recipe.patch_size, workers=1)
    tokenizer = backbones.train_tokenizer(backbones.world_text_corpus(scenes, captions, config), recipe.vocab_size)
    clip = backbones.make_clip(recipe, config, tokenizer)
    for part in (clip, backbones.image_processor_for(images, config.image_size), tokenizer):
        part.save_pretrained(tmp_path / "vision")
    write_json(tmp_path / "report.json", {"patch_probe": {"shape": 1.0}})

    report = load_script().retune_text_tower(tmp_path / "vision", n_scenes=520, minutes=0.001, batch=16,
                                             workers=1, log=lambda *_: None)
    from transformers import AutoTokenizer, CLIPModel

    retuned = CLIPModel.from_pretrained(tmp_path / "vision")
    for name, tensor in clip.vision_model.state_dict().items():  # the image side stayed locked
        assert torch.equal(tensor, retuned.vision_model.state_dict()[name]), name
    # a fresh tokenizer (2048 tokens, not the toy's) with a text tower sized for it
    fresh = AutoTokenizer.from_pretrained(tmp_path / "vision")
    assert len(fresh) == retuned.config.text_config.vocab_size != len(tokenizer)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved == report and saved["patch_probe"] == {"shape": 1.0}  # merged, not replaced
    assert saved["text_tower_retuned"]["steps"] == 60 and saved["retrieval_candidates"] == 500
    assert 0.0 <= saved["retrieval_top1"]["image_to_text"] <= 1.0

