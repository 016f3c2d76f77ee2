"""The projector: vision features -> the LM's embedding space (LLaVA's only new module)."""

from __future__ import annotations

import torch
from torch import nn

PROJECTOR_TYPES = ("linear", "mlp2x_gelu")


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
