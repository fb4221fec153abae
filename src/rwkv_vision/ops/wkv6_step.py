"""``wkv6_step``: one token of the RWKV-6 WKV recurrence, the state advanced in place (decoding).

Letter legend: b batch, h heads, n head size.

Per batch and head, with the state S[j, i] (j key channel, i value channel), the same step as one time
step of ``wkv6``::

    y[i]    = sum_j r[j] * (u[j] * k[j] * v[i] + S[j, i])
    S[j, i] = exp(w[j]) * S[j, i] + k[j] * v[i]

``wkv6`` over t = 1 computes the same thing but allocates a new state, runs the general kernel and goes
through autograd. A decoder that keeps its state in a static buffer (``rwkv_vision.decoding.Decoder``)
calls this instead: one compiled kernel that reads and rewrites each state once, and no allocation
beyond the [b, h, n] output, so it can be captured into a CUDA graph.
"""

from __future__ import annotations

import torch

from .backends import BACKENDS, KERNEL_CODES, default_backend
from .wkv6 import _FLOAT_DTYPES, _autodiff_mode, _check_log_decay, _kernel_reason, _variant_reason
from .wkv6_kernel import kernel_ops

__all__ = ["wkv6_step", "wkv6_step_ref"]


def wkv6_step_ref(r, k, v, w, u, state: torch.Tensor) -> torch.Tensor:
    """Pure-PyTorch twin of :func:`wkv6_step`, same contract (the state is updated in place)."""
    acc = state.dtype
    b, h, n = r.shape
    r_, k_, v_ = (x.to(acc) for x in (r, k, v))
    kv = k_.unsqueeze(-1) * v_.unsqueeze(-2)  # [b, h, n(j), n(i)]
    y = torch.einsum("bhj,bhji->bhi", r_, u.to(acc).unsqueeze(-1) * kv + state)
    state.mul_(torch.exp(w.to(acc)).unsqueeze(-1)).add_(kv)
    return y.to(r.dtype)


def _check(r, k, v, w, u, state) -> None:
    named = {"r": r, "k": k, "v": v, "w": w, "u": u, "state": state}
    for name, x in named.items():
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"wkv6_step: {name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"wkv6_step: {name} must be a floating-point tensor, got {x.dtype}")
        if x.device != r.device:
            raise ValueError(f"wkv6_step: {name} is on {x.device} but r is on {r.device}; put all inputs on one device")
    if r.dim() != 3:
        raise ValueError(f"wkv6_step: r must be [b, h, n], got shape {tuple(r.shape)}")
    if r.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"wkv6_step: r must be float32, bfloat16, float16 or float64, got {r.dtype}")
    b, h, n = r.shape
    for name in ("k", "v", "w"):
        if named[name].shape != r.shape:
            raise ValueError(
                f"wkv6_step: {name} must have the shape of r [b, h, n] = {tuple(r.shape)}, "
                f"got {tuple(named[name].shape)}"
            )
    for name in ("k", "v"):
        if named[name].dtype != r.dtype:
            raise TypeError(f"wkv6_step: {name} must have the dtype of r ({r.dtype}), got {named[name].dtype}")
    if u.shape != (h, n):
        raise ValueError(f"wkv6_step: u must be [h, n] = [{h}, {n}], got {tuple(u.shape)}")
    acc = torch.float64 if r.dtype == torch.float64 else torch.float32
    if state.shape != (b, h, n, n):
        raise ValueError(f"wkv6_step: state must be [b, h, n, n] = [{b}, {h}, {n}, {n}], got {tuple(state.shape)}")
    if state.dtype != acc:
        raise TypeError(f"wkv6_step: state must be {acc} for r of dtype {r.dtype}, got {state.dtype}")
    if not state.is_contiguous():
        raise ValueError("wkv6_step: state must be contiguous (it is updated in place)")
    if torch.is_grad_enabled() and any(x.requires_grad for x in named.values()):
        raise RuntimeError(
            "wkv6_step: is for decoding and has no gradient; train with wkv6, or call it under torch.no_grad()"
        )
    mode = _autodiff_mode(named.values())
    if mode is not None:
        raise RuntimeError(
            f"wkv6_step: is for decoding and has no derivatives, and {mode} is not supported by it "
            "(it would see none and return zero tangents); differentiate wkv6 over t = 1 instead"
        )
    _check_log_decay(w, "wkv6_step")


def wkv6_step(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """One token of the WKV6 recurrence; ``state`` is advanced in place.

    Args:
        r, k, v: [b, h, n] receptance, key and value of this token, one floating dtype.
        w: [b, h, n] log of the decay (w <= 0), any floating dtype (used in the state's dtype).
        u: [h, n] the bonus for the current token.
        state: [b, h, n, n] float32 (float64 for float64 r), contiguous; updated in place.
        backend: as for :func:`rwkv_vision.ops.wkv6`: "auto", "kernel", "cuda_recurrent" / "cuda_split" /
            "cuda_chunked" (all three mean the one CUDA step kernel, which every build has), or
            "reference" / "chunked" (both mean the pure-PyTorch twin: one token has nothing to chunk).

    Returns:
        y: [b, h, n] in the dtype of r.

    Not differentiable (decoding only): with gradients enabled and an input that requires them it raises.
    """
    backend = default_backend() if backend is None else backend
    if backend not in BACKENDS:
        raise ValueError(f"wkv6_step: backend must be one of {BACKENDS}, got {backend!r}")
    _check(r, k, v, w, u, state)
    if backend in ("reference", "chunked"):
        return wkv6_step_ref(r, k, v, w, u, state)
    if backend in KERNEL_CODES:
        reason = _variant_reason(r, backend, experimental_applies=False)
        if reason is not None:
            raise ValueError(f"wkv6_step: backend={backend!r} cannot run: {reason}")
    else:
        reason = _kernel_reason(r)
        if reason is not None:
            if backend == "kernel":
                raise ValueError(f"wkv6_step: backend='kernel' but no kernel applies: {reason}")
            return wkv6_step_ref(r, k, v, w, u, state)
    acc = state.dtype
    return kernel_ops().wkv6_step(
        r.contiguous(), k.contiguous(), v.contiguous(), w.to(acc).contiguous(), u.to(acc).contiguous(), state
    )
