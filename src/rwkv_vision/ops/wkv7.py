"""``wkv7``: the RWKV-7 WKV recurrence (the generalised delta rule), on the compiled kernels where they apply.

Letter legend: b batch, t time, h heads, n head size.

Per batch and head, with a state S[j, i] (j key channel, i value channel; the transpose of the official
RNN's [V, K] state)::

    S[j, i] = exp(w_t[j]) S[j, i] + b_t[j] sum_j' a_t[j'] S[j', i] + k_t[j] v_t[i]
    y_t[i]  = sum_j r_t[j] S[j, i]

An RWKV-7 layer passes a = -kk, b = kk * iclr. Unlike wkv6, the output reads the state after the update.
"""

from __future__ import annotations

import torch

from .backends import WKV7_BACKENDS, wkv7_default_backend
from .wkv6 import _FLOAT_DTYPES, _autodiff_mode, _check_log_decay
from .wkv7_chunked import wkv7_chunked
from .wkv7_kernel import WKV7_CUDA_HEAD_SIZES, WKV7_KERNEL_DEVICES, kernel_ops7
from .wkv7_ref import wkv7_ref

__all__ = ["wkv7", "wkv7_ref", "wkv7_chunked", "WKV7_BACKENDS"]


def _check_cu_seqlens(cu_seqlens, r: torch.Tensor, fn: str) -> int:
    """The number of packed sequences N, after checking ``cu_seqlens`` ([N + 1] offsets along t)."""
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"{fn}: cu_seqlens must be a torch.Tensor of offsets or None, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype.is_floating_point or cu_seqlens.dtype.is_complex or cu_seqlens.dtype == torch.bool:
        raise TypeError(f"{fn}: cu_seqlens must be an integer tensor (int32 or int64), got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
        raise ValueError(
            f"{fn}: cu_seqlens must be 1-D [N + 1] with N >= 1 sequences, got shape {tuple(cu_seqlens.shape)}"
        )
    if cu_seqlens.device.type != "cpu" and cu_seqlens.device != r.device:
        raise ValueError(f"{fn}: cu_seqlens is on {cu_seqlens.device}; put it on the CPU or on r's device ({r.device})")
    if r.shape[0] != 1:
        raise ValueError(
            f"{fn}: with cu_seqlens the sequences are packed along t, so b must be 1, got b = {r.shape[0]}"
        )
    if not torch.compiler.is_compiling() and not torch._subclasses.fake_tensor.is_fake(cu_seqlens):
        bounds = [int(x) for x in cu_seqlens.tolist()]  # N + 1 numbers: one small copy, also from a GPU
        t = r.shape[1]
        if bounds[0] != 0 or bounds[-1] != t:
            raise ValueError(f"{fn}: cu_seqlens must start at 0 and end at t = {t}, got {bounds[0]} ... {bounds[-1]}")
        steps = [end - start for start, end in zip(bounds[:-1], bounds[1:])]
        if min(steps) < 0:
            at = steps.index(min(steps))
            raise ValueError(
                f"{fn}: cu_seqlens must be non-decreasing, got cu_seqlens[{at}] = {bounds[at]} > "
                f"cu_seqlens[{at + 1}] = {bounds[at + 1]}"
            )
    return cu_seqlens.shape[0] - 1


def _check(r, w, k, v, a, b, initial_state, cu_seqlens) -> None:
    named = {"r": r, "w": w, "k": k, "v": v, "a": a, "b": b}
    if initial_state is not None:
        named["initial_state"] = initial_state
    for name, x in named.items():
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"wkv7: {name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"wkv7: {name} must be a floating-point tensor, got {x.dtype}")
    if r.dim() != 4:
        raise ValueError(f"wkv7: r must be [b, t, h, n], got shape {tuple(r.shape)}")
    bsz, t, h, n = r.shape
    if r.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"wkv7: r must be float32, bfloat16, float16 or float64, got {r.dtype}")
    for name in ("w", "k", "v", "a", "b"):
        if named[name].shape != r.shape:
            raise ValueError(
                f"wkv7: {name} must have the shape of r [b, t, h, n] = {tuple(r.shape)}, got {tuple(named[name].shape)}"
            )
    for name in ("k", "v", "a", "b"):
        if named[name].dtype != r.dtype:
            raise TypeError(f"wkv7: {name} must have the dtype of r ({r.dtype}), got {named[name].dtype}")
    if t == 0:
        raise ValueError("wkv7: the sequence length t (dim 1 of r) must be at least 1, got 0")
    if n == 0 or h == 0:
        raise ValueError(f"wkv7: heads h and head size n must be positive, got r of shape {tuple(r.shape)}")
    for name, x in named.items():
        if x.device != r.device:
            raise ValueError(f"wkv7: {name} is on {x.device} but r is on {r.device}; put all inputs on one device")
    if cu_seqlens is None:
        if initial_state is not None and initial_state.shape != (bsz, h, n, n):
            raise ValueError(
                f"wkv7: initial_state must be [b, h, n, n] = [{bsz}, {h}, {n}, {n}], got {tuple(initial_state.shape)}"
            )
        return
    count = _check_cu_seqlens(cu_seqlens, r, "wkv7")
    if initial_state is not None and initial_state.shape != (count, h, n, n):
        raise ValueError(
            f"wkv7: with cu_seqlens of {count} sequences, initial_state must be [N, h, n, n] = "
            f"[{count}, {h}, {n}, {n}], got {tuple(initial_state.shape)}"
        )


def _kernel_reason(r: torch.Tensor) -> str | None:
    """Why the compiled wkv7 kernel does not apply to these inputs (None when it does)."""
    if kernel_ops7() is None:
        return "the compiled extension has no wkv7 ops (not loaded, or built without them; see backend_info())"
    device = r.device.type
    if device not in ("cpu", "cuda"):
        return f"there is no kernel for device type {device!r}"
    if device not in WKV7_KERNEL_DEVICES:
        return f"the extension was built without {device.upper()} wkv7 kernels"
    if device == "cpu":
        return None
    if r.dtype == torch.float64:
        return "the CUDA kernel takes float32, bfloat16 and float16, not float64"
    if r.shape[-1] not in WKV7_CUDA_HEAD_SIZES:
        return f"the CUDA kernel supports head sizes n in {WKV7_CUDA_HEAD_SIZES}, got n = {r.shape[-1]}"
    return None


def _check_backend(backend, fn: str) -> str:
    backend = wkv7_default_backend() if backend is None else backend
    if backend not in WKV7_BACKENDS:
        raise ValueError(
            f"{fn}: backend must be one of {WKV7_BACKENDS}, got {backend!r} (wkv6's CUDA variant names apply to "
            "wkv6 only; as the process default they mean 'kernel' here)"
        )
    return backend


def wkv7(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The RWKV-7 WKV recurrence over a whole sequence, with state in and out.

    Args:
        r, k, v, a, b: [b, t, h, n] receptance, key, value and the two vectors of the low-rank update
            (an RWKV-7 layer passes a = -kk, b = kk * iclr), one floating dtype.
        w: [b, t, h, n] log of the per-step decay (w <= 0), any floating dtype (used in float32, or
            float64 for float64 r).
        initial_state: optional [b, h, n, n] state S[j, i] (j key, i value channel), or [N, h, n, n]
            with ``cu_seqlens``; zeros if None.
        output_final_state: return the state after the last step (else None is returned).
        cu_seqlens: optional [N + 1] integer offsets (0 first, t last, non-decreasing) of N sequences
            packed along t, b = 1 (flash-linear-attention's convention); the state restarts at each
            offset from that sequence's initial state. An empty sequence passes its state through.
        backend: one of ``WKV7_BACKENDS``: "auto" (the compiled kernel where it applies, else
            "chunked"), "kernel" (the compiled kernel, or a ValueError saying why not), "chunked"
            (``wkv7_chunked``, pure PyTorch, any device), "reference" (``wkv7_ref``, the loop over
            time). None: the process default of :func:`rwkv_vision.ops.use_backend` /
            ``RWKV_VISION_WKV6_BACKEND``, where wkv6's CUDA variant names mean "kernel".

    Returns:
        y: [b, t, h, n] in the dtype of r.
        final_state: [b, h, n, n] (or [N, h, n, n]) float32 (float64 for float64 r), or None.

    Gradients flow to r, w, k, v, a, b and initial_state, including through final_state.

    Example::

        >>> b, t, h, n = 2, 7, 4, 64
        >>> r, k, v = (torch.randn(b, t, h, n) for _ in range(3))
        >>> kk = torch.nn.functional.normalize(torch.randn(b, t, h, n), dim=-1)
        >>> w = -0.6 * torch.rand(b, t, h, n)               # log-decay, so decay = exp(w) in (0.55, 1]
        >>> y, s = wkv7(r, w, k, v, -kk, kk * torch.rand(b, t, h, n), output_final_state=True)
        >>> y.shape, s.shape
        (torch.Size([2, 7, 4, 64]), torch.Size([2, 4, 64, 64]))
    """
    backend = _check_backend(backend, "wkv7")
    _check(r, w, k, v, a, b, initial_state, cu_seqlens)
    if not isinstance(output_final_state, bool):
        raise TypeError(f"wkv7: output_final_state must be a bool, got {type(output_final_state).__name__}")
    _check_log_decay(w, "wkv7")
    args = (r, w, k, v, a, b, initial_state, output_final_state, cu_seqlens)
    if backend == "reference":
        return wkv7_ref(*args)
    if backend == "chunked":
        return wkv7_chunked(*args)
    mode = _autodiff_mode((r, w, k, v, a, b, initial_state))
    if mode is not None:
        if backend == "auto":
            # The pure-PyTorch form is differentiable in every mode: correct values, not zeros.
            return wkv7_chunked(*args)
        raise ValueError(
            f"wkv7: {mode} is not supported by the compiled kernel (backend={backend!r}); use "
            "backend='chunked' or 'reference', or 'auto', which switches to 'chunked' for it"
        )
    reason = _kernel_reason(r)
    if reason is not None:
        if backend == "kernel":
            raise ValueError(f"wkv7: backend='kernel' but no kernel applies: {reason}")
        return wkv7_chunked(*args)

    acc = torch.float64 if r.dtype == torch.float64 else torch.float32
    bsz, _, h, n = r.shape
    if cu_seqlens is None:
        offsets = torch.empty(0, dtype=torch.int64, device=r.device)  # the op's "not packed"
        count = bsz
    else:
        offsets = cu_seqlens.to(device=r.device, dtype=torch.int64).contiguous()
        count = cu_seqlens.shape[0] - 1
    s0 = r.new_zeros(count, h, n, n, dtype=acc) if initial_state is None else initial_state.to(acc).contiguous()
    # .to() and .contiguous() are differentiable, so gradients come back in each input's own dtype.
    y, s_t = kernel_ops7().wkv7_forward(
        r.contiguous(),
        w.to(acc).contiguous(),
        k.contiguous(),
        v.contiguous(),
        a.contiguous(),
        b.contiguous(),
        s0,
        offsets,
    )
    return y, (s_t if output_final_state else None)
