"""wkv6 with cu_seqlens (packed variable-length sequences) equals running each sequence alone.

Every backend is held against the float64 reference run on each sequence by itself (no cu_seqlens):
outputs, per-sequence final states and every gradient (initial states included), at odd lengths,
with empty sequences, and over random splits (hypothesis).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rwkv_vision.ops import wkv6, wkv6_chunked, wkv6_ref
from rwkv_vision.ops.cu_seqlens import pack_offsets
from rwkv_vision.ops.extension import has_kernel

from .wkv6_cases import make_inputs, rel_rms

HAS_CPU_KERNEL = has_kernel("wkv6_forward", "cpu")
CPU_BACKENDS = [
    "reference",
    "chunked",
    pytest.param("kernel", marks=pytest.mark.skipif(not HAS_CPU_KERNEL, reason="no extension")),
]


def packed_inputs(lengths, h, n, *, dtype=torch.float32, seed=0, device="cpu"):
    t = sum(lengths)
    inputs = make_inputs(1, t, h, n, dtype=dtype, seed=seed, device=device, with_state=False)
    g = torch.Generator().manual_seed(seed + 1)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    inputs["initial_state"] = torch.randn(len(lengths), h, n, n, generator=g, dtype=torch.float64).to(device, acc)
    return inputs, pack_offsets(lengths, device=device)


def alone(r, k, v, w, u, s0, cu):
    """The oracle: each sequence through wkv6_ref by itself, outputs concatenated, states stacked."""
    ys, states = [], []
    bounds = cu.tolist()
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        if a == b:
            states.append(s0[i : i + 1])
            continue
        y, s = wkv6_ref(r[:, a:b], k[:, a:b], v[:, a:b], w[:, a:b], u, s0[i : i + 1], output_final_state=True)
        ys.append(y)
        states.append(s)
    return torch.cat(ys, dim=1), torch.cat(states)


def outputs_and_grads(fn, inputs, seed=3):
    names = ["r", "k", "v", "w", "u", "initial_state"]
    leaves = [inputs[k].detach().clone().requires_grad_(True) for k in names]
    y, s = fn(*leaves)
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.device, y.dtype)
    gs = torch.randn(s.shape, generator=g, dtype=torch.float64).to(s.device, s.dtype)
    loss = (y * gy).sum(dtype=torch.float64) + (s * gs).sum(dtype=torch.float64)
    grads = torch.autograd.grad(loss, leaves)
    return {"y": y.detach(), "final_state": s.detach(), **{f"d{k}": gr for k, gr in zip(names, grads)}}


def check_packed(backend, lengths, h, n, tol, *, dtype=torch.float32, seed=0, device="cpu", **kw):
    inputs, cu = packed_inputs(lengths, h, n, dtype=dtype, seed=seed, device=device)
    got = outputs_and_grads(
        lambda r, k, v, w, u, s0: wkv6(r, k, v, w, u, s0, True, backend=backend, cu_seqlens=cu, **kw), inputs
    )
    as64 = {k: x.detach().double().cpu() for k, x in inputs.items()}
    expected = outputs_and_grads(lambda *a: alone(*a, cu.cpu()), as64)
    errors = {k: rel_rms(got[k], expected[k]) for k in expected}
    assert not {k: e for k, e in errors.items() if not e < tol}, errors
    assert got["final_state"].shape == (len(lengths), h, n, n)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    "lengths,h,n",
    [
        ([5, 1, 11], 2, 8),  # odd lengths, a one-step sequence
        ([3, 0, 7, 0], 1, 32),  # empty sequences hand their initial state back
        ([37, 2], 1, 64),  # longer than the CPU backward's checkpoint spacing (32)
        ([9], 1, 16),  # one sequence: the plain call
    ],
)
def test_packed_equals_each_sequence_alone(backend, lengths, h, n):
    check_packed(backend, lengths, h, n, 1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_packed_float64_is_exact(backend):
    check_packed(backend, [4, 13, 6], 2, 8, 1e-12, dtype=torch.float64, seed=5)


@pytest.mark.skipif(not HAS_CPU_KERNEL, reason="no extension")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_packed_cpu_kernel_low_precision(dtype):
    check_packed("kernel", [6, 3, 10], 2, 32, 1e-2, dtype=dtype, seed=2)


@settings(max_examples=15, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 12), min_size=1, max_size=5).filter(lambda xs: sum(xs) > 0), seed=st.integers(0, 99)
)
def test_random_splits_every_cpu_backend(lengths, seed):
    backends = ["reference", "chunked"] + (["kernel"] if HAS_CPU_KERNEL else [])
    for backend in backends:
        check_packed(backend, lengths, 1, 8, 1e-5, seed=seed)


def test_chunked_packed_with_a_small_chunk():
    inputs, cu = packed_inputs([7, 2, 9], 1, 8, seed=4)
    y, s = wkv6_chunked(*inputs.values(), True, chunk_size=4, cu_seqlens=cu)
    y_ref, s_ref = alone(*(x.double() for x in inputs.values()), cu)
    assert rel_rms(y, y_ref) < 1e-5 and rel_rms(s, s_ref) < 1e-5


def test_without_initial_state_every_sequence_starts_from_zero():
    inputs, cu = packed_inputs([3, 4], 1, 8)
    inputs["initial_state"] = None
    for backend in ["reference", "chunked"] + (["kernel"] if HAS_CPU_KERNEL else []):
        y, s = wkv6(*inputs.values(), True, backend=backend, cu_seqlens=cu)
        second, s2 = wkv6_ref(*(x[:, 3:] for x in list(inputs.values())[:4]), inputs["u"], output_final_state=True)
        assert rel_rms(y[:, 3:], second) < 1e-5 and rel_rms(s[1:], s2) < 1e-5


@pytest.mark.parametrize(
    "cu,error,match",
    [
        ([0, 3, 5], ValueError, "from 0 to t = 6"),
        ([1, 3, 6], ValueError, "from 0 to t"),
        ([0, 4, 3, 6], ValueError, "non-decreasing"),
        ([6], ValueError, r"\[N \+ 1\]"),
        ([0.0, 6.0], TypeError, "int32 or int64"),
    ],
)
def test_bad_cu_seqlens_is_refused_by_name(cu, error, match):
    inputs, _ = packed_inputs([2, 4], 1, 8)
    inputs["initial_state"] = None
    with pytest.raises(error, match=match):
        wkv6(*inputs.values(), cu_seqlens=torch.tensor(cu))


def test_batch_and_state_shapes_are_checked():
    inputs = make_inputs(2, 6, 1, 8, with_state=False)
    with pytest.raises(ValueError, match="b must be 1"):
        wkv6(*inputs.values(), cu_seqlens=torch.tensor([0, 6]))
    inputs, cu = packed_inputs([2, 4], 1, 8)
    inputs["initial_state"] = inputs["initial_state"][:1]
    with pytest.raises(ValueError, match=r"\[N, h, n, n\]"):
        wkv6(*inputs.values(), cu_seqlens=cu)


@pytest.mark.skipif(not HAS_CPU_KERNEL, reason="no extension")
def test_the_compiled_op_checks_cu_seqlens_itself():
    inputs, _ = packed_inputs([2, 4], 1, 8)
    ops = torch.ops.rwkv_vision
    args = [inputs[k] for k in ("r", "k", "v", "w", "u", "initial_state")]
    with pytest.raises(RuntimeError, match="non-decreasing"):
        ops.wkv6_forward(*args, 0, 0, torch.tensor([0, 5, 4, 6]))
    with pytest.raises(RuntimeError, match="initial_state must be"):
        ops.wkv6_forward(*args, 0, 0, torch.tensor([0, 1, 2, 6]))


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda_recurrent", "cuda_split", "cuda_chunked"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_cuda_backends(backend, dtype):
    from rwkv_vision.ops.wkv6_kernel import CUDA_VARIANTS

    if not torch.cuda.is_available() or backend not in CUDA_VARIANTS:
        pytest.skip(f"{backend} is not in this build or there is no GPU")
    tol = {"cuda_chunked": 3e-3, "cuda_split": 1e-5, "cuda_recurrent": 1e-5}[backend]
    tol = tol if dtype == torch.float32 else 2e-2
    check_packed(backend, [37, 0, 5, 70, 1], 2, 64, tol, dtype=dtype, device="cuda")


@pytest.mark.skipif(not HAS_CPU_KERNEL, reason="no extension")
def test_packed_double_backward_through_the_kernel_matches_the_reference():
    # create_graph=True: the compiled backward is not differentiable, so it is recomputed through the packed
    # pure-PyTorch twin; the gradient of a gradient norm must match the reference's.
    inputs, cu = packed_inputs([3, 0, 5], 1, 8, dtype=torch.float64, seed=9)

    def grad_of_grad(backend):
        leaves = [x.detach().clone().requires_grad_(True) for x in inputs.values()]
        y, s = wkv6(*leaves, True, backend=backend, cu_seqlens=cu)
        grads = torch.autograd.grad((y.sin().sum() + s.cos().sum()), leaves, create_graph=True)
        return torch.autograd.grad(sum(g.pow(2).sum() for g in grads), leaves)

    for got, want in zip(grad_of_grad("kernel"), grad_of_grad("reference")):
        assert rel_rms(got, want) < 1e-10
