"""ChannelMix7: RWKV-7's ("x070") feed-forward, a squared-ReLU MLP over a token-shifted input, no gate.

Letter legend: b batch, t time, c channels, f hidden (dim_ffn, 4c in the released models).

    x_k = x + (token_shift(x) - x) * x_k
    out = value(relu(key(x_k)) ** 2)

Unlike RWKV-6's ChannelMix there is one lerp and no receptance gate. Parameter names are the official
"x070" ones: ``x_k`` [1, 1, c], ``key`` [f, c], ``value`` [c, f] (Linear weights, no bias).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._depth import depth_ratios
from .time_mix7 import _gemv_weight, _orthogonal_
from .token_shift import token_shift

__all__ = ["ChannelMix7"]


class ChannelMix7(nn.Module):
    """The RWKV-7 channel-mix ("ffn") of one block.

    Shapes: forward(x [b, t, c], state: shift [b, c] | None, *, return_state=False) -> out [b, t, c], or
    (out, shift [b, c]) with ``return_state=True``; step(x [b, c], shift [b, c]) -> out [b, c], shift updated
    in place. ``x`` is the LayerNorm-ed input.

    Args:
        n_embd: channels c.
        dim_ffn: hidden size f (None: 4c, as the official x070 code).
        layer_id, n_layer: where the layer sits in its stack (the initial lerp depends on it); required.

    Initialised as the official training code: x_k = 1 - (i / c) ** ((1 - layer_id / n_layer) ** 4), key
    orthogonal (gain 1), value zero (the block starts as the identity).
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
        dim_ffn = 4 * n_embd if dim_ffn is None else dim_ffn
        if not isinstance(dim_ffn, int) or dim_ffn < 1:
            raise ValueError(f"ChannelMix7: dim_ffn must be a positive int or None, got {dim_ffn!r}")
        self.n_embd, self.dim_ffn = n_embd, dim_ffn
        factory = dict(device=device, dtype=dtype)

        _, ratio_1_to_almost_0 = depth_ratios(layer_id, n_layer)
        # computed on the CPU and moved: on the meta device (a checkpoint load) each op is a slow Python kernel
        ddd = torch.arange(n_embd, dtype=torch.float64) / n_embd
        mix = 1.0 - ddd ** (ratio_1_to_almost_0**4)
        self.x_k = nn.Parameter(mix.view(1, 1, n_embd).to(device=device, dtype=dtype or torch.get_default_dtype()))
        self.key = nn.Linear(n_embd, dim_ffn, bias=False, **factory)
        self.value = nn.Linear(dim_ffn, n_embd, bias=False, **factory)
        with torch.no_grad():
            _orthogonal_(self.key.weight, 1.0)
            self.value.weight.zero_()

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
        hidden = torch.relu(self.key(x + (x_prev - x) * self.x_k)) ** 2
        out = self.value(hidden)
        return (out, shift) if return_state else out

    @torch.no_grad()
    def step(self, x: torch.Tensor, shift: torch.Tensor, *, residual: torch.Tensor | None = None) -> torch.Tensor:
        """One token: x [b, c] -> out [b, c]; ``shift`` [b, c] is updated in place (no host syncs).
        ``residual`` [b, c]: return ``residual + out`` (added inside the last GEMM). On the CPU the first call
        may re-lay out ``key.weight`` in memory (``time_mix7._gemv_weight``: same values, other strides)."""
        x_k = torch.lerp(x, shift, self.x_k.reshape(1, self.n_embd))  # x + (x_prev - x) * x_k
        shift.copy_(x)
        hidden = F.linear(x_k, _gemv_weight(self.key.weight)).relu_().square_()
        if residual is None:
            return F.linear(hidden, self.value.weight)
        return torch.addmm(residual, hidden, self.value.weight.t())

    def extra_repr(self) -> str:
        return f"n_embd={self.n_embd}, dim_ffn={self.dim_ffn}"
