"""llava_mini: reproduce Visual Instruction Tuning (LLaVA) step by step, on a CPU or one GPU."""

__version__ = "0.1.0"
