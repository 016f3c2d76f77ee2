"""LlavaMini: a vision tower, a projector and a causal language model, in one readable module.

    pixel_values (B, 3, H, W)
        -> vision tower, hidden states of layer ``vision_feature_layer`` (-2), patch tokens only
                                                           (B, N, D_vision)   N = (H / patch)^2
        -> projector (``linear`` or ``mlp2x_gelu``)        (B, N, D_text)
        -> spliced into the text embeddings where ``input_ids == image_token_id``
    input_ids (B, T) hold N copies of the image token per image ("expanded in the ids", see
    llava_mini.conversation), so every text token keeps its position and the LM sees one plain
    sequence of embeddings (B, T, D_text) -> loss / logits / attentions / generated tokens.

Both towers are ordinary transformers models loaded with ``from_pretrained`` (a hub name or a
local folder: the same code path), so everything transformers and peft offer applies to them:
4-bit (bitsandbytes NF4) loading of the LM, LoRA injected by module-name regex (the LM lives at
``language_model``), gradient checkpointing, eager attention for attention maps.

Only answer tokens pay for the vocabulary: by default, the LM head and the cross-entropy are
computed only at positions whose (shifted) label is not -100. A 152K vocabulary times every
position in fp32 is most of a small model's training memory, yet only the answers carry labels.
``labelled_only=False`` gives the standard full-logits path (same loss, same gradients).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.modeling_outputs import ModelOutput
from transformers.utils import logging as transformers_logging
from transformers.models.auto.modeling_auto import MODEL_MAPPING

IGNORE_INDEX = -100
PROJECTOR_TYPES = ("linear", "mlp2x_gelu")
CONFIG_NAME = "llava_mini.json"
PROJECTOR_WEIGHTS = "projector.safetensors"


class Projector(nn.Module):
    """Vision features -> LM embedding space. (B, N, D_vision) -> (B, N, D_text).

    ``linear``: one Linear (LLaVA v1). ``mlp2x_gelu``: Linear -> GELU -> Linear (LLaVA v1.5).
    Layer names match transformers' ``LlavaMultiModalProjector`` (linear_1, act, linear_2).
    """

    def __init__(self, vision_hidden_size: int, text_hidden_size: int, projector_type: str = "mlp2x_gelu"):
        super().__init__()
        if projector_type not in PROJECTOR_TYPES:
            raise ValueError(f"projector_type must be one of {PROJECTOR_TYPES}, got {projector_type!r}")
        self.projector_type = projector_type
        self.linear_1 = nn.Linear(vision_hidden_size, text_hidden_size)
        if projector_type == "mlp2x_gelu":
            self.act = nn.GELU()  # exact erf GELU, like transformers' "gelu"
            self.linear_2 = nn.Linear(text_hidden_size, text_hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = self.linear_1(features.to(self.linear_1.weight.dtype))
        if self.projector_type == "mlp2x_gelu":
            hidden = self.linear_2(self.act(hidden))
        return hidden


@dataclass
class LlavaMiniConfig:
    """What LlavaMini adds to its two towers (saved as ``llava_mini.json``)."""

    image_token_id: int
    projector_type: str = "mlp2x_gelu"
    vision_feature_layer: int = -2
    num_image_tokens: int = 0       # N patch tokens per image (derived from the vision config)
    vision_hidden_size: int = 0
    text_hidden_size: int = 0

    def to_dict(self) -> dict:  # peft reads model.config through to_dict()
        return asdict(self)


@dataclass
class LlavaMiniOutput(ModelOutput):
    """``loss`` (scalar) when labels are given; ``logits`` (B, T, V) on the full-logits path only;
    ``attentions``: one (B, heads, T, T) tensor per LM layer when ``output_attentions=True``."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


def _vision_config(model_or_config):
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "vision_config", config)  # CLIPConfig holds a CLIPVisionConfig


class LlavaMini(nn.Module):
    """Vision tower + projector + causal LM.

    Args:
        vision_tower: a transformers vision model (CLIPVisionModel, SiglipVisionModel, ...).
        language_model: a transformers causal LM (LlamaForCausalLM, Qwen2ForCausalLM, ...).
        image_token_id: the id that marks image positions in ``input_ids``.
        projector_type: ``"linear"`` or ``"mlp2x_gelu"``.
        vision_feature_layer: which hidden state of the vision tower to read (-2: second to last).
        projector_dtype: dtype of the projector (default: float32; keep it out of quantization).
    """

    def __init__(
        self,
        vision_tower: nn.Module,
        language_model: nn.Module,
        image_token_id: int,
        projector_type: str = "mlp2x_gelu",
        vision_feature_layer: int = -2,
        projector_dtype: torch.dtype | None = None,
    ):
        super().__init__()
        vision_config = _vision_config(vision_tower)
        self.vision_tower = vision_tower
        self.language_model = language_model
        self.config = LlavaMiniConfig(
            image_token_id=int(image_token_id),
            projector_type=projector_type,
            vision_feature_layer=vision_feature_layer,
            num_image_tokens=(vision_config.image_size // vision_config.patch_size) ** 2,
            vision_hidden_size=vision_config.hidden_size,
            text_hidden_size=language_model.config.hidden_size,
        )
        self.projector = Projector(vision_config.hidden_size, language_model.config.hidden_size, projector_type)
        self.projector.to(device=self.get_input_embeddings().weight.device, dtype=projector_dtype or torch.float32)

    # ------------------------------------------------------------------ small accessors

    @property
    def num_image_tokens(self) -> int:
        """N: image tokens per image (one per patch)."""
        return self.config.num_image_tokens

    @property
    def device(self) -> torch.device:
        return self.get_input_embeddings().weight.device

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **kwargs) -> None:
        """Recompute the LM's layer activations in backward (memory for time).

        Non-reentrant checkpointing by default: it needs no ``enable_input_require_grads`` even when
        the embeddings are frozen (the projector output already carries gradients). The vision
        tower is not checkpointed (frozen, it stores no activations for backward anyway).
        """
        checkpoint_kwargs = gradient_checkpointing_kwargs or {"use_reentrant": False}
        lm = self.language_model
        if hasattr(lm, "activation_checkpointing_enable"):  # transformers >= 5.2x name
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpoint_kwargs, **kwargs)
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpoint_kwargs, **kwargs)

    activation_checkpointing_enable = gradient_checkpointing_enable

    def gradient_checkpointing_disable(self) -> None:
        lm = self.language_model
        if hasattr(lm, "activation_checkpointing_disable"):
            lm.activation_checkpointing_disable()
        else:
            lm.gradient_checkpointing_disable()

    @property
    def is_gradient_checkpointing(self) -> bool:
        lm = self.language_model
        name = "is_activation_checkpointing" if hasattr(lm, "activation_checkpointing_enable") else "is_gradient_checkpointing"
        return bool(getattr(lm, name, False))

    def enable_input_require_grads(self) -> None:
        """For reentrant checkpointing with frozen embeddings (peft's prepare_model_for_kbit_training calls it)."""
        self.language_model.enable_input_require_grads()

    # ------------------------------------------------------------------ images -> embeddings

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Vision features before the projector. (B, 3, H, W) -> (B, N, D_vision).

        Hidden states of layer ``vision_feature_layer``; leading non-patch tokens (CLS, registers)
        are dropped, whatever their number: the patch tokens are the last N.
        """
        tower_dtype = next(self.vision_tower.parameters()).dtype
        outputs = self.vision_tower(pixel_values.to(tower_dtype), output_hidden_states=True)
        hidden = outputs.hidden_states[self.config.vision_feature_layer]  # (B, extra + N, D_vision)
        n_extra = hidden.shape[1] - self.num_image_tokens
        if n_extra < 0:
            raise ValueError(
                f"the vision tower gave {hidden.shape[1]} tokens, fewer than the {self.num_image_tokens} patches "
                f"expected from its config: pixel_values of shape {tuple(pixel_values.shape)} have the wrong size?"
            )
        return hidden[:, n_extra:]

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Image tokens in the LM's embedding space. (B, 3, H, W) -> (B, N, D_text)."""
        return self.projector(self.image_features(pixel_values))

    def embed_inputs(self, input_ids: torch.LongTensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """Text embeddings with the image tokens spliced in. -> inputs_embeds (B, T, D_text).
        ``pixel_values`` (B_img, 3, H, W): one image per block of N image tokens, in order."""
        return self.splice(input_ids, None if pixel_values is None else self.encode_images(pixel_values))

    def splice(self, input_ids: torch.LongTensor, image_embeds: torch.Tensor | None) -> torch.Tensor:
        """LLaVA's central step: put the projected patch tokens where the image tokens are.

        input_ids (B, T) hold N image-token ids per image; image_embeds (B_img, N, D_text) -> (B, T, D_text).
        The image-token positions get the features row by row (``masked_scatter``, as transformers' LLaVA).
        """
        image_mask = input_ids == self.config.image_token_id  # (B, T)
        # The image token's own embedding row is never used; embedding id 0 there means the image
        # token needs no trained row (or even a row: hub tokenizers add it past the vocabulary).
        inputs_embeds = self.get_input_embeddings()(input_ids.masked_fill(image_mask, 0))
        n_image_tokens = int(image_mask.sum())
        if image_embeds is None:
            if n_image_tokens:
                raise ValueError(f"input_ids hold {n_image_tokens} image tokens but no pixel_values were given")
            return inputs_embeds
        if n_image_tokens != image_embeds.shape[0] * image_embeds.shape[1]:
            raise ValueError(
                f"input_ids hold {n_image_tokens} image tokens but {image_embeds.shape[0]} images give "
                f"{image_embeds.shape[0]} x {image_embeds.shape[1]} features: expand <image> to "
                f"{self.num_image_tokens} tokens per image (llava_mini.model.conversation does)"
            )
        image_embeds = image_embeds.to(inputs_embeds.dtype).reshape(-1, inputs_embeds.shape[-1])
        return inputs_embeds.masked_scatter(image_mask.unsqueeze(-1), image_embeds)

    # ------------------------------------------------------------------ training / scoring

    def _head_is_plain(self) -> bool:
        """True when logits = output_embeddings(final hidden states), with no extra scaling."""
        config = self.language_model.config
        return getattr(config, "final_logit_softcapping", None) is None and getattr(config, "logit_scale", None) is None

    def forward(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        *,
        labelled_only: bool = True,
        return_logits: bool = False,
        output_attentions: bool = False,
        num_items_in_batch: int | torch.Tensor | None = None,
        **lm_kwargs,
    ) -> LlavaMiniOutput:
        """Loss (and optionally logits / attentions) of a batch.

        Args:
            input_ids: (B, T), image tokens expanded. pixel_values: (B_img, 3, H, W).
            attention_mask: (B, T), 1 on real tokens (right padding).
            labels: (B, T), -100 where nothing is learned; shifted inside (label t scores position t-1).
            labelled_only: with labels, run the LM head and cross-entropy only at labelled positions
                (M of them): logits (M, V) instead of (B, T, V). Same loss and gradients.
            return_logits: return full logits (B, T, V) (forces the full path).
            output_attentions: return the LM's attention weights (load the LM with
                ``attn_implementation="eager"``: fused kernels do not materialise them).
            num_items_in_batch: divide the summed loss by this (gradient accumulation), else by M.
            lm_kwargs: passed to the LM (position_ids, ...).
        Returns:
            LlavaMiniOutput(loss, logits, attentions).
        """
        inputs_embeds = self.embed_inputs(input_ids, pixel_values)
        lm_kwargs.setdefault("use_cache", False)  # forward is for training / scoring; generate() caches
        if output_attentions:
            implementation = getattr(self.language_model.config, "_attn_implementation", None)
            if implementation != "eager":
                raise ValueError(
                    f"output_attentions needs eager attention, the LM uses {implementation!r}: build the model with "
                    "attn_implementation='eager' or call model.language_model.set_attn_implementation('eager')"
                )
            lm_kwargs["output_attentions"] = True

        if labels is not None and labelled_only and not return_logits and self._head_is_plain():
            # The LM's body only: final hidden states (B, T, D), no vocabulary projection yet.
            outputs = self.language_model.get_decoder()(
                inputs_embeds=inputs_embeds, attention_mask=attention_mask, **lm_kwargs
            )
            loss = self.labelled_loss(outputs.last_hidden_state, labels, num_items_in_batch)
            return LlavaMiniOutput(loss=loss, attentions=outputs.attentions)

        if num_items_in_batch is not None:
            lm_kwargs["num_items_in_batch"] = num_items_in_batch
        outputs = self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **lm_kwargs
        )
        return LlavaMiniOutput(loss=outputs.loss, logits=outputs.logits, attentions=outputs.attentions)

    def labelled_loss(
        self, hidden_states: torch.Tensor, labels: torch.LongTensor, num_items_in_batch=None
    ) -> torch.Tensor:
        """Next-token cross-entropy computed only where a label exists.

        hidden_states (B, T, D), labels (B, T) -> scalar. Position t predicts label t + 1, so we
        keep the M positions with ``labels[:, 1:] != -100``, project those (M, D) -> (M, V) with the
        LM head, and average over M (or ``num_items_in_batch``). Logits are upcast to fp32 like
        transformers' own loss, so both paths agree.
        """
        targets = labels[:, 1:]                              # (B, T-1)
        keep = targets != IGNORE_INDEX                       # (B, T-1)
        selected = hidden_states[:, :-1][keep]               # (M, D)
        logits = self.get_output_embeddings()(selected).float()  # (M, V)
        loss = F.cross_entropy(logits, targets[keep], reduction="sum")
        denominator = num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1)
        if torch.is_tensor(denominator):
            denominator = denominator.to(loss.device)
        return loss / denominator

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        **generate_kwargs,
    ) -> torch.LongTensor:
        """Generate an answer. input_ids (B, T) *left*-padded prompts -> new tokens only (B, T_new).

        The prompt goes in as ``inputs_embeds`` (image features spliced in), so the LM's
        ``generate`` returns just the continuation; every transformers generation option applies.
        """
        inputs_embeds = self.embed_inputs(input_ids, pixel_values)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.language_model.generate(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, **generate_kwargs
        )

    # ------------------------------------------------------------------ saving / loading

    def save_pretrained(self, save_directory: str | Path, tokenizer=None, image_processor=None) -> Path:
        """Write ``vision_tower/``, ``language_model/`` (transformers folders), ``projector.safetensors``
        and ``llava_mini.json``; the tokenizer and image processor too, when given.

        A peft-wrapped model: ``merge_and_unload()`` it first (or save just the adapters with peft).
        """
        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        self.vision_tower.save_pretrained(save_directory / "vision_tower")
        self.language_model.save_pretrained(save_directory / "language_model")
        save_file({k: v.contiguous() for k, v in self.projector.state_dict().items()},
                  save_directory / PROJECTOR_WEIGHTS)
        (save_directory / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2))
        for extra in (tokenizer, image_processor):
            if extra is not None:
                extra.save_pretrained(save_directory)
        return save_directory

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        torch_dtype: torch.dtype | None = None,
        quantization_config=None,
        attn_implementation: str | None = None,
        projector_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> "LlavaMini":
        """Load what ``save_pretrained`` wrote (through ``build``, the same path as hub models)."""
        directory = Path(directory)
        config = json.loads((directory / CONFIG_NAME).read_text())
        model = build(
            directory / "vision_tower",
            directory / "language_model",
            projector_type=config["projector_type"],
            image_token_id=config["image_token_id"],
            torch_dtype=torch_dtype,
            quantization_config=quantization_config,
            attn_implementation=attn_implementation,
            vision_feature_layer=config["vision_feature_layer"],
            projector_dtype=projector_dtype,
            device=device,
        )
        state = load_file(directory / PROJECTOR_WEIGHTS, device=str(model.device))
        model.projector.load_state_dict(state)
        return model

    def export_to_transformers(self, save_directory: str | Path, tokenizer, image_processor) -> Path:
        """Write a ``LlavaForConditionalGeneration`` + ``LlavaProcessor`` folder of these weights.

        transformers' LLaVA holds only the MLP projector (``mlp2x_gelu``), drops exactly one CLS
        token (or none), and needs an unquantized, unwrapped LM (merge LoRA adapters first). The
        processor pads images to a square with the mean colour, as ``llava_mini.conversation`` does.
        """
        from transformers import LlavaConfig, LlavaImageProcessor, LlavaProcessor

        if self.config.projector_type != "mlp2x_gelu":
            raise ValueError(
                f"cannot export a {self.config.projector_type!r} projector: transformers' "
                "LlavaForConditionalGeneration only holds the 'mlp2x_gelu' form (linear_1 -> GELU -> linear_2)"
            )
        if any("lora_" in name for name, _ in self.named_parameters()):
            raise ValueError("the model holds LoRA adapters: merge them first (peft_model.merge_and_unload())")
        if getattr(self.language_model, "is_quantized", False) or getattr(self.language_model, "is_loaded_in_4bit", False):
            raise ValueError("cannot export a quantized LM: load it unquantized, merge the adapters, then export")
        text_config = self.language_model.config
        if self.config.image_token_id >= text_config.vocab_size:
            raise ValueError(
                f"image_token_id {self.config.image_token_id} is outside the LM vocabulary ({text_config.vocab_size}): "
                "transformers' LLaVA embeds it, so resize the LM's token embeddings first"
            )
        vision_config = _vision_config(self.vision_tower)
        side = vision_config.image_size
        with torch.no_grad():
            dummy = torch.zeros(1, 3, side, side, device=self.device)
            tower_dtype = next(self.vision_tower.parameters()).dtype
            n_tokens = self.vision_tower(dummy.to(tower_dtype), output_hidden_states=True).hidden_states[-1].shape[1]
        n_extra = n_tokens - self.num_image_tokens
        if n_extra not in (0, 1):
            raise ValueError(f"the vision tower adds {n_extra} non-patch tokens; transformers' LLaVA drops 0 or 1")

        config = LlavaConfig(
            vision_config=vision_config.to_dict(),
            text_config=text_config.to_dict(),
            image_token_index=self.config.image_token_id,
            image_seq_length=self.num_image_tokens,
            projector_hidden_act="gelu",
            vision_feature_select_strategy="default" if n_extra == 1 else "full",
            vision_feature_layer=self.config.vision_feature_layer,
            multimodal_projector_bias=True,
            tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
        )
        # Key layout of LlavaForConditionalGeneration: model.{vision_tower, multi_modal_projector,
        # language_model (the LM's body)} and lm_head (omitted when tied to the input embeddings).
        weights = {}
        for prefix, module in [
            ("model.vision_tower.", self.vision_tower),
            ("model.multi_modal_projector.", self.projector),
            ("model.language_model.", self.language_model.get_decoder()),
        ]:
            weights.update({prefix + k: v for k, v in module.state_dict().items()})
        if not config.tie_word_embeddings:
            weights["lm_head.weight"] = self.get_output_embeddings().weight
        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(save_directory)
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()},
                  save_directory / "model.safetensors", metadata={"format": "pt"})
        if getattr(self.language_model, "generation_config", None) is not None:
            self.language_model.generation_config.save_pretrained(save_directory)

        # The same image pipeline as ours: pad to square with the mean colour, then the processor's steps.
        settings = {  # a step the processor lacks (SigLIP: no centre crop) is off, not LLaVA's default
            key: bool(getattr(image_processor, key, False)) for key in
            ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb")
        }
        settings.update({
            key: getattr(image_processor, key)
            for key in ("size", "resample", "crop_size", "rescale_factor", "image_mean", "image_std")
            if getattr(image_processor, key, None) is not None
        })
        processor = LlavaProcessor(
            image_processor=LlavaImageProcessor(**settings, do_pad=True),
            tokenizer=tokenizer,
            patch_size=vision_config.patch_size,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            num_additional_image_tokens=n_extra,
            image_token=tokenizer.convert_ids_to_tokens(self.config.image_token_id),
        )
        processor.save_pretrained(save_directory)
        return save_directory


# ---------------------------------------------------------------------- construction


def load_vision_tower(name_or_path: str | Path, torch_dtype: torch.dtype | None = None) -> nn.Module:
    """The vision half of a checkpoint: a CLIP/SigLIP folder or hub name -> CLIPVisionModel/SiglipVisionModel.

    Works for full two-tower checkpoints (``openai/clip-vit-large-patch14-336``: only the vision
    weights are loaded) and for vision-only folders.
    """
    vision_config = _vision_config(AutoConfig.from_pretrained(name_or_path))
    vision_class = MODEL_MAPPING[type(vision_config)]  # CLIPVisionConfig -> CLIPVisionModel, ...
    # A two-tower checkpoint holds text-tower weights the vision model does not use; transformers reports
    # each of them as UNEXPECTED. That is expected here, so keep the load quiet (errors still show).
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        return vision_class.from_pretrained(name_or_path, dtype=torch_dtype)
    finally:
        transformers_logging.set_verbosity(verbosity)


def build(
    vision_name_or_path: str | Path,
    lm_name_or_path: str | Path,
    projector_type: str = "mlp2x_gelu",
    image_token_id: int | None = None,
    torch_dtype: torch.dtype | None = None,
    quantization_config=None,
    attn_implementation: str | None = None,
    vision_feature_layer: int = -2,
    projector_dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> LlavaMini:
    """Load both towers with ``from_pretrained`` (hub name or local folder) and add a fresh projector.

    Args:
        image_token_id: id of ``<image>`` in the tokenizer (see ``conversation.add_image_token``).
        torch_dtype: dtype of the towers (e.g. torch.bfloat16); None: as saved / float32.
        quantization_config: e.g. ``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True)``: applied to the LM only; vision tower and projector
            stay unquantized.
        attn_implementation: the LM's attention ("eager" to read attention weights, "sdpa", ...).
        projector_dtype: default float32 when the LM is quantized, else ``torch_dtype`` (or float32).
        device: where to put the model (the LM is loaded straight there).
    """
    if image_token_id is None:
        raise ValueError("image_token_id is required (llava_mini.conversation.add_image_token(tokenizer) gives it)")
    vision_tower = load_vision_tower(vision_name_or_path, torch_dtype)
    lm_kwargs = {"dtype": torch_dtype}
    if quantization_config is not None:
        lm_kwargs["quantization_config"] = quantization_config
    if attn_implementation is not None:
        lm_kwargs["attn_implementation"] = attn_implementation
    if device is not None:
        lm_kwargs["device_map"] = {"": device}
    language_model = AutoModelForCausalLM.from_pretrained(lm_name_or_path, **lm_kwargs)
    if device is not None:
        vision_tower.to(device)
    if projector_dtype is None:
        projector_dtype = torch.float32 if quantization_config is not None else (torch_dtype or torch.float32)
    return LlavaMini(vision_tower, language_model, image_token_id, projector_type, vision_feature_layer,
                     projector_dtype)
