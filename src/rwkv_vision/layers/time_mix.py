"""TimeMix: RWKV-6's attention replacement, a linear recurrence over the WKV state.

Letter legend: b batch, t time, h heads, n head size, c channels (c = h * n).

    x_prev          = token_shift(x)                              # the previous token
    x_w, x_k, x_v, x_r, x_g = DDLerp(x, x_prev)                   # five token-dependent mixes
    r, k, v         = receptance(x_r), key(x_k), value(x_v)       # [b, t, h, n] each
    g               = silu(gate(x_g))
    w               = -exp(time_decay + tanh(x_w @ w1) @ w2)      # log decay, float32
    y               = wkv6(r, k, v, w, u=time_faaaa)              # per head, state [n, n]
    out             = output(GroupNorm_h(y) * g)                  # GroupNorm: h groups, eps 6.4e-4

Parameters carry the official "x060" names, flat on this module (``time_maa_*``, ``time_decay*``,
``time_faaaa`` [h, n], ``receptance``/``key``/``value``/``gate``/``output`` Linear(c, c) without bias,
``ln_x``), so a checkpoint's ``blocks.{i}.att.*`` tensors load by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import wkv6
from ._depth import depth_ratios
from .ddlerp import add_ddlerp_parameters, ddlerp
from .decay import add_decay_parameters, log_decay
from .token_shift import token_shift

__all__ = ["TimeMix", "LN_X_EPS"]

#: GroupNorm eps of the official model (1e-5 scaled by head_size_divisor**2 = 8**2).
LN_X_EPS = 6.4e-4


class TimeMix(nn.Module):
    """The RWKV-6 time-mix ("att") of one block.

    Shapes: forward(x [b, t, c], shift_state [b, c] | None, wkv_state [b, h, n, n] | None)
    -> (out [b, t, c], shift_state [b, c], wkv_state [b, h, n, n] float32). ``x`` is the LayerNorm-ed input.

    ``data_dependent_lerp=False`` / ``data_dependent_decay=False`` give the static (RWKV-5 style) token
    shift / decay of the paper's ablation.
    """

    def __init__(
        self,
        *,
        n_embd: int,
        head_size: int = 64,
        d_mix: int = 32,
        d_decay: int = 64,
        data_dependent_lerp: bool = True,
        data_dependent_decay: bool = True,
        layer_id: int = 0,
        n_layer: int = 1,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if head_size <= 0 or n_embd % head_size != 0:
            raise ValueError(f"TimeMix: n_embd ({n_embd}) must be a multiple of head_size ({head_size})")
        self.n_embd, self.head_size, self.n_head = n_embd, head_size, n_embd // head_size
        self.layer_id = layer_id
        factory = dict(device=device, dtype=dtype)
        depth = dict(layer_id=layer_id, n_layer=n_layer)

        # Flat on this module under the official names (att.time_maa_x, att.time_decay_w1, ...), as in checkpoints.
        add_ddlerp_parameters(self, n_embd=n_embd, d_mix=d_mix, data_dependent=data_dependent_lerp, **depth, **factory)
        add_decay_parameters(
            self, n_embd=n_embd, d_decay=d_decay, data_dependent=data_dependent_decay, **depth, **factory
        )

        # The bonus u for the current token: a depth-dependent ramp plus a small ripple across channels.
        ratio_0_to_1, _ = depth_ratios(layer_id, n_layer)
        channel = torch.arange(n_embd, device=device, dtype=torch.float32)
        bonus = ratio_0_to_1 * (1.0 - channel / max(n_embd - 1, 1)) + ((channel + 1) % 3 - 1) * 0.1
        self.time_faaaa = nn.Parameter(bonus.view(self.n_head, head_size).to(dtype=dtype or torch.get_default_dtype()))

        self.receptance = nn.Linear(n_embd, n_embd, bias=False, **factory)
        self.key = nn.Linear(n_embd, n_embd, bias=False, **factory)
        self.value = nn.Linear(n_embd, n_embd, bias=False, **factory)
        self.output = nn.Linear(n_embd, n_embd, bias=False, **factory)
        self.gate = nn.Linear(n_embd, n_embd, bias=False, **factory)
        self.ln_x = nn.GroupNorm(self.n_head, n_embd, eps=LN_X_EPS, **factory)
        with torch.no_grad():
            # Each block starts close to the identity on the residual stream (small output), and deeper
            # blocks' heads start with larger outputs, as in the official initialisation.
            self.output.weight.mul_(0.1)
            self.ln_x.weight.fill_(((1 + layer_id) / n_layer) ** 0.7)

    def forward(
        self,
        x: torch.Tensor,
        shift_state: torch.Tensor | None = None,
        wkv_state: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, c = x.shape
        h, n = self.n_head, self.head_size
        x_prev, shift_state = token_shift(x, shift_state)
        x_w, x_k, x_v, x_r, x_g = ddlerp(x, x_prev, self)

        r = self.receptance(x_r).view(b, t, h, n)
        k = self.key(x_k).view(b, t, h, n)
        v = self.value(x_v).view(b, t, h, n)
        g = F.silu(self.gate(x_g))
        w = log_decay(x_w, self).view(b, t, h, n)

        y, wkv_state = wkv6(r, k, v, w, self.time_faaaa, initial_state=wkv_state, output_final_state=True)
        y = self.ln_x(y.reshape(b * t, c)).view(b, t, c)
        return self.output(y * g), shift_state, wkv_state

    def extra_repr(self) -> str:
        return (
            f"n_embd={self.n_embd}, n_head={self.n_head}, head_size={self.head_size}, "
            f"data_dependent_lerp={hasattr(self, 'time_maa_w1')}, "
            f"data_dependent_decay={hasattr(self, 'time_decay_w1')}"
        )
