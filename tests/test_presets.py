"""Tests for llava_mini.presets: the recipe numbers, the memory estimate, and the hub presets' code path
run against local stand-in folders (a tiny two-tower CLIP, a tiny Qwen2 with a ChatML template, a tiny
Llama whose tokenizer has no chat template and no pad token, like Vicuna) written with save_pretrained."""

import json

import numpy as np
import pytest
import torch
from transformers import (
    AutoConfig,
    CLIPConfig,
    CLIPModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from llava_mini import config as presets
from llava_mini import course
from llava_mini.model import LlavaCollator, LlavaInstructDataset, encode_conversation
from llava_mini.paths import DATA_DIR
from llava_mini.config import VICUNA_TEMPLATE, get_preset
from llava_mini.course import load_base, load_processors
from llava_mini.train import add_lora, train
from stand_ins import IMAGE_SIZE, PATCH, bpe_tokenizer, one_thread, tiny_processor, write_records  # noqa: F401 (one_thread: a fixture)

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def hub_tokenizer(specials, **tokens) -> PreTrainedTokenizerFast:
    return bpe_tokenizer(["What colour is the circle? The circle is red. And the shape? It is a square."] * 8,
                         specials, vocab_size=280, chat_template=None, tokens=tokens)


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    """Folders shaped like openai/clip-vit-*, Qwen/Qwen2.5-*-Instruct and lmsys/vicuna-7b-v1.5."""
    root = tmp_path_factory.mktemp("hub")
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(
        vision_config=dict(image_size=IMAGE_SIZE, patch_size=PATCH, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4),
        text_config=dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=32),
        projection_dim=16))
    clip.save_pretrained(root / "clip")
    tiny_processor().save_pretrained(root / "clip")

    qwen_tok = hub_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                             eos_token="<|im_end|>", pad_token="<|endoftext|>")
    qwen_tok.chat_template = CHATML
    qwen_tok.save_pretrained(root / "qwen")
    # bitsandbytes' CPU 4-bit kernels need layers at least 64 wide. The vocabulary has no <image>.
    Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(qwen_tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        eos_token_id=qwen_tok.eos_token_id, pad_token_id=qwen_tok.pad_token_id)).save_pretrained(root / "qwen")

    vicuna_tok = hub_tokenizer(["<unk>", "<s>", "</s>"], bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    vicuna_tok.save_pretrained(root / "vicuna")  # no chat template, no pad token: like the real one
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(vicuna_tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=256, tie_word_embeddings=False,
        bos_token_id=vicuna_tok.bos_token_id, eos_token_id=vicuna_tok.eos_token_id)).save_pretrained(root / "vicuna")
    records, images = write_records(root / "data", n=16)
    return {"root": root, "clip": root / "clip", "qwen": root / "qwen", "vicuna": root / "vicuna",
            "records": records, "images": images}


# ----------------------------------------------------------------------------- the recipe


def test_presets_hold_the_llava_recipe():
    paper = get_preset("paper")
    assert (paper.model.vision, paper.model.lm) == ("openai/clip-vit-large-patch14-336", "lmsys/vicuna-7b-v1.5")
    stage1, lora, qlora = (paper.train_config(s) for s in ("stage1", "lora", "qlora"))
    assert (stage1.stage, stage1.lr, stage1.batch_size) == (1, 1e-3, 256)
    assert (lora.stage, lora.lora_r, lora.lora_alpha, lora.lr, lora.projector_lr) == (2, 128, 256, 2e-4, 2e-5)
    assert lora.lora_targets == "all-linear" and not lora.qlora and qlora.qlora
    for cfg in (stage1, lora, qlora):
        assert cfg.warmup_ratio == 0.03 and cfg.weight_decay == 0.0
    colab = get_preset("colab")
    assert colab.model.vision == "openai/clip-vit-base-patch16" and colab.model.lm == "Qwen/Qwen2.5-0.5B-Instruct"
    assert colab.train_config("qlora").qlora
    tiny = get_preset("tiny")
    assert (DATA_DIR / "backbones" / "vision" / "config.json").exists() and tiny.data.source == "course"
    assert tiny.train_config("lora", max_steps=7).max_steps == 7
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")
    with pytest.raises(ValueError, match="no such field"):
        tiny.train_config("lora", max_stpes=7)


def test_a_run_config_is_one_tree_and_one_key():
    tiny = get_preset("tiny")
    run = tiny.run_config("lora", max_steps=7)
    tree = run.to_dict()
    assert set(tree) >= {"world", "data", "model", "train", "evaluation"} and tree["train"]["max_steps"] == 7
    assert json.loads(json.dumps(tree)) == tree and "max_length=224" in str(run)
    key = run.key("towers", "records")
    assert key == tiny.run_config("lora", max_steps=7, progress=False, output_dir="elsewhere").key("towers", "records")
    changed = [tiny.run_config("lora", max_steps=8), get_preset(tiny, data={"max_length": 200}).run_config("lora"),
               get_preset(tiny, world={"seed": 1}).run_config("lora"), get_preset(tiny, model={"system_prompt": "Hi"}).run_config("lora")]
    assert all(r.key("towers", "records") != key for r in changed)
    assert run.key("other towers", "records") != key and run.key("towers", "other records") != key
    # The evaluation settings are recorded but do not change the weights, so they are not in the key.
    assert get_preset(tiny, evaluation={"images": 5}).run_config("lora", max_steps=7).key("towers", "records") == key


# ----------------------------------------------------------------------------- hub presets, offline


def test_colab_preset_path_runs_qlora_on_local_standins(standins, tmp_path):
    import bitsandbytes as bnb

    preset = get_preset("colab", model={"vision": str(standins["clip"]), "lm": str(standins["qwen"])})
    tokenizer, processor = load_processors(preset)
    assert tokenizer.chat_template == CHATML  # the model's own template is kept
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    lm_vocab = AutoConfig.from_pretrained(standins["qwen"]).vocab_size
    assert image_id >= lm_vocab  # added past the LM's vocabulary; the model never embeds it
    model = load_base(preset, tokenizer, qlora=True, precision="fp32")
    cfg = preset.train_config("qlora", max_steps=2, batch_size=4, micro_batch_size=2, output_dir=str(tmp_path / "run"),
                              progress=False, gradient_checkpointing=True, precision="fp32")
    add_lora(model, cfg)
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.language_model.modules()) == 14
    assert model.projector.linear_1.weight.dtype == torch.float32
    dataset = LlavaInstructDataset(standins["records"], standins["images"], tokenizer, processor, model.num_image_tokens,
                                   max_length=preset.data.max_length, system_prompt=preset.model.system_prompt)
    result = train(model, dataset, LlavaCollator(tokenizer.pad_token_id), cfg)
    assert len(result.history) == 2 and all(np.isfinite(r["loss"]) for r in result.history)
    run = json.loads((result.checkpoint_dir / "run.json").read_text())
    assert run["lm"] == str(standins["qwen"]) and run["qlora"]


def test_paper_preset_path_gives_vicuna_a_template_and_a_pad_token(standins):
    preset = get_preset("paper", model={"vision": str(standins["clip"]), "lm": str(standins["vicuna"])})
    tokenizer, processor = load_processors(preset)
    assert tokenizer.chat_template == VICUNA_TEMPLATE
    assert tokenizer.pad_token == "<unk>"  # LLaVA pads Vicuna with unk
    record = json.loads(standins["records"].read_text())[1]  # two QA pairs
    encoded = encode_conversation(record, tokenizer, 16, system_prompt=preset.model.system_prompt)
    answers = tokenizer.decode([t for t in encoded.labels if t != -100])
    assert [a.strip() for a in answers.split("</s>")] == ["The square is blue.", "It is a square.", ""]
    model = load_base(preset, tokenizer, precision="fp32")
    assert model.num_image_tokens == 16 and model.vision_tower.__class__.__name__ == "CLIPVisionModel"
    dataset = LlavaInstructDataset(standins["records"], standins["images"], tokenizer, processor, 16,
                                   system_prompt=preset.model.system_prompt)
    batch = LlavaCollator(tokenizer.pad_token_id)([dataset[i] for i in range(2)])
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


def test_course_data_follows_the_presets_world_size(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAVA_MINI_WORK", str(tmp_path))
    sizes = {"train": 9, "val": 2, "test": 3}
    data = course.training_data(get_preset("tiny", world={"sizes": sizes}))
    assert len(list(data["images"].glob("*.png"))) == 9
    assert len({r["image"] for r in json.loads(data["instruct"].read_text())}) == 9


def test_hub_preset_data_must_be_in_the_work_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAVA_MINI_WORK", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="coco_llava_instruct_train.json"):
        course.training_data("colab")
    preset = get_preset("colab")
    for relative in (preset.data.stage1_file, preset.data.instruct_file):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("[]")
    (tmp_path / preset.data.image_folder).mkdir(parents=True)
    assert course.training_data("colab")["images"] == tmp_path / "coco" / "val2017"  # what prepare fetches


def standin_preset(standins):
    return get_preset("colab", name="standin",
                      model={"vision": str(standins["clip"]), "lm": str(standins["qwen"])},
                      data={"stage1_file": str(standins["records"]), "instruct_file": str(standins["records"]),
                            "image_folder": str(standins["images"])},
                      stages={k: {**v, "precision": "fp32", "gradient_checkpointing": False, "batch_size": 4,
                                  "micro_batch_size": 2, "max_steps": 2} for k, v in get_preset("colab").stages.items()})


def test_cli_trains_a_preset(standins, tmp_path, monkeypatch, capsys):
    from llava_mini.train.__main__ import main

    monkeypatch.setenv("LLAVA_MINI_WORK", str(tmp_path / "work"))
    monkeypatch.setitem(presets.PRESETS, "standin", standin_preset(standins))
    main(["--preset", "standin", "--stage", "1", "--progress", "false"])
    printed = capsys.readouterr().out
    assert "estimated peak training memory" not in printed and "run config: preset 'standin', stage1" in printed
    assert "final loss" in printed
    (stage1,) = (tmp_path / "work" / "checkpoints").glob("standin-stage1-*")
    assert (stage1 / "final" / "projector.safetensors").exists() and (stage1 / "loss.png").exists()
    main(["--preset", "standin", "--stage", "2", "--qlora", "--projector-from", str(stage1 / "final"),
          "--max-steps", "1", "--progress", "false"])
    (stage2,) = (tmp_path / "work" / "checkpoints").glob("standin-qlora-*")
    assert (stage2 / "final" / "adapter" / "adapter_config.json").exists()
    run = json.loads((stage2 / "final" / "run.json").read_text())
    assert run["run_config"]["train"]["max_steps"] == 1 and run["run_config"]["init_from"].startswith("projector ")


def test_the_cli_and_the_notebooks_find_each_others_models(standins, tmp_path, monkeypatch, capsys):
    """One naming rule: a model the command line trained is the one course_model loads, and the reverse."""
    from llava_mini.train.__main__ import main

    monkeypatch.setenv("LLAVA_MINI_WORK", str(tmp_path / "work"))
    monkeypatch.setitem(presets.PRESETS, "standin", standin_preset(standins))
    main(["--preset", "standin", "--stage", "1", "--progress", "false"])
    (folder,) = (tmp_path / "work" / "checkpoints").glob("standin-stage1-*")
    trained = (folder / "final" / "projector.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    course.course_model("stage1", "standin", progress=False)  # the notebook's call
    assert "run config" not in capsys.readouterr().out  # nothing was trained again
    assert (folder / "final" / "projector.safetensors").stat().st_mtime_ns == trained
    assert len(course.course_history("stage1", "standin")) == 2

    course.course_model("lora", "standin", max_steps=1, progress=False)  # the notebook trains stage 2 ...
    (lora,) = (tmp_path / "work" / "checkpoints").glob("standin-lora-*")
    trained = (lora / "final" / "run.json").stat().st_mtime_ns
    capsys.readouterr()
    main(["--preset", "standin", "--stage", "2", "--max-steps", "1", "--progress", "false"])  # ... the CLI finds it
    assert "run config" not in capsys.readouterr().out
    assert (lora / "final" / "run.json").stat().st_mtime_ns == trained
    assert len(list((tmp_path / "work" / "checkpoints").glob("standin-*"))) == 2
    # Another config is another key: a new folder, trained, never the stale one.
    course.course_model("stage1", "standin", max_steps=3, progress=False)
    assert len(list((tmp_path / "work" / "checkpoints").glob("standin-stage1-*"))) == 2
