"""Peak training memory, estimated before anything is loaded from the towers' config.json (``AutoConfig``):
a local folder is read as it is; the hub towers of the colab and paper presets, out of reach without the
network, have their published config.json shipped under data/shapes/<preset>/<vision|lm>/. And the switch that
makes a CPU run's resident memory follow its tensors (``return_freed_host_memory``).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import torch

from llava_mini.config import PRESETS, Preset, get_preset
from llava_mini.paths import DATA_DIR

GIB = 1024 ** 3


def tower_config(preset: str | Preset, part: str):
    """The transformers config of a preset's ``part`` ("vision": its vision config, or "lm")."""
    from transformers import AutoConfig

    preset = get_preset(preset)
    source, shipped = getattr(preset.model, part), DATA_DIR / "shapes" / preset.name / part
    own_hub_tower = preset.name in PRESETS and getattr(PRESETS[preset.name].model, part) == source
    config = AutoConfig.from_pretrained(shipped if own_hub_tower and not Path(source).is_dir() else source)
    return getattr(config, "vision_config", config) if part == "vision" else config


def parameter_counts(vision, lm, lora_r: int = 0) -> dict[str, int]:
    """Parameters of each part, from the two configs: a CLIP / SigLIP vision tower, Llama / Qwen2 / Mistral
    decoder layers (biases not counted), the mlp2x_gelu projector, LoRA A (r x in) + B (out x r) per linear."""
    h, i, layers, heads = lm.hidden_size, lm.intermediate_size, lm.num_hidden_layers, lm.num_attention_heads
    kv = (getattr(lm, "num_key_value_heads", None) or heads) * (h // heads)
    linears = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]  # q, k, v, o, gate, up, down
    vh, vi, patch = vision.hidden_size, vision.intermediate_size, vision.patch_size
    vision_layer = 4 * (vh * vh + vh) + 2 * vh * vi + vi + vh + 4 * vh  # attention, MLP, two layer norms
    vision_rest = 3 * patch ** 2 * vh + ((vision.image_size // patch) ** 2 + 2) * vh + 4 * vh  # patches, positions
    embeddings = lm.vocab_size * h * (1 if lm.tie_word_embeddings else 2)  # (+ the output head when untied)
    return {
        "vision": vision.num_hidden_layers * vision_layer + vision_rest,
        "lm_linear": layers * sum(a * b for a, b in linears),
        "lm_other": embeddings + (2 * layers + 1) * h,  # + norms
        "projector": vh * h + h + h * h + h,
        "lora": layers * sum(lora_r * (a + b) for a, b in linears),
    }


@dataclass
class MemoryEstimate:
    """Rows of (part, GiB, how it was counted) of training memory on the device; ``total`` in GiB; ``host``:
    (GiB, how) of peak host RAM while the towers load. Printing it gives a table."""

    title: str
    rows: list[tuple[str, float, str]]
    host: tuple[float, str] = (0.0, "")

    @property
    def total(self) -> float:
        return sum(gib for _, gib, _ in self.rows)

    def __str__(self) -> str:
        width = max(len(part) for part, _, _ in self.rows)
        lines = [self.title, f"{'part':<{width}}  {'GiB':>8}  how", "-" * (width + 40)]
        lines += [f"{part:<{width}}  {gib:8.3f}  {how}" for part, gib, how in self.rows]
        lines += ["-" * (width + 40), f"{'total':<{width}}  {self.total:8.3f}  (+ CUDA context, ~0.5 GiB on a GPU)",
                  f"{'host RAM, loading':<{width}}  {self.host[0]:8.3f}  {self.host[1]}"]
        return "\n".join(lines)

    __repr__ = __str__


def estimate_memory(preset: str | Preset = "tiny", mode: str = "qlora", batch_size: int | None = None,
                    seq_len: int | None = None, lora_r: int | None = None, gradient_checkpointing: bool | None = None,
                    precision: str | None = None, device: str | None = None) -> MemoryEstimate:
    """Peak training memory, roughly, from the preset's shapes. mode: "stage1" (projector only), "lora" (LM in
    ``precision``) or "qlora" (LM linears in 4-bit). batch_size: the micro-batch; seq_len: tokens per example;
    precision: of frozen weights and activations. Defaults: the preset's TrainConfig of that mode. Calibrated
    against the H100 anchors in design.md (Llama-2-7B shape, QLoRA batch 4 with checkpointing: measured 11.0
    GiB) to ~10%.

    Host RAM while loading, beside it: on a GPU (``device`` "cuda"; default: where load_base puts the model)
    each tower loads straight onto the device in the compute dtype, one tensor at a time from memory-mapped
    safetensors, so the host holds about the largest tensor: read (assumed stored in fp32) and its cast copy.
    Not counted: the reclaimable page cache of the mapped files, and the Python process itself. On the CPU
    ("cpu") the host holds everything: the total."""
    preset = get_preset(preset)
    vision, lm = tower_config(preset, "vision"), tower_config(preset, "lm")
    cfg = preset.train_config(mode)
    r = lora_r or cfg.lora_r
    n = parameter_counts(vision, lm, r)
    image_tokens = (vision.image_size // vision.patch_size) ** 2
    batch = batch_size or cfg.micro_batch()
    seq = seq_len or min(preset.data.max_length, image_tokens + 128)
    checkpointing = cfg.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
    precision = precision or cfg.precision
    precision = "bf16" if precision == "auto" else precision  # a GPU preset: bf16 (A100/H100) or fp16 (T4), 2 B
    half = 4 if precision == "fp32" else 2           # bytes per value of frozen weights and activations
    h, i, layers = lm.hidden_size, lm.intermediate_size, lm.num_hidden_layers

    rows = [("vision tower (frozen)", n["vision"] * half, f"{n['vision'] / 1e6:.1f}M x {half} B")]
    if mode == "qlora":
        # NF4: 4 bits per weight + one fp32 scale per 64 weights; double quantization stores the scales in
        # 8 bits (+ one fp32 per 256 scales): 4 + 8/64 + 32/(64*256) = 4.127 bits per weight.
        bits = 4 + 8 / 64 + 32 / (64 * 256)
        rows.append(("LM linear layers (NF4)", n["lm_linear"] * bits / 8,
                     f"{n['lm_linear'] / 1e6:.0f}M x {bits:.3f} bit"))
        # prepare_model_for_kbit_training upcasts what is not quantized (embeddings, head, norms) to fp32.
        rows.append(("LM embeddings/head/norms", n["lm_other"] * 4, f"{n['lm_other'] / 1e6:.1f}M x 4 B (fp32)"))
    else:
        rows.append(("LM linear layers (frozen)", n["lm_linear"] * half, f"{n['lm_linear'] / 1e6:.0f}M x {half} B"))
        rows.append(("LM embeddings/head/norms", n["lm_other"] * half, f"{n['lm_other'] / 1e6:.1f}M x {half} B"))
    # Trainable fp32 tensors: weight 4 B + gradient 4 B + AdamW's two moments 8 B = 16 B per parameter.
    rows.append(("projector + grad + AdamW", n["projector"] * 16, f"{n['projector'] / 1e6:.2f}M x 16 B"))
    if mode != "stage1":
        rows.append((f"LoRA r={r} + grad + AdamW", n["lora"] * 16, f"{n['lora'] / 1e6:.1f}M x 16 B"))

    # Activations kept for backward, per decoder layer and token, in values (x bytes). With LoRA every
    # linear's input is saved (plus LoRA's dropout copies), attention keeps q, k, v, out, the MLP its
    # gate/up/act outputs: ~18h + 5i (fitted to the anchors). Stage 1 saves no inputs of frozen linears:
    # ~8h + 3i. Checkpointing keeps only each layer's input (h) and recomputes one layer at a time.
    per_token = (8 * h + 3 * i) if mode == "stage1" else (18 * h + 5 * i)
    kept = layers * h + per_token if checkpointing else layers * per_token  # values per token
    how = (f"({layers} layers x h + one layer) x {half} B (checkpointing)" if checkpointing
           else f"{layers} layers x (~{per_token // h}h) x {half} B")
    rows.append(("LM activations", batch * seq * kept * half, f"{batch}x{seq} tokens x {how}"))
    # The LM head runs only on answer tokens (labelled_only): logits + their gradient in fp32.
    answers = batch * max(1, (seq - image_tokens) // 2)
    rows.append(("logits at answer tokens", answers * lm.vocab_size * 8,
                 f"~{answers} answer tokens x {lm.vocab_size} vocab x 8 B"))
    # The frozen vision tower runs without saving anything; its largest transient is about one layer.
    vision_tokens = batch * (image_tokens + 1)
    one_layer = (4 * vision.hidden_size + vision.intermediate_size) * half
    rows.append(("vision forward (transient)", vision_tokens * one_layer, f"{vision_tokens} tokens x one layer"))

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    title = (f"estimated peak training memory: preset {preset.name!r}, {mode}, micro-batch {batch} x {seq} tokens, "
             f"{'checkpointing' if checkpointing else 'no checkpointing'}, {precision}, {device}")
    estimate = MemoryEstimate(title, [(part, size / GIB, how) for part, size, how in rows])
    if device == "cpu":
        estimate.host = (estimate.total, "training on the CPU: all of the above is host RAM")
    else:
        largest = max(lm.vocab_size * h, h * i, vision.hidden_size * vision.intermediate_size)  # embeddings, mostly
        estimate.host = (largest * (4 + half) / GIB, f"straight to the GPU: largest tensor, {largest / 1e6:.1f}M "
                         f"x (4 B read + {half} B cast) (+ the Python process)")
    return estimate


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)


def return_freed_host_memory(threshold_bytes: int) -> bool:
    """Make freed host tensors leave the process: glibc's malloc keeps a freed block below its mmap threshold
    in the heap, and raises that threshold (up to 32 MiB) each time a larger block is freed, so on the CPU a
    training step's tensors of a few MiB end up in a fragmented heap that stays resident: the process grows GiBs
    past the tensors alive. A fixed threshold gives every block of ``threshold_bytes`` or more its own mapping,
    unmapped when freed. Process-wide, for the rest of the process. False where there is no glibc (macOS)."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, int(threshold_bytes)))
    except (OSError, AttributeError):
        return False
