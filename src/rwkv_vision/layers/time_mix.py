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

Two ways to run it, one set of weights:

- ``forward(x [b, t, c], state)`` reads a sequence (the ``wkv6`` op; autograd; any t);
- ``step(x [b, c], shift, wkv)`` reads one token and updates the state buffers in place (the fused
  ``wkv6_step`` op; no autograd), which is what decoding runs, token after token.

The state is a :class:`~rwkv_vision.state.TimeMixState`: ``shift`` [b, c] (the last input, x_{t-1} of the next
token) and ``wkv`` [b, h, n, n] float32.

Several sequences of different lengths in one call (``forward``'s keywords): ``cu_seqlens`` packs them into one
row (x [1, T, c], states [N, ...] per sequence, no padding); ``attention_mask`` [b, t] pads them (left or right):
at padded steps k = 0 and the log-decay w = 0, so the WKV state neither takes input nor decays there, and the
token shift skips them, so each row's outputs and final state are those of the row alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import BACKENDS, wkv6, wkv6_step
from ..state import TimeMixState
from ._depth import depth_ratios
from .ddlerp import add_ddlerp_parameters, ddlerp
from .decay import add_decay_parameters, log_decay
from .token_shift import token_shift

__all__ = ["TimeMix", "LN_X_EPS"]

#: GroupNorm eps of the official model (1e-5 scaled by head_size_divisor**2 = 8**2).
LN_X_EPS = 6.4e-4


class TimeMix(nn.Module):
    """The RWKV-6 time-mix ("att") of one block.

    Shapes: forward(x [b, t, c], state: TimeMixState | None, return_state=False) -> out [b, t, c], or
    (out, TimeMixState(shift [b, c], wkv [b, h, n, n] float32)) with ``return_state=True``.
    step(x [b, c], shift [b, c], wkv [b, h, n, n]) -> out [b, c], shift and wkv updated in place.
    ``x`` is the LayerNorm-ed input.

    Args:
        n_embd: channels c (a multiple of ``head_size``).
        head_size: n.
        d_mix, d_decay: ranks of the token-shift and decay LoRAs.
        data_dependent_lerp, data_dependent_decay: False gives the static (RWKV-5 style) token shift /
            decay of the paper's ablation.
        layer_id, n_layer: where the layer sits in its stack; the initialisation depends on it (RWKV's
            per-depth time scales), so both are required.
        backend: the WKV implementation (``ops.BACKENDS``: "auto", "kernel", "cuda_recurrent", "chunked",
            ...); None follows ``ops.use_backend`` / the process default. A plain attribute: set it any time.
    """

    def __init__(
        self,
        n_embd: int,
        *,
        head_size: int = 64,
        d_mix: int = 32,
        d_decay: int = 64,
        data_dependent_lerp: bool = True,
        data_dependent_decay: bool = True,
        layer_id: int,
        n_layer: int,
        backend: str | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"TimeMix: backend must be None or one of {BACKENDS}, got {backend!r}")
        self.backend = backend
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
        state: TimeMixState | None = None,
        *,
        return_state: bool = False,
        cu_seqlens: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, TimeMixState]:
        """x [b, t, c] -> out [b, t, c] (and the new state with ``return_state``). ``cu_seqlens`` [N + 1]:
        N sequences packed in one row (b == 1; states [N, ...]); ``attention_mask`` [b, t] (bool or 0/1):
        padding, each row's tokens one contiguous run."""
        b, t, c = x.shape
        h, n = self.n_head, self.head_size
        shift, wkv_state = (None, None) if state is None else state
        mask = None if attention_mask is None else attention_mask.to(device=x.device, dtype=torch.bool)
        x_prev, shift = token_shift(x, shift, cu_seqlens=cu_seqlens, mask=mask)
        x_w, x_k, x_v, x_r, x_g = ddlerp(x, x_prev, self)

        r = self.receptance(x_r).view(b, t, h, n)
        k = self.key(x_k).view(b, t, h, n)
        v = self.value(x_v).view(b, t, h, n)
        g = F.silu(self.gate(x_g))
        w = log_decay(x_w, self).view(b, t, h, n)
        if mask is not None:  # padded steps: no input (k = 0) and no decay (w = 0) leave the state as it is
            keep = mask.view(b, t, 1, 1)
            k = k * keep.to(k.dtype)
            w = w * keep.to(w.dtype)

        y, wkv_state = wkv6(
            r,
            k,
            v,
            w,
            self.time_faaaa,
            initial_state=wkv_state,
            output_final_state=return_state,
            backend=self.backend,
            cu_seqlens=cu_seqlens,
        )
        y = self.ln_x(y.reshape(b * t, c)).view(b, t, c)
        out = self.output(y * g)
        return (out, TimeMixState(shift, wkv_state)) if return_state else out

    @torch.no_grad()
    def step(self, x: torch.Tensor, shift: torch.Tensor, wkv: torch.Tensor) -> torch.Tensor:
        """One token: x [b, c] (LayerNorm-ed) -> out [b, c]; ``shift`` [b, c] and ``wkv`` [b, h, n, n] float32
        are updated in place. The same math as ``forward`` at t = 1, with the five lerps in one [5, b, c]
        tensor and the WKV update in one kernel that reads and rewrites each head's state once. It makes no
        host syncs, so a decoder can capture it into a CUDA graph."""
        b, c = x.shape
        h, n = self.n_head, self.head_size
        xx = shift - x
        shift.copy_(x)
        maa = torch.cat([getattr(self, f"time_maa_{j}").detach().reshape(1, 1, c) for j in "wkvrg"])  # [5, 1, c]
        if getattr(self, "time_maa_w1", None) is not None:
            m = torch.tanh(torch.addcmul(x, xx, self.time_maa_x.reshape(1, c)) @ self.time_maa_w1)
            mix = torch.bmm(m.view(b, 5, -1).transpose(0, 1), self.time_maa_w2).add_(maa)  # [5, b, c]
        else:
            mix = maa
        x_w, x_k, x_v, x_r, x_g = torch.addcmul(x, xx, mix).unbind(0)
        r = F.linear(x_r, self.receptance.weight)
        k = F.linear(x_k, self.key.weight)
        v = F.linear(x_v, self.value.weight)
        g = F.silu(F.linear(x_g, self.gate.weight))
        decay = self.time_decay.float().reshape(1, c)
        if getattr(self, "time_decay_w1", None) is not None:
            w = torch.exp((torch.tanh(x_w @ self.time_decay_w1) @ self.time_decay_w2).float().add_(decay)).neg_()
        else:
            w = torch.exp(decay).neg_().expand(b, c)
        u = self.time_faaaa.float().reshape(h, n).contiguous()
        w = w.reshape(b, h, n).contiguous()
        y = wkv6_step(r.view(b, h, n), k.view(b, h, n), v.view(b, h, n), w, u, wkv, backend=self.backend)
        y = F.group_norm(y.view(b, c), h, self.ln_x.weight, self.ln_x.bias, self.ln_x.eps)
        return F.linear(y * g, self.output.weight)

    def extra_repr(self) -> str:
        return (
            f"n_embd={self.n_embd}, n_head={self.n_head}, head_size={self.head_size}, "
            f"data_dependent_lerp={hasattr(self, 'time_maa_w1')}, "
            f"data_dependent_decay={hasattr(self, 'time_decay_w1')}"
        )
