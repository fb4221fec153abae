"""Data-dependent decay: how fast each channel of the WKV state forgets, chosen per token.

Letter legend: b batch, t time, c channels.

RWKV-6 computes the per-step decay of every key channel from the token (its ``x_w`` input from DDLerp):

    w_raw = time_decay + tanh(x_w @ time_decay_w1) @ time_decay_w2,     decay = exp(-exp(w_raw)) in (0, 1)

The layer returns the LOG decay ``-exp(w_raw)`` in float32, the form ``ops.wkv6`` takes: the double
exponential loses too much in bfloat16. The static variant (RWKV-5, ``data_dependent=False``) keeps only the
learned ``time_decay``.

Parameter names are the official "x060" ones (``time_decay`` [1, 1, c], ``time_decay_w1`` [c, d_decay],
``time_decay_w2`` [d_decay, c]); ``add_decay_parameters`` registers them on any module, so ``TimeMix`` holds
them flat as the checkpoints do and ``DataDependentDecay`` is the standalone module.
"""

from __future__ import annotations

import torch
from torch import nn

from ._depth import depth_ratios

__all__ = ["DataDependentDecay", "log_decay", "add_decay_parameters"]


def add_decay_parameters(
    module: nn.Module,
    *,
    n_embd: int,
    d_decay: int = 64,
    data_dependent: bool = True,
    layer_id: int,
    n_layer: int,
    device=None,
    dtype=None,
) -> None:
    """Register ``time_decay`` [1, 1, c] (and ``time_decay_w1`` [c, d_decay], ``time_decay_w2`` [d_decay, c]
    when data-dependent) on ``module``, initialised RWKV-style."""
    ratio_0_to_1, _ = depth_ratios(layer_id, n_layer)
    channel = torch.arange(n_embd, device=device, dtype=torch.float32) / max(n_embd - 1, 1)
    # w_raw from -6 (decay ~ 1: remembers for thousands of steps) to -1 (forgets within a few), with
    # deeper layers shifted towards long memory: every layer starts with a spread of time scales.
    speed = -6.0 + 5.0 * channel ** (0.7 + 1.3 * ratio_0_to_1)
    module.time_decay = nn.Parameter(speed.view(1, 1, n_embd).to(dtype=dtype or torch.get_default_dtype()))
    if data_dependent:
        # Small, non-zero LoRA: starts near the static decay, both factors get gradients at once.
        factory = dict(device=device, dtype=dtype)
        module.time_decay_w1 = nn.Parameter(torch.empty(n_embd, d_decay, **factory).uniform_(-1e-2, 1e-2))
        module.time_decay_w2 = nn.Parameter(torch.empty(d_decay, n_embd, **factory).uniform_(-1e-2, 1e-2))


def log_decay(x_w: torch.Tensor, params: nn.Module) -> torch.Tensor:
    """Log of the per-step decay, -exp(w_raw): [b, t, c] float32, always < 0.

    Args:
        x_w: [b, t, c] the decay input from DDLerp.
        params: a module holding the parameters of ``add_decay_parameters``; without ``time_decay_w1`` the
            decay is static (the same for every token).
    """
    w_raw = params.time_decay.float()
    if getattr(params, "time_decay_w1", None) is not None:
        w_raw = w_raw + (torch.tanh(x_w @ params.time_decay_w1) @ params.time_decay_w2).float()
    return -torch.exp(w_raw).expand(x_w.shape)


class DataDependentDecay(nn.Module):
    """Per-token decay of RWKV-6 (``data_dependent=False``: RWKV-5's static decay).

    Shapes: forward(x_w [b, t, c]) -> log decay [b, t, c] float32 (pass it as ``w`` to ``ops.wkv6``).
    """

    def __init__(
        self,
        *,
        n_embd: int,
        d_decay: int = 64,
        data_dependent: bool = True,
        layer_id: int,
        n_layer: int,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.n_embd, self.d_decay, self.data_dependent = n_embd, d_decay, data_dependent
        add_decay_parameters(
            self,
            n_embd=n_embd,
            d_decay=d_decay,
            data_dependent=data_dependent,
            layer_id=layer_id,
            n_layer=n_layer,
            device=device,
            dtype=dtype,
        )

    def forward(self, x_w: torch.Tensor) -> torch.Tensor:
        return log_decay(x_w, self)

    def extra_repr(self) -> str:
        return f"n_embd={self.n_embd}, d_decay={self.d_decay}, data_dependent={self.data_dependent}"
