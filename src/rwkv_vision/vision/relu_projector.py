"""VisualRWKV-UHD's projector: ``o_proj(relu(proj(features)))``, holding a gate it never reads.

The UHD code (``src/model.py`` of ``VisualRWKV-v6/VisualRWKV-UHD``, ``MLPWithContextGating``) builds the same
three layers as HD's (``proj`` [c, w], ``gate`` [c, c], ``o_proj`` [c, c], no biases) but its forward has the
gating commented out and a ReLU in its place, so the released v0613 files hold a ``proj.gate.weight`` that
took no part in training or evaluation. :class:`ReLUProjector` keeps that parameter (the files load strictly
and save back key for key) and, as the official forward, never uses it.

Shape legend: b batch, t time (tokens), c channels.
"""

from __future__ import annotations

import torch

from .projector import PROJECTORS, GatedMLPProjector

__all__ = ["ReLUProjector"]


@PROJECTORS.register("relu_mlp", aliases=("uhd_mlp",))
class ReLUProjector(GatedMLPProjector):
    """``[b, t, in] -> [b, t, out]``: ``o_proj(relu(proj(features)))``; ``gate`` [hidden, hidden] is held, unused.

    Args:
        in_features, out_features: input / output widths.
        hidden_features: width of ``proj``'s output; defaults to ``out_features``.
        bias: biases on the three layers (False in VisualRWKV-UHD).
    """

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        self._check_input(features)
        return self.o_proj(torch.relu(self.proj(features)))
