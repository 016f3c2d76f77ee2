"""Tests for llava_mini.model.generate_ids, the one greedy-decoding loop: a LlavaMini with pixel values or
with images (each distinct image encoded once), or a plain causal LM; cut at EOS / pad."""

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from llava_mini.model import build_prompt, generate_ids, image_to_pixel_values, left_pad
from stand_ins import IMAGE_SIZE, PATCH, bpe_tokenizer, one_thread, tiny_llama, tiny_llava, tiny_processor, tiny_vision  # noqa: F401

N_IMAGE = (IMAGE_SIZE // PATCH) ** 2
QUESTIONS = ["What colour is the circle?", "How many shapes are there in the image?", "Is there a star?"]


@pytest.fixture(scope="module")
def setup():
    tokenizer = bpe_tokenizer(["USER: What colour is the circle? ASSISTANT: The circle is red.",
                               "How many shapes are there in the image? There are three shapes. Is there a star?"] * 4)
    model = tiny_llava(tiny_vision(), tiny_llama(len(tokenizer)), tokenizer, projector_std=0.3, seed=2).eval()
    processor = tiny_processor()
    torch.manual_seed(3)
    a, b = [Image.fromarray((torch.rand(IMAGE_SIZE, IMAGE_SIZE, 3) * 255).byte().numpy()) for _ in range(2)]
    prompts = [build_prompt(tokenizer, q, N_IMAGE) for q in QUESTIONS]  # three different lengths
    return SimpleNamespace(tokenizer=tokenizer, model=model, processor=processor, prompts=prompts, images=[a, a, b],
                           to_pixels=lambda images: torch.stack([image_to_pixel_values(i, processor) for i in images]))


def until_stop(ids, stop):
    return next((ids[:k] for k, t in enumerate(ids) if t in stop), ids)


def test_batched_left_padded_equals_one_prompt_at_a_time(setup):
    pixel_values = setup.to_pixels(setup.images)
    batched = generate_ids(setup.model, setup.tokenizer, setup.prompts, pixel_values=pixel_values, max_new_tokens=6)
    stop = {setup.tokenizer.eos_token_id, setup.tokenizer.pad_token_id}
    for i, prompt in enumerate(setup.prompts):
        alone = setup.model.generate(prompt[None], pixel_values[i:i + 1], max_new_tokens=6, do_sample=False,
                                     pad_token_id=setup.tokenizer.pad_token_id)
        assert batched[i] == until_stop(alone[0].tolist(), stop)
    # batch_size 2: the second batch holds the last prompt alone; same answers
    assert generate_ids(setup.model, setup.tokenizer, setup.prompts, pixel_values=pixel_values, max_new_tokens=6,
                        batch_size=2) == batched


def test_images_are_encoded_once_each_and_give_the_pixel_values_answers(setup):
    seen = []
    to_pixels = lambda images: seen.append(len(images)) or setup.to_pixels(images)  # noqa: E731
    by_image = generate_ids(setup.model, setup.tokenizer, setup.prompts, images=setup.images, to_pixels=to_pixels,
                            max_new_tokens=6)
    assert seen == [2]  # prompts 0 and 1 share one image object
    assert by_image == generate_ids(setup.model, setup.tokenizer, setup.prompts,
                                    pixel_values=setup.to_pixels(setup.images), max_new_tokens=6)


def test_plain_language_model_returns_only_the_continuation(setup):
    lm, tokenizer = setup.model.language_model, setup.tokenizer
    prompt = torch.tensor(tokenizer("USER: Is there a star?\nASSISTANT:")["input_ids"])
    new = generate_ids(lm, tokenizer, [prompt], max_new_tokens=5, min_new_tokens=5)[0]
    full = lm.generate(prompt[None], attention_mask=torch.ones(1, len(prompt), dtype=torch.long), max_new_tokens=5,
                       min_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)[0].tolist()
    assert new == until_stop(full[len(prompt):], {tokenizer.eos_token_id, tokenizer.pad_token_id})


def test_answers_stop_before_the_first_end_token_and_the_mode_is_restored(setup):
    pixel_values = setup.to_pixels(setup.images[:1])
    full = generate_ids(setup.model, setup.tokenizer, setup.prompts[:1], pixel_values=pixel_values,
                        max_new_tokens=8)[0]
    cut = next((j for j in range(1, len(full)) if full[j] not in full[:j]), None)
    if cut is None:
        pytest.skip(f"the tiny model repeats one token: {full}")
    stand_in = SimpleNamespace(eos_token_id=full[cut], pad_token_id=setup.tokenizer.pad_token_id)
    setup.model.train()
    try:
        assert generate_ids(setup.model, stand_in, setup.prompts[:1], pixel_values=pixel_values,
                            max_new_tokens=8) == [full[:cut]]
        assert setup.model.training
    finally:
        setup.model.eval()


def test_left_pad():
    batch = left_pad([torch.tensor([5, 6, 7]), torch.tensor([8])], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
