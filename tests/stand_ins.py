"""Local stand-ins for the hub models the tests would otherwise download.

Tiny, random and built in milliseconds: a byte-level BPE tokenizer with <s> </s> <pad> <image> and a
Vicuna-like chat template, a CLIPImageProcessor, a CLIP vision tower, a Llama LM, a LlavaMini made of
the two, and a few random images with LLaVA records about them. Each test file passes what it needs to
differ (the BPE corpus, widths, seeds, projector weights).
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from llava_mini.model import LlavaMini

IMAGE_SIZE, PATCH = 32, 8
VICUNA = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n"
    "{% elif m['role'] == 'user' %}USER: {{ m['content'] }}\n"
    "{% else %}ASSISTANT: {{ m['content'] }}</s>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
SPECIALS = ("<s>", "</s>", "<pad>", "<image>")
COLOURS = ["red", "blue", "green", "yellow"]
SHAPES = ["circle", "square", "triangle"]


def bpe_tokenizer(corpus, specials=SPECIALS, vocab_size=300, chat_template=VICUNA,
                  tokens=None) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `corpus`. `tokens` are PreTrainedTokenizerFast's special-token
    arguments (default: <s> </s> <pad>, with <image> as an extra special token); no template if None."""
    if tokens is None:
        tokens = dict(bos_token="<s>", eos_token="</s>", pad_token="<pad>", extra_special_tokens=["<image>"])
    bpe = Tokenizer(models.BPE(unk_token=tokens.get("unk_token")))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(specials), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, **tokens)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def tiny_processor(image_size=IMAGE_SIZE) -> CLIPImageProcessor:
    return CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def tiny_vision(seed=0, image_size=IMAGE_SIZE, patch_size=PATCH, hidden_size=24, intermediate_size=48,
                num_hidden_layers=2) -> CLIPVisionModel:
    """A tiny CLIP vision tower; seed=None keeps the current torch RNG state."""
    if seed is not None:
        torch.manual_seed(seed)
    return CLIPVisionModel(CLIPVisionConfig(
        image_size=image_size, patch_size=patch_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=4)).eval()


def tiny_llama(vocab_size, seed=1, **kwargs) -> LlamaForCausalLM:
    """A tiny Llama; kwargs override the LlamaConfig settings. seed=None keeps the current torch RNG state."""
    if seed is not None:
        torch.manual_seed(seed)
    settings = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                    bos_token_id=0, eos_token_id=1, pad_token_id=2)
    return LlamaForCausalLM(LlamaConfig(**{**settings, **kwargs})).eval()


def tiny_llava(vision, lm, tokenizer, projector_std, projector_type="mlp2x_gelu", seed=None) -> LlavaMini:
    """LlavaMini over the given towers with N(0, projector_std) projector weights (drawn after seeding with
    `seed` unless it is None). Left in train mode, as LlavaMini builds it."""
    model = LlavaMini(vision, lm, tokenizer.convert_tokens_to_ids("<image>"), projector_type)
    if seed is not None:
        torch.manual_seed(seed)
    for p in model.projector.parameters():
        torch.nn.init.normal_(p, std=projector_std)
    return model


def write_records(root: Path, n: int = 24, seed: int = 0, image_size=IMAGE_SIZE) -> tuple[Path, Path]:
    """n random images and LLaVA records about them (one or two QA pairs of varying length)."""
    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        pixels = (rng.random((image_size, image_size, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(images / f"{i}.png")
        shape, colour = SHAPES[i % 3], COLOURS[i % 4]
        turns = [{"from": "human", "value": f"<image>\nWhat colour is the {shape}?"},
                 {"from": "gpt", "value": f"The {shape} is {colour}."}]
        if i % 2:
            turns += [{"from": "human", "value": "And the shape?"}, {"from": "gpt", "value": f"It is a {shape}."}]
        records.append({"id": str(i), "image": f"{i}.png", "conversations": turns})
    path = root / "records.json"
    path.write_text(json.dumps(records))
    return path, images


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls gain nothing from a second thread, and on a busy shared CPU two threads per process
    spin-wait each other (10-100x slower steps were seen at load 7 on 2 cores).
    Import it into a test module to use it there."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load_script(name: str):
    """scripts/<name>.py imported as a module (scripts are not a package), so tests call its functions."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
