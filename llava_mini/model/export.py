"""Export a LlavaMini to the Hugging Face ecosystem, loadable without this package (same logits):

    export_to_transformers(model, dir, ...)   dir/: LlavaForConditionalGeneration + LlavaProcessor (merged model)
    export_adapters(lora_model, dir, ...)     dir/: the same, of the base weights; dir/adapter/: peft's LoRA folder

The processor's chat template is the tokenizer's, taught to render typed content parts
(``{"type": "image"}``, ``{"type": "text", "text": ...}``), so ``processor.apply_chat_template`` and
``pipeline("image-text-to-text")`` work; string content renders byte for byte as before.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

ADAPTER_DIR = "adapter"
LM_PREFIX = "model.language_model"  # where LlavaForConditionalGeneration (transformers 5) keeps the LM's body


def typed_chat_template(template: str, image_token: str) -> str:
    """``template`` behind a preamble that rewrites each message with typed content into string content:
    its parts in order, joined by newlines, an image part as ``image_token`` (which the processor expands)
    and a text part as its text; so [image, text] renders as ``"<image>\\nQ"``, as ``build_prompt`` writes it.
    Messages with string content pass through as they are, and the preamble prints nothing (the closing
    ``{{ '' }}`` keeps trim_blocks from eating a newline that the template may start with)."""
    return (
        "{%- set typed = namespace(messages=[]) %}"
        "{%- for m in messages %}"
        "{%- if m['content'] is string or m['content'] is none %}{% set message = m %}"
        "{%- else %}{% set text = namespace(parts=[]) %}"
        "{%- for part in m['content'] %}"
        "{%- if part['type'] == 'image' %}{% set text.parts = text.parts + [" + json.dumps(image_token) + "] %}"
        "{%- elif part['type'] == 'text' %}{% set text.parts = text.parts + [part['text']] %}"
        "{%- else %}{{ raise_exception('the chat template renders image and text parts, not ' + part['type']) }}"
        "{%- endif %}{% endfor %}"
        "{%- set message = dict(m, content=text.parts | join('\\n')) %}{% endif %}"
        "{%- set typed.messages = typed.messages + [message] %}"
        "{%- endfor %}"
        "{%- set messages = typed.messages %}{{ '' }}" + template)


def export_to_transformers(model, save_directory: str | Path, tokenizer, image_processor) -> Path:
    """Write a ``LlavaForConditionalGeneration`` + ``LlavaProcessor`` folder of ``model``'s weights.

    transformers' LLaVA holds only the MLP projector (``mlp2x_gelu``), drops exactly one CLS token (or
    none), and needs an unquantized, unwrapped LM (merge LoRA adapters first, or keep them apart with
    ``export_adapters``). The processor pads images to a square with the mean colour, as
    ``image_to_pixel_values`` does; its chat template is ``typed_chat_template`` of the tokenizer's.
    """
    if any("lora_" in name for name, _ in model.named_parameters()):
        raise ValueError("the model holds LoRA adapters: merge them first (llava_mini.train.merge_lora(model)), "
                         "or export them apart with export_adapters(model, ...)")
    return _write_llava(model, model.language_model, save_directory, tokenizer, image_processor)


def _write_llava(model, lm, save_directory: str | Path, tokenizer, image_processor) -> Path:
    """The export of ``model`` whose LM is ``lm`` (a plain transformers LM; LoRA layers peft injected into
    it are left out: only their base weights are written)."""
    from transformers import LlavaConfig, LlavaImageProcessor, LlavaProcessor  # here: warns about torchvision

    if model.config.projector_type != "mlp2x_gelu":
        raise ValueError(f"cannot export a {model.config.projector_type!r} projector: transformers' LLaVA "
                         "only holds the 'mlp2x_gelu' form (linear_1 -> GELU -> linear_2)")
    text_config, vision_config = lm.config, model.vision_config
    if getattr(lm, "is_quantized", False) or getattr(lm, "is_loaded_in_4bit", False):
        raise ValueError("cannot export a quantized LM: load it unquantized (load_checkpoint(dir, qlora=False)), "
                         "then export")
    if model.config.image_token_id >= text_config.vocab_size:
        raise ValueError(f"image_token_id {model.config.image_token_id} is outside the LM vocabulary "
                         f"({text_config.vocab_size}): transformers' LLaVA embeds it: resize the LM's embeddings first")
    size = vision_config.image_size
    with torch.no_grad():  # how many tokens the tower adds in front of the patches (CLS: 1, SigLIP: 0)
        dummy = torch.zeros(1, 3, size, size, device=model.device, dtype=model.vision_tower.dtype)
        n_extra = model.vision_tower(dummy).last_hidden_state.shape[1] - model.num_image_tokens
    if n_extra not in (0, 1):
        raise ValueError(f"the vision tower adds {n_extra} non-patch tokens; transformers' LLaVA drops 0 or 1")

    config = LlavaConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_index=model.config.image_token_id,
        image_seq_length=model.num_image_tokens,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default" if n_extra == 1 else "full",
        vision_feature_layer=model.config.vision_feature_layer,
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
    )
    # Key layout of LlavaForConditionalGeneration: model.{vision_tower, multi_modal_projector,
    # language_model (the LM's body)} and lm_head (omitted when tied to the input embeddings).
    parts = {"model.vision_tower": model.vision_tower, "model.multi_modal_projector": model.projector,
             LM_PREFIX: lm.get_decoder()}
    weights = {f"{part}.{k}": v for part, module in parts.items() for k, v in _base_weights(module).items()}
    if not config.tie_word_embeddings:
        weights["lm_head.weight"] = lm.get_output_embeddings().weight
    save_directory = Path(save_directory)
    config.save_pretrained(save_directory)  # (creates the folder)
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()},
              save_directory / "model.safetensors", metadata={"format": "pt"})
    if getattr(lm, "generation_config", None) is not None:
        lm.generation_config.save_pretrained(save_directory)

    # The same image pipeline as ours: pad to square with the mean colour, then the processor's steps.
    steps = ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb")
    settings = {key: bool(getattr(image_processor, key, False)) for key in steps}  # a step it lacks is off
    settings.update({key: getattr(image_processor, key)
                     for key in ("size", "resample", "crop_size", "rescale_factor", "image_mean", "image_std")
                     if getattr(image_processor, key, None) is not None})
    image_token = tokenizer.convert_ids_to_tokens(model.config.image_token_id)
    LlavaProcessor(  # its chat_template.jinja overwrites the tokenizer's: both read the typed-aware one
        image_processor=LlavaImageProcessor(**settings, do_pad=True),
        tokenizer=tokenizer,
        patch_size=vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=n_extra,
        image_token=image_token,
        chat_template=typed_chat_template(tokenizer.chat_template, image_token) if tokenizer.chat_template else None,
    ).save_pretrained(save_directory)
    return save_directory


def _base_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` as it was before peft injected LoRA layers (the same for a module without)."""
    return {k.replace(".base_layer.", "."): v for k, v in module.state_dict().items() if "lora_" not in k}


def export_adapters(model, save_directory: str | Path, tokenizer, image_processor,
                    adapter_name: str = "default") -> Path:
    """Export a LlavaMini with LoRA adapters (stage 2, unmerged) as a base model and a peft adapter folder:

        save_directory/           LlavaForConditionalGeneration + LlavaProcessor: the base LM's weights (no
                                  adapters), the vision tower, the *trained* projector (export_to_transformers)
        save_directory/adapter/   adapter_config.json + adapter_model.safetensors, peft's format, module
                                  names of the exported model (``model.language_model.layers.0.self_attn.q_proj``)

    Returns the adapter folder. Without this package::

        base = LlavaForConditionalGeneration.from_pretrained(save_directory)
        model = PeftModel.from_pretrained(base, save_directory / "adapter")   # same logits as ``model``

    ``target_modules`` becomes the list of full names of the adapted layers: a suffix like ``q_proj`` would
    also match the vision tower's layers. A QLoRA model must be loaded unquantized first
    (``load_checkpoint(dir, qlora=False)``: the same adapters on the full-precision LM).
    """
    from peft import get_peft_model_state_dict
    from peft.tuners.lora import LoraLayer

    peft_lm = model.language_model
    if not hasattr(peft_lm, "peft_config"):
        raise ValueError("the model has no LoRA adapters (in a peft wrapper at model.language_model): "
                         "export it with export_to_transformers")
    base_lm = peft_lm.get_base_model()
    save_directory = _write_llava(model, base_lm, save_directory, tokenizer, image_processor)

    body = next(name for name, module in base_lm.named_modules() if module is base_lm.get_decoder())  # "model"

    def exported_name(name: str) -> str:  # "model.layers.0.mlp.up_proj" -> "model.language_model.layers.0.mlp.up_proj"
        return LM_PREFIX + name[len(body):] if name.startswith(body + ".") else name  # (lm_head keeps its name)

    config = copy.deepcopy(peft_lm.peft_config[adapter_name])
    config.target_modules = sorted(exported_name(name) for name, module in base_lm.named_modules()
                                   if isinstance(module, LoraLayer))
    config.layers_to_transform = config.layers_pattern = config.exclude_modules = None  # (the names say it)
    config.base_model_name_or_path, config.inference_mode = str(save_directory), True  # (as peft saves it)
    adapter_directory = save_directory / ADAPTER_DIR
    config.save_pretrained(adapter_directory)
    prefix = "base_model.model."  # peft's keys: base_model.model.<module name>.lora_A.weight
    weights = {prefix + exported_name(key.removeprefix(prefix)): value
               for key, value in get_peft_model_state_dict(peft_lm, adapter_name=adapter_name).items()}
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()},
              adapter_directory / "adapter_model.safetensors", metadata={"format": "pt"})
    return adapter_directory
