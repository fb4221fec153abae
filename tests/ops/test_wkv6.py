"""wkv6 on the CPU kernel: values and every gradient against a float64 reference, and the op contract."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import rwkv_vision
from rwkv_vision.ops import BACKENDS, backend_info, has_extension, use_backend, wkv6, wkv6_ref, wkv6_step

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
    # The kernel choice and segment count as explicit arguments (0, 0: the device's kernel).
    torch.library.opcheck(
        torch.ops.rwkv_vision.wkv6_forward.default, [x.clone().requires_grad_(True) for x in args] + [0, 0]
    )
    torch.library.opcheck(torch.ops.rwkv_vision.wkv6_backward.default, args + [dy, dsT, 0, 0])


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


# ---- choosing the implementation -----------------------------------------------------------------

dispatch = sys.modules["rwkv_vision.ops.wkv6"]  # the module; rwkv_vision.ops.wkv6 is the function


def test_the_accepted_backends():
    assert BACKENDS == ("auto", "kernel", "cuda_recurrent", "cuda_split", "cuda_chunked", "chunked", "reference")


def spy_on_implementations(monkeypatch):
    """Record which of wkv6_ref, wkv6_chunked and the compiled op a wkv6 call reaches."""
    calls = []
    for name in ("wkv6_ref", "wkv6_chunked"):
        real = getattr(dispatch, name)
        monkeypatch.setattr(dispatch, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    ops = dispatch.kernel_ops()
    if ops is not None:

        class Ops:
            def wkv6_forward(self, *a):
                calls.append(("kernel", *a[6:]))
                return ops.wkv6_forward(*a)

        monkeypatch.setattr(dispatch, "kernel_ops", lambda: Ops())
    return calls


@pytest.mark.parametrize("backend", ["auto", "kernel", "chunked", "reference", None])
def test_each_backend_runs_its_implementation_and_matches_float64(backend, monkeypatch):
    if backend == "kernel" and not has_extension():
        pytest.skip("compiled extension not built")
    calls = spy_on_implementations(monkeypatch)
    run = lambda *a, **kw: wkv6(*a, backend=backend, **kw)  # noqa: E731
    assert_matches_reference(run, make_inputs(2, 37, 2, 16, seed=21), 1e-5)
    kernel_call = ("kernel", 0, 0)  # the op's kernel and segments: the device's kernel, segments chosen
    expected = {
        "auto": kernel_call if has_extension() else "wkv6_chunked",
        None: kernel_call if has_extension() else "wkv6_chunked",
        "kernel": kernel_call,
        "chunked": "wkv6_chunked",
        "reference": "wkv6_ref",
    }[backend]
    assert calls == [expected], calls


def expected_cuda_variant_error(backend):
    """What wkv6 says when asked for a CUDA variant on CPU tensors, depending on the build."""
    info = backend_info()
    if not info["extension"]:
        return "not loaded"
    if not info["cuda_kernels"]:
        return "built without CUDA kernels"
    if backend not in info["cuda_variants"]:
        return (
            r"experimental CUDA kernel and this build does not include it; rebuild with "
            r"RWKV_VISION_EXPERIMENTAL_CUDA_KERNELS=ON"
        )
    return "is a CUDA kernel, but r is on cpu"


@pytest.mark.parametrize("backend", ["cuda_recurrent", "cuda_split", "cuda_chunked"])
def test_cuda_variant_on_cpu_tensors_says_why(backend):
    with pytest.raises(ValueError, match=rf"backend='{backend}' cannot run: .*{expected_cuda_variant_error(backend)}"):
        wkv6(*_args(), backend=backend)


@pytest.mark.parametrize("backend", ["cuda_split", "cuda_chunked"])
def test_experimental_variant_missing_from_the_build_says_how_to_build_it(backend, monkeypatch):
    # As in a CUDA build without RWKV_VISION_EXPERIMENTAL_CUDA_KERNELS: the build is named before the device.
    monkeypatch.setattr(dispatch, "kernel_ops", lambda: object())
    monkeypatch.setattr(dispatch, "KERNEL_DEVICES", frozenset({"cpu", "cuda"}))
    monkeypatch.setattr(dispatch, "CUDA_VARIANTS", ("cuda_recurrent",))
    with pytest.raises(ValueError, match=r"RWKV_VISION_EXPERIMENTAL_CUDA_KERNELS=ON .*pip install"):
        wkv6(*_args(), backend=backend)
    # The decoding step has one CUDA kernel for every variant name: only the device is in the way.
    r = torch.randn(1, 2, 8)
    with pytest.raises(ValueError, match="is a CUDA kernel, but r is on cpu"):
        wkv6_step(r, r, r, -r.abs(), torch.randn(2, 8), torch.zeros(1, 2, 8, 8), backend=backend)


@pytest.mark.parametrize("segments", [0, -1, 2.5, True, "2"])
def test_bad_segments(segments):
    with pytest.raises(ValueError, match="segments must be a positive int or None"):
        wkv6(*_args(), backend="cuda_chunked", segments=segments)


@pytest.mark.parametrize("backend", ["auto", "kernel", "cuda_recurrent", "cuda_split", "chunked", "reference"])
def test_segments_belong_to_the_chunked_cuda_kernels(backend):
    with pytest.raises(ValueError, match="segments applies only to backend='cuda_chunked'"):
        wkv6(*_args(), backend=backend, segments=2)


@kernel
def test_compiled_op_checks_the_kernel_choice():
    args = _args()
    with pytest.raises(RuntimeError, match=r"kernel must be 0 \(the device's kernel\), 1 .* or 2 .*got 5"):
        torch.ops.rwkv_vision.wkv6_forward(*args, 5, 0)
    with pytest.raises(RuntimeError, match="segments must be 0 .* got -1"):
        torch.ops.rwkv_vision.wkv6_forward(*args, 0, -1)
    with pytest.raises(RuntimeError, match=r"segments applies only to the chunked CUDA kernels \(kernel 2\)"):
        torch.ops.rwkv_vision.wkv6_forward(*args, 0, 3)
    built = "cuda_split" in backend_info()["cuda_variants"]
    message = (
        "is the split CUDA kernel, but the tensors are on the CPU"
        if built
        else "is experimental and this build does not include it; rebuild with RWKV_VISION_EXPERIMENTAL_CUDA_KERNELS=ON"
    )
    for op, extra in (
        (torch.ops.rwkv_vision.wkv6_forward, []),
        (torch.ops.rwkv_vision.wkv6_backward, [torch.randn(2, 5, 2, 8), torch.randn(2, 2, 8, 8)]),
    ):
        with pytest.raises(RuntimeError, match=message):
            op(*args, *extra, 1, 0)


@kernel
@pytest.mark.parametrize("choice", [(0, 0), (1, 0), (2, 3)])
def test_the_registered_autograd_hands_the_kernel_choice_to_the_backward(choice):
    # On fake tensors (fake kernels, the registered autograd, no real kernel): whatever the forward was
    # given, the backward op gets the same kernel and segments.
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "rwkv_vision":
                filled, _ = torch._library.utils.fill_defaults(func._schema, args, kwargs or {})
                seen.append((func.__name__.split(".")[0], tuple(filled[-3:-1])))  # kernel, segments (then cu_seqlens)
            return func(*args, **(kwargs or {}))

    with FakeTensorMode():
        leaves = [x.clone().requires_grad_(True) for x in _args()]
        with Record():
            y, s = torch.ops.rwkv_vision.wkv6_forward(*leaves, *choice)
            (y.sum() + s.sum()).backward()
    assert seen == [("wkv6_forward", choice), ("wkv6_backward", choice)]


def test_use_backend_sets_the_default_within_a_block(monkeypatch):
    calls = spy_on_implementations(monkeypatch)
    args = _args()
    with use_backend("reference"):
        wkv6(*args)
        with use_backend("chunked"):
            wkv6(*args)
            wkv6(*args, backend="reference")  # an explicit argument wins
        wkv6(*args)
    assert calls == ["wkv6_ref", "wkv6_chunked", "wkv6_ref", "wkv6_ref"]
    assert sys.modules["rwkv_vision.ops.backends"]._override is None  # restored on leaving the outer block
    with pytest.raises(ValueError, match="use_backend: backend must be one of"):
        with use_backend("fast"):
            pass


def run_python(code, **env):
    full = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=120)


def test_an_unknown_default_in_the_environment_names_the_variable():
    code = (
        "import torch, rwkv_vision as rv\n"
        "r = torch.randn(1, 3, 1, 4)\n"
        "assert rv.ops.backend_info()['default_backend'].startswith('invalid'), rv.ops.backend_info()\n"
        "y, _ = rv.wkv6(r, r, r, -r.abs(), torch.randn(1, 4), backend='reference')  # explicit: fine\n"
        "rv.wkv6(r, r, r, -r.abs(), torch.randn(1, 4))\n"
    )
    run = run_python(code, RWKV_VISION_WKV6_BACKEND="fastest")
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError") and "RWKV_VISION_WKV6_BACKEND='fastest'" in last, run.stderr
    assert "accepted values: auto, kernel, cuda_recurrent, cuda_split, cuda_chunked, chunked, reference" in last


def test_the_default_in_the_environment_is_read_once():
    code = (
        "import os, sys, torch, rwkv_vision as rv\n"
        "dispatch = sys.modules['rwkv_vision.ops.wkv6']\n"
        "assert rv.ops.default_backend() == 'reference'\n"
        "os.environ['RWKV_VISION_WKV6_BACKEND'] = 'nonsense'  # too late: it was read at import\n"
        "calls = []\n"
        "real = dispatch.wkv6_ref\n"
        "dispatch.wkv6_ref = lambda *a: calls.append(1) or real(*a)\n"
        "r = torch.randn(1, 3, 1, 4)\n"
        "rv.wkv6(r, r, r, -r.abs(), torch.randn(1, 4))\n"
        "assert calls == [1] and rv.ops.default_backend() == 'reference'\n"
        "assert rv.ops.backend_info()['default_backend'] == 'reference'\n"
    )
    run = run_python(code, RWKV_VISION_WKV6_BACKEND="reference")
    assert run.returncode == 0, run.stderr


def test_the_retired_kernel_variables_are_named_when_set():
    run = run_python("import rwkv_vision", RWKV_VISION_CUDA_FORWARD="chunked", RWKV_VISION_CUDA_SEGMENTS="2")
    assert run.returncode == 0, run.stderr
    assert (
        "ignoring RWKV_VISION_CUDA_FORWARD, RWKV_VISION_CUDA_SEGMENTS: the CUDA kernel is chosen by argument"
        in run.stderr
    )
