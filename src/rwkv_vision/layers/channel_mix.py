"""ChannelMix: RWKV's feed-forward, a gated squared-ReLU MLP over a token-shifted input.

Letter legend: b batch, t time, c channels, f hidden (dim_ffn).

    xx  = token_shift(x) - x
    x_k = x + xx * time_maa_k,   x_r = x + xx * time_maa_r
    out = sigmoid(receptance(x_r)) * value(relu(key(x_k))**2)

Parameter names are the official "x060" ones: ``time_maa_k``, ``time_maa_r`` [1, 1, c], ``key`` [f, c],
``receptance`` [c, c], ``value`` [c, f] (Linear weights, no bias).
"""

from __future__ import annotations

import torch
from torch import nn

from ._depth import depth_ratios
from .token_shift import token_shift

__all__ = ["ChannelMix", "default_dim_ffn"]


def default_dim_ffn(n_embd: int) -> int:
    """The official hidden size, int(3.5 * c) rounded down to a multiple of 32 (at least 32)."""
    return max(int(3.5 * n_embd) // 32 * 32, 32)


class ChannelMix(nn.Module):
    """The RWKV-6 channel-mix ("ffn") of one block.

    Shapes: forward(x [b, t, c], shift_state [b, c] | None) -> (out [b, t, c], shift_state [b, c]).
    ``x`` is the LayerNorm-ed input.
    """

    def __init__(
        self,
        *,
        n_embd: int,
        dim_ffn: int | None = None,
        layer_id: int = 0,
        n_layer: int = 1,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dim_ffn = default_dim_ffn(n_embd) if dim_ffn is None else dim_ffn
        self.n_embd, self.dim_ffn = n_embd, dim_ffn
        factory = dict(device=device, dtype=dtype)

        _, ratio_1_to_almost_0 = depth_ratios(layer_id, n_layer)
        ddd = torch.arange(n_embd, device=device, dtype=torch.float32) / n_embd
        mix = (1.0 - ddd**ratio_1_to_almost_0).view(1, 1, n_embd).to(dtype=dtype or torch.get_default_dtype())
        self.time_maa_k = nn.Parameter(mix.clone())
        self.time_maa_r = nn.Parameter(mix.clone())

        self.key = nn.Linear(n_embd, dim_ffn, bias=False, **factory)
        self.receptance = nn.Linear(n_embd, n_embd, bias=False, **factory)
        self.value = nn.Linear(dim_ffn, n_embd, bias=False, **factory)
        with torch.no_grad():
            self.value.weight.mul_(0.1)  # start close to the identity on the residual stream

    def forward(self, x: torch.Tensor, shift_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x_prev, shift_state = token_shift(x, shift_state)
        xx = x_prev - x
        x_k = x + xx * self.time_maa_k
        x_r = x + xx * self.time_maa_r
        hidden = torch.relu(self.key(x_k)) ** 2
        return torch.sigmoid(self.receptance(x_r)) * self.value(hidden), shift_state

    def extra_repr(self) -> str:
        return f"n_embd={self.n_embd}, dim_ffn={self.dim_ffn}"
