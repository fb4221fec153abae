"""TimeMix7: RWKV-7's ("Goose", checkpoint format "x070") attention replacement, a generalised delta rule.

Letter legend: b batch, t time, h heads, n head size, c channels (c = h * n).

    x_prev  = token_shift(x)                                      # the previous token
    x_z     = x + (x_prev - x) * x_z       for z in r, w, k, v, a, g   (six static lerps)
    r, k, v = receptance(x_r), key(x_k), value(x_v)               # [b, t, c] each
    w       = -exp(-1/2) * sigmoid(w0 + tanh(x_w @ w1) @ w2)      # log decay in (-0.61, 0), float32
    iclr    = sigmoid(a0 + (x_a @ a1) @ a2)                       # in-context learning rate
    v       = v + (v_first - v) * sigmoid(v0 + (x_v @ v1) @ v2)   # value residual (layers > 0)
    g       = sigmoid(x_g @ g1) @ g2                              # output gate
    kk      = normalize_per_head(k * k_k)                         # unit L2 norm per head
    k       = k * (1 + (iclr - 1) * k_a)
    y       = wkv7(r, w, k, v, a=-kk, b=kk * iclr)                # per head, state [n, n]
    y       = GroupNorm_h(y) + sum_n(r * k * r_k) * v             # GroupNorm: h groups, eps 64e-5
    out     = output(y * g)

Several sequences of different lengths in one call (``forward``'s keywords), as RWKV-6's TimeMix:
``cu_seqlens`` packs them into one row (x [1, T, c], states [N, ...] per sequence); ``attention_mask`` [b, t]
pads them (left or right): at padded steps k = 0, w = 0 and b = 0, so the WKV state neither takes input,
decays nor gets its low-rank update there, and the token shift skips them. v_first is per position, so a
pad's value reaches only that pad's position in later layers.

Layer 0 keeps its own ``v`` as ``v_first`` (the "value residual" source) and hands it to every later layer
of the same forward pass; it is an activation [b, t, c], not state carried across time.

Parameters carry the official "x070" names, flat on this module (``x_r`` ... ``x_g``, ``w0/w1/w2``,
``a0/a1/a2``, ``v0/v1/v2``, ``g1/g2``, ``k_k``, ``k_a``, ``r_k`` [h, n], ``receptance``/``key``/``value``/
``output`` Linear(c, c) without bias, ``ln_x``), so a checkpoint's ``blocks.{i}.att.*`` tensors load by name.
Layer 0 has ``v0/v1/v2`` too (the official training code makes them in every layer) but never uses them.

Two ways to run it, one set of weights:

- ``forward(x [b, t, c], state)`` reads a sequence (the ``wkv7`` op; autograd; any t);
- ``step(x [b, c], shift, wkv)`` reads one token and updates the state buffers in place (no autograd).

The state is a :class:`~rwkv_vision.state.TimeMixState`, the same shapes as RWKV-6's: ``shift`` [b, c] and
``wkv`` [b, h, n, n] float32 (S[key j, value i], the transpose of the official RNN's [value, key] matrix).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import wkv7, wkv7_step
from ..ops.backends import wkv7_default_backend
from ..ops.wkv7 import _kernel_reason, kernel_ops7
from ..state import TimeMixState
from ._depth import depth_ratios
from .token_shift import token_shift

__all__ = ["TimeMix7", "LN_X_EPS7", "default_lora_sizes7", "log_decay7"]

#: GroupNorm eps of the official x070 model (its code says "notice eps value": 64e-5, not RWKV-6's 1e-5 * 8**2).
LN_X_EPS7 = 64e-5

#: exp(-1/2): the log decay is -exp(-1/2) * sigmoid(d), i.e. -softplus(-d) - 1/2 passed through exp, so the
#: per-step decay lies in (exp(-0.607), 1) = (0.545, 1).
_DECAY_SCALE = math.exp(-0.5)

#: The L2 normalisation eps of kk (F.normalize's default; the official fused kernel fixes the same value).
_KK_EPS = 1e-12

_LERPS = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")


def default_lora_sizes7(n_embd: int) -> dict[str, int]:
    """The official training code's suggested LoRA ranks for c channels: ``d_w``, ``d_a`` (decay, in-context
    rate: 2.5 sqrt(c)), ``d_v`` (value residual: 1.7 sqrt(c)), ``d_g`` (gate: 5 sqrt(c)), each rounded to a
    multiple of 32, at least 32. For c = 768: 64, 64, 32, 128. Released models may differ: read their shapes."""

    def rank(scale: float) -> int:
        return max(32, int(round(scale * n_embd**0.5 / 32) * 32))

    return dict(d_w=rank(2.5), d_a=rank(2.5), d_v=rank(1.7), d_g=rank(5.0))


def log_decay7(x_w: torch.Tensor, w0: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """The log decay of x070: -exp(-1/2) * sigmoid(w0 + tanh(x_w @ w1) @ w2), computed in float32 (float64 for
    float64 inputs) because the recurrence multiplies it up over many steps. x_w [..., c] -> [..., c]."""
    acc = torch.promote_types(x_w.dtype, torch.float32)
    d = (torch.tanh(x_w @ w1) @ w2).to(acc) + w0.to(acc).reshape(-1)
    return torch.sigmoid(d).mul(-_DECAY_SCALE)


def _orthogonal_(weight: torch.Tensor, scale: float, *, lora: bool = False) -> torch.Tensor:
    """An orthogonal matrix times ``scale``. ``lora=True`` is the official ``ortho_init`` of the LoRA matrices,
    which multiplies the gain by sqrt(rows / cols) when taller than wide; the Linear weights (and the head) get
    the plain gain, as the official ``generate_init_weight`` gives them."""
    rows, cols = weight.shape
    gain = math.sqrt(rows / cols) if lora and rows > cols else 1.0
    if weight.device.type == "meta":
        return weight
    # orthogonal_ wants a float32/float64 QR; build there and copy (bf16 parameters included).
    tmp = torch.empty(rows, cols, device=weight.device, dtype=torch.float32)
    nn.init.orthogonal_(tmp, gain=gain * scale)
    return weight.copy_(tmp)


def _first_layer_error(layer_id: int) -> ValueError:
    return ValueError(
        f"TimeMix7 (layer {layer_id}): layers after the first mix their value with layer 0's value; pass "
        "v_first=[b, t, c] (what layer 0 returns with return_v_first=True)"
    )


def _gemv_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` [out, in] of a Linear, re-laid out in place for one-token decoding on the CPU, then returned.

    MKL's float32 matrix-vector product is 15-25% faster here when the matrix is stored input-major (the
    transpose contiguous: the output accumulates along contiguous rows, no horizontal sums) for tall and
    square matrices; wide ones (out < in) are faster as they are. So a contiguous float32 CPU weight with
    out >= in gets ``weight.data = weight.t().contiguous().t()``: the same Parameter, values and shape, only
    the strides swapped (``is_contiguous()`` becomes False; a sequence ``forward`` and saving are unaffected,
    the savers copy to contiguous). Done once; a weight replaced later is re-laid out at its next step.
    """
    if (
        weight.is_contiguous()
        and weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and weight.dim() == 2
        and weight.shape[0] >= weight.shape[1] > 1
        and type(weight) in (nn.Parameter, torch.Tensor)
    ):
        with torch.no_grad():
            weight.data = weight.data.t().contiguous().t()
    return weight


def _wkv7_step(r, w, k, v, a, b, state: torch.Tensor, backend: str | None) -> torch.Tensor:
    """``ops.wkv7_step`` for TimeMix7.step: straight to the compiled CPU step when that is what the backend
    would pick (the op checks shapes, dtypes and contiguity itself; ``w`` is <= 0 by construction, so the
    wrapper's Python checks, a fifth of a small step's time, are skipped); otherwise the public op."""
    chosen = wkv7_default_backend() if backend is None else backend
    if chosen in ("auto", "kernel") and r.device.type == "cpu" and _kernel_reason(r) is None:
        return kernel_ops7().wkv7_step(r, w if w.dtype == state.dtype else w.to(state.dtype), k, v, a, b, state)
    return wkv7_step(r, w, k, v, a, b, state, backend=backend)


class TimeMix7(nn.Module):
    """The RWKV-7 (x070) time-mix ("att") of one block.

    Shapes: forward(x [b, t, c], state: TimeMixState | None, *, return_state=False, v_first=None,
    return_v_first=False) -> out [b, t, c]; with ``return_state=True`` also the TimeMixState(shift [b, c],
    wkv [b, h, n, n] float32), and with ``return_v_first=True`` also v_first [b, t, c], in that order:
    ``out``, ``(out, state)``, ``(out, v_first)`` or ``(out, state, v_first)``.
    step(x [b, c], shift [b, c], wkv [b, h, n, n], *, v_first=None, return_v_first=False) -> out [b, c] (or
    (out, v_first [b, c])); shift and wkv updated in place. ``x`` is the LayerNorm-ed input.

    ``v_first``: layer 0 (``layer_id == 0``) makes it (its own value) and must not be given one; every other
    layer needs it.

    Args:
        n_embd: channels c (a multiple of ``head_size``).
        head_size: n.
        d_w, d_a, d_v, d_g: ranks of the decay, in-context-rate, value-residual and gate LoRAs (None: the
            official suggestions, :func:`default_lora_sizes7`).
        layer_id, n_layer: where the layer sits in its stack; the initialisation depends on it and layer 0
            is the value-residual source, so both are required.
        backend: the WKV7 implementation (``ops.wkv7``'s ``backend``); None follows the process default. A
            plain attribute: set it any time.

    The initialisation is the official training code's (``RWKV_Tmix_x070`` and ``generate_init_weight``):
    depth-dependent lerps, decay and rate offsets with a per-head zigzag, zero first LoRA matrices and
    orthogonal second ones (gain 0.1), orthogonal receptance/value (gain 1) and key (gain 0.1), a zero
    output projection (each block starts as the identity), ln_x weight ((1 + layer_id) / n_layer) ** 0.7.
    """

    value_residual = True  # Block reads this: the mixer takes and returns v_first

    def __init__(
        self,
        n_embd: int,
        *,
        head_size: int = 64,
        d_w: int | None = None,
        d_a: int | None = None,
        d_v: int | None = None,
        d_g: int | None = None,
        layer_id: int,
        n_layer: int,
        backend: str | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if not isinstance(head_size, int) or head_size <= 0 or n_embd % head_size != 0:
            raise ValueError(f"TimeMix7: n_embd ({n_embd}) must be a multiple of head_size ({head_size})")
        ranks = default_lora_sizes7(n_embd)
        given = dict(d_w=d_w, d_a=d_a, d_v=d_v, d_g=d_g)
        for name, value in given.items():
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"TimeMix7: {name} must be a positive int or None, got {value!r}")
            ranks[name] = ranks[name] if value is None else value
        self.backend = backend
        self.n_embd, self.head_size, self.n_head = n_embd, head_size, n_embd // head_size
        self.layer_id = layer_id
        self.d_w, self.d_a, self.d_v, self.d_g = ranks["d_w"], ranks["d_a"], ranks["d_v"], ranks["d_g"]
        factory = dict(device=device, dtype=dtype)
        dtype = dtype or torch.get_default_dtype()
        c, h, n = n_embd, self.n_head, head_size

        ratio_0_to_1, ratio_1_to_almost_0 = depth_ratios(layer_id, n_layer)
        # The init vectors are computed on the CPU and moved: on the meta device (a checkpoint load) each op
        # would run through Python reference kernels, 15x slower than the CPU math itself.
        idx = torch.arange(c, dtype=torch.float64)
        ddd = idx / c
        linear = idx / max(c - 1, 1) - 0.5
        zigzag = ((idx % n) - (n - 1) / 2) / max((n - 1) / 2, 1e-12) if n > 1 else torch.zeros_like(idx)
        zigzag = zigzag * zigzag.abs()
        www = -6 + 6 * (idx / max(c - 1, 1)) ** (1 + 1 * ratio_0_to_1**0.3)

        def vec(values: torch.Tensor) -> nn.Parameter:
            return nn.Parameter(values.reshape(1, 1, c).to(device=device, dtype=dtype))

        for name, power in zip(_LERPS, (0.2, 0.9, 0.7, 0.7, 0.9, 0.2)):
            setattr(self, name, vec(1.0 - ddd ** (power * ratio_1_to_almost_0)))

        def lora(rank: int) -> tuple[nn.Parameter, nn.Parameter]:
            first = torch.zeros(c, rank, **factory)
            second = torch.empty(rank, c, **factory)
            with torch.no_grad():
                _orthogonal_(second, 0.1, lora=True)
            return nn.Parameter(first), nn.Parameter(second)

        self.w0 = vec(www + 0.5 + zigzag * 2.5)
        self.w1, self.w2 = lora(self.d_w)
        self.a0 = vec(-0.19 + zigzag * 0.3 + linear * 0.4)
        self.a1, self.a2 = lora(self.d_a)
        self.v0 = vec(0.73 - linear * 0.4)
        self.v1, self.v2 = lora(self.d_v)
        self.g1, self.g2 = lora(self.d_g)
        self.k_k = vec(0.71 - linear * 0.1)
        self.k_a = vec(torch.full_like(idx, 1.02))
        self.r_k = nn.Parameter(torch.full((h, n), -0.04, **factory))

        self.receptance = nn.Linear(c, c, bias=False, **factory)
        self.key = nn.Linear(c, c, bias=False, **factory)
        self.value = nn.Linear(c, c, bias=False, **factory)
        self.output = nn.Linear(c, c, bias=False, **factory)
        self.ln_x = nn.GroupNorm(h, c, eps=LN_X_EPS7, **factory)
        with torch.no_grad():
            _orthogonal_(self.receptance.weight, 1.0)
            _orthogonal_(self.key.weight, 0.1)
            _orthogonal_(self.value.weight, 1.0)
            self.output.weight.zero_()
            self.ln_x.weight.fill_(((1 + layer_id) / n_layer) ** 0.7)

    # --- the shared projections ---------------------------------------------------------------------------

    def _value_residual(self, v: torch.Tensor, x_v: torch.Tensor, v_first: torch.Tensor | None):
        if self.layer_id == 0:
            if v_first is not None:
                raise ValueError(
                    "TimeMix7 (layer 0): the first layer makes v_first from its own value; pass v_first=None"
                )
            return v, v
        if v_first is None:
            raise _first_layer_error(self.layer_id)
        if v_first.shape != v.shape:
            raise ValueError(
                f"TimeMix7 (layer {self.layer_id}): v_first must be {list(v.shape)} like the value, got "
                f"{list(v_first.shape)}"
            )
        gate = torch.sigmoid(self.v0.reshape(-1) + (x_v @ self.v1) @ self.v2)
        return v + (v_first.to(v.dtype) - v) * gate, v_first

    def forward(
        self,
        x: torch.Tensor,
        state: TimeMixState | None = None,
        *,
        return_state: bool = False,
        v_first: torch.Tensor | None = None,
        return_v_first: bool = False,
        cu_seqlens: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ):
        """x [b, t, c] -> out [b, t, c] (with the state and v_first as the class notes say). ``cu_seqlens``
        [N + 1]: N sequences packed in one row (b == 1; states [N, ...]); ``attention_mask`` [b, t] (bool or
        0/1): padding, each row's tokens one contiguous run."""
        if x.dim() != 3 or x.shape[-1] != self.n_embd:
            raise ValueError(f"TimeMix7: x must be [b, t, c = {self.n_embd}], got {list(x.shape)}")
        b, t, c = x.shape
        h, n = self.n_head, self.head_size
        shift, wkv_state = (None, None) if state is None else state
        mask = None if attention_mask is None else attention_mask.to(device=x.device, dtype=torch.bool)
        x_prev, shift = token_shift(x, shift, cu_seqlens=cu_seqlens, mask=mask)
        xx = x_prev - x
        x_r, x_w, x_k, x_v, x_a, x_g = (x + xx * getattr(self, name) for name in _LERPS)

        r = self.receptance(x_r)
        k = self.key(x_k)
        v = self.value(x_v)
        w = log_decay7(x_w, self.w0, self.w1, self.w2)
        iclr = torch.sigmoid(self.a0.reshape(-1) + (x_a @ self.a1) @ self.a2)
        g = torch.sigmoid(x_g @ self.g1) @ self.g2
        kk = F.normalize((k * self.k_k).view(b, t, h, n), dim=-1, eps=_KK_EPS)
        k = k * (1 + (iclr - 1) * self.k_a)
        v, v_first = self._value_residual(v, x_v, v_first)

        r4, k4, v4 = r.view(b, t, h, n), k.view(b, t, h, n), v.view(b, t, h, n)
        w4, kb = w.view(b, t, h, n), kk * iclr.view(b, t, h, n)
        k_in = k4
        if mask is not None:
            # Padded steps: no input (k = 0), no decay (w = 0) and no low-rank update (b = 0), so the state
            # passes through them unchanged. The bonus below uses the unmasked k: it only reaches the pad's own
            # output, which nothing reads.
            keep = mask.view(b, t, 1, 1)
            k_in = k4 * keep.to(k4.dtype)
            w4 = w4 * keep.to(w4.dtype)
            kb = kb * keep.to(kb.dtype)
        y, wkv_state = wkv7(
            r4,
            w4,
            k_in,
            v4,
            -kk,
            kb,
            initial_state=wkv_state,
            output_final_state=return_state,
            backend=self.backend,
            cu_seqlens=cu_seqlens,
        )
        y = self.ln_x(y.reshape(b * t, c)).view(b, t, c)
        bonus = (r4 * k4 * self.r_k).sum(dim=-1, keepdim=True) * v4  # the current token's direct path
        out = self.output((y + bonus.view(b, t, c)) * g)
        result = (out,)
        if return_state:
            result += (TimeMixState(shift, wkv_state),)
        if return_v_first:
            result += (v_first,)
        return result[0] if len(result) == 1 else result

    @torch.no_grad()
    def step(
        self,
        x: torch.Tensor,
        shift: torch.Tensor,
        wkv: torch.Tensor,
        *,
        v_first: torch.Tensor | None = None,
        return_v_first: bool = False,
        residual: torch.Tensor | None = None,
    ):
        """One token: x [b, c] (LayerNorm-ed) -> out [b, c] (and v_first [b, c] with ``return_v_first``);
        ``shift`` [b, c] and ``wkv`` [b, h, n, n] float32 are updated in place. ``residual`` [b, c]: return
        ``residual + out`` instead (added inside the output projection's GEMM: one op less per layer). The
        same math as ``forward`` at t = 1 up to float rounding; no host syncs. On the CPU the first call may
        re-lay out the square projection weights in memory (:func:`_gemv_weight`: same values and shape,
        transposed strides)."""
        b, c = x.shape
        h, n = self.n_head, self.head_size
        mix = torch.cat((self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g))  # [6, 1, c]
        x_r, x_w, x_k, x_v, x_a, x_g = torch.lerp(x, shift, mix).unbind(0)  # x + (x_prev - x) * mix
        shift.copy_(x)
        r = F.linear(x_r, _gemv_weight(self.receptance.weight))
        k = F.linear(x_k, _gemv_weight(self.key.weight))
        v = F.linear(x_v, _gemv_weight(self.value.weight))
        if x.dtype in (torch.float32, torch.float64):  # log_decay7's arithmetic, its bias folded into addmm
            w = torch.addmm(self.w0.reshape(1, c), torch.tanh(x_w @ self.w1), self.w2).sigmoid_().mul_(-_DECAY_SCALE)
        else:
            w = log_decay7(x_w, self.w0, self.w1, self.w2)
        iclr = torch.addmm(self.a0.reshape(1, c), x_a @ self.a1, self.a2).sigmoid_()
        g = (x_g @ self.g1).sigmoid_() @ self.g2
        kk = (k * self.k_k).view(b, h, n)  # F.normalize's arithmetic in three ops, not five
        kk = kk.div_(torch.linalg.vector_norm(kk, dim=-1, keepdim=True).clamp_min_(_KK_EPS))
        k = k.addcmul(k * self.k_a, iclr - 1)  # k * (1 + (iclr - 1) * k_a); [1, b, c] (k_a is [1, 1, c])
        if self.layer_id == 0:
            if v_first is not None:
                raise ValueError(
                    "TimeMix7 (layer 0): the first layer makes v_first from its own value; pass v_first=None"
                )
            v_first = v
        else:
            if v_first is None:
                raise _first_layer_error(self.layer_id)
            if v_first.shape != v.shape:
                raise ValueError(
                    f"TimeMix7 (layer {self.layer_id}): v_first must be {list(v.shape)} like the value, got "
                    f"{list(v_first.shape)}"
                )
            gate = torch.addmm(self.v0.reshape(1, c), x_v @ self.v1, self.v2).sigmoid_()
            v = torch.lerp(v, v_first if v_first.dtype == v.dtype else v_first.to(v.dtype), gate)

        r3, k3, v3 = r.view(b, h, n), k.view(b, h, n), v.view(b, h, n)
        y = _wkv7_step(r3, w.view(b, h, n), k3, v3, -kk, kk * iclr.view(b, h, n), wkv, self.backend)
        y = torch.group_norm(y.reshape(b, c), h, self.ln_x.weight, self.ln_x.bias, self.ln_x.eps)
        # The current token's direct path, sum_n(r * k * r_k) * v, added in place.
        y.view(b, h, n).addcmul_((r3 * k3 * self.r_k).sum(dim=-1, keepdim=True), v3)
        y, weight = y.mul_(g), _gemv_weight(self.output.weight)
        out = F.linear(y, weight) if residual is None else torch.addmm(residual, y, weight.t())
        return (out, v_first) if return_v_first else out

    def extra_repr(self) -> str:
        return (
            f"n_embd={self.n_embd}, n_head={self.n_head}, head_size={self.head_size}, layer_id={self.layer_id}, "
            f"d_w={self.d_w}, d_a={self.d_a}, d_v={self.d_v}, d_g={self.d_g}"
        )
