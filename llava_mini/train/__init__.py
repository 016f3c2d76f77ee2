"""Training (notebooks 03-04): precision, adapters (what is trained), sampler, loop, checkpoints (and resume),
plots, memory (the estimate)."""

from llava_mini.train.adapters import (  # noqa: F401
    unwrap, base_language_model, is_quantized, has_lora, freeze_for_stage1, add_lora, merge_lora,
    trainable_parameters, param_groups,
)
from llava_mini.train.checkpoints import (  # noqa: F401
    backbone_fingerprint, save_checkpoint, load_checkpoint, latest_checkpoint,
)
from llava_mini.train.loop import TrainResult, train  # noqa: F401
from llava_mini.train.memory import GIB, tower_config, parameter_counts, MemoryEstimate, estimate_memory  # noqa: F401
from llava_mini.train.plots import plot_loss  # noqa: F401
from llava_mini.train.precision import resolve_precision, compute_dtype, qlora_quantization_config  # noqa: F401
from llava_mini.train.sampler import StepSampler  # noqa: F401
