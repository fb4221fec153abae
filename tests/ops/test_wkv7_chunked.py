"""wkv7_chunked, the pure-PyTorch chunked form of wkv7: values and every gradient (initial state included)
against the float64 step-by-step loop, at odd lengths and chunk sizes, over the whole decay range of an
RWKV-7 layer and at the extremes (-1e-6 ... -inf) where a naive chunk factorisation overflows."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rwkv_vision.ops import wkv7_chunked, wkv7_ref
from rwkv_vision.ops.wkv7_chunked import DEFAULT_CHUNK

from .wkv7_cases import (
    NAMES,
    W_MIN,
    assert_matches_reference,
    general_low_rank,
    in_two_segments,
    make_inputs,
    rel_rms,
    run_with_grads,
    with_decay,
)


def chunked(L):
    return lambda *a, **kw: wkv7_chunked(*a, chunk_size=L, **kw)


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("t,L", [(1, 16), (7, 16), (16, 16), (33, 16), (65, 16), (65, 4), (100, 2), (47, 32), (9, 1)])
def test_float32_matches_float64_reference(t, L, with_state):
    inputs = make_inputs(2, t, 3, 16, with_state=with_state, seed=t + L)
    assert_matches_reference(chunked(L), inputs, 1e-5)


def test_head_size_64_and_the_default_chunk():
    assert DEFAULT_CHUNK == 16
    assert_matches_reference(wkv7_chunked, make_inputs(1, 41, 2, 64, seed=2), 1e-5)


def test_independent_low_rank_vectors():
    """a and b need not be the layer's -kk and kk * iclr: any a, b that keep the recurrence bounded."""
    inputs = general_low_rank(make_inputs(2, 50, 2, 16, seed=3), seed=3, scale=1.0)
    assert_matches_reference(chunked(16), inputs, 1e-5)


@pytest.mark.parametrize("t", [5, 40])
def test_float64_is_float64_exact(t):
    inputs = make_inputs(1, t, 2, 8, dtype=torch.float64, seed=t)
    y1, s1, g1 = run_with_grads(chunked(16), inputs)
    y2, s2, g2 = run_with_grads(wkv7_ref, inputs)
    assert rel_rms(y1, y2) < 1e-12 and rel_rms(s1, s2) < 1e-12
    for k in g2:
        assert rel_rms(g1[k], g2[k]) < 1e-12, k


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(dtype):
    # The inputs are rounded to dtype before both runs; the arithmetic is float32, the output rounded.
    y, s, grads = run_with_grads(chunked(8), make_inputs(2, 37, 2, 32, dtype=dtype, seed=1))
    assert y.dtype == dtype and s.dtype == torch.float32
    assert_matches_reference(chunked(8), make_inputs(2, 37, 2, 32, dtype=dtype, seed=1), 5e-3)


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
    L=st.sampled_from([1, 2, 4, 8, 16, 32]),
    seed=st.integers(0, 1000),
)
def test_any_shape_and_chunk_length(b, t, h, n, L, seed):
    # float64: shapes and chunk boundaries are under test here, not float32 rounding.
    inputs = make_inputs(b, t, h, n, dtype=torch.float64, seed=seed)
    args = [inputs[k] for k in NAMES]
    y1, s1 = wkv7_chunked(*args, output_final_state=True, chunk_size=L)
    y2, s2 = wkv7_ref(*args, output_final_state=True)
    assert y1.shape == y2.shape and rel_rms(y1, y2) < 1e-10 and rel_rms(s1, s2) < 1e-10


def test_bad_chunk_size():
    inputs = make_inputs(1, 4, 1, 4)
    for bad in (0, -1, 2.5, True, 3, 24):
        with pytest.raises(ValueError, match=r"chunk_size must be a power of two \(1, 2, 4, ...\), got"):
            wkv7_chunked(*[inputs[k] for k in NAMES], chunk_size=bad)


# ---- the decay range -----------------------------------------------------------------------------

#: A layer's range is [W_MIN, 0); the rest are valid log-decays far outside it.
EXTREME_W = [-1e-6, W_MIN, -5.0, -50.0, -1e8, -float("inf")]


@pytest.mark.parametrize("w_value", EXTREME_W, ids=str)
@pytest.mark.parametrize("t,L", [(1, 16), (17, 16), (37, 16), (23, 4), (70, 64)])
def test_every_decay_down_to_minus_inf_matches_float64(w_value, t, L):
    """Uniform log-decays over the sequence: outputs and every gradient stay within float32 error of the
    float64 loop; no overflow at -50 (e^-800 over a chunk), no NaN at -1e8 or -inf."""
    inputs = with_decay(make_inputs(2, t, 2, 8, seed=t + L), w_value)
    assert_matches_reference(chunked(L), inputs, 1e-5)


def test_the_layer_range_at_its_ends():
    """Half the channels at the strongest decay a layer makes, half at the weakest, over long chunks."""
    inputs = make_inputs(1, 70, 2, 32, seed=9)
    w = inputs["w"].clone()
    w[..., ::2] = W_MIN
    w[..., 1::2] = -1e-7
    inputs["w"] = w
    assert_matches_reference(chunked(32), inputs, 1e-5)


def test_mixed_extreme_decays_match_float64():
    """-inf, -1e8, -50 and ordinary decays side by side in one chunk, channel by channel and step by step."""
    inputs = make_inputs(2, 41, 2, 8, seed=11)
    w = inputs["w"].clone()
    w[..., ::3] = -float("inf")
    w[:, ::5, :, 1::3] = -1e8
    w[:, 1::4, :, 1::3] = -50.0
    w[:, 2::7, :, 2::3] = -1e-7
    inputs["w"] = w
    assert_matches_reference(chunked(16), inputs, 1e-5)


@settings(max_examples=20, deadline=None)
@given(
    t=st.integers(1, 40),
    L=st.sampled_from([1, 2, 4, 8, 16, 32]),
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


def test_torch_compile_fullgraph():
    inputs = make_inputs(2, 6, 2, 8, seed=7)

    def layer(r, w, k, v, a, b, s0):
        y, s = wkv7_chunked(r * 2, w, k, v, a, b, s0, output_final_state=True, chunk_size=2)
        return y.sin(), s

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    y, s, grads = run_with_grads(lambda *a, **kw: compiled(*a), inputs)
    y_e, s_e, grads_e = run_with_grads(lambda *a, **kw: layer(*a), inputs)
    assert rel_rms(y, y_e) < 1e-6 and rel_rms(s, s_e) < 1e-6
    for k in grads:
        assert rel_rms(grads[k], grads_e[k]) < 1e-6, k
