"""llava_mini: reproduce Visual Instruction Tuning (LLaVA) step by step, on a CPU or one GPU."""

from llava_mini import quiet as _quiet

__version__ = "0.1.0"

_quiet.install()  # harmless library notices off, one by one (llava_mini/quiet.py; LLAVA_MINI_VERBOSE=1 keeps them)
