"""The compiled WKV7 ops: fake (meta) kernels and autograd, registered once the library loads.

Letter legend: b batch, t time, h heads, n head size; s the number of sequences (b, or the number of
``cu_seqlens`` segments).

Defined in ``csrc/wkv7_ops.cpp``:

- ``rwkv_vision::wkv7_forward(r, w, k, v, a, b, s0, cu_seqlens) -> (y, sT)``
- ``rwkv_vision::wkv7_backward(r, w, k, v, a, b, s0, cu_seqlens, dy, dsT) -> (dr, dw, dk, dv, da, db, ds0)``
- ``rwkv_vision::wkv7_step(r, w, k, v, a, b, state) -> y``, the state [b, h, n, n] advanced in place.

Contract: r, k, v, a, b, dy are [b, t, h, n] of one dtype X (float32, bfloat16, float16; float64 on the
CPU only); w is [b, t, h, n] and every state [s, h, n, n] in the accumulation dtype F (float64 when X
is float64, float32 otherwise); ``cu_seqlens`` is int64 [s + 1] (b = 1) or an empty int64 tensor,
meaning not packed; all contiguous, one device. ``ops.wkv7`` casts to this.
"""

from __future__ import annotations

import torch

from .extension import has_extension, has_kernel

__all__ = ["kernel_ops7", "WKV7_KERNEL_DEVICES", "WKV7_CUDA_HEAD_SIZES"]


def _fake_forward(r, w, k, v, a, b, s0, cu_seqlens):
    return r.new_empty(r.shape), s0.new_empty(s0.shape)


def _fake_backward(r, w, k, v, a, b, s0, cu_seqlens, dy, dsT):
    return tuple(x.new_empty(x.shape) for x in (r, w, k, v, a, b, s0))


def _fake_step(r, w, k, v, a, b, state):
    return r.new_empty(r.shape)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, dy, dsT):
    r, w, k, v, a, b, s0, cu_seqlens = ctx.saved_tensors
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        # create_graph=True (double backward): the compiled backward is not differentiable, so the
        # gradients are recomputed through the pure-PyTorch twin, whose graph autograd can differentiate.
        return (*_differentiable_backward(r, w, k, v, a, b, s0, cu_seqlens, dy, dsT), None)
    # Autograd hands over None for an output that took no part in the loss.
    dy = torch.zeros_like(r) if dy is None else dy.contiguous()
    dsT = torch.zeros_like(s0) if dsT is None else dsT.contiguous()
    grads = torch.ops.rwkv_vision.wkv7_backward(r, w, k, v, a, b, s0, cu_seqlens, dy, dsT)
    return (*grads, None)


def _differentiable_backward(r, w, k, v, a, b, s0, cu_seqlens, dy, dsT):
    """The gradients of wkv7_forward as a differentiable function of its inputs and of dy, dsT."""
    from .wkv7_chunked import wkv7_chunked

    inputs = [x if x.requires_grad else x.detach().requires_grad_(True) for x in (r, w, k, v, a, b, s0)]
    packed = cu_seqlens if cu_seqlens.numel() > 0 else None
    y, sT = wkv7_chunked(*inputs, output_final_state=True, cu_seqlens=packed)
    outputs, grad_outputs = [], []
    for out, grad in ((y, dy), (sT, dsT)):
        if grad is not None:
            outputs.append(out)
            grad_outputs.append(grad)
    grads = torch.autograd.grad(outputs, inputs, grad_outputs, create_graph=True, allow_unused=True)
    return tuple(torch.zeros_like(x) if g is None else g.to(x.dtype) for x, g in zip(inputs, grads))


def _has_wkv7_ops() -> bool:
    # A library built before the wkv7 ops existed loads fine and has only the wkv6 ones.
    return has_extension() and hasattr(torch.ops.rwkv_vision, "wkv7_forward")


def _register():
    if not _has_wkv7_ops():
        return None, frozenset()
    torch.library.register_fake("rwkv_vision::wkv7_forward")(_fake_forward)
    torch.library.register_fake("rwkv_vision::wkv7_backward")(_fake_backward)
    # wkv7_step mutates its state and has no autograd: it is for decoding (ops.wkv7_step refuses grads).
    torch.library.register_fake("rwkv_vision::wkv7_step")(_fake_step)
    torch.library.register_autograd("rwkv_vision::wkv7_forward", _backward, setup_context=_setup_context)
    devices = frozenset(d for d in ("cpu", "cuda") if has_kernel("wkv7_forward", d))
    return torch.ops.rwkv_vision, devices


# Resolved once at import (loading a prebuilt library, never compiling) so that code traced by
# torch.compile only reads these constants.
_OPS, WKV7_KERNEL_DEVICES = _register()
#: The head sizes the CUDA kernels are compiled for (the CPU kernel takes any n >= 1).
WKV7_CUDA_HEAD_SIZES: tuple[int, ...] = (32, 64, 128)


def kernel_ops7():
    """``torch.ops.rwkv_vision`` with the wkv7 fakes and autograd registered, or None without the wkv7 ops."""
    return _OPS
