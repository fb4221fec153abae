"""The compiled WKV6 ops: fake (meta) kernels and autograd, registered once the library loads.

``rwkv_vision::wkv6_forward(r, k, v, w, u, s0, kernel=0, segments=0, cu_seqlens=None) -> (y, sT)`` and
``rwkv_vision::wkv6_backward(r, k, v, w, u, s0, dy, dsT, kernel=0, segments=0, cu_seqlens=None)
-> (dr, dk, dv, dw, du, ds0)``
are defined in ``csrc/wkv6_ops.cpp``, with the decoding step ``rwkv_vision::wkv6_step(r, k, v, w, u, state)
-> y`` (r, k, v, w [b, h, n]; the state updated in place). Their contract (letters b t h n as everywhere):
r, k, v, dy are [b, t, h, n] of one dtype T; w is [b, t, h, n], u is [h, n] and every state is
[b, h, n, n], all in the accumulation dtype F (float64 when T is float64, float32 otherwise); all
contiguous, one device. ``ops.wkv6`` casts to this.

``kernel`` picks the implementation (``backends.KERNEL_CODES``; ``Wkv6Kernel`` in ``csrc/wkv6.h``): 0 the device's
kernel (the CPU kernel, or the recurrent CUDA kernels), 1 the split CUDA forward with the recurrent
backward, 2 the chunked CUDA forward and backward. ``segments`` forces the number of time segments of
the chunked CUDA kernels (0: chosen for the device). ``cu_seqlens`` (int64 [N + 1], on r's device; kernel 0
only) packs N sequences into one row (b == 1): each runs from its own state, and every state tensor is then
[N, h, n, n] (ops/cu_seqlens.py). The backward runs with the forward's values.
"""

from __future__ import annotations

import torch

from .extension import cuda_variants, has_extension, has_kernel

__all__ = ["kernel_ops", "KERNEL_DEVICES", "CUDA_VARIANTS"]


def _fake_forward(r, k, v, w, u, s0, kernel=0, segments=0, cu_seqlens=None):
    return r.new_empty(r.shape), s0.new_empty(s0.shape)


def _fake_backward(r, k, v, w, u, s0, dy, dsT, kernel=0, segments=0, cu_seqlens=None):
    return (
        r.new_empty(r.shape),
        k.new_empty(k.shape),
        v.new_empty(v.shape),
        w.new_empty(w.shape),
        u.new_empty(u.shape),
        s0.new_empty(s0.shape),
    )


def _fake_step(r, k, v, w, u, state):
    return r.new_empty(r.shape)


def _setup_context(ctx, inputs, output):
    *tensors, ctx.kernel, ctx.segments, cu_seqlens = inputs  # torch.library fills in the defaults
    ctx.save_for_backward(*tensors, cu_seqlens)


def _backward(ctx, dy, dsT):
    r, k, v, w, u, s0, cu_seqlens = ctx.saved_tensors
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        # create_graph=True (double backward): the compiled backward is not differentiable, so the
        # gradients are recomputed through the pure-PyTorch twin, whose graph autograd can differentiate.
        return (*_differentiable_backward(r, k, v, w, u, s0, dy, dsT, cu_seqlens), None, None, None)
    # Autograd hands over None (or expanded zeros) for an output that took no part in the loss.
    dy = torch.zeros_like(r) if dy is None else dy.contiguous()
    dsT = torch.zeros_like(s0) if dsT is None else dsT.contiguous()
    grads = torch.ops.rwkv_vision.wkv6_backward(r, k, v, w, u, s0, dy, dsT, ctx.kernel, ctx.segments, cu_seqlens)
    return (*grads, None, None, None)


def _differentiable_backward(r, k, v, w, u, s0, dy, dsT, cu_seqlens=None):
    """The gradients of wkv6_forward as a differentiable function of its inputs and of dy, dsT."""
    from .wkv6_chunked import wkv6_chunked

    inputs = [x if x.requires_grad else x.detach().requires_grad_(True) for x in (r, k, v, w, u, s0)]
    y, sT = wkv6_chunked(*inputs, output_final_state=True, cu_seqlens=cu_seqlens)
    outputs, grad_outputs = [], []
    for out, grad in ((y, dy), (sT, dsT)):
        if grad is not None:
            outputs.append(out)
            grad_outputs.append(grad)
    grads = torch.autograd.grad(outputs, inputs, grad_outputs, create_graph=True, allow_unused=True)
    return tuple(torch.zeros_like(x) if g is None else g.to(x.dtype) for x, g in zip(inputs, grads))


def _register():
    if not has_extension():
        return None, frozenset(), ()
    torch.library.register_fake("rwkv_vision::wkv6_forward")(_fake_forward)
    torch.library.register_fake("rwkv_vision::wkv6_backward")(_fake_backward)
    # wkv6_step mutates its state and has no autograd: it is for decoding (ops.wkv6_step refuses grads).
    torch.library.register_fake("rwkv_vision::wkv6_step")(_fake_step)
    torch.library.register_autograd("rwkv_vision::wkv6_forward", _backward, setup_context=_setup_context)
    devices = frozenset(d for d in ("cpu", "cuda") if has_kernel("wkv6_forward", d))
    return torch.ops.rwkv_vision, devices, cuda_variants()


# Resolved once at import (loading a prebuilt library, never compiling) so that code traced by
# torch.compile only reads these constants. CUDA_VARIANTS: the backend names of the CUDA kernel
# variants this build has, e.g. ("cuda_recurrent",) or all three.
_OPS, KERNEL_DEVICES, CUDA_VARIANTS = _register()


def kernel_ops():
    """``torch.ops.rwkv_vision`` with fakes and autograd registered, or None without the extension."""
    return _OPS
