"""The compiled WKV7 ops on a GPU: the CPU suite's comparisons with the CUDA kernels. Run with `pytest -m cuda`.

Letter legend: b batch, t time, h heads, n head size.
"""

from __future__ import annotations

import math

import pytest
import torch

from rwkv_vision.ops.wkv7_kernel import WKV7_CUDA_HEAD_SIZES, WKV7_KERNEL_DEVICES, kernel_ops7
from rwkv_vision.ops.wkv7_ref import wkv7_ref

from .wkv7_kernel_cases import (
    NAMES,
    W_MIN,
    assert_below,
    errors_against_float64,
    kernel,
    make_inputs,
    rel_rms,
    run_with_grads,
)

pytestmark = pytest.mark.cuda


def on_cuda(inputs):
    return {k: x.cuda() for k, x in inputs.items()}


def test_the_build_has_the_cuda_kernels():
    assert kernel_ops7() is not None and "cuda" in WKV7_KERNEL_DEVICES
    assert WKV7_CUDA_HEAD_SIZES == (32, 64, 128)


@pytest.mark.parametrize("t", [1, 2, 16, 17, 65, 257])
@pytest.mark.parametrize("n", WKV7_CUDA_HEAD_SIZES)
def test_float32_matches_float64(n, t):
    assert_below(errors_against_float64(make_inputs(2, t, 2, n, seed=t + n, device="cuda")), 1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("t", [1, 65, 300])
@pytest.mark.parametrize("n", WKV7_CUDA_HEAD_SIZES)
def test_half_precision_matches_float64(n, t, dtype):
    assert_below(errors_against_float64(make_inputs(2, t, 3, n, dtype=dtype, seed=t, device="cuda")), 5e-3)


def test_output_only_loss_many_heads_general_a_b():
    inputs = make_inputs(3, 50, 17, 64, seed=2, delta_rule=False, device="cuda")
    assert_below(errors_against_float64(inputs, state_loss=False), 1e-5)


@pytest.mark.parametrize("w", [-1e-6, W_MIN, -50.0, -math.inf])
def test_extreme_decays(w):
    inputs = make_inputs(2, 40, 2, 64, seed=6, device="cuda")
    inputs["w"] = torch.full_like(inputs["w"], w)
    assert_below(errors_against_float64(inputs), 1e-5)


CU_SEQLENS = [0, 3, 3, 20, 21, 41, 200]


@pytest.mark.parametrize("n", WKV7_CUDA_HEAD_SIZES)
def test_packed_sequences_match_float64_and_separate_runs(n):
    cu = torch.tensor(CU_SEQLENS, device="cuda")
    inputs = make_inputs(1, 200, 2, n, seed=8, states=len(CU_SEQLENS) - 1, device="cuda")
    assert_below(errors_against_float64(inputs, cu), 1e-5)
    packed = run_with_grads(kernel, inputs, cu)
    for i, (start, end) in enumerate(zip(CU_SEQLENS[:-1], CU_SEQLENS[1:])):
        if end == start:
            assert torch.equal(packed["final_state"][i], inputs["initial_state"][i])
            continue
        one = {k: (x[i : i + 1] if k == "initial_state" else x[:, start:end].contiguous()) for k, x in inputs.items()}
        y, s = kernel(*one.values())
        assert torch.equal(packed["y"][:, start:end], y) and torch.equal(packed["final_state"][i : i + 1], s)


def test_cpu_and_cuda_kernels_agree_on_a_long_sequence():
    # 4096 steps: 64 checkpoints of 64 steps in the backward's plan.
    inputs = make_inputs(1, 4096, 2, 64, seed=3)
    got = run_with_grads(kernel, on_cuda(inputs))
    expected = run_with_grads(kernel, inputs)
    for name in expected:
        assert rel_rms(got[name], expected[name]) < 2e-5, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", WKV7_CUDA_HEAD_SIZES)
def test_step_matches_the_forward_and_float64(n, dtype):
    inputs = make_inputs(3, 1, 4, n, dtype=dtype, seed=n, device="cuda")
    state = inputs["initial_state"].clone()
    y = kernel_ops7().wkv7_step(*[inputs[k][:, 0].contiguous() for k in NAMES[:-1]], state)
    y_fwd, s_fwd = kernel(*inputs.values())
    assert rel_rms(y, y_fwd[:, 0]) < 1e-6 and rel_rms(state, s_fwd) < 1e-6
    y64, s64 = wkv7_ref(*[inputs[k].double().cpu() for k in NAMES], True)
    tol = 1e-5 if dtype == torch.float32 else 5e-3
    assert rel_rms(y, y64[:, 0]) < tol and rel_rms(state, s64) < 1e-5


def test_torch_compile_fullgraph_on_cuda():
    inputs = make_inputs(2, 33, 2, 64, seed=15, device="cuda")

    def layer(r, w, k, v, a, b, s0, output_final_state=True, cu_seqlens=None):
        y, s = kernel(r * 2, w, k, v, a, b, s0)
        return y.sin(), s

    compiled = torch.compile(layer, fullgraph=True)
    got, expected = run_with_grads(compiled, inputs), run_with_grads(layer, inputs)
    for name in expected:
        assert rel_rms(got[name], expected[name]) < 1e-6, name


def test_what_the_cuda_kernels_refuse():
    inputs = make_inputs(1, 3, 1, 16, device="cuda")
    with pytest.raises(RuntimeError, match="head size n = 32, 64 or 128, got n = 16"):
        kernel(*inputs.values())
    inputs = make_inputs(1, 3, 1, 32, dtype=torch.float64, device="cuda")
    with pytest.raises(RuntimeError, match="float64 is not supported by the CUDA kernels"):
        kernel(*inputs.values())
