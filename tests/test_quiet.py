"""llava_mini.quiet drops exactly the harmless notices it names: their loggers and modules still say the rest."""

import importlib.util
import logging
import os
import subprocess
import sys
import warnings

import pytest

import llava_mini  # noqa: F401  (installs the rules)
from llava_mini import quiet


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("name, text", quiet.LOGGED)
def test_a_named_notice_is_dropped_and_its_logger_still_speaks(name, text, monkeypatch):
    monkeypatch.delenv("LLAVA_MINI_VERBOSE", raising=False)
    quiet.install()
    quiet.install()  # twice: still one filter
    logger, seen = logging.getLogger(name), Collect()
    assert sum(isinstance(f, quiet.DropMessage) for f in logger.filters) == 1
    logger.addHandler(seen)
    try:
        logger.warning("before %s after", text)
        logger.warning("something else went wrong")
    finally:
        logger.removeHandler(seen)
    assert seen.messages == ["something else went wrong"]


def test_only_the_renamed_checkpointing_flag_is_ignored(monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    if not hasattr(LlamaForCausalLM, "is_gradient_checkpointing"):
        pytest.skip("this transformers has no is_gradient_checkpointing any more")
    monkeypatch.delenv("LLAVA_MINI_VERBOSE", raising=False)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                      num_attention_heads=1, num_key_value_heads=1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet.install()
        assert lm.is_gradient_checkpointing is False  # transformers' own deprecated property, as peft reads it
        warnings.warn_explicit("`something_else` is deprecated", FutureWarning, "modeling_utils.py", 1,
                               module="transformers.modeling_utils")
    assert [str(w.message) for w in caught] == ["`something_else` is deprecated"]


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None,
                    reason="torchvision is installed: transformers has nothing to fall back from")
@pytest.mark.parametrize("verbose", ["", "1"])
def test_the_torchvision_fallback_notice_shows_only_when_verbose(verbose):
    code = "import llava_mini, transformers; transformers.CLIPImageProcessor"
    env = {**os.environ, "LLAVA_MINI_VERBOSE": verbose}
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stderr
    assert ("requires torchvision" in err) == bool(verbose), err
