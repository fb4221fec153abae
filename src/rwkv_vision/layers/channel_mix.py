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
import torch.nn.functional as F
from torch import nn

from ._depth import depth_ratios
from .token_shift import token_shift

__all__ = ["ChannelMix", "default_dim_ffn"]


def default_dim_ffn(n_embd: int) -> int:
    """The official hidden size, int(3.5 * c) rounded down to a multiple of 32 (at least 32)."""
    return max(int(3.5 * n_embd) // 32 * 32, 32)


class ChannelMix(nn.Module):
    """The RWKV-6 channel-mix ("ffn") of one block.

    Shapes: forward(x [b, t, c], state: shift [b, c] | None, return_state=False) -> out [b, t, c], or
    (out, shift [b, c]) with ``return_state=True``; step(x [b, c], shift [b, c]) -> out [b, c], shift updated
    in place. ``x`` is the LayerNorm-ed input.

    Args:
        n_embd: channels c.
        dim_ffn: hidden size f (default ``default_dim_ffn(c)``).
        layer_id, n_layer: where the layer sits in its stack (the initial mixes depend on it); required.
    """

    def __init__(
        self,
        n_embd: int,
        *,
        dim_ffn: int | None = None,
        layer_id: int,
        n_layer: int,
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

    def forward(
        self,
        x: torch.Tensor,
        state: torch.Tensor | None = None,
        *,
        return_state: bool = False,
        cu_seqlens: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x [b, t, c] -> out [b, t, c] (and the new shift with ``return_state``); ``cu_seqlens`` (packed
        sequences, shift states [N, c]) and ``attention_mask`` (padding) only change the token shift."""
        mask = None if attention_mask is None else attention_mask.to(device=x.device, dtype=torch.bool)
        x_prev, shift = token_shift(x, state, cu_seqlens=cu_seqlens, mask=mask)
        xx = x_prev - x
        x_k = x + xx * self.time_maa_k
        x_r = x + xx * self.time_maa_r
        hidden = torch.relu(self.key(x_k)) ** 2
        out = torch.sigmoid(self.receptance(x_r)) * self.value(hidden)
        return (out, shift) if return_state else out

    @torch.no_grad()
    def step(self, x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """One token: x [b, c] -> out [b, c]; ``shift`` [b, c] is updated in place (no host syncs)."""
        c = x.shape[-1]
        xx = shift - x
        shift.copy_(x)
        x_k = torch.addcmul(x, xx, self.time_maa_k.reshape(1, c))
        x_r = torch.addcmul(x, xx, self.time_maa_r.reshape(1, c))
        hidden = torch.relu(F.linear(x_k, self.key.weight)).square_()
        return torch.sigmoid(F.linear(x_r, self.receptance.weight)).mul_(F.linear(hidden, self.value.weight))

    def extra_repr(self) -> str:
        return f"n_embd={self.n_embd}, dim_ffn={self.dim_ffn}"
