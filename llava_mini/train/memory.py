"""Peak training memory, estimated from the shapes alone before anything is loaded."""

from __future__ import annotations

from dataclasses import dataclass

from llava_mini.config import Preset, get_preset

GIB = 1024 ** 3




@dataclass
class MemoryEstimate:
    """Rows of (part, GiB, how it was counted); ``total`` in GiB. Printing it gives a table."""

    title: str
    rows: list[tuple[str, float, str]]

    @property
    def total(self) -> float:
        return sum(gib for _, gib, _ in self.rows)

    def __str__(self) -> str:
        width = max(len(part) for part, _, _ in self.rows)
        lines = [self.title, f"{'part':<{width}}  {'GiB':>8}  how", "-" * (width + 40)]
        lines += [f"{part:<{width}}  {gib:8.3f}  {how}" for part, gib, how in self.rows]
        lines += ["-" * (width + 40), f"{'total':<{width}}  {self.total:8.3f}  (+ CUDA context, ~0.5 GiB on a GPU)"]
        return "\n".join(lines)

    __repr__ = __str__


def estimate_memory(
    preset: str | Preset = "tiny",
    mode: str = "qlora",
    batch_size: int | None = None,
    seq_len: int | None = None,
    lora_r: int | None = None,
    gradient_checkpointing: bool | None = None,
    precision: str | None = None,
) -> MemoryEstimate:
    """Peak training memory, roughly, from the preset's shapes (nothing is loaded).

    mode: "stage1" (projector only), "lora" (LM in ``precision``) or "qlora" (LM linears in 4-bit).
    batch_size: examples per forward pass (the micro-batch); seq_len: tokens per example (default: the
    image tokens + 128 text tokens, capped at ``max_length``). precision: of frozen weights and
    activations (default: the preset's; "auto" counts as bf16). Other defaults come from the preset's
    TrainConfig of that mode. Calibrated against the H100 anchors in design.md (Llama-2-7B shape, QLoRA
    batch 4 with checkpointing: measured 11.0 GiB) to about 10%.
    """
    preset = get_preset(preset)
    s = preset.shape
    cfg = preset.train_config(mode)
    batch = batch_size or cfg.micro_batch()
    seq = seq_len or min(preset.max_length, s.num_image_tokens + 128)
    r = lora_r or cfg.lora_r
    checkpointing = cfg.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
    precision = precision or cfg.precision
    if precision == "auto":  # a GPU preset: bf16 (A100/H100) or fp16 (T4), two bytes either way
        precision = "bf16"
    half = 4 if precision == "fp32" else 2           # bytes per value of frozen weights and activations
    h, i, layers = s.lm_hidden, s.lm_intermediate, s.lm_layers

    rows = [("vision tower (frozen)", s.vision_params() * half, f"{s.vision_params() / 1e6:.1f}M x {half} B")]
    if mode == "qlora":
        # NF4: 4 bits per weight + one fp32 scale per 64 weights; double quantization stores the scales in
        # 8 bits (+ one fp32 per 256 scales): 4 + 8/64 + 32/(64*256) = 4.127 bits per weight.
        bits = 4 + 8 / 64 + 32 / (64 * 256)
        rows.append(("LM linear layers (NF4)", s.lm_linear_params() * bits / 8,
                     f"{s.lm_linear_params() / 1e6:.0f}M x {bits:.3f} bit"))
        # prepare_model_for_kbit_training upcasts what is not quantized (embeddings, head, norms) to fp32.
        rows.append(("LM embeddings/head/norms", s.lm_other_params() * 4, f"{s.lm_other_params() / 1e6:.1f}M x 4 B (fp32)"))
    else:
        rows.append(("LM linear layers (frozen)", s.lm_linear_params() * half,
                     f"{s.lm_linear_params() / 1e6:.0f}M x {half} B"))
        rows.append(("LM embeddings/head/norms", s.lm_other_params() * half, f"{s.lm_other_params() / 1e6:.1f}M x {half} B"))

    # Trainable fp32 tensors: weight 4 B + gradient 4 B + AdamW's two moments 8 B = 16 B per parameter.
    rows.append(("projector + grad + AdamW", s.projector_params() * 16, f"{s.projector_params() / 1e6:.2f}M x 16 B"))
    if mode != "stage1":
        rows.append((f"LoRA r={r} + grad + AdamW", s.lora_params(r) * 16, f"{s.lora_params(r) / 1e6:.1f}M x 16 B"))

    # Activations kept for backward, per decoder layer and token, in values (x bytes). With LoRA every
    # linear's input is saved (plus LoRA's dropout copies), attention keeps q, k, v, out, the MLP its
    # gate/up/act outputs: ~18h + 5i (fitted to the anchors). Stage 1 saves no inputs of frozen linears:
    # ~8h + 3i. Checkpointing keeps only each layer's input (h) and recomputes one layer at a time.
    per_token = (8 * h + 3 * i) if mode == "stage1" else (18 * h + 5 * i)
    tokens = batch * seq
    if checkpointing:
        activations = tokens * (layers * h + per_token) * half
        how = f"{batch}x{seq} tokens x ({layers} layers x h + one layer) x {half} B (checkpointing)"
    else:
        activations = tokens * layers * per_token * half
        how = f"{batch}x{seq} tokens x {layers} layers x (~{per_token // h}h) x {half} B"
    rows.append(("LM activations", activations, how))
    # The LM head runs only on answer tokens (labelled_only): logits + their gradient in fp32.
    answer_tokens = batch * max(1, (seq - s.num_image_tokens) // 2)
    rows.append(("logits at answer tokens", answer_tokens * s.vocab_size * 8,
                 f"~{answer_tokens} answer tokens x {s.vocab_size} vocab x 8 B"))
    # The frozen vision tower runs without saving anything; its largest transient is about one layer.
    vision_tokens = batch * (s.num_image_tokens + 1)
    rows.append(("vision forward (transient)", vision_tokens * (4 * s.vision_hidden + s.vision_intermediate) * half,
                 f"{vision_tokens} tokens x one layer"))

    title = (f"estimated peak training memory: preset {preset.name!r}, {mode}, micro-batch {batch} x {seq} tokens, "
             f"{'checkpointing' if checkpointing else 'no checkpointing'}, {precision}")
    return MemoryEstimate(title, [(part, size / GIB, how) for part, size, how in rows])
