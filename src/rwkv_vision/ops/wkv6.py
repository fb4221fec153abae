"""``wkv6``: the RWKV-6 WKV recurrence, on the compiled kernels where they apply.

Letter legend: b batch, t time, h heads, n head size.

Per batch and head, with a state S[j, i] (j key channel, i value channel)::

    y_t[i]  = sum_j r_t[j] * (u[j] * k_t[j] * v_t[i] + S[j, i])
    S[j, i] = exp(w_t[j]) * S[j, i] + k_t[j] * v_t[i]

``w`` is the log of the per-step decay (an RWKV-6 layer passes ``w = -exp(w_raw)``). There is no
1/sqrt(n) scale, and the decay of step t applies after its output.
"""

from __future__ import annotations

import torch

from .backends import BACKENDS, KERNEL_CODES, default_backend
from .cu_seqlens import check_cu_seqlens, seqlens_list
from .wkv6_chunked import wkv6_chunked
from .wkv6_kernel import CUDA_VARIANTS, KERNEL_DEVICES, kernel_ops
from .wkv6_ref import wkv6_ref

__all__ = ["wkv6", "wkv6_ref", "CUDA_HEAD_SIZES", "BACKENDS"]

#: Head sizes the CUDA kernels are compiled for. The CPU kernel takes any head size.
CUDA_HEAD_SIZES = (32, 64, 128)
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_BUILD_EXPERIMENTAL = (
    "rebuild with RWKV_VISION_EXPERIMENTAL_CUDA_KERNELS=ON (e.g. `RWKV_VISION_EXPERIMENTAL_CUDA_KERNELS=ON "
    'pip install --no-build-isolation -e .`; docs/ops.md, "Building from source")'
)


def _check(r, k, v, w, u, initial_state, states: int | None = None) -> None:
    named = {"r": r, "k": k, "v": v, "w": w, "u": u}
    if initial_state is not None:
        named["initial_state"] = initial_state
    for name, x in named.items():
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"wkv6: {name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"wkv6: {name} must be a floating-point tensor, got {x.dtype}")
    if r.dim() != 4:
        raise ValueError(f"wkv6: r must be [b, t, h, n], got shape {tuple(r.shape)}")
    b, t, h, n = r.shape
    if r.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"wkv6: r must be float32, bfloat16, float16 or float64, got {r.dtype}")
    for name in ("k", "v", "w"):
        if named[name].shape != r.shape:
            raise ValueError(
                f"wkv6: {name} must have the shape of r [b, t, h, n] = {tuple(r.shape)}, got {tuple(named[name].shape)}"
            )
    for name in ("k", "v"):
        if named[name].dtype != r.dtype:
            raise TypeError(f"wkv6: {name} must have the dtype of r ({r.dtype}), got {named[name].dtype}")
    if t == 0:
        raise ValueError("wkv6: the sequence length t (dim 1 of r) must be at least 1, got 0")
    if n == 0 or h == 0:
        raise ValueError(f"wkv6: heads h and head size n must be positive, got r of shape {tuple(r.shape)}")
    if u.shape != (h, n):
        raise ValueError(f"wkv6: u must be [h, n] = [{h}, {n}], got {tuple(u.shape)}")
    if states is not None and initial_state is not None and initial_state.shape != (states, h, n, n):
        raise ValueError(
            f"wkv6: with cu_seqlens initial_state must be [N, h, n, n] = [{states}, {h}, {n}, {n}] (one per "
            f"packed sequence), got {tuple(initial_state.shape)}"
        )
    if states is None and initial_state is not None and initial_state.shape != (b, h, n, n):
        raise ValueError(
            f"wkv6: initial_state must be [b, h, n, n] = [{b}, {h}, {n}, {n}], got {tuple(initial_state.shape)}"
        )
    for name, x in named.items():
        if x.device != r.device:
            raise ValueError(f"wkv6: {name} is on {x.device} but r is on {r.device}; put all inputs on one device")


def _check_log_decay(w: torch.Tensor, fn: str) -> None:
    """Reject a log-decay ``w`` with an element > 0 or NaN (the decay exp(w) must lie in [0, 1]).

    Checked for CPU tensors only, where it costs one pass over w and no synchronisation. On a GPU the
    check would make the host wait for the device on every call, so there w is not checked and every
    backend computes exp(w) as given (docs/ops.md, "Invalid decays"). Skipped while torch.compile traces.
    """
    if w.device.type != "cpu" or torch.compiler.is_compiling():
        return
    while torch._C._functorch.is_functorch_wrapped_tensor(w):  # vmap, jvp, grad: check the data under it
        w = torch._C._functorch.get_unwrapped(w)
    if torch._subclasses.fake_tensor.is_fake(w):  # traced (FakeTensorMode): no data to check
        return
    bad = ~(w <= 0)  # true for w > 0 and for NaN
    if bool(bad.any()):
        count = int(bad.sum())
        index = tuple(int(i) for i in bad.nonzero()[0])
        value = w[index].item()
        raise ValueError(
            f"{fn}: w (the log-decay) must be <= 0 and not NaN (decay exp(w) in [0, 1]); got {count} invalid "
            f"value(s), e.g. w{list(index)} = {value}"
        )


def _autodiff_mode(tensors) -> str | None:
    """The autodiff the compiled kernels cannot serve, if any input is under it: forward-mode AD
    (``torch.func.jvp``, ``jacfwd``, ``torch.autograd.forward_ad``) or a ``torch.func`` gradient
    transform (``grad``, ``jacrev``, ``hessian``). None otherwise (plain autograd and vmap are fine)."""
    if torch.compiler.is_compiling():
        return None
    for x in tensors:
        if x is None:
            continue
        if torch.autograd.forward_ad.unpack_dual(x).tangent is not None:
            return "forward-mode AD (torch.func.jvp, jacfwd, torch.autograd.forward_ad)"
        if torch._C._functorch.is_gradtrackingtensor(x):
            return "torch.func gradient transforms (grad, jacrev, hessian)"
    return None


def _cuda_reason(r: torch.Tensor) -> str | None:
    """Why the CUDA kernels cannot take r's dtype and head size (None when they can)."""
    if r.dtype == torch.float64:
        return "the CUDA kernels take float32, bfloat16 and float16, not float64"
    if r.shape[-1] not in CUDA_HEAD_SIZES:
        return f"the CUDA kernels support head sizes n in {CUDA_HEAD_SIZES}, got n = {r.shape[-1]}"
    return None


def _kernel_reason(r: torch.Tensor) -> str | None:
    """Why the device's own compiled kernel does not apply to these inputs (None when it does)."""
    ops = kernel_ops()
    if ops is None:
        return "the compiled extension is not loaded (see rwkv_vision.ops.backend_info())"
    device = r.device.type
    if device not in ("cpu", "cuda"):
        return f"there is no kernel for device type {device!r}"
    if device not in KERNEL_DEVICES:
        return f"the extension was built without {device.upper()} kernels"
    if device == "cpu":
        return None
    return _cuda_reason(r)


def _variant_reason(r: torch.Tensor, backend: str, *, experimental_applies: bool = True) -> str | None:
    """Why the CUDA variant ``backend`` ("cuda_recurrent", "cuda_split", "cuda_chunked") cannot run on
    these inputs (None when it can). Without ``experimental_applies`` (wkv6_step: one CUDA kernel for all
    three names) an experimental variant missing from the build is no reason."""
    if kernel_ops() is None:
        return "the compiled extension is not loaded (see rwkv_vision.ops.backend_info())"
    if "cuda" not in KERNEL_DEVICES:
        return "the extension was built without CUDA kernels (RWKV_VISION_WITH_CUDA=ON builds them)"
    if experimental_applies and backend not in CUDA_VARIANTS:
        return f"{backend!r} is an experimental CUDA kernel and this build does not include it; {_BUILD_EXPERIMENTAL}"
    if r.device.type != "cuda":
        return f"{backend!r} is a CUDA kernel, but r is on {r.device.type}"
    return _cuda_reason(r)


def _check_segments(segments, backend: str) -> int:
    """The ``segments`` argument of the compiled ops: 0 (chosen for the device) or the forced count."""
    if segments is None:
        return 0
    if isinstance(segments, bool) or not isinstance(segments, int) or segments < 1:
        raise ValueError(f"wkv6: segments must be a positive int or None, got {segments!r}")
    if backend != "cuda_chunked":
        raise ValueError(
            f"wkv6: segments applies only to backend='cuda_chunked' (its time segments), got backend={backend!r}"
        )
    return segments


def wkv6(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    *,
    backend: str | None = None,
    segments: int | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The RWKV-6 WKV recurrence over a whole sequence, with state in and out.

    Args:
        r, k, v: [b, t, h, n] receptance, key and value, one floating dtype.
        w: [b, t, h, n] log of the per-step decay (w <= 0); float32 is best (it is used in float32).
        u: [h, n] the bonus for the current token.
        initial_state: optional [b, h, n, n] state to start from (zeros if None).
        output_final_state: return the state after the last step (else None is returned).
        backend: which implementation runs, one of ``BACKENDS``: "auto" (a compiled kernel where one
            applies, else "chunked"), "kernel" (the device's compiled kernel, or an error saying why
            not), "cuda_recurrent", "cuda_split", "cuda_chunked" (a CUDA kernel variant, or an error
            saying why not), "chunked" (``wkv6_chunked``: pure PyTorch, t / 16 sequential steps, any
            device), "reference" (``wkv6_ref``: the plain loop over time). None: :func:`default_backend`
            ("auto" unless ``use_backend`` or ``RWKV_VISION_WKV6_BACKEND`` says otherwise).
        segments: only with "cuda_chunked": run time as this many segments in parallel (None: chosen
            for the device).
        cu_seqlens: optional [N + 1] int offsets of N variable-length sequences packed into one row
            (b == 1), from 0 to t, non-decreasing (flash-linear-attention's convention;
            ops/cu_seqlens.py). Each sequence starts from its own state (initial_state [N, h, n, n],
            zeros if None) and final_state is [N, h, n, n]; no state crosses a boundary. Every backend
            takes it: the CPU kernel and "cuda_recurrent" in the kernel, "cuda_split" and "cuda_chunked"
            as one kernel call per sequence, "chunked" as a right-padded batch, "reference" per sequence.

    Returns:
        y: [b, t, h, n] in the dtype of r.
        final_state: [b, h, n, n] float32 (float64 for float64 inputs), or None.

    Gradients flow to r, k, v, w, u and initial_state, including through final_state, so a model can
    be trained across segments with the state carried. Arithmetic and the state are float32 (float64
    for float64 inputs) whatever the input dtype.

    Example::

        >>> b, t, h, n = 2, 7, 4, 64
        >>> r, k, v = (torch.randn(b, t, h, n) for _ in range(3))
        >>> w = -torch.exp(torch.randn(b, t, h, n))       # log-decay, so decay = exp(w) in (0, 1)
        >>> u = torch.randn(h, n)
        >>> y, s = wkv6(r, k, v, w, u, output_final_state=True)
        >>> y.shape, s.shape
        (torch.Size([2, 7, 4, 64]), torch.Size([2, 4, 64, 64]))
    """
    backend = default_backend() if backend is None else backend
    if backend not in BACKENDS:
        raise ValueError(f"wkv6: backend must be one of {BACKENDS}, got {backend!r}")
    states = None
    if cu_seqlens is not None:
        if not isinstance(r, torch.Tensor) or r.dim() != 4:
            _check(r, k, v, w, u, None)  # the shape errors first
        states = check_cu_seqlens(cu_seqlens, r.shape[0], r.shape[1], "wkv6", device=r.device)
        if cu_seqlens.device != r.device:
            raise ValueError(f"wkv6: cu_seqlens is on {cu_seqlens.device} but r is on {r.device}")
    _check(r, k, v, w, u, initial_state, states)
    _check_log_decay(w, "wkv6")
    packed = {} if cu_seqlens is None else {"cu_seqlens": cu_seqlens}
    forced_segments = _check_segments(segments, backend)
    if backend not in ("reference", "chunked"):
        mode = _autodiff_mode((r, k, v, w, u, initial_state))
        if mode is not None:
            if backend == "auto":
                # The pure-PyTorch fallback is differentiable in every mode: correct values, not zeros.
                return wkv6_chunked(r, k, v, w, u, initial_state, output_final_state, **packed)
            raise ValueError(
                f"wkv6: {mode} is not supported by the compiled kernels (backend={backend!r}); use "
                "backend='chunked' or 'reference', or 'auto', which switches to 'chunked' for it"
            )
    if backend == "reference":
        return wkv6_ref(r, k, v, w, u, initial_state, output_final_state, **packed)
    if backend == "chunked":
        return wkv6_chunked(r, k, v, w, u, initial_state, output_final_state, **packed)
    if backend in KERNEL_CODES:
        reason = _variant_reason(r, backend)
        if reason is not None:
            raise ValueError(f"wkv6: backend={backend!r} cannot run: {reason}")
        code = KERNEL_CODES[backend]
    else:
        reason = _kernel_reason(r)
        if reason is not None:
            if backend == "kernel":
                raise ValueError(f"wkv6: backend='kernel' but no kernel applies: {reason}")
            return wkv6_chunked(r, k, v, w, u, initial_state, output_final_state, **packed)
        code = 0
    if cu_seqlens is not None and code != 0:
        # The split and chunked CUDA kernels have no packed mode: one call per sequence (host-side loop).
        return _per_sequence(r, k, v, w, u, initial_state, output_final_state, cu_seqlens, backend, segments)

    acc = torch.float64 if r.dtype == torch.float64 else torch.float32
    b, _, h, n = r.shape
    if initial_state is None:
        s0 = r.new_zeros(b if states is None else states, h, n, n, dtype=acc)
    else:
        s0 = initial_state.to(acc).contiguous()
    # .to() and .contiguous() are differentiable, so gradients come back in each input's own dtype.
    y, s_t = kernel_ops().wkv6_forward(
        r.contiguous(),
        k.contiguous(),
        v.contiguous(),
        w.to(acc).contiguous(),
        u.to(acc).contiguous(),
        s0,
        code,
        forced_segments,
        *(() if cu_seqlens is None else (cu_seqlens.to(torch.int64).contiguous(),)),
    )
    return y, (s_t if output_final_state else None)


def _per_sequence(r, k, v, w, u, initial_state, output_final_state, cu_seqlens, backend, segments):
    """``wkv6`` on each packed sequence alone, outputs concatenated and states stacked (autograd joins them)."""
    _, _, h, n = r.shape
    acc = torch.float64 if r.dtype == torch.float64 else torch.float32
    ys, finals = [], []
    for i, (start, end) in enumerate(seqlens_list(cu_seqlens)):
        s0 = r.new_zeros(1, h, n, n, dtype=acc) if initial_state is None else initial_state[i : i + 1].to(acc)
        if end == start:
            finals.append(s0)
            continue
        span = slice(start, end)
        y, s = wkv6(r[:, span], k[:, span], v[:, span], w[:, span], u, s0, True, backend=backend, segments=segments)
        ys.append(y)
        finals.append(s)
    y = torch.cat(ys, dim=1) if ys else r.new_zeros(1, 0, h, n)
    return y, (torch.cat(finals, dim=0) if output_final_state else None)
