"""wkv7, the dispatcher: every backend against the float64 loop (values and every gradient, initial state
included) at odd lengths, packed sequences (cu_seqlens) against each sequence alone, the choice of the
implementation, and bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rwkv_vision
from rwkv_vision.ops import WKV7_BACKENDS, use_backend, wkv7, wkv7_ref
from rwkv_vision.ops.backends import wkv7_default_backend

from .wkv7_cases import (
    BACKENDS,
    HAS_KERNEL,
    KERNEL_REQUIRED,
    NAMES,
    assert_matches_reference,
    dispatch7,
    in_two_segments,
    kernel,
    make_inputs,
    rel_rms,
    run_with_grads,
)

LENGTHS = (1, 7, 33, 65)


def backend_fn(backend):
    return lambda *a, **kw: wkv7(*a, backend=backend, **kw)


def test_kernel_is_present_when_required():
    """RWKV_VISION_REQUIRE_EXTENSION=1 (CI): the build must have the wkv7 CPU kernel."""
    if KERNEL_REQUIRED:
        assert HAS_KERNEL and "cpu" in dispatch7.WKV7_KERNEL_DEVICES, (
            "RWKV_VISION_REQUIRE_EXTENSION=1 but the compiled wkv7 CPU kernel is absent "
            f"(kernel_ops7() is {dispatch7.kernel_ops7()}, devices {dispatch7.WKV7_KERNEL_DEVICES})"
        )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("t", LENGTHS)
def test_float32_matches_float64_reference(backend, t, with_state):
    inputs = make_inputs(2, t, 2, 16, with_state=with_state, seed=t)
    assert_matches_reference(backend_fn(backend), inputs, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_head_size_64_loss_on_output_only(backend):
    assert_matches_reference(backend_fn(backend), make_inputs(1, 33, 2, 64, seed=3), 1e-5, state_loss=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_inputs_stay_float64(backend):
    inputs = make_inputs(1, 9, 2, 8, dtype=torch.float64, seed=4)
    y, s, grads = run_with_grads(backend_fn(backend), inputs)
    y_ref, s_ref, grads_ref = run_with_grads(wkv7_ref, inputs)
    assert y.dtype == s.dtype == torch.float64
    assert rel_rms(y, y_ref) < 1e-12 and rel_rms(s, s_ref) < 1e-12
    for k in grads:
        assert rel_rms(grads[k], grads_ref[k]) < 1e-12, k


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(backend, dtype):
    inputs = make_inputs(2, 21, 2, 32, dtype=dtype, seed=5)
    y, s, _ = run_with_grads(backend_fn(backend), inputs)
    assert y.dtype == dtype and s.dtype == torch.float32
    assert_matches_reference(backend_fn(backend), inputs, 5e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_on_final_state_only(backend):
    inputs = make_inputs(1, 20, 2, 8, seed=6)
    leaves = {k: x.clone().requires_grad_(True) for k, x in inputs.items()}
    _, s = wkv7(*[leaves[k] for k in NAMES], output_final_state=True, backend=backend)
    grads = torch.autograd.grad(s.square().sum(), [leaves[k] for k in NAMES], allow_unused=True)
    ref64 = {k: x.double().requires_grad_(True) for k, x in inputs.items()}
    _, s_ref = wkv7_ref(*[ref64[k] for k in NAMES], output_final_state=True)
    grads_ref = torch.autograd.grad(s_ref.square().sum(), [ref64[k] for k in NAMES], allow_unused=True)
    for name, g, g_ref in zip(NAMES, grads, grads_ref):
        if name == "r":  # r shapes the output only, never the state
            assert g_ref is None and (g is None or g.abs().max() == 0)
        else:
            assert rel_rms(g, g_ref) < 1e-5, name


@pytest.mark.parametrize("backend", BACKENDS)
def test_segments_with_carried_state_equal_one_run(backend):
    inputs = make_inputs(2, 50, 2, 16, seed=8)
    run = backend_fn(backend)
    y_full, s_full, g_full = run_with_grads(run, inputs)
    y_seg, s_seg, g_seg = run_with_grads(in_two_segments(run, 23), inputs)
    assert rel_rms(y_seg, y_full) < 1e-6 and rel_rms(s_seg, s_full) < 1e-6
    for k in g_full:
        assert rel_rms(g_seg[k], g_full[k]) < 1e-6, k


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs_and_mixed_dtypes(backend):
    inputs = make_inputs(2, 9, 3, 16, seed=9)
    strided = {
        k: (x.transpose(1, 2).contiguous().transpose(1, 2) if k != "initial_state" else x) for k, x in inputs.items()
    }
    strided["initial_state"] = inputs["initial_state"].transpose(-1, -2).contiguous().transpose(-1, -2)
    strided["w"] = strided["w"].double()  # w is used in float32 whatever its dtype; its gradient keeps its dtype
    assert not strided["r"].is_contiguous() and not strided["initial_state"].is_contiguous()
    assert_matches_reference(backend_fn(backend), strided, 1e-5)


# ---- packed sequences (cu_seqlens) ---------------------------------------------------------------

#: Lengths of the packed sequences: odd, one longer than a chunk, and two empty ones.
PACKED = (7, 0, 33, 1, 0, 17)


def _packed_inputs(dtype=torch.float32, with_state=True, seed=12):
    t = sum(PACKED)
    inputs = make_inputs(1, t, 2, 8, dtype=dtype, with_state=with_state, seed=seed, states=len(PACKED))
    offsets = torch.tensor([0, *torch.tensor(PACKED).cumsum(0).tolist()])
    return inputs, offsets


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_state", [False, True])
def test_packed_sequences_equal_each_sequence_alone(backend, with_state):
    """Outputs, per-sequence final states and every gradient of a packed call equal those of each
    sequence run alone by the float64 loop (an empty sequence passes its initial state through)."""
    inputs, offsets = _packed_inputs(with_state=with_state)
    y, s, grads = run_with_grads(backend_fn(backend), inputs, cu_seqlens=offsets)
    assert s.shape == (len(PACKED), 2, 8, 8)

    as64 = {k: (x.double().requires_grad_(True) if x is not None else None) for k, x in inputs.items()}
    ys, finals = [], []
    for i, (start, end) in enumerate(zip(offsets[:-1].tolist(), offsets[1:].tolist())):
        s0 = as64["initial_state"][i : i + 1] if with_state else torch.zeros(1, 2, 8, 8, dtype=torch.float64)
        if end == start:
            finals.append(s0)
            continue
        y_i, s_i = wkv7_ref(*[as64[k][:, start:end] for k in NAMES[:-1]], s0, output_final_state=True)
        ys.append(y_i)
        finals.append(s_i)
    y_ref, s_ref = torch.cat(ys, dim=1), torch.cat(finals, dim=0)
    g = torch.Generator().manual_seed(1)  # the loss of run_with_grads
    gy = torch.randn(y_ref.shape, generator=g, dtype=torch.float64).to(y.dtype).double()
    gs = torch.randn(s_ref.shape, generator=g, dtype=torch.float64)
    present = [k for k in NAMES if as64[k] is not None]
    grads_ref = torch.autograd.grad((y_ref * gy).sum() + (s_ref * gs).sum(), [as64[k] for k in present])
    assert rel_rms(y, y_ref) < 1e-5 and rel_rms(s, s_ref) < 1e-5
    for k, g_ref in zip(present, grads_ref):
        assert rel_rms(grads[k], g_ref) < 1e-5, k
    if with_state:  # the empty sequences' states come straight through, gradient and all
        assert torch.equal(s[1], inputs["initial_state"][1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_offsets_int32_and_one_sequence(backend):
    inputs, offsets = _packed_inputs(seed=13)
    args = [inputs[k] for k in NAMES]
    y64, s64 = wkv7(*args, True, offsets, backend=backend)
    y32, s32 = wkv7(*args, True, offsets.to(torch.int32), backend=backend)
    assert torch.equal(y64, y32) and torch.equal(s64, s32)
    t = sum(PACKED)
    one = make_inputs(1, t, 2, 8, seed=14)
    args = [one[k] for k in NAMES]
    y_packed, s_packed = wkv7(*args, True, torch.tensor([0, t]), backend=backend)
    y_plain, s_plain = wkv7(*args, True, backend=backend)
    assert rel_rms(y_packed, y_plain) < 1e-6 and rel_rms(s_packed, s_plain) < 1e-6


@settings(max_examples=15, deadline=None)
@given(lengths=st.lists(st.integers(0, 20), min_size=1, max_size=5), seed=st.integers(0, 1000))
def test_hypothesis_packing_equals_the_loop(lengths, seed):
    t = sum(lengths)
    if t == 0:
        lengths, t = lengths + [1], t + 1
    inputs = make_inputs(1, t, 2, 4, dtype=torch.float64, seed=seed, states=len(lengths))
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    args = [inputs[k] for k in NAMES]
    y_ref, s_ref = wkv7_ref(*args, True, offsets)
    for backend in ("chunked", "auto"):
        y, s = wkv7(*args, True, offsets, backend=backend)
        assert rel_rms(y, y_ref) < 1e-10 and rel_rms(s, s_ref) < 1e-10


@settings(max_examples=20, deadline=None)
@given(
    b=st.integers(1, 3),
    t=st.integers(1, 40),
    h=st.integers(1, 3),
    n=st.integers(1, 20),
    with_state=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_shapes_every_backend(b, t, h, n, with_state, seed):
    # Shapes and indexing, in float64 (float32 accuracy is the fixed-shape tests' job).
    inputs = make_inputs(b, t, h, n, dtype=torch.float64, with_state=with_state, seed=seed)
    args = [inputs[k] for k in NAMES]
    y_ref, s_ref = wkv7_ref(*args, True)
    for backend in BACKENDS:
        if backend == "reference":
            continue
        y, s = wkv7(*args, True, backend=backend)
        assert rel_rms(y, y_ref) < 1e-10 and rel_rms(s, s_ref) < 1e-10, backend


@kernel
def test_kernel_gradcheck_float64():
    inputs = make_inputs(2, 5, 2, 3, dtype=torch.float64, seed=5)
    leaves = [inputs[k].clone().requires_grad_(True) for k in NAMES]
    run = lambda *a: wkv7(*a, output_final_state=True, backend="kernel")  # noqa: E731
    assert torch.autograd.gradcheck(run, leaves, eps=1e-6, atol=1e-7, rtol=1e-6)


@kernel
def test_kernel_opcheck():
    inputs = make_inputs(1, 6, 2, 8, seed=6)
    args = [inputs[k] for k in NAMES]
    not_packed = torch.empty(0, dtype=torch.int64)
    torch.library.opcheck(torch.ops.rwkv_vision.wkv7_forward.default, [*args, not_packed])
    torch.library.opcheck(
        torch.ops.rwkv_vision.wkv7_forward.default, [*(x.clone().requires_grad_(True) for x in args), not_packed]
    )
    packed, offsets = _packed_inputs(seed=7)
    torch.library.opcheck(torch.ops.rwkv_vision.wkv7_forward.default, [*(packed[k] for k in NAMES), offsets])


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
def test_torch_compile_fullgraph(backend):
    inputs = make_inputs(1, 5, 2, 8, seed=7)

    def layer(r, w, k, v, a, b, s0):
        y, s = wkv7(r * 2, w, k, v, a, b, s0, output_final_state=True, backend=backend)
        return y.sin(), s

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    y, s, grads = run_with_grads(lambda *a, **kw: compiled(*a), inputs)
    y_e, s_e, grads_e = run_with_grads(lambda *a, **kw: layer(*a), inputs)
    assert rel_rms(y, y_e) < 1e-6 and rel_rms(s, s_e) < 1e-6
    for k in grads:
        assert rel_rms(grads[k], grads_e[k]) < 1e-6, k


def test_reference_has_no_state_unless_asked_and_top_level_call():
    inputs = make_inputs(1, 3, 1, 4)
    y, s = wkv7(*[inputs[k] for k in NAMES])
    assert s is None and y.shape == (1, 3, 1, 4)
    r, k, v = (torch.randn(2, 7, 4, 64) for _ in range(3))
    kk = torch.nn.functional.normalize(torch.randn(2, 7, 4, 64), dim=-1)
    w = -0.6 * torch.rand(2, 7, 4, 64)
    y, s = rwkv_vision.ops.wkv7(r, w, k, v, -kk, kk * 0.5, output_final_state=True)
    assert y.shape == (2, 7, 4, 64) and s.shape == (2, 4, 64, 64) and s.dtype == torch.float32


# ---- choosing the implementation -----------------------------------------------------------------


def test_the_accepted_backends():
    assert WKV7_BACKENDS == ("auto", "kernel", "chunked", "reference")


class FakeOps:
    """Stands in for torch.ops.rwkv_vision: records the compiled op's arguments, computes with the loop."""

    def __init__(self, calls):
        self.calls = calls

    def wkv7_forward(self, r, w, k, v, a, b, s0, offsets):
        self.calls.append(("kernel", w.dtype, s0.shape, offsets.dtype, tuple(offsets.tolist())))
        return wkv7_ref(r, w, k, v, a, b, s0, True, offsets if offsets.numel() else None)

    def wkv7_step(self, r, w, k, v, a, b, state):
        from rwkv_vision.ops import wkv7_step_ref

        self.calls.append(("kernel_step", w.dtype, state.shape))
        return wkv7_step_ref(r, w, k, v, a, b, state)


def spy_on_implementations(monkeypatch, *, fake_kernel=False):
    """Record which of wkv7_ref, wkv7_chunked and the compiled op a wkv7 call reaches."""
    calls = []
    for name in ("wkv7_ref", "wkv7_chunked"):
        real = getattr(dispatch7, name)
        monkeypatch.setattr(dispatch7, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    if fake_kernel:
        fake = FakeOps(calls)
        monkeypatch.setattr(dispatch7, "kernel_ops7", lambda: fake)
        monkeypatch.setattr(dispatch7, "WKV7_KERNEL_DEVICES", frozenset({"cpu"}))
    return calls


@pytest.mark.parametrize("backend", ["auto", "kernel", "chunked", "reference", None])
def test_each_backend_runs_its_implementation(backend, monkeypatch):
    calls = spy_on_implementations(monkeypatch, fake_kernel=True)
    inputs = make_inputs(2, 9, 2, 8, seed=21)
    assert_matches_reference(backend_fn(backend), inputs, 1e-5)
    kernel_call = ("kernel", torch.float32, (2, 2, 8, 8), torch.int64, ())
    expected = {"auto": kernel_call, None: kernel_call, "kernel": kernel_call}.get(
        backend, f"wkv7_{'ref' if backend == 'reference' else backend}"
    )
    assert calls == [expected], calls


def test_the_kernel_gets_packed_offsets_and_zero_states(monkeypatch):
    calls = spy_on_implementations(monkeypatch, fake_kernel=True)
    inputs, offsets = _packed_inputs(with_state=False)
    y, s = wkv7(*[inputs[k] for k in NAMES], True, offsets.to(torch.int32), backend="kernel")
    assert calls == [("kernel", torch.float32, (len(PACKED), 2, 8, 8), torch.int64, tuple(offsets.tolist()))]
    y_ref, s_ref = wkv7_ref(*[inputs[k] for k in NAMES], True, offsets)
    assert rel_rms(y, y_ref) < 1e-6 and rel_rms(s, s_ref) < 1e-6


def test_without_extension_everything_but_the_kernel_runs():
    code = (
        "import torch, torch.nn.functional as F, rwkv_vision as rv\n"
        "assert rv.ops.wkv7_kernel.kernel_ops7() is None\n"
        "r = torch.randn(1, 3, 1, 4); kk = F.normalize(r, dim=-1)\n"
        "args = (r, -r.abs(), r, r, -kk, kk / 2)\n"
        "y, _ = rv.ops.wkv7(*args)\n"
        "y_ref, _ = rv.ops.wkv7_ref(*args)\n"
        "assert torch.allclose(y, y_ref, atol=1e-5)\n"
        "rv.ops.wkv7_step(*(x[:, 0] for x in args), torch.zeros(1, 1, 4, 4))\n"
        "try:\n"
        "    rv.ops.wkv7(*args, backend='kernel')\n"
        "except ValueError as e:\n"
        "    assert 'no wkv7 ops' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('backend=kernel without extension must fail')\n"
    )
    env = dict(os.environ, RWKV_VISION_DISABLE_EXTENSION="1")
    env.pop("RWKV_VISION_REQUIRE_EXTENSION", None)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr


def test_auto_falls_back_to_chunked_without_a_kernel(monkeypatch):
    calls = spy_on_implementations(monkeypatch)
    monkeypatch.setattr(dispatch7, "kernel_ops7", lambda: None)
    inputs = make_inputs(1, 5, 2, 8)
    wkv7(*[inputs[k] for k in NAMES], backend="auto")
    assert calls == ["wkv7_chunked"]
    with pytest.raises(ValueError, match="backend='kernel' but no kernel applies: the compiled extension has no wkv7"):
        wkv7(*[inputs[k] for k in NAMES], backend="kernel")


@pytest.mark.parametrize(
    "default, expected",
    [
        ("auto", "auto"),
        ("kernel", "kernel"),
        ("cuda_recurrent", "kernel"),
        ("cuda_split", "kernel"),
        ("cuda_chunked", "kernel"),
        ("chunked", "chunked"),
        ("reference", "reference"),
    ],
)
def test_the_process_default_maps_to_a_wkv7_backend(default, expected, monkeypatch):
    calls = spy_on_implementations(monkeypatch, fake_kernel=True)
    inputs = make_inputs(1, 5, 2, 8)
    with use_backend(default):
        assert wkv7_default_backend() == expected
        wkv7(*[inputs[k] for k in NAMES])
        wkv7(*[inputs[k] for k in NAMES], backend="reference")  # an explicit argument wins
    implementation = {"auto": "kernel", "kernel": "kernel", "chunked": "wkv7_chunked", "reference": "wkv7_ref"}
    assert [c if isinstance(c, str) else c[0] for c in calls] == [implementation[expected], "wkv7_ref"]


def test_kernel_reason_names_device_dtype_and_head_size(monkeypatch):
    monkeypatch.setattr(dispatch7, "kernel_ops7", lambda: object())
    monkeypatch.setattr(dispatch7, "WKV7_KERNEL_DEVICES", frozenset({"cpu", "cuda"}))
    monkeypatch.setattr(dispatch7, "WKV7_CUDA_HEAD_SIZES", (64,))

    def fake(device, dtype, n):  # _kernel_reason reads only the device type, dtype and head size
        return types.SimpleNamespace(device=torch.device(device), dtype=dtype, shape=(1, 3, 2, n))

    assert dispatch7._kernel_reason(fake("cpu", torch.float64, 5)) is None
    assert dispatch7._kernel_reason(fake("cuda", torch.bfloat16, 64)) is None
    assert "not float64" in dispatch7._kernel_reason(fake("cuda", torch.float64, 64))
    assert "head sizes n in (64,), got n = 32" in dispatch7._kernel_reason(fake("cuda", torch.float32, 32))
    assert "no kernel for device type 'meta'" in dispatch7._kernel_reason(fake("meta", torch.float32, 64))
    monkeypatch.setattr(dispatch7, "WKV7_KERNEL_DEVICES", frozenset({"cpu"}))
    assert "built without CUDA wkv7 kernels" in dispatch7._kernel_reason(fake("cuda", torch.float32, 64))


# ---- bad input -----------------------------------------------------------------------------------


def _args(**over):
    inputs = make_inputs(2, 5, 2, 8)
    inputs.update(over)
    return [inputs[k] for k in NAMES]


@pytest.mark.parametrize(
    "over, error, match",
    [
        ({"r": torch.randn(2, 5, 16)}, ValueError, r"wkv7: r must be \[b, t, h, n\]"),
        ({"k": torch.randn(2, 6, 2, 8)}, ValueError, r"wkv7: k must have the shape of r"),
        ({"w": -torch.rand(2, 5, 2, 4)}, ValueError, r"wkv7: w must have the shape of r"),
        ({"a": torch.randn(1, 5, 2, 8)}, ValueError, r"wkv7: a must have the shape of r"),
        ({"b": torch.randn(2, 5, 3, 8)}, ValueError, r"wkv7: b must have the shape of r"),
        (
            {"initial_state": torch.randn(2, 2, 8, 4)},
            ValueError,
            r"initial_state must be \[b, h, n, n\] = \[2, 2, 8, 8\]",
        ),
        ({"v": torch.ones(2, 5, 2, 8, dtype=torch.int64)}, TypeError, r"wkv7: v must be a floating-point tensor"),
        ({"r": torch.ones(2, 5, 2, 8, dtype=torch.int32)}, TypeError, r"wkv7: r must be a floating-point tensor"),
        ({"a": torch.randn(2, 5, 2, 8, dtype=torch.float64)}, TypeError, r"wkv7: a must have the dtype of r"),
        ({"b": torch.randn(2, 5, 2, 8, device="meta")}, ValueError, r"wkv7: b is on meta but r is on cpu"),
        ({"initial_state": [[0.0] * 8] * 2}, TypeError, r"wkv7: initial_state must be a torch.Tensor"),
    ],
)
def test_bad_input_names_the_argument(over, error, match):
    with pytest.raises(error, match=match):
        wkv7(*_args(**over))


def test_zero_length_and_bad_flags():
    r = torch.randn(1, 0, 2, 8)
    with pytest.raises(ValueError, match="sequence length t"):
        wkv7(r, -r.abs(), r, r, r, r)
    with pytest.raises(TypeError, match="output_final_state must be a bool"):
        wkv7(*_args()[:6], None, "yes")


@pytest.mark.parametrize("backend", ["fast", "cuda_recurrent", "cuda_chunked"])
def test_unknown_backend_is_an_error(backend):
    with pytest.raises(ValueError, match=r"wkv7: backend must be one of \('auto', 'kernel', 'chunked', 'reference'\)"):
        wkv7(*_args(), backend=backend)


def test_kernel_backend_on_a_device_without_kernel_says_why():
    r = torch.randn(1, 2, 1, 8, device="meta")
    with pytest.raises(ValueError, match="backend='kernel' but no kernel applies"):
        wkv7(r, r, r, r, r, r, backend="kernel")


def _packed_args(offsets, states=3, b=1, t=10):
    inputs = make_inputs(b, t, 2, 4, states=states)
    return [inputs[k] for k in NAMES], offsets


@pytest.mark.parametrize(
    "offsets, states, b, error, match",
    [
        (torch.tensor([0.0, 4.0, 10.0]), 2, 1, TypeError, r"cu_seqlens must be an integer tensor"),
        (torch.tensor([True, False]), 1, 1, TypeError, r"cu_seqlens must be an integer tensor"),
        ([0, 4, 10], 2, 1, TypeError, r"cu_seqlens must be a torch.Tensor"),
        (torch.tensor([[0, 4, 10]]), 2, 1, ValueError, r"cu_seqlens must be 1-D \[N \+ 1\]"),
        (torch.tensor([0]), 1, 1, ValueError, r"cu_seqlens must be 1-D \[N \+ 1\] with N >= 1"),
        (torch.tensor([1, 4, 10]), 2, 1, ValueError, r"cu_seqlens must start at 0 and end at t = 10, got 1 ... 10"),
        (torch.tensor([0, 4, 9]), 2, 1, ValueError, r"must start at 0 and end at t = 10, got 0 ... 9"),
        (
            torch.tensor([0, 6, 4, 10]),
            3,
            1,
            ValueError,
            r"non-decreasing, got cu_seqlens\[1\] = 6 > cu_seqlens\[2\] = 4",
        ),
        (torch.tensor([0, 4, 10]), 2, 2, ValueError, r"with cu_seqlens .* b must be 1, got b = 2"),
        (
            torch.tensor([0, 4, 10]),
            3,
            1,
            ValueError,
            r"with cu_seqlens of 2 sequences, initial_state must be \[N, h, n, n\] = \[2, 2, 4, 4\]",
        ),
        (torch.tensor([0, 4, 10], device="meta"), 2, 1, ValueError, r"cu_seqlens is on meta; put it on the CPU"),
    ],
)
def test_bad_cu_seqlens_is_named(offsets, states, b, error, match):
    args, offsets = _packed_args(offsets, states=states, b=b)
    with pytest.raises(error, match=match):
        wkv7(*args, False, offsets)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("w_value", [-1e-6, -50.0, -1e8, -float("inf")], ids=str)
def test_every_backend_is_exact_at_extreme_decays(backend, w_value):
    """Valid log-decays far outside a layer's range: values and every gradient near the float64 loop."""
    inputs = make_inputs(1, 35, 2, 16, seed=5)
    inputs["w"] = torch.full_like(inputs["w"], w_value)
    assert_matches_reference(backend_fn(backend), inputs, 1e-5)
