"""wkv6 on the CPU kernel: values and every gradient against a float64 reference, and the op contract."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import rwkv_vision
from rwkv_vision.ops import backend_info, has_extension, wkv6, wkv6_ref

from .wkv6_cases import NAMES, assert_matches_reference, in_two_segments, make_inputs, rel_rms, run_with_grads

LENGTHS = (1, 2, 7, 63, 64, 65, 257)
kernel = pytest.mark.skipif(not has_extension(), reason="compiled extension not built")


def kernel_wkv6(*args, **kw):
    return wkv6(*args, backend="kernel", **kw)


def test_extension_is_loaded_when_required():
    info = backend_info()
    if os.environ.get("RWKV_VISION_REQUIRE_EXTENSION") == "1":
        assert info["extension"] and info["cpu_kernels"], info
    if os.environ.get("RWKV_VISION_WITH_CUDA") == "ON":
        # CI builds the CUDA kernels too, so a CUDA compile error cannot pass unnoticed.
        assert info["cuda_kernels"] and info["build"]["with_cuda"], info


def test_allocations_are_poisoned():
    assert torch.isnan(torch.empty(8)).all()
    assert torch.isnan(torch.zeros(2).new_empty(4)).all()


@kernel
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("t", LENGTHS)
def test_float32_matches_float64_reference(t, with_state):
    inputs = make_inputs(2, t, 2, 64, with_state=with_state, seed=t)
    assert_matches_reference(kernel_wkv6, inputs, 1e-5)


@kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("t", (1, 7, 65, 257))
def test_half_precision_matches_float64_reference(t, dtype):
    inputs = make_inputs(2, t, 2, 64, dtype=dtype, seed=t)
    assert_matches_reference(kernel_wkv6, inputs, 5e-3)


@kernel
@pytest.mark.parametrize("n", [1, 5, 32, 128])
def test_other_head_sizes(n):
    assert_matches_reference(kernel_wkv6, make_inputs(1, 9, 3, n, seed=n), 1e-5)


@kernel
def test_loss_on_output_only():
    inputs = make_inputs(2, 33, 2, 64, seed=3)
    assert_matches_reference(kernel_wkv6, inputs, 1e-5, state_loss=False)


@kernel
def test_loss_on_final_state_only():
    inputs = make_inputs(1, 20, 2, 16, seed=4)
    leaves = {k: x.clone().requires_grad_(True) for k, x in inputs.items()}
    _, s = kernel_wkv6(*[leaves[k] for k in NAMES], output_final_state=True)
    grads = torch.autograd.grad(s.square().sum(), [leaves[k] for k in NAMES])
    ref64 = {k: x.double().requires_grad_(True) for k, x in inputs.items()}
    _, s_ref = wkv6_ref(*[ref64[k] for k in NAMES], output_final_state=True)
    grads_ref = torch.autograd.grad(s_ref.square().sum(), [ref64[k] for k in NAMES], allow_unused=True)
    for name, g, g_ref in zip(NAMES, grads, grads_ref):
        if name in ("r", "u"):  # they shape the output only, never the state
            assert g_ref is None and g.abs().max() == 0
        else:
            assert rel_rms(g, g_ref) < 1e-5, name


@kernel
def test_gradcheck_float64():
    inputs = make_inputs(2, 5, 2, 3, dtype=torch.float64, seed=5)
    inputs["w"] = inputs["w"].clamp(min=-3.0)  # keep finite differences well conditioned
    leaves = [inputs[k].clone().requires_grad_(True) for k in NAMES]

    def f(*xs):
        y, s = kernel_wkv6(*xs, output_final_state=True)
        return y, s

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-7, rtol=1e-6)


@kernel
def test_opcheck_forward_and_backward():
    inputs = make_inputs(2, 6, 2, 8, seed=6)
    args = [inputs[k] for k in NAMES]
    torch.library.opcheck(torch.ops.rwkv_vision.wkv6_forward.default, args)
    torch.library.opcheck(
        torch.ops.rwkv_vision.wkv6_forward.default,
        [x.clone().requires_grad_(True) for x in args],
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"),
    )
    dy = torch.randn_like(inputs["r"])
    dsT = torch.randn_like(inputs["initial_state"])
    torch.library.opcheck(torch.ops.rwkv_vision.wkv6_backward.default, args + [dy, dsT])


@kernel
def test_torch_compile_fullgraph():
    inputs = make_inputs(2, 11, 2, 16, seed=7)

    def layer(r, k, v, w, u, s0):
        y, s = wkv6(r * 2, k, v, w, u, s0, output_final_state=True)
        return y.sin(), s

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    y, s, grads = run_with_grads(lambda *a, **kw: compiled(*a), inputs)
    y_e, s_e, grads_e = run_with_grads(lambda *a, **kw: layer(*a), inputs)
    assert rel_rms(y, y_e) < 1e-6 and rel_rms(s, s_e) < 1e-6
    for k in grads:
        assert rel_rms(grads[k], grads_e[k]) < 1e-6, k


@kernel
@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 3),
    t=st.integers(1, 40),
    h=st.integers(1, 3),
    n=st.integers(1, 20),
    with_state=st.booleans(),
    seed=st.integers(0, 2**16),
)
@example(b=1, t=1, h=1, n=1, with_state=False, seed=136)  # dk, dv nearly cancel: 1e-4 relative in float32
def test_hypothesis_shapes(b, t, h, n, with_state, seed):
    # Shapes and indexing, in float64: with a handful of elements (b = t = h = n = 1) one gradient can be
    # a near-cancelling sum whose float32 relative error says nothing about the kernel. float32 accuracy
    # is the fixed-shape tests' job.
    inputs = make_inputs(b, t, h, n, dtype=torch.float64, with_state=with_state, seed=seed)
    assert_matches_reference(kernel_wkv6, inputs, 1e-10)


@pytest.mark.parametrize("backend", ["kernel", "reference"])
@pytest.mark.parametrize("split", [1, 31, 64, 99])
def test_segments_with_carried_state_equal_one_run(backend, split):
    if backend == "kernel" and not has_extension():
        pytest.skip("compiled extension not built")
    inputs = make_inputs(2, 100, 2, 32, seed=split)
    run = lambda *a, **kw: wkv6(*a, backend=backend, **kw)  # noqa: E731
    y_full, s_full, g_full = run_with_grads(run, inputs)

    y_seg, s_seg, g_seg = run_with_grads(in_two_segments(run, split), inputs)
    assert rel_rms(y_seg, y_full) < 1e-6 and rel_rms(s_seg, s_full) < 1e-6
    for k in g_full:
        assert rel_rms(g_seg[k], g_full[k]) < 1e-6, k


@kernel
def test_non_contiguous_inputs():
    inputs = make_inputs(2, 9, 3, 16, seed=8)
    # The same values laid out [b, h, t, n] and viewed back as [b, t, h, n]: strided, not contiguous.
    strided = {k: (x.transpose(1, 2).contiguous().transpose(1, 2) if k in "rkvw" else x) for k, x in inputs.items()}
    strided["initial_state"] = inputs["initial_state"].transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not strided["r"].is_contiguous() and not strided["initial_state"].is_contiguous()
    assert_matches_reference(kernel_wkv6, strided, 1e-5)


@kernel
def test_mixed_input_dtypes_give_grads_in_each_dtype():
    inputs = make_inputs(1, 8, 2, 16, dtype=torch.bfloat16, seed=9)
    inputs["u"] = inputs["u"].to(torch.bfloat16)
    inputs["initial_state"] = inputs["initial_state"].to(torch.float64)
    y, s, grads = run_with_grads(kernel_wkv6, inputs)
    assert y.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert {k: g.dtype for k, g in grads.items()} == {k: x.dtype for k, x in inputs.items()}


def test_reference_has_no_state_unless_asked():
    inputs = make_inputs(1, 3, 1, 4)
    y, s = wkv6_ref(*[inputs[k] for k in NAMES])
    assert s is None and y.shape == (1, 3, 1, 4)
    y2, s2 = wkv6(*[inputs[k] for k in NAMES])
    assert s2 is None and rel_rms(y2, y) < 1e-6


def test_readme_style_top_level_call():
    r, k, v = (torch.randn(2, 7, 4, 64) for _ in range(3))
    w = -torch.exp(torch.randn(2, 7, 4, 64))
    y, s = rwkv_vision.wkv6(r, k, v, w, torch.randn(4, 64), output_final_state=True)
    assert y.shape == (2, 7, 4, 64) and s.shape == (2, 4, 64, 64) and s.dtype == torch.float32


# ---- bad input -----------------------------------------------------------------------------------


def _args(**over):
    inputs = make_inputs(2, 5, 2, 8)
    inputs.update(over)
    return [inputs[k] for k in NAMES]


@pytest.mark.parametrize(
    "over, error, match",
    [
        ({"r": torch.randn(2, 5, 16)}, ValueError, r"r must be \[b, t, h, n\]"),
        ({"k": torch.randn(2, 6, 2, 8)}, ValueError, r"k must have the shape of r"),
        ({"w": torch.randn(2, 5, 2, 4)}, ValueError, r"w must have the shape of r"),
        ({"u": torch.randn(2, 4)}, ValueError, r"u must be \[h, n\] = \[2, 8\]"),
        ({"initial_state": torch.randn(2, 2, 8, 4)}, ValueError, r"initial_state must be \[b, h, n, n\]"),
        ({"v": torch.ones(2, 5, 2, 8, dtype=torch.int64)}, TypeError, r"v must be a floating-point tensor"),
        ({"r": torch.ones(2, 5, 2, 8, dtype=torch.int32)}, TypeError, r"r must be a floating-point tensor"),
        ({"k": torch.randn(2, 5, 2, 8, dtype=torch.float64)}, TypeError, r"k must have the dtype of r"),
        ({"u": torch.randn(2, 8, device="meta")}, ValueError, r"u is on meta but r is on cpu"),
        ({"u": [[0.0] * 8] * 2}, TypeError, r"u must be a torch.Tensor"),
    ],
)
def test_bad_input_names_the_argument(over, error, match):
    with pytest.raises(error, match=match):
        wkv6(*_args(**over))


def test_zero_length_is_an_error():
    r = torch.randn(1, 0, 2, 8)
    with pytest.raises(ValueError, match="sequence length t"):
        wkv6(r, r, r, r, torch.randn(2, 8))


def test_unknown_backend_is_an_error():
    with pytest.raises(ValueError, match="backend must be one of"):
        wkv6(*_args(), backend="fast")


def test_kernel_backend_on_a_device_without_kernel_says_why():
    r = torch.randn(1, 2, 1, 8, device="meta")
    with pytest.raises(ValueError, match="no kernel applies"):
        wkv6(r, r, r, r, torch.randn(1, 8, device="meta"), backend="kernel")


@kernel
def test_compiled_op_checks_its_contract():
    args = _args()
    bad_w = list(args)
    bad_w[3] = args[3].to(torch.float64)  # the op itself wants float32 w for float32 r
    with pytest.raises(RuntimeError, match="w must be float32"):
        torch.ops.rwkv_vision.wkv6_forward(*bad_w)
    bad_u = list(args)
    bad_u[4] = torch.randn(3, 8)
    with pytest.raises(RuntimeError, match=r"u must be \[h, n\]"):
        torch.ops.rwkv_vision.wkv6_forward(*bad_u)


def test_without_extension_falls_back_and_says_why():
    import subprocess
    import sys

    code = (
        "import torch, rwkv_vision as rv\n"
        "info = rv.ops.backend_info()\n"
        "assert not info['extension'] and 'RWKV_VISION_DISABLE_EXTENSION' in info['reason'], info\n"
        "r = torch.randn(1, 3, 1, 4)\n"
        "y, _ = rv.wkv6(r, r, r, -r.abs(), torch.randn(1, 4))\n"
        "assert y.shape == r.shape\n"
        "try:\n"
        "    rv.wkv6(r, r, r, -r.abs(), torch.randn(1, 4), backend='kernel')\n"
        "except ValueError as e:\n"
        "    assert 'not loaded' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('backend=kernel without extension must fail')\n"
    )
    env = dict(os.environ, RWKV_VISION_DISABLE_EXTENSION="1")
    env.pop("RWKV_VISION_REQUIRE_EXTENSION", None)
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
