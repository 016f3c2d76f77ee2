"""LlavaMini: a vision tower, a projector and a causal language model.

    pixel_values (B, 3, H, W)
        -> vision tower, hidden states of layer ``vision_feature_layer`` (-2), patch tokens only
                                                           (B, N, D_vision)   N = (H / patch)^2
        -> projector (``linear`` or ``mlp2x_gelu``)        (B, N, D_text)
        -> ``splice``: into the text embeddings where ``input_ids == image_token_id``
    input_ids (B, T) hold N copies of the image token per image (``encode_conversation`` expands them),
    so every text token keeps its position and the LM sees one plain sequence (B, T, D_text).

Both towers are ordinary transformers models loaded with ``from_pretrained`` (a hub name or a local
folder: the same code path), so 4-bit loading of the LM, LoRA by module-name regex (the LM lives at
``language_model``), gradient checkpointing and eager attention all apply to them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import ModelOutput
from transformers.models.auto.modeling_auto import MODEL_MAPPING
from transformers.utils import logging as transformers_logging

from llava_mini.files import read_json, write_json
from llava_mini.model.conversation import IGNORE_INDEX
from llava_mini.model.export import export_to_transformers
from llava_mini.model.projector import Projector
from llava_mini.model.recompute import keep_matmul_outputs_context

CONFIG_NAME = "llava_mini.json"
PROJECTOR_WEIGHTS = "projector.safetensors"


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


class LlavaMini(nn.Module):
    """Vision tower (CLIPVisionModel, SiglipVisionModel, ...) + projector + causal LM (LlamaForCausalLM, ...).
    ``image_token_id`` marks image positions in input_ids; ``vision_feature_layer``: the tower's hidden state
    to read (-2: second to last); ``projector_dtype``: default float32 (kept out of quantization)."""

    def __init__(self, vision_tower: nn.Module, language_model: nn.Module, image_token_id: int,
                 projector_type: str = "mlp2x_gelu", vision_feature_layer: int = -2,
                 projector_dtype: torch.dtype | None = None):
        super().__init__()
        self.vision_tower, self.language_model = vision_tower, language_model
        vision, text_hidden_size = self.vision_config, language_model.config.hidden_size
        self.config = LlavaMiniConfig(image_token_id=int(image_token_id), projector_type=projector_type,
                                      vision_feature_layer=vision_feature_layer,
                                      num_image_tokens=(vision.image_size // vision.patch_size) ** 2,
                                      vision_hidden_size=vision.hidden_size, text_hidden_size=text_hidden_size)
        self.projector = Projector(vision.hidden_size, text_hidden_size, projector_type).to(
            device=self.device, dtype=projector_dtype or torch.float32)

    @property
    def num_image_tokens(self) -> int:
        return self.config.num_image_tokens

    @property
    def vision_config(self):  # CLIPVisionConfig, SiglipVisionConfig, ...
        return self.vision_tower.config

    @property
    def device(self) -> torch.device:
        return self.get_input_embeddings().weight.device

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    # --- gradient checkpointing, on the LM only (the frozen vision tower stores no activations for backward)
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, every: int = 1,
                                      keep_matmul_outputs: bool = False, **kwargs) -> None:
        """Non-reentrant by default: it needs no ``enable_input_require_grads`` even with frozen embeddings
        (the projector output already carries gradients). every: checkpoint only every n-th decoder layer; the
        others keep their activations (less recompute where memory allows). keep_matmul_outputs: a checkpointed
        layer also keeps its frozen matmuls' and attention's outputs and reruns only the cheap rest (recompute.py)."""
        lm = self.language_model  # activation_checkpointing_*: the name since transformers 5.2x
        enable = getattr(lm, "activation_checkpointing_enable", lm.gradient_checkpointing_enable)
        options = dict(gradient_checkpointing_kwargs or {"use_reentrant": False})
        if keep_matmul_outputs:
            if options.get("use_reentrant"):
                raise ValueError("keep_matmul_outputs needs non-reentrant checkpointing (use_reentrant=False)")
            options["context_fn"] = keep_matmul_outputs_context
        enable(options, **kwargs)
        # Each layer reads its own flag; set here, not with transformers' every_n_layers (5.2x; 5.17 lacks it).
        layers = [m for m in lm.modules() if isinstance(m, GradientCheckpointingLayer)]
        for i, layer in enumerate(layers):
            layer.gradient_checkpointing = i % every == 0

    def gradient_checkpointing_disable(self) -> None:
        lm = self.language_model
        getattr(lm, "activation_checkpointing_disable", lm.gradient_checkpointing_disable)()

    @property
    def is_gradient_checkpointing(self) -> bool:  # transformers' own test, under either version's name
        return any(getattr(m, "gradient_checkpointing", False) for m in self.language_model.modules())

    # --- images -> embeddings
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Vision features before the projector. (B, 3, H, W) -> (B, N, D_vision).

        Hidden states of layer ``vision_feature_layer``; leading non-patch tokens (CLS, registers)
        are dropped, whatever their number: the patch tokens are the last N.
        """
        outputs = self.vision_tower(pixel_values.to(self.vision_tower.dtype), output_hidden_states=True)
        hidden = outputs.hidden_states[self.config.vision_feature_layer]  # (B, extra + N, D_vision)
        n_extra = hidden.shape[1] - self.num_image_tokens
        if n_extra < 0:
            raise ValueError(f"the vision tower gave {hidden.shape[1]} tokens, fewer than its {self.num_image_tokens} "
                             f"patches: pixel_values of shape {tuple(pixel_values.shape)} have the wrong size?")
        return hidden[:, n_extra:]

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Image tokens in the LM's embedding space. (B, 3, H, W) -> (B, N, D_text)."""
        return self.projector(self.image_features(pixel_values))

    def embed_inputs(self, input_ids: torch.LongTensor, pixel_values: torch.Tensor | None,
                     image_features: torch.Tensor | None = None) -> torch.Tensor:
        """Text embeddings with the image tokens spliced in. -> inputs_embeds (B, T, D_text).
        ``pixel_values`` (B_img, 3, H, W): one image per block of N image tokens, in order; or instead
        ``image_features`` (B_img, N, D_vision): ``image_features(pixel_values)`` computed beforehand (a frozen
        tower gives an image the same features every time, so training may compute them once)."""
        if pixel_values is not None:
            if image_features is not None:
                raise ValueError("give pixel_values or image_features, not both")
            image_features = self.image_features(pixel_values)
        return self.splice(input_ids, None if image_features is None else self.projector(image_features))

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
            raise ValueError(f"input_ids hold {n_image_tokens} image tokens, the images give {image_embeds.shape[0]} x "
                             f"{image_embeds.shape[1]} features: expand <image> to {self.num_image_tokens} tokens per "
                             "image (encode_conversation and build_prompt do)")
        image_embeds = image_embeds.to(inputs_embeds.dtype).reshape(-1, inputs_embeds.shape[-1])
        return inputs_embeds.masked_scatter(image_mask.unsqueeze(-1), image_embeds)

    # --- training / scoring
    def forward(self, input_ids: torch.LongTensor, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, labels: torch.LongTensor | None = None, *,
                image_features: torch.Tensor | None = None, labelled_only: bool = True, return_logits: bool = False,
                output_attentions: bool = False, num_items_in_batch: int | torch.Tensor | None = None,
                loss_chunk_logits: int | None = None, **lm_kwargs) -> LlavaMiniOutput:
        """Loss (and optionally logits / attentions) of a batch. input_ids (B, T), image tokens expanded;
        pixel_values (B_img, 3, H, W) or image_features (B_img, N, D_vision) (``embed_inputs``); attention_mask
        (B, T), 1 on real tokens; labels (B, T), -100 where nothing is learned, shifted inside. labelled_only: the
        LM head and loss only at labelled positions (``labelled_loss``, in chunks of ``loss_chunk_logits``);
        return_logits: full logits (B, T, V); num_items_in_batch: divide the summed loss by this (gradient
        accumulation), else by the number of labelled tokens."""
        inputs_embeds = self.embed_inputs(input_ids, pixel_values, image_features)
        lm_kwargs.setdefault("use_cache", False)  # forward is for training / scoring; generate() caches
        config = self.language_model.config
        if output_attentions:
            if config._attn_implementation != "eager":  # fused kernels do not materialise the weights
                raise ValueError(f"output_attentions needs eager attention, the LM uses "
                                 f"{config._attn_implementation!r}: build the model with attn_implementation='eager' "
                                 "or call model.language_model.set_attn_implementation('eager')")
            lm_kwargs["output_attentions"] = True
        # A plain head (logits = output_embeddings(hidden), unscaled) allows the labelled-only path.
        plain_head = all(getattr(config, name, None) is None for name in ("final_logit_softcapping", "logit_scale"))
        if labels is not None and labelled_only and not return_logits and plain_head:
            # The LM's body only: final hidden states (B, T, D), no vocabulary projection yet.
            outputs = self.language_model.get_decoder()(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                                         **lm_kwargs)
            loss = self.labelled_loss(outputs.last_hidden_state, labels, num_items_in_batch, loss_chunk_logits)
            return LlavaMiniOutput(loss=loss, attentions=outputs.attentions)
        outputs = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels,
                                      num_items_in_batch=num_items_in_batch, **lm_kwargs)
        return LlavaMiniOutput(loss=outputs.loss, logits=outputs.logits, attentions=outputs.attentions)

    def labelled_loss(self, hidden_states: torch.Tensor, labels: torch.LongTensor, num_items_in_batch=None,
                      chunk_logits: int | None = None):
        """Next-token cross-entropy only where a label exists. (B, T, D), (B, T) -> scalar.

        Kept instead of the LM's own loss: only answer tokens pay for the vocabulary (a 152K vocabulary times
        every position in fp32 is most of a small model's training memory). Position t predicts label t + 1:
        the M positions with ``labels[:, 1:] != -100`` go through the LM head (M, D) -> (M, V), in fp32 like
        transformers' loss, so both paths give the same loss and gradients.

        chunk_logits: at most this many logits (rows x V) at once. Each chunk of rows runs under
        ``torch.utils.checkpoint``: its forward saves no logits, and backward recomputes one chunk's at a time
        (one more head matmul, on the M rows only). A custom autograd function could skip that recompute, but
        would redo by hand what autograd, autocast and a trainable head already get right."""
        targets = labels[:, 1:]                              # (B, T-1)
        keep = targets != IGNORE_INDEX                       # (B, T-1)
        selected, wanted = hidden_states[:, :-1][keep], targets[keep]  # (M, D), (M,)
        vocabulary = self.get_output_embeddings().out_features
        rows = len(selected) if chunk_logits is None else max(1, chunk_logits // vocabulary)
        if rows >= len(selected):
            loss = self._summed_cross_entropy(selected, wanted)
        else:  # (the head has no randomness: no RNG state to keep)
            loss = sum(checkpoint(self._summed_cross_entropy, h, t, use_reentrant=False, preserve_rng_state=False)
                       for h, t in zip(selected.split(rows), wanted.split(rows)))
        denominator = keep.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return loss / torch.as_tensor(denominator, device=loss.device)

    def _summed_cross_entropy(self, hidden: torch.Tensor, targets: torch.LongTensor) -> torch.Tensor:
        """(M, D), (M,) -> the summed cross-entropy of the LM head's logits (M, V), taken in fp32."""
        return F.cross_entropy(self.get_output_embeddings()(hidden).float(), targets, reduction="sum")

    @torch.no_grad()
    def generate(self, input_ids: torch.LongTensor, pixel_values: torch.Tensor | None,
                 attention_mask: torch.Tensor | None = None, **generate_kwargs) -> torch.LongTensor:
        """input_ids (B, T) *left*-padded prompts -> new tokens only (B, T_new), with every option of the LM's
        ``generate`` (the prompt goes in as ``inputs_embeds``). Prompt lists, batched, cut at EOS: ``generate_ids``."""
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        return self.language_model.generate(inputs_embeds=self.embed_inputs(input_ids, pixel_values),
                                            attention_mask=attention_mask, **generate_kwargs)

    # --- saving / loading
    def save_pretrained(self, save_directory: str | Path, tokenizer=None, image_processor=None,
                        towers: bool = True) -> Path:
        """Write ``llava_mini.json``, ``projector.safetensors``, the towers as transformers folders
        ``vision_tower/`` and ``language_model/`` (not with ``towers=False``: a training checkpoint names
        them) and the tokenizer / image processor when given. Merge a peft-wrapped LM first (merge_and_unload)."""
        save_directory = Path(save_directory)
        write_json(save_directory / CONFIG_NAME, self.config.to_dict(), indent=2)  # (creates the folder)
        save_model(self.projector, save_directory / PROJECTOR_WEIGHTS, force_contiguous=True)
        if towers:
            self.vision_tower.save_pretrained(save_directory / "vision_tower")
            self.language_model.save_pretrained(save_directory / "language_model")
        for extra in (tokenizer, image_processor):
            if extra is not None:
                extra.save_pretrained(save_directory)
        return save_directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, torch_dtype: torch.dtype | None = None, quantization_config=None,
                        attn_implementation: str | None = None, projector_dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None, vision: str | Path | None = None,
                        lm: str | Path | None = None) -> "LlavaMini":
        """Load what ``save_pretrained`` wrote (through ``build``, the same path as hub models). ``vision``,
        ``lm``: the towers (hub names or folders) when the folder holds none, or others."""
        directory = Path(directory)
        config = read_json(directory / CONFIG_NAME)
        model = build(vision or directory / "vision_tower", lm or directory / "language_model",
                      config["projector_type"], config["image_token_id"], torch_dtype=torch_dtype,
                      quantization_config=quantization_config, attn_implementation=attn_implementation,
                      vision_feature_layer=config["vision_feature_layer"], projector_dtype=projector_dtype,
                      device=device)
        load_model(model.projector, directory / PROJECTOR_WEIGHTS, device=str(model.device))
        return model

    def export_to_transformers(self, save_directory: str | Path, tokenizer, image_processor) -> Path:
        """Write a transformers ``LlavaForConditionalGeneration`` + ``LlavaProcessor`` folder (export.py)."""
        return export_to_transformers(self, save_directory, tokenizer, image_processor)


def placement(device: str | torch.device | None) -> dict | None:
    """``from_pretrained``'s device_map for one device: each tensor is read and cast on its own and moved
    there, so host RAM never holds the whole tower (Colab has ~12.7 GB). None: built on the CPU as usual."""
    return None if device is None else {"": device}


def load_vision_tower(name_or_path: str | Path, torch_dtype: torch.dtype | None = None,
                      device: str | torch.device | None = None) -> nn.Module:
    """The vision half of a checkpoint: a CLIP/SigLIP folder or hub name -> CLIPVisionModel/SiglipVisionModel
    (for two-tower checkpoints like ``openai/clip-vit-large-patch14-336`` and vision-only folders), loaded
    straight onto ``device`` (``placement``) in ``torch_dtype``."""
    config = AutoConfig.from_pretrained(name_or_path)
    vision_config = getattr(config, "vision_config", config)  # CLIPConfig holds a CLIPVisionConfig
    vision_class = MODEL_MAPPING[type(vision_config)]  # CLIPVisionConfig -> CLIPVisionModel, ...
    # A two-tower checkpoint holds text-tower weights the vision model does not use; transformers reports
    # each of them as UNEXPECTED. That is expected here, so keep the load quiet (errors still show).
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        return vision_class.from_pretrained(name_or_path, dtype=torch_dtype, device_map=placement(device))
    finally:
        transformers_logging.set_verbosity(verbosity)


def build(vision_name_or_path: str | Path, lm_name_or_path: str | Path, projector_type: str = "mlp2x_gelu",
          image_token_id: int | None = None, torch_dtype: torch.dtype | None = None, quantization_config=None,
          attn_implementation: str | None = None, vision_feature_layer: int = -2,
          projector_dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> LlavaMini:
    """Load both towers with ``from_pretrained`` (hub name or local folder) and add a fresh projector.

    image_token_id: ``add_image_token(tokenizer)`` gives it. quantization_config (e.g. ``BitsAndBytesConfig(
    load_in_4bit=True, bnb_4bit_quant_type="nf4")``) applies to the LM only. attn_implementation: "eager" to
    read attention weights. projector_dtype: default float32 when the LM is quantized, else ``torch_dtype``.
    """
    if image_token_id is None:
        raise ValueError("image_token_id is required (llava_mini.model.add_image_token(tokenizer) gives it)")
    vision_tower = load_vision_tower(vision_name_or_path, torch_dtype, device)
    language_model = AutoModelForCausalLM.from_pretrained(
        lm_name_or_path, dtype=torch_dtype, quantization_config=quantization_config,
        attn_implementation=attn_implementation, device_map=placement(device))
    return LlavaMini(vision_tower, language_model, image_token_id, projector_type, vision_feature_layer,
                     projector_dtype or (torch_dtype if quantization_config is None else None))
