"""Harmless library notices that alarm a learner, silenced one by one when llava_mini is imported.

Each rule names one logger or warning and the text of one message; everything else those libraries say still
shows. README, "Troubleshooting", says what each message means. ``LLAVA_MINI_VERBOSE=1`` keeps them all.
"""

from __future__ import annotations

import logging
import os
import warnings

# (logger, text in the message)
LOGGED = (
    # transformers 5 without torchvision: it uses the PIL image processor instead, which resizes, crops and
    # normalises the same way (the course never installs torchvision)
    ("transformers.utils.import_utils", "requires torchvision (not installed); falling back to"),
    # bitsandbytes on a CPU with AVX512-BF16: the optional 4-bit matmul from the kernels hub (network, the
    # `kernels` package) is missing, so bitsandbytes' own CPU code runs instead
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community"),
)
# (category, start of the message as a regular expression, module that warns): peft reads transformers'
# renamed `is_gradient_checkpointing` when it wraps the LM; a note to peft's authors, not to the learner
WARNED = ((FutureWarning, r"`is_gradient_checkpointing` is deprecated", r"transformers\.modeling_utils"),)


class DropMessage(logging.Filter):
    """Drops a logger's records whose message contains ``text``."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def install() -> None:
    """Add the rules (again is harmless: nothing is added twice); none with LLAVA_MINI_VERBOSE set."""
    if os.environ.get("LLAVA_MINI_VERBOSE"):
        return
    for name, text in LOGGED:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessage) and f.text == text for f in logger.filters):
            logger.addFilter(DropMessage(text))
    for category, message, module in WARNED:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
