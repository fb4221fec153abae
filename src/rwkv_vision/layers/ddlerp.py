"""DDLerp: RWKV-6's data-dependent token shift, making the five inputs of a time-mix.

Letter legend: b batch, t time, c channels.

With ``xx = x_{t-1} - x``, a static lerp (RWKV-5) gives each of the five inputs its own learned mix of the
current and the previous token, ``x_j = x + xx * maa_j``. RWKV-6 lets the token choose the mix: a low-rank
(LoRA) mixer reads ``xxx = x + xx * maa_x`` and adds a per-token offset,

    m = tanh(xxx @ maa_w1) split into 5 chunks of d_mix, chunk j @ maa_w2[j];   x_j = x + xx * (maa_j + m_j)

for j in the order **w, k, v, r, g** (decay, key, value, receptance, gate).

The parameters carry the names of the official "x060" checkpoints (``time_maa_x``, ``time_maa_w`` ...,
``time_maa_w1`` [c, 5*d_mix], ``time_maa_w2`` [5, d_mix, c]). ``add_ddlerp_parameters`` registers them on any
module, so ``TimeMix`` keeps them flat under its own name exactly as the checkpoints do, and ``DDLerp`` is the
same thing as a standalone module for other models.
"""

from __future__ import annotations

import torch
from torch import nn

from ._depth import depth_ratios

__all__ = ["DDLerp", "ddlerp", "add_ddlerp_parameters", "LERP_ORDER"]

#: The order of the five mixed inputs (and of the LoRA chunks in ``time_maa_w1``/``time_maa_w2``).
LERP_ORDER = ("w", "k", "v", "r", "g")


def add_ddlerp_parameters(
    module: nn.Module,
    *,
    n_embd: int,
    d_mix: int = 32,
    data_dependent: bool = True,
    layer_id: int,
    n_layer: int,
    device=None,
    dtype=None,
) -> None:
    """Register the lerp parameters on ``module`` under their official names, initialised RWKV-style.

    Static (``data_dependent=False``): ``time_maa_{w,k,v,r,g}`` [1, 1, c].
    Data-dependent adds ``time_maa_x`` [1, 1, c], ``time_maa_w1`` [c, 5*d_mix], ``time_maa_w2`` [5, d_mix, c].
    """
    ratio_0_to_1, ratio_1_to_almost_0 = depth_ratios(layer_id, n_layer)
    ddd = torch.arange(n_embd, device=device, dtype=torch.float32) / n_embd

    def mix(values: torch.Tensor) -> nn.Parameter:
        return nn.Parameter(values.view(1, 1, n_embd).to(dtype=dtype or torch.get_default_dtype()))

    # Channels spread from "mostly the previous token" to "mostly the current one", and deeper layers lean
    # on the current token more, so the layer starts with a range of time scales to choose from.
    if data_dependent:
        module.time_maa_x = mix(1.0 - ddd**ratio_1_to_almost_0)
    module.time_maa_w = mix(1.0 - ddd**ratio_1_to_almost_0)
    module.time_maa_k = mix(1.0 - ddd**ratio_1_to_almost_0)
    module.time_maa_v = mix(1.0 - (ddd**ratio_1_to_almost_0 + 0.3 * ratio_0_to_1))
    module.time_maa_r = mix(1.0 - ddd ** (0.5 * ratio_1_to_almost_0))
    module.time_maa_g = mix(1.0 - ddd ** (0.5 * ratio_1_to_almost_0))
    if data_dependent:
        # Small but non-zero: the block starts close to a static lerp, yet both LoRA factors get a gradient
        # from the first step (a zero factor would block the other's gradient).
        factory = dict(device=device, dtype=dtype)
        module.time_maa_w1 = nn.Parameter(torch.empty(n_embd, 5 * d_mix, **factory).uniform_(-1e-2, 1e-2))
        module.time_maa_w2 = nn.Parameter(torch.empty(5, d_mix, n_embd, **factory).uniform_(-1e-2, 1e-2))


def ddlerp(x: torch.Tensor, x_prev: torch.Tensor, params: nn.Module) -> tuple[torch.Tensor, ...]:
    """The five mixed inputs (x_w, x_k, x_v, x_r, x_g), each [b, t, c].

    Args:
        x: [b, t, c] the current tokens.
        x_prev: [b, t, c] the previous tokens (``token_shift``).
        params: a module holding the parameters of ``add_ddlerp_parameters``; without ``time_maa_w1`` the
            lerp is static.
    """
    xx = x_prev - x
    maa = [getattr(params, f"time_maa_{name}") for name in LERP_ORDER]
    if getattr(params, "time_maa_w1", None) is None:
        return tuple(x + xx * maa_j for maa_j in maa)
    b, t, c = x.shape
    xxx = x + xx * params.time_maa_x
    d_mix = params.time_maa_w2.shape[1]
    m = torch.tanh(xxx @ params.time_maa_w1).view(b * t, 5, d_mix).transpose(0, 1)  # [5, b*t, d_mix]
    m = torch.bmm(m, params.time_maa_w2).view(5, b, t, c)  # chunk j through its own maa_w2[j]
    return tuple(x + xx * (maa_j + m[j]) for j, maa_j in enumerate(maa))


class DDLerp(nn.Module):
    """Data-dependent token-shift interpolation (``data_dependent=False``: the static RWKV-5 lerp).

    Shapes: forward(x [b, t, c], x_prev [b, t, c]) -> (x_w, x_k, x_v, x_r, x_g), each [b, t, c].

    Example::

        >>> lerp = DDLerp(n_embd=64, d_mix=8, layer_id=0, n_layer=1)
        >>> x = torch.randn(2, 5, 64)
        >>> x_prev, _ = token_shift(x)
        >>> x_w, x_k, x_v, x_r, x_g = lerp(x, x_prev)
    """

    def __init__(
        self,
        *,
        n_embd: int,
        d_mix: int = 32,
        data_dependent: bool = True,
        layer_id: int,
        n_layer: int,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.n_embd, self.d_mix, self.data_dependent = n_embd, d_mix, data_dependent
        add_ddlerp_parameters(
            self,
            n_embd=n_embd,
            d_mix=d_mix,
            data_dependent=data_dependent,
            layer_id=layer_id,
            n_layer=n_layer,
            device=device,
            dtype=dtype,
        )

    def forward(self, x: torch.Tensor, x_prev: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return ddlerp(x, x_prev, self)

    def extra_repr(self) -> str:
        return f"n_embd={self.n_embd}, d_mix={self.d_mix}, data_dependent={self.data_dependent}"
