"""The compiled WKV7 ops on the CPU: values and every gradient against the float64 loop, and the op contract.

Letter legend: b batch, t time, h heads, n head size.

These call ``torch.ops.rwkv_vision.wkv7_forward`` / ``wkv7_step`` directly (``ops.wkv7`` dispatches to them
and is tested with its other backends elsewhere), through ``kernel_ops7()``: the registered fakes and autograd.
"""

from __future__ import annotations

import math

import pytest
import torch

from rwkv_vision.ops.wkv7_kernel import WKV7_CUDA_HEAD_SIZES, WKV7_KERNEL_DEVICES, kernel_ops7
from rwkv_vision.ops.wkv7_ref import wkv7_ref

from .wkv7_kernel_cases import (
    NAMES,
    NOT_PACKED,
    W_MIN,
    assert_below,
    errors_against_float64,
    kernel,
    make_inputs,
    rel_rms,
    run_with_grads,
)

pytestmark = pytest.mark.skipif(kernel_ops7() is None, reason="the compiled extension has no wkv7 ops")


def test_the_build_has_the_cpu_kernel():
    assert "cpu" in WKV7_KERNEL_DEVICES and WKV7_CUDA_HEAD_SIZES == (32, 64, 128)


def test_outputs_are_allocated_nan_filled_here():
    # The suite's conftest poisons new allocations (the kernels' outputs included): an element a kernel
    # forgets to write shows up as NaN in every comparison below.
    assert torch.isnan(torch.empty(4)).all()


# Lengths around the backward's checkpoint spacing ceil(sqrt(t)): 1 step, a perfect square, one past it.
@pytest.mark.parametrize("t", [1, 2, 7, 16, 17, 40])
def test_float32_matches_float64(t):
    assert_below(errors_against_float64(make_inputs(2, t, 2, 64, seed=t)), 1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("t", [1, 33])
def test_half_precision_matches_float64(t, dtype):
    assert_below(errors_against_float64(make_inputs(2, t, 2, 64, dtype=dtype, seed=t)), 5e-3)


@pytest.mark.parametrize("t", [1, 23])
def test_float64_matches_float64(t):
    assert_below(errors_against_float64(make_inputs(1, t, 2, 32, dtype=torch.float64, seed=t)), 1e-12)


@pytest.mark.parametrize("n", [1, 5, 32, 128])  # 32, 64, 128 are specialised; any other n is the generic loop
def test_any_head_size(n):
    assert_below(errors_against_float64(make_inputs(1, 9, 3, n, seed=n)), 1e-5)


def test_general_a_and_b():
    # The kernel assumes nothing of the delta-rule form a = -kk, b = kk * iclr.
    assert_below(errors_against_float64(make_inputs(2, 21, 2, 16, seed=4, delta_rule=False)), 1e-5)


def test_loss_on_output_only():
    assert_below(errors_against_float64(make_inputs(1, 19, 2, 32, seed=5), state_loss=False), 1e-5)


@pytest.mark.parametrize("w", [-1e-6, W_MIN, -50.0, -math.inf])
def test_extreme_decays(w):
    # Decay ~1 (w = -1e-6), the layer's strongest (W_MIN), e^-50 (below float32's relative precision) and
    # exactly 0 (w = -inf), each alone, and all four mixed with the layer's range.
    inputs = make_inputs(2, 26, 2, 32, seed=6)
    inputs["w"] = torch.full_like(inputs["w"], w)
    assert_below(errors_against_float64(inputs), 1e-5)


def test_mixed_extreme_decays():
    inputs = make_inputs(1, 40, 2, 32, seed=7)
    choice = torch.randint(0, 5, inputs["w"].shape, generator=torch.Generator().manual_seed(7))
    extremes = torch.tensor([-1e-6, W_MIN, -50.0, -math.inf])
    inputs["w"] = torch.where(choice < 4, extremes[choice.clamp(max=3)], inputs["w"])
    assert_below(errors_against_float64(inputs), 1e-5)


CU_SEQLENS = [0, 3, 3, 20, 21, 41]  # an empty sequence and a one-step one among the five


def test_packed_sequences_match_float64():
    cu = torch.tensor(CU_SEQLENS)
    inputs = make_inputs(1, 41, 2, 32, seed=8, states=len(CU_SEQLENS) - 1)
    assert_below(errors_against_float64(inputs, cu), 1e-5)


def test_packed_sequences_equal_separate_runs():
    # Each sequence restarts from its own initial state: the packed run is the runs one by one, to the bit.
    cu = torch.tensor(CU_SEQLENS)
    inputs = make_inputs(1, 41, 2, 32, seed=9, states=len(CU_SEQLENS) - 1)
    packed = run_with_grads(kernel, inputs, cu)
    for i, (start, end) in enumerate(zip(CU_SEQLENS[:-1], CU_SEQLENS[1:])):
        if end == start:  # no step: the state passes through, its gradient too
            assert torch.equal(packed["final_state"][i], inputs["initial_state"][i])
            continue
        one = {k: (x[i : i + 1] if k == "initial_state" else x[:, start:end]) for k, x in inputs.items()}
        y, s = kernel(*one.values())
        assert torch.equal(packed["y"][:, start:end], y) and torch.equal(packed["final_state"][i : i + 1], s)


def test_step_equals_one_token_of_the_forward_and_float64():
    inputs = make_inputs(3, 1, 2, 64, seed=10)
    y_fwd, s_fwd = kernel(*inputs.values())
    state = inputs["initial_state"].clone()
    one = [inputs[k][:, 0] for k in NAMES[:-1]]
    y = kernel_ops7().wkv7_step(*one, state)
    # The same arithmetic, summed in another order (the forward's loops are specialised for n = 64).
    assert rel_rms(y, y_fwd[:, 0]) < 1e-6 and rel_rms(state, s_fwd) < 1e-6
    y64, s64 = wkv7_ref(*[inputs[k].double() for k in NAMES], True)
    assert rel_rms(y, y64[:, 0]) < 1e-5 and rel_rms(state, s64) < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
@pytest.mark.parametrize("n", [7, 128])
def test_step_dtypes_and_head_sizes(dtype, n):
    inputs = make_inputs(2, 1, 3, n, dtype=dtype, seed=n)
    state = inputs["initial_state"].clone()
    y = kernel_ops7().wkv7_step(*[inputs[k][:, 0] for k in NAMES[:-1]], state)
    y64, s64 = wkv7_ref(*[inputs[k].double() for k in NAMES], True)
    tol = 1e-12 if dtype == torch.float64 else 5e-3
    assert y.dtype == dtype and rel_rms(y, y64[:, 0]) < tol and rel_rms(state, s64) < max(tol, 1e-6)


def test_gradcheck_float64():
    inputs = make_inputs(1, 4, 2, 3, dtype=torch.float64, seed=11)
    leaves = [inputs[k].clone().requires_grad_(True) for k in NAMES]
    assert torch.autograd.gradcheck(lambda *xs: kernel(*xs), leaves, eps=1e-6, atol=1e-7, rtol=1e-6)


def test_double_backward_goes_through_the_pytorch_twin():
    inputs = make_inputs(1, 6, 2, 4, dtype=torch.float64, seed=12)

    def second_order(fn):
        leaves = [inputs[k].clone().requires_grad_(True) for k in NAMES]
        y, s = fn(*leaves, True, None)
        g = torch.autograd.grad(y.square().sum() + s.sum(), leaves, create_graph=True)
        penalty = sum(x.square().sum() for x in g)
        return torch.autograd.grad(penalty, leaves)

    for got, expected in zip(second_order(kernel), second_order(wkv7_ref)):
        assert rel_rms(got, expected) < 1e-10


def test_opcheck():
    inputs = make_inputs(2, 6, 2, 8, seed=13)
    args = [inputs[k] for k in NAMES] + [NOT_PACKED]
    ops = kernel_ops7()
    torch.library.opcheck(ops.wkv7_forward.default, args)
    torch.library.opcheck(
        ops.wkv7_forward.default,
        [x.clone().requires_grad_(x.is_floating_point()) for x in args],
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"),
    )
    packed = make_inputs(1, 9, 2, 8, seed=14, states=3)
    cu = torch.tensor([0, 2, 2, 9])
    torch.library.opcheck(ops.wkv7_forward.default, [packed[k] for k in NAMES] + [cu])
    dy, dsT = torch.randn_like(inputs["r"]), torch.randn_like(inputs["initial_state"])
    torch.library.opcheck(ops.wkv7_backward.default, args + [dy, dsT])
    step = [inputs[k][:, 0].contiguous() for k in NAMES[:-1]] + [inputs["initial_state"].clone()]
    torch.library.opcheck(ops.wkv7_step.default, step)


def test_torch_compile_fullgraph():
    inputs = make_inputs(2, 11, 2, 16, seed=15)

    def layer(r, w, k, v, a, b, s0, output_final_state=True, cu_seqlens=None):
        y, s = kernel(r * 2, w, k, v, a, b, s0)
        return y.sin(), s

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    got, expected = run_with_grads(compiled, inputs), run_with_grads(layer, inputs)
    for name in expected:
        assert rel_rms(got[name], expected[name]) < 1e-6, name


def test_zero_length_passes_the_state_through():
    inputs = make_inputs(2, 0, 2, 8, seed=16)
    y, s = kernel(*inputs.values())
    assert y.shape == (2, 0, 2, 8) and torch.equal(s, inputs["initial_state"])


# ---- the contract, checked by the op itself ----------------------------------------------------------


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda x: x.update(w=x["w"].double()), "w must be float32, got float64"),
        (lambda x: x.update(k=x["k"][:, :4].contiguous()), "k must have the shape of r; dim 1 is 4"),
        (lambda x: x.update(b=x["b"].transpose(1, 2)), "b must have the shape of r"),
        (lambda x: x.update(a=x["a"].transpose(0, 1).contiguous().transpose(0, 1)), "a must be contiguous"),
        (lambda x: x.update(initial_state=x["initial_state"][:1]), r"initial_state must be \[s, h, n, n\]"),
        (lambda x: x.update(v=x["v"].half()), "v must be float32, got float16"),
    ],
)
def test_the_op_checks_its_contract(change, match):
    inputs = make_inputs(2, 5, 2, 8)
    change(inputs)
    with pytest.raises(RuntimeError, match=match):
        kernel(*inputs.values())


@pytest.mark.parametrize(
    "cu, match",
    [
        ([0, 2, 5], "with cu_seqlens the batch size b must be 1"),
        ([0, 2, 4], "must start at 0 and end at t = 5"),
        ([0, 3, 2, 5], "must be non-decreasing"),
        ([5], "at least two offsets"),
    ],
)
def test_the_op_checks_cu_seqlens(cu, match):
    inputs = make_inputs(2 if "batch" in match else 1, 5, 2, 8, states=max(len(cu) - 1, 1))
    with pytest.raises(RuntimeError, match=match):
        kernel(*inputs.values(), cu_seqlens=torch.tensor(cu))
    with pytest.raises(RuntimeError, match="cu_seqlens must be int64"):
        kernel(*make_inputs(1, 5, 2, 8).values(), cu_seqlens=torch.tensor([0, 5], dtype=torch.int32))


def test_a_private_build_is_loaded_from_rwkv_vision_extension_path(tmp_path):
    # How a kernel change is tested next to the installed library: RWKV_VISION_EXTENSION_PATH names the file
    # loaded instead of the installed one (here a missing file, so the fallback says which file it tried).
    import json
    import os
    import subprocess
    import sys

    path = str(tmp_path / "private" / "_C.so")
    code = "import json, rwkv_vision; print(json.dumps(rwkv_vision.ops.backend_info()))"
    env = {k: v for k, v in os.environ.items() if k != "RWKV_VISION_REQUIRE_EXTENSION"}
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(env, RWKV_VISION_EXTENSION_PATH=path),
    )
    assert run.returncode == 0, run.stderr[-2000:]
    info = json.loads(run.stdout.strip().splitlines()[-1])
    assert not info["extension"] and info["path"] == path and path in info["reason"], info
