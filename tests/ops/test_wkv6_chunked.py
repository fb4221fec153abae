"""wkv6_chunked, the pure-PyTorch fallback of wkv6: values and every gradient (initial state included)
against the float64 step-by-step reference, at odd lengths and chunk sizes, with decays strong enough to
overflow a naive factorisation."""

from __future__ import annotations

import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rwkv_vision.ops import has_extension, wkv6, wkv6_chunked, wkv6_ref
from rwkv_vision.ops.wkv6_chunked import DEFAULT_CHUNK

from .wkv6_cases import NAMES, assert_matches_reference, in_two_segments, make_inputs, rel_rms, run_with_grads


def chunked(L):
    return lambda *a, **kw: wkv6_chunked(*a, chunk_size=L, **kw)


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("t,L", [(1, 8), (7, 8), (8, 8), (9, 8), (63, 16), (65, 16), (100, 3), (257, 32)])
def test_float32_matches_float64_reference(t, L, with_state):
    inputs = make_inputs(2, t, 3, 16, with_state=with_state, seed=t + L)
    assert_matches_reference(chunked(L), inputs, 1e-5)


@pytest.mark.parametrize("t", [5, 40])
def test_float64_is_float64_exact(t):
    inputs = make_inputs(1, t, 2, 8, dtype=torch.float64, seed=t)
    y1, s1, g1 = run_with_grads(chunked(16), inputs)
    y2, s2, g2 = run_with_grads(wkv6_ref, inputs)
    assert rel_rms(y1, y2) < 1e-12 and rel_rms(s1, s2) < 1e-12
    for k in g2:
        assert rel_rms(g1[k], g2[k]) < 1e-12, k


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(dtype):
    assert_matches_reference(chunked(8), make_inputs(2, 37, 2, 32, dtype=dtype, seed=1), 5e-3)


def test_strong_decays_do_not_overflow():
    """w = -30 on every step: the decay across a 16-step chunk is e^-480, beyond float32; exp(-A) of the
    textbook factorisation would be inf. Weak channels alternate with strong ones."""
    inputs = make_inputs(1, 50, 2, 8, seed=4)
    w = inputs["w"].clone()
    w[..., ::2] = -30.0
    inputs["w"] = w
    assert_matches_reference(chunked(16), inputs, 1e-5)


def test_segments_with_carried_state_equal_one_run():
    inputs = make_inputs(2, 45, 2, 8, seed=7)
    y_full, s_full, g_full = run_with_grads(chunked(8), inputs)
    y_seg, s_seg, g_seg = run_with_grads(in_two_segments(chunked(8), 19), inputs)
    assert rel_rms(y_seg, y_full) < 1e-6 and rel_rms(s_seg, s_full) < 1e-6
    for k in g_full:
        assert rel_rms(g_seg[k], g_full[k]) < 1e-6, k


@settings(max_examples=20, deadline=None)
@given(
    b=st.integers(1, 2),
    t=st.integers(1, 40),
    h=st.integers(1, 3),
    n=st.integers(1, 12),
    L=st.integers(1, 20),
    seed=st.integers(0, 1000),
)
def test_any_shape_and_chunk_length(b, t, h, n, L, seed):
    # float64: shapes and chunk boundaries are under test here, not float32 rounding of tiny sums.
    inputs = make_inputs(b, t, h, n, dtype=torch.float64, seed=seed)
    args = [inputs[k] for k in NAMES]
    y1, s1 = wkv6_chunked(*args, output_final_state=True, chunk_size=L)
    y2, s2 = wkv6_ref(*args, output_final_state=True)
    assert y1.shape == y2.shape and rel_rms(y1, y2) < 1e-10 and rel_rms(s1, s2) < 1e-10


def test_is_the_backend_when_no_kernel_applies(monkeypatch):
    """backend='chunked' and the auto fallback run it; the result equals the reference."""
    inputs = make_inputs(1, 20, 2, 8, seed=2)
    args = [inputs[k] for k in NAMES]
    y_c, _ = wkv6(*args, backend="chunked")
    y_r, _ = wkv6(*args, backend="reference")
    assert rel_rms(y_c, y_r) < 1e-6
    dispatch = sys.modules["rwkv_vision.ops.wkv6"]  # the module; rwkv_vision.ops.wkv6 is the function
    calls = []
    monkeypatch.setattr(dispatch, "_kernel_reason", lambda r: "no kernel in this test")
    monkeypatch.setattr(dispatch, "wkv6_chunked", lambda *a: calls.append(a) or wkv6_chunked(*a))
    y_auto, _ = wkv6(*args)
    assert calls and torch.equal(y_auto, y_c)


def test_default_chunk_and_bad_chunk_size():
    assert DEFAULT_CHUNK == 16
    inputs = make_inputs(1, 4, 1, 4)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="chunk_size must be a positive int"):
            wkv6_chunked(*[inputs[k] for k in NAMES], chunk_size=bad)


EXTREME_W = [-1e-6, -0.5, -5.0, -30.0, -100.0, -1e8, -float("inf")]


def _with_decay(inputs, w_value):
    inputs = dict(inputs)
    inputs["w"] = torch.full_like(inputs["w"], w_value)
    return inputs


@pytest.mark.parametrize("w_value", EXTREME_W, ids=str)
@pytest.mark.parametrize("t,L", [(1, 16), (17, 16), (37, 16), (23, 5)])
def test_every_decay_down_to_minus_inf_matches_float64(w_value, t, L):
    """Every valid log-decay, uniform over the sequence: outputs and every gradient (initial state
    included) stay within float32 error of the float64 loop; no NaN at w = -1e8 or -inf."""
    inputs = _with_decay(make_inputs(2, t, 2, 8, seed=t + L), w_value)
    assert_matches_reference(chunked(L), inputs, 1e-5)


def test_mixed_extreme_decays_match_float64():
    """-inf, -1e8 and ordinary decays side by side in one chunk, channel by channel and step by step."""
    inputs = make_inputs(2, 41, 2, 8, seed=11)
    w = inputs["w"].clone()
    w[..., ::3] = -float("inf")
    w[:, ::5, :, 1::3] = -1e8
    w[:, 2::7, :, 2::3] = -1e-7
    inputs["w"] = w
    assert_matches_reference(chunked(16), inputs, 1e-5)


@settings(max_examples=25, deadline=None)
@given(
    t=st.integers(1, 40),
    L=st.integers(1, 20),
    choices=st.lists(st.sampled_from(EXTREME_W), min_size=1, max_size=4),
    seed=st.integers(0, 1000),
)
def test_hypothesis_extreme_decays_float32(t, L, choices, seed):
    """Decays drawn per element from the extreme values: float32 outputs and gradients near float64."""
    inputs = make_inputs(1, t, 2, 4, seed=seed)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(choices), inputs["w"].shape, generator=g)
    inputs["w"] = torch.tensor(choices, dtype=torch.float32)[pick]
    assert_matches_reference(chunked(L), inputs, 1e-5)


@pytest.mark.parametrize("backend", ["kernel", "auto", "chunked", "reference"])
@pytest.mark.parametrize("w_value", [-1e-6, -30.0, -1e8, -float("inf")], ids=str)
def test_every_backend_is_exact_at_extreme_decays(backend, w_value):
    """The compiled kernel, the fallback and the loop agree with float64 at the extremes too."""
    if backend == "kernel" and not has_extension():
        pytest.skip("compiled extension not built")
    inputs = _with_decay(make_inputs(1, 35, 2, 32, seed=5), w_value)
    assert_matches_reference(lambda *a, **kw: wkv6(*a, backend=backend, **kw), inputs, 1e-5)
