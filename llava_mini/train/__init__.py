"""Stage 1 (feature alignment) and stage 2 (LoRA / QLoRA instruction tuning) (notebooks 03-04)."""

from llava_mini.train.loop import (  # noqa: F401
    TrainResult, resolve_precision, compute_dtype, qlora_quantization_config, is_quantized, has_lora,
    freeze_for_stage1, add_lora, merge_lora, trainable_parameters, StepSampler, count_labels,
    backbone_fingerprint, save_checkpoint, load_checkpoint, load_stage2, latest_checkpoint, train, plot_loss,
)
from llava_mini.train.memory import GIB, MemoryEstimate, estimate_memory  # noqa: F401
