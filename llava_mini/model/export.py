"""Export a LlavaMini to transformers' ``LlavaForConditionalGeneration`` + ``LlavaProcessor`` (same logits)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file


def export_to_transformers(model, save_directory: str | Path, tokenizer, image_processor) -> Path:
    """Write a ``LlavaForConditionalGeneration`` + ``LlavaProcessor`` folder of ``model``'s weights.

    transformers' LLaVA holds only the MLP projector (``mlp2x_gelu``), drops exactly one CLS token (or
    none), and needs an unquantized, unwrapped LM (merge LoRA adapters first). The processor pads images
    to a square with the mean colour, as ``image_to_pixel_values`` does.
    """
    from transformers import LlavaConfig, LlavaImageProcessor, LlavaProcessor  # here: warns about torchvision

    if model.config.projector_type != "mlp2x_gelu":
        raise ValueError(f"cannot export a {model.config.projector_type!r} projector: transformers' LLaVA "
                         "only holds the 'mlp2x_gelu' form (linear_1 -> GELU -> linear_2)")
    if any("lora_" in name for name, _ in model.named_parameters()):
        raise ValueError("the model holds LoRA adapters: merge them first (peft_model.merge_and_unload())")
    lm, text_config, vision_config = model.language_model, model.language_model.config, model.vision_config
    if getattr(lm, "is_quantized", False) or getattr(lm, "is_loaded_in_4bit", False):
        raise ValueError("cannot export a quantized LM: load it unquantized, merge the adapters, then export")
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
    parts = {"vision_tower": model.vision_tower, "multi_modal_projector": model.projector,
             "language_model": lm.get_decoder()}
    weights = {f"model.{part}.{k}": v for part, module in parts.items() for k, v in module.state_dict().items()}
    if not config.tie_word_embeddings:
        weights["lm_head.weight"] = model.get_output_embeddings().weight
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
    LlavaProcessor(
        image_processor=LlavaImageProcessor(**settings, do_pad=True),
        tokenizer=tokenizer,
        patch_size=vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=n_extra,
        image_token=tokenizer.convert_ids_to_tokens(model.config.image_token_id),
    ).save_pretrained(save_directory)
    return save_directory
