"""An export used as the ecosystem uses it: typed chat content through the processor and
``pipeline("image-text-to-text")``, and LoRA adapters through ``PeftModel.from_pretrained``.

The model is the tiny track's own: the shipped backbones (data/backbones, local folders) with a seeded random
projector, so greedy answers are words that stop at </s>, and the template is the one training uses.
"""

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import AutoProcessor, AutoTokenizer, CLIPImageProcessor

from llava_mini.backbones import BACKBONES_DIR, CHAT_TEMPLATE
from llava_mini.config import TrainConfig, VICUNA_TEMPLATE
from llava_mini.evaluate import chat
from llava_mini.model import ADAPTER_DIR, build, build_prompt, export_adapters, image_to_pixel_values, image_token_id
from llava_mini.model import typed_chat_template
from llava_mini.train import add_lora
from stand_ins import VICUNA, one_thread  # noqa: F401 (one_thread: a fixture)

CHATML = (  # Qwen2.5-style: reads messages[0] and inserts a default system turn
    "{%- for message in messages %}{%- if loop.first and messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are Qwen.<|im_end|>\\n' }}{%- endif %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
QUESTION = "What colour is the circle?"
STRING_CHATS = [
    [{"role": "user", "content": f"<image>\n{QUESTION}"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"{QUESTION}\n<image>"},
     {"role": "assistant", "content": "Red."}, {"role": "user", "content": "And the shape?"}],
]


def typed(text: str, image: Image.Image | None = None, image_first: bool = True) -> list[dict]:
    parts = [{"type": "text", "text": text}]
    if image is not None:
        parts.insert(0 if image_first else 1, {"type": "image", "image": image})
    return parts


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(BACKBONES_DIR / "lm")


@pytest.fixture(scope="module")
def image_processor():
    return CLIPImageProcessor.from_pretrained(BACKBONES_DIR / "vision")


@pytest.fixture(scope="module")
def image():
    picture = Image.new("RGB", (64, 48), "white")  # not square: the processor pads it as we do
    ImageDraw.Draw(picture).ellipse((8, 8, 30, 30), fill="red")
    return picture


def shipped_model(tokenizer, seed=0):
    model = build(BACKBONES_DIR / "vision", BACKBONES_DIR / "lm", "mlp2x_gelu", image_token_id(tokenizer)).eval()
    torch.manual_seed(seed)
    for p in model.projector.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer, image_processor):
    model = shipped_model(tokenizer)
    return model, model.export_to_transformers(tmp_path_factory.mktemp("export") / "llava", tokenizer, image_processor)


@pytest.mark.parametrize("template", [CHAT_TEMPLATE, VICUNA, VICUNA_TEMPLATE, CHATML, "\n" + VICUNA],
                         ids=["shipped", "stand-in", "vicuna", "chatml", "leading-newline"])
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_string_content_renders_byte_for_byte_as_before(tokenizer, template, generation_prompt):
    wrapped = typed_chat_template(template, "<image>")
    for messages in STRING_CHATS:
        before = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                               add_generation_prompt=generation_prompt)
        assert tokenizer.apply_chat_template(messages, chat_template=wrapped, tokenize=False,
                                             add_generation_prompt=generation_prompt) == before
        typed_messages = [{**m, "content": typed(m["content"])} for m in messages]  # one text part each
        assert tokenizer.apply_chat_template(typed_messages, chat_template=wrapped, tokenize=False,
                                             add_generation_prompt=generation_prompt) == before


def test_typed_parts_render_in_order_and_other_parts_are_refused(tokenizer):
    wrapped = typed_chat_template(CHAT_TEMPLATE, "<image>")
    parts = [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}]
    text = tokenizer.apply_chat_template([{"role": "user", "content": parts}], chat_template=wrapped, tokenize=False)
    assert text == "USER: a\n<image>\nb\n"
    with pytest.raises(Exception, match="not video"):
        tokenizer.apply_chat_template([{"role": "user", "content": [{"type": "video"}]}], chat_template=wrapped)


def test_exported_string_template_is_the_training_template(exported, tokenizer):
    processor = AutoProcessor.from_pretrained(exported[1])
    for messages in STRING_CHATS:
        before = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == before
        assert processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == before


@pytest.mark.parametrize("case", ["image first", "image last", "system and history"])
def test_processor_typed_chat_gives_our_prompt_ids(exported, tokenizer, image_processor, image, case):
    model, folder = exported
    system, history = ("Be brief.", [("How many shapes are there?", "One.")]) if case == "system and history" \
        else (None, [])
    messages = [{"role": "system", "content": typed(system)}] if system else []
    for i, (q, a) in enumerate(history + [(QUESTION, None)]):
        messages.append({"role": "user", "content": typed(q, image if i == 0 else None, case != "image last")})
        if a is not None:
            messages.append({"role": "assistant", "content": typed(a)})
    inputs = AutoProcessor.from_pretrained(folder).apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    ours = build_prompt(tokenizer, QUESTION, model.num_image_tokens, system, history,
                        image_position="after" if case == "image last" else "before")
    assert (inputs["input_ids"][0] == model.config.image_token_id).sum() == model.num_image_tokens == 64
    assert inputs["input_ids"][0].tolist() == ours.tolist()
    torch.testing.assert_close(inputs["pixel_values"][0], image_to_pixel_values(image, image_processor),
                               atol=1e-5, rtol=0)


def test_pipeline_answers_as_llava_mini_chat(exported, tokenizer, image_processor, image):
    from transformers import pipeline

    model, folder = exported
    pipe = pipeline("image-text-to-text", model=str(folder), dtype=torch.float32)
    messages = [{"role": "user", "content": typed(QUESTION, image)}]
    (out,) = pipe(text=messages, generate_kwargs={"max_new_tokens": 24, "do_sample": False}, return_full_text=False)
    answer = out["generated_text"]
    print(f"pipeline answer: {answer!r}")
    ours = chat(model, tokenizer, image_processor, image, QUESTION, max_new_tokens=24)
    assert len(answer.split()) >= 3 and answer.strip() == ours  # (llava_mini's decode strips the leading space)


def test_adapters_load_with_peft_onto_the_exported_base(tmp_path, tokenizer, image_processor, image):
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import LlavaForConditionalGeneration

    model = add_lora(shipped_model(tokenizer, seed=1), TrainConfig(stage=2, lora_r=4, lora_alpha=8)).eval()
    torch.manual_seed(2)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: adapters that change nothing would prove nothing
            torch.nn.init.normal_(p, std=0.05)
    with pytest.raises(ValueError, match="export_adapters"):
        model.export_to_transformers(tmp_path / "refused", tokenizer, image_processor)
    adapter_folder = export_adapters(model, tmp_path / "llava", tokenizer, image_processor)
    assert adapter_folder == tmp_path / "llava" / ADAPTER_DIR

    base = LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava", dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, adapter_folder).eval()
    adapted = {n for n, m in loaded.base_model.model.named_modules() if isinstance(m, LoraLayer)}
    n_layers = model.language_model.config.num_hidden_layers
    assert len(adapted) == 7 * n_layers and all(n.startswith("model.language_model.layers.") for n in adapted)

    ids = build_prompt(tokenizer, QUESTION, model.num_image_tokens)[None]
    pixels = image_to_pixel_values(image, image_processor)[None]
    with torch.no_grad():
        ours = model(ids, pixels, return_logits=True).logits
        theirs = loaded(input_ids=ids, pixel_values=pixels).logits
        with loaded.disable_adapter():
            without = loaded(input_ids=ids, pixel_values=pixels).logits
    assert (ours - theirs).abs().max() <= 1e-5
    assert (ours - without).abs().max() > 1e-2  # the adapters are what makes them equal
    processor = AutoProcessor.from_pretrained(tmp_path / "llava")
    inputs = processor.apply_chat_template([{"role": "user", "content": typed(QUESTION, image)}], tokenize=True,
                                           add_generation_prompt=True, return_dict=True, return_tensors="pt")
    new = loaded.generate(**inputs, max_new_tokens=24, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    assert processor.decode(new, skip_special_tokens=True).strip() == chat(model, tokenizer, image_processor, image,
                                                                           QUESTION, max_new_tokens=24)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        export_adapters(shipped_model(tokenizer), tmp_path / "plain", tokenizer, image_processor)
