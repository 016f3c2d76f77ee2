"""Tests for llava_mini.model with tiny random towers saved to tmp folders (no hub, no downloads)."""

import weakref

import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPVisionModel,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from llava_mini.model import build_prompt, encode_conversation, image_to_pixel_values
from llava_mini.model import LlavaMini, build, load_vision_tower
from stand_ins import IMAGE_SIZE, PATCH, bpe_tokenizer, tiny_llama, tiny_llava, tiny_processor, tiny_vision

N_IMAGE = (IMAGE_SIZE // PATCH) ** 2  # 16 patch tokens
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def make_tokenizer() -> PreTrainedTokenizerFast:
    return bpe_tokenizer(["USER: What colour is the circle? ASSISTANT: The circle is red.",
                          "How many shapes are there? There are three shapes."] * 4)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


@pytest.fixture(scope="module")
def towers(tmp_path_factory, tokenizer):
    """Tiny CLIP vision tower and Llama LM written with save_pretrained, as the hub would hold them."""
    root = tmp_path_factory.mktemp("towers")
    tiny_vision().save_pretrained(root / "vision")
    # bitsandbytes' CPU 4-bit inference kernel (eval, no grad) needs layer widths of 64 or more.
    tiny_llama(len(tokenizer), hidden_size=64, intermediate_size=128, num_key_value_heads=4).save_pretrained(root / "lm")
    return root


def make_model(tokenizer, projector_type="mlp2x_gelu", seed=2, **lm_kwargs) -> LlavaMini:
    # non-trivial projector weights
    return tiny_llava(tiny_vision(), tiny_llama(len(tokenizer), **lm_kwargs), tokenizer, projector_std=0.3,
                      projector_type=projector_type, seed=seed)


def make_batch(tokenizer, processor):
    """Two records of different lengths, right padded, with labels on the answers."""
    records = [
        {"id": "a", "image": "a.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the circle?"},
            {"from": "gpt", "value": "The circle is red."}]},
        {"id": "b", "image": "b.png", "conversations": [
            {"from": "human", "value": "How many shapes are there?\n<image>"},
            {"from": "gpt", "value": "There are three shapes."},
            {"from": "human", "value": "What colour is the circle?"},
            {"from": "gpt", "value": "Red."}]},
    ]
    encoded = [encode_conversation(r, tokenizer, N_IMAGE) for r in records]
    longest = max(len(e.input_ids) for e in encoded)
    input_ids = torch.full((2, longest), tokenizer.pad_token_id)
    labels = torch.full((2, longest), -100)
    attention_mask = torch.zeros((2, longest), dtype=torch.long)
    for row, e in enumerate(encoded):
        n = len(e.input_ids)
        input_ids[row, :n], labels[row, :n], attention_mask[row, :n] = torch.tensor(e.input_ids), torch.tensor(e.labels), 1
    torch.manual_seed(3)
    images = [Image.fromarray((torch.rand(IMAGE_SIZE, IMAGE_SIZE + 8, 3) * 255).byte().numpy()) for _ in records]
    pixel_values = torch.stack([image_to_pixel_values(im, processor) for im in images])
    return {"input_ids": input_ids, "pixel_values": pixel_values, "attention_mask": attention_mask, "labels": labels}


def test_image_features_are_layer_minus2_patch_tokens_spliced_in_place(tokenizer, processor):
    model = make_model(tokenizer)
    batch = make_batch(tokenizer, processor)
    features = model.image_features(batch["pixel_values"])
    hidden = model.vision_tower(batch["pixel_values"], output_hidden_states=True).hidden_states
    assert features.shape == (2, N_IMAGE, 24)
    torch.testing.assert_close(features, hidden[-2][:, 1:])  # CLS dropped, second-to-last layer

    embeds = model.embed_inputs(batch["input_ids"], batch["pixel_values"])
    assert embeds.shape == (*batch["input_ids"].shape, 32)
    is_image = batch["input_ids"] == model.config.image_token_id
    projected = model.encode_images(batch["pixel_values"])
    for row in range(2):
        torch.testing.assert_close(embeds[row][is_image[row]], projected[row])  # in order, N per image
    text_ids = batch["input_ids"][~is_image]
    torch.testing.assert_close(embeds[~is_image], model.get_input_embeddings()(text_ids))
    one_short = batch["input_ids"].clone()
    one_short[0, is_image[0].nonzero()[0]] = tokenizer.pad_token_id  # N - 1 image tokens for image 0
    with pytest.raises(ValueError, match="expand <image>"):
        model.embed_inputs(one_short, batch["pixel_values"])


@pytest.mark.parametrize("projector_type", ["linear", "mlp2x_gelu"])
def test_labelled_only_head_equals_full_logits_loss_and_gradients(tokenizer, processor, projector_type):
    batch = make_batch(tokenizer, processor)
    results = []
    for labelled_only in (True, False):
        model = make_model(tokenizer, projector_type)
        model.train()
        out = model(**batch, labelled_only=labelled_only)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out, grads))
    (fast, fast_grads), (full, full_grads) = results
    assert fast.logits is None and full.logits.shape == (*batch["input_ids"].shape, len(tokenizer))
    torch.testing.assert_close(fast.loss, full.loss, atol=1e-5, rtol=0)
    assert fast_grads.keys() == full_grads.keys() and len(fast_grads) > 10
    for name in full_grads:
        torch.testing.assert_close(fast_grads[name], full_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    # Gradient accumulation: a given token count divides the summed loss.
    n_labelled = int((batch["labels"][:, 1:] != -100).sum())
    model = make_model(tokenizer, projector_type)
    summed = model(**batch, num_items_in_batch=1).loss
    torch.testing.assert_close(summed / n_labelled, fast.loss, atol=1e-5, rtol=0)


def loss_and_grads(model, batch, **kwargs):
    model.zero_grad()
    loss = model(**batch, **kwargs).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


class LiveLogits(TorchDispatchMode):
    """The most rows of (rows, V) tensors alive at once, after any op of forward or backward. Counted by storage
    (autograd saves an op's output as a new tensor over the same storage), parameters' storages left out."""

    def __init__(self, vocabulary: int, parameters):
        super().__init__()
        self.vocabulary, self.params = vocabulary, {p.untyped_storage().data_ptr() for p in parameters}
        self.storages, self.most = {}, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in tree_flatten(out)[0]:
            if isinstance(x, torch.Tensor) and x.dim() == 2 and x.shape[1] == self.vocabulary:
                storage = x.untyped_storage()
                if storage.data_ptr() not in self.params:
                    rows = storage.nbytes() // (x.element_size() * self.vocabulary)
                    self.storages[storage.data_ptr()] = (weakref.ref(storage), rows)
        self.most = max(self.most, sum(rows for ref, rows in self.storages.values() if ref() is not None))
        return out


def test_chunked_head_gives_the_same_loss_and_gradients_with_one_chunk_of_logits_alive(tokenizer, processor):
    batch, model = make_batch(tokenizer, processor), make_model(tokenizer)
    model.train()
    model.get_output_embeddings().requires_grad_(False)  # frozen in both stages (LoRA leaves lm_head alone)
    vocabulary, labelled = len(tokenizer), int((batch["labels"][:, 1:] != -100).sum())
    with LiveLogits(vocabulary, model.parameters()) as whole_logits:
        whole, whole_grads = loss_and_grads(model, batch)
    with LiveLogits(vocabulary, model.parameters()) as chunk_logits:
        chunked, chunked_grads = loss_and_grads(model, batch, loss_chunk_logits=3 * vocabulary)  # 3 rows a chunk
    assert labelled > 12 and whole_logits.most >= 2 * labelled  # all logits and their log-probabilities
    assert chunk_logits.most <= 3 * 3  # one chunk's logits, log-probabilities and their gradient
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)
    assert chunked_grads.keys() == whole_grads.keys()
    for name in whole_grads:
        torch.testing.assert_close(chunked_grads[name], whole_grads[name], atol=1e-6, rtol=1e-5, msg=name)


def test_precomputed_image_features_give_the_pixels_loss(tokenizer, processor):
    batch, model = make_batch(tokenizer, processor), make_model(tokenizer)
    model.vision_tower.requires_grad_(False)  # frozen, as in both stages: its features are all the LM gets
    pixels = batch.pop("pixel_values")
    with torch.no_grad():
        features = model.image_features(pixels)
    from_pixels, pixel_grads = loss_and_grads(model, {**batch, "pixel_values": pixels})
    from_features, feature_grads = loss_and_grads(model, {**batch, "image_features": features})
    assert torch.equal(from_features, from_pixels)
    assert feature_grads.keys() == pixel_grads.keys() and all(torch.equal(feature_grads[n], g)
                                                              for n, g in pixel_grads.items())
    with pytest.raises(ValueError, match="not both"):
        model(**batch, pixel_values=pixels, image_features=features)


def test_checkpointing_every_second_layer_recomputes_those_only(tokenizer, processor):
    batch, model = make_batch(tokenizer, processor), make_model(tokenizer, num_hidden_layers=4)
    model.train()
    plain, plain_grads = loss_and_grads(model, batch)
    model.gradient_checkpointing_enable(every=2)
    layers = model.language_model.model.layers
    assert [layer.gradient_checkpointing for layer in layers] == [True, False, True, False]
    calls = []
    # (a pre-hook inside the layer: transformers checkpoints forward, within the layer's own hooks, and the
    # recompute stops as soon as it has what backward needs, before the MLP returns)
    hooks = [layer.mlp.register_forward_pre_hook(lambda m, a, i=i: calls.append(i)) for i, layer in enumerate(layers)]
    checkpointed, grads = loss_and_grads(model, batch)
    for hook in hooks:
        hook.remove()
    assert sorted(calls) == [0, 0, 1, 2, 2, 3]  # layers 0 and 2 ran again in backward
    torch.testing.assert_close(checkpointed, plain, atol=1e-6, rtol=0)
    for name in plain_grads:
        torch.testing.assert_close(grads[name], plain_grads[name], atol=1e-6, rtol=1e-5, msg=name)
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing


class FrozenMatmuls(TorchDispatchMode):
    """Counts matmuls with a frozen weight (the base layers' q, k, v, o, gate, up, down) while it is active."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default) and not args[-1].requires_grad:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def test_checkpointing_that_keeps_matmul_outputs_reruns_no_frozen_matmul(tokenizer, processor):
    batch, model = make_batch(tokenizer, processor), make_model(tokenizer, num_hidden_layers=2)
    model.language_model.requires_grad_(False)  # the base weights are frozen in stage 2 (LoRA trains beside them)
    model.train()
    counts = {}
    for name, options in (("plain", None), ("checkpointed", {}), ("kept", {"keep_matmul_outputs": True})):
        if options is not None:
            model.gradient_checkpointing_enable(**options)
        model.zero_grad()
        with FrozenMatmuls() as forward:
            loss = model(**batch).loss
        with FrozenMatmuls() as backward:
            loss.backward()
        counts[name] = (forward.calls, backward.calls, loss.detach(), model.projector.linear_1.weight.grad.clone())
        model.gradient_checkpointing_disable()
    ahead, behind = counts["plain"][:2]
    # plain checkpointing reruns the layers' matmuls (all but the last one each, which backward does not need)
    assert ahead > 0 and counts["checkpointed"][1] >= behind + ahead // 2
    assert counts["kept"][:2] == (ahead, behind)  # kept: no frozen matmul runs twice
    for name in ("checkpointed", "kept"):  # and the same numbers
        assert torch.equal(counts[name][2], counts["plain"][2]), name
        torch.testing.assert_close(counts[name][3], counts["plain"][3], atol=1e-6, rtol=1e-5, msg=name)


def test_generate_returns_only_new_tokens(tokenizer, processor):
    model = make_model(tokenizer)
    prompts = [build_prompt(tokenizer, "What colour is the circle?", N_IMAGE)] * 2
    input_ids = torch.stack(prompts)
    pixel_values = make_batch(tokenizer, processor)["pixel_values"]
    new = model.generate(input_ids, pixel_values, max_new_tokens=5, min_new_tokens=5, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    assert new.shape == (2, 5)
    logits = model(input_ids, pixel_values, return_logits=True).logits
    assert new[:, 0].tolist() == logits[:, -1].argmax(-1).tolist()  # greedy continues the prompt


def test_save_and_load_roundtrip_and_build_from_folders(tmp_path, towers, tokenizer, processor):
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    model = build(towers / "vision", towers / "lm", "mlp2x_gelu", image_id)
    assert isinstance(model.vision_tower, CLIPVisionModel) and model.num_image_tokens == N_IMAGE
    batch = make_batch(tokenizer, processor)
    loss = model(**batch).loss
    model.save_pretrained(tmp_path / "ckpt", tokenizer=tokenizer, image_processor=processor)
    again = LlavaMini.from_pretrained(tmp_path / "ckpt")
    assert again.config == model.config
    torch.testing.assert_close(again(**batch).loss, loss, atol=1e-6, rtol=0)
    # towers=False: only what LlavaMini adds (a training checkpoint); the towers are named when loading.
    model.save_pretrained(tmp_path / "light", towers=False)
    assert sorted(p.name for p in (tmp_path / "light").iterdir()) == ["llava_mini.json", "projector.safetensors"]
    with pytest.raises(OSError):
        LlavaMini.from_pretrained(tmp_path / "light")
    light = LlavaMini.from_pretrained(tmp_path / "light", vision=towers / "vision", lm=towers / "lm")
    torch.testing.assert_close(light(**batch).loss, loss, atol=1e-6, rtol=0)
    # A full two-tower CLIP checkpoint (like openai/clip-vit-*) yields its vision half.
    clip = CLIPModel(CLIPConfig(vision_config=tiny_vision().config.to_dict(),
                                text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                             "num_attention_heads": 2, "vocab_size": 50}))
    clip.save_pretrained(tmp_path / "clip")
    tower = load_vision_tower(tmp_path / "clip")
    assert isinstance(tower, CLIPVisionModel)
    x = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        torch.testing.assert_close(tower(x).last_hidden_state, clip.vision_model(x).last_hidden_state)


@pytest.mark.parametrize("vision", ["clip", "siglip"])
def test_export_to_transformers_llava_same_logits(tmp_path, tokenizer, processor, vision):
    """CLIP (a CLS token to drop, untied LM head) and SigLIP (no CLS, tied embeddings, Qwen-style)."""
    from transformers import LlavaForConditionalGeneration, LlavaProcessor, SiglipImageProcessor

    model = make_model(tokenizer).eval()
    with pytest.raises(ValueError, match="only holds the 'mlp2x_gelu'"):
        make_model(tokenizer, "linear").export_to_transformers(tmp_path / "bad", tokenizer, processor)
    if vision == "siglip":
        torch.manual_seed(0)
        tower = SiglipVisionModel(SiglipVisionConfig(image_size=IMAGE_SIZE, patch_size=PATCH, hidden_size=24,
                                                     intermediate_size=48, num_hidden_layers=2, num_attention_heads=4))
        model = LlavaMini(tower.eval(), tiny_llama(len(tokenizer), tie_word_embeddings=True).eval(),
                          tokenizer.convert_tokens_to_ids("<image>"))
        processor = SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    model.export_to_transformers(tmp_path / "hf", tokenizer, processor)
    hf_model = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    hf_processor = LlavaProcessor.from_pretrained(tmp_path / "hf")

    image = Image.fromarray((torch.rand(IMAGE_SIZE + 10, IMAGE_SIZE, 3) * 255).byte().numpy())  # not square
    question = "What colour is the circle?"
    our_ids = build_prompt(tokenizer, question, N_IMAGE)[None]
    our_pixels = image_to_pixel_values(image, processor)[None]
    text = tokenizer.apply_chat_template([{"role": "user", "content": f"<image>\n{question}"}],
                                         tokenize=False, add_generation_prompt=True)
    hf_inputs = hf_processor(images=image, text=text, return_tensors="pt")
    assert hf_inputs["input_ids"].tolist() == our_ids.tolist()  # <image> expanded to the same N tokens
    torch.testing.assert_close(hf_inputs["pixel_values"], our_pixels, atol=1e-5, rtol=0)  # same padding

    with torch.no_grad():
        ours = model(our_ids, our_pixels, return_logits=True).logits
        theirs = hf_model(**hf_inputs).logits
    assert (ours - theirs).abs().max() <= 1e-5
    generated = hf_model.generate(**hf_inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False,
                                  pad_token_id=tokenizer.pad_token_id)
    assert generated[:, our_ids.shape[1]:].tolist() == model.generate(
        our_ids, our_pixels, max_new_tokens=4, min_new_tokens=4, do_sample=False,
        pad_token_id=tokenizer.pad_token_id).tolist()


def test_peft_lora_on_the_language_model(tokenizer, processor):
    from peft import LoraConfig, get_peft_model

    model = make_model(tokenizer)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS))
    for p in model.projector.parameters():  # the projector trains too (stage 2)
        p.requires_grad_(True)
    peft_model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    peft_model.train()
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or ".projector." in n for n in trainable)
    assert any("language_model" in n and "q_proj.lora_A" in n for n in trainable)
    assert sum(".projector." in n for n in trainable) == 4
    assert not any("vision_tower" in n and "lora_" in n for n in trainable)

    batch = make_batch(tokenizer, processor)
    out = peft_model(**batch)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    grads = [n for n, p in peft_model.named_parameters() if p.grad is not None]
    assert set(grads) == set(trainable)
    full = peft_model(**batch, labelled_only=False)
    assert full.logits.shape == (*batch["input_ids"].shape, len(tokenizer))
    new = peft_model.generate(batch["input_ids"][:1, :30], batch["pixel_values"][:1], max_new_tokens=3,
                              min_new_tokens=3, pad_token_id=tokenizer.pad_token_id)
    assert new.shape == (1, 3)


def test_4bit_language_model_with_full_precision_projector(towers, tokenizer, processor):
    pytest.importorskip("bitsandbytes")
    from peft import LoraConfig, get_peft_model
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                      bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32)
    model = build(towers / "vision", towers / "lm", "mlp2x_gelu", tokenizer.convert_tokens_to_ids("<image>"),
                  quantization_config=quantization)
    q_proj = model.language_model.model.layers[0].self_attn.q_proj
    assert type(q_proj).__name__ == "Linear4bit"
    assert model.projector.linear_1.weight.dtype == torch.float32
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS))
    model.projector.requires_grad_(True)
    peft_model.train()
    batch = make_batch(tokenizer, processor)
    loss = peft_model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss) and model.projector.linear_1.weight.grad is not None
    peft_model.eval()
    with torch.no_grad():  # the bitsandbytes CPU inference path
        torch.testing.assert_close(peft_model(**batch).loss, loss.detach(), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="LoRA adapters"):
        model.export_to_transformers("unused", tokenizer, processor)


def test_output_attentions_from_the_language_model(tokenizer, processor):
    model = make_model(tokenizer, attn_implementation="eager")
    batch = make_batch(tokenizer, processor)
    out = model(**batch, output_attentions=True)
    assert len(out.attentions) == 2
    batch_size, length = batch["input_ids"].shape
    assert out.attentions[0].shape == (batch_size, 4, length, length)
    rows = out.attentions[1][0].sum(-1)  # softmax rows sum to 1
    torch.testing.assert_close(rows, torch.ones_like(rows))
    assert torch.equal(out.attentions[0], out.attentions[0].tril())  # causal
    with pytest.raises(ValueError, match="eager"):
        make_model(tokenizer)(**batch, output_attentions=True)  # sdpa would silently return none
