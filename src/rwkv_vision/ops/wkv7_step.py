"""``wkv7_step``: one token of the RWKV-7 WKV recurrence, the state advanced in place (decoding).

Letter legend: b batch, h heads, n head size.

Per batch and head, with the state S[j, i] (j key channel, i value channel), the same step as one time
step of ``wkv7``::

    S[j, i] = exp(w[j]) S[j, i] + b[j] sum_j' a[j'] S[j', i] + k[j] v[i]
    y[i]    = sum_j r[j] S[j, i]            (read after the update)

``wkv7`` over t = 1 computes the same thing but allocates a new state and goes through autograd. A
decoder that keeps its state in a buffer calls this instead: the state is rewritten in place, and
nothing of the state's size is allocated (the compiled step allocates only the [b, h, n] output, the
PyTorch twin a few [b, h, n] temporaries).
"""

from __future__ import annotations

import torch

from .wkv6 import _FLOAT_DTYPES, _autodiff_mode, _check_log_decay
from .wkv7 import _check_backend, _kernel_reason, kernel_ops7

__all__ = ["wkv7_step", "wkv7_step_ref"]


def wkv7_step_ref(r, w, k, v, a, b, state: torch.Tensor) -> torch.Tensor:
    """Pure-PyTorch twin of :func:`wkv7_step`, same contract (the state is updated in place)."""
    acc = state.dtype
    r_, w_, k_, v_, a_, b_ = (x.to(acc) for x in (r, w, k, v, a, b))
    sa = torch.einsum("bhj,bhji->bhi", a_, state)  # [b, h, n(i)]: read before the state changes
    # Broadcast in place (addcmul_): no [b, h, n, n] temporary.
    state.mul_(torch.exp(w_).unsqueeze(-1))
    state.addcmul_(b_.unsqueeze(-1), sa.unsqueeze(-2)).addcmul_(k_.unsqueeze(-1), v_.unsqueeze(-2))
    return torch.einsum("bhj,bhji->bhi", r_, state).to(r.dtype)


def _check(r, w, k, v, a, b, state) -> None:
    named = {"r": r, "w": w, "k": k, "v": v, "a": a, "b": b, "state": state}
    for name, x in named.items():
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"wkv7_step: {name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"wkv7_step: {name} must be a floating-point tensor, got {x.dtype}")
        if x.device != r.device:
            raise ValueError(f"wkv7_step: {name} is on {x.device} but r is on {r.device}; put all inputs on one device")
    if r.dim() != 3:
        raise ValueError(f"wkv7_step: r must be [b, h, n], got shape {tuple(r.shape)}")
    if r.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"wkv7_step: r must be float32, bfloat16, float16 or float64, got {r.dtype}")
    bsz, h, n = r.shape
    if n == 0 or h == 0:
        raise ValueError(f"wkv7_step: heads h and head size n must be positive, got r of shape {tuple(r.shape)}")
    for name in ("w", "k", "v", "a", "b"):
        if named[name].shape != r.shape:
            raise ValueError(
                f"wkv7_step: {name} must have the shape of r [b, h, n] = {tuple(r.shape)}, "
                f"got {tuple(named[name].shape)}"
            )
    for name in ("k", "v", "a", "b"):
        if named[name].dtype != r.dtype:
            raise TypeError(f"wkv7_step: {name} must have the dtype of r ({r.dtype}), got {named[name].dtype}")
    acc = torch.float64 if r.dtype == torch.float64 else torch.float32
    if state.shape != (bsz, h, n, n):
        raise ValueError(f"wkv7_step: state must be [b, h, n, n] = [{bsz}, {h}, {n}, {n}], got {tuple(state.shape)}")
    if state.dtype != acc:
        raise TypeError(f"wkv7_step: state must be {acc} for r of dtype {r.dtype}, got {state.dtype}")
    if not state.is_contiguous():
        raise ValueError("wkv7_step: state must be contiguous (it is updated in place)")
    if torch.is_grad_enabled() and any(x.requires_grad for x in named.values()):
        raise RuntimeError(
            "wkv7_step: is for decoding and has no gradient; train with wkv7, or call it under torch.no_grad()"
        )
    mode = _autodiff_mode(named.values())
    if mode is not None:
        raise RuntimeError(
            f"wkv7_step: is for decoding and has no derivatives, and {mode} is not supported by it "
            "(it would see none and return zero tangents); differentiate wkv7 over t = 1 instead"
        )
    _check_log_decay(w, "wkv7_step")


def wkv7_step(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """One token of the WKV7 recurrence; ``state`` is advanced in place.

    Args:
        r, k, v, a, b: [b, h, n] this token's receptance, key, value and low-rank vectors, one floating dtype.
        w: [b, h, n] log of the decay (w <= 0), any floating dtype (used in the state's dtype).
        state: [b, h, n, n] float32 (float64 for float64 r), contiguous; updated in place.
        backend: as for :func:`rwkv_vision.ops.wkv7`: "auto" (the compiled step where it applies, else
            the PyTorch twin), "kernel" (the compiled step, or a ValueError saying why not), "chunked" /
            "reference" (both the PyTorch twin :func:`wkv7_step_ref`: one token has nothing to chunk).

    Returns:
        y: [b, h, n] in the dtype of r.

    Not differentiable (decoding only): with gradients enabled and an input that requires them it raises.
    """
    backend = _check_backend(backend, "wkv7_step")
    _check(r, w, k, v, a, b, state)
    if backend in ("reference", "chunked"):
        return wkv7_step_ref(r, w, k, v, a, b, state)
    reason = _kernel_reason(r)
    if reason is not None:
        if backend == "kernel":
            raise ValueError(f"wkv7_step: backend='kernel' but no kernel applies: {reason}")
        return wkv7_step_ref(r, w, k, v, a, b, state)
    acc = state.dtype
    return kernel_ops7().wkv7_step(
        r.contiguous(), w.to(acc).contiguous(), k.contiguous(), v.contiguous(), a.contiguous(), b.contiguous(), state
    )
