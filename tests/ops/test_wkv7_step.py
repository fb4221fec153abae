"""wkv7_step, the in-place one-token step used while decoding: against an element-by-element float64
formula, against wkv7 over t = 1, several tokens in a row against the sequence op, dtypes, head sizes,
and bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rwkv_vision.ops import use_backend, wkv7, wkv7_step, wkv7_step_ref

from .wkv7_cases import BACKENDS, dispatch7, make_inputs, rel_rms

STEP_BACKENDS = [b for b in BACKENDS if b != "chunked"]
LETTERS = ("r", "w", "k", "v", "a", "b")


def step_float64(r, w, k, v, a, b, state):
    """Written from the formula, element by element: S[j, i] = exp(w[j]) S[j, i] + b[j] sum_j' a[j'] S[j', i]
    + k[j] v[i], then y[i] = sum_j r[j] S[j, i]. Returns (y, new state), all float64."""
    r, w, k, v, a, b, S = (x.double().clone() for x in (r, w, k, v, a, b, state))
    bsz, h, n = r.shape
    new = torch.zeros_like(S)
    y = torch.zeros(bsz, h, n, dtype=torch.float64)
    for bi in range(bsz):
        for hi in range(h):
            for i in range(n):
                sa = sum(a[bi, hi, jj] * S[bi, hi, jj, i] for jj in range(n))
                for j in range(n):
                    new[bi, hi, j, i] = (
                        torch.exp(w[bi, hi, j]) * S[bi, hi, j, i] + b[bi, hi, j] * sa + k[bi, hi, j] * v[bi, hi, i]
                    )
                y[bi, hi, i] = sum(r[bi, hi, j] * new[bi, hi, j, i] for j in range(n))
    return y, new


def step_inputs(bsz, h, n, *, dtype=torch.float32, seed=0):
    x = make_inputs(bsz, 1, h, n, dtype=dtype, seed=seed)
    return {key: (val[:, 0].contiguous() if key in LETTERS else val) for key, val in x.items()}


@pytest.mark.parametrize("backend", STEP_BACKENDS)
@pytest.mark.parametrize("n", [1, 5, 16])
def test_matches_float64_formula(backend, n):
    x = step_inputs(2, 3, n, seed=n)
    state = x["initial_state"].clone()
    pointer = state.data_ptr()
    y = wkv7_step(*(x[key] for key in LETTERS), state, backend=backend)
    y_ref, s_ref = step_float64(*(x[key] for key in LETTERS), x["initial_state"])
    assert y.dtype == torch.float32 and y.shape == (2, 3, n) and state.data_ptr() == pointer
    assert rel_rms(y, y_ref) < 1e-6 and rel_rms(state, s_ref) < 1e-6


@pytest.mark.parametrize("backend", STEP_BACKENDS)
@pytest.mark.parametrize("n", [64, 128])
def test_large_heads_equal_wkv7_over_one_token(backend, n):
    x = make_inputs(2, 1, 2, n, seed=n)
    y_seq, s_seq = wkv7(*(x[key] for key in LETTERS), x["initial_state"], True, backend="reference")
    state = x["initial_state"].clone()
    y = wkv7_step(*(x[key][:, 0] for key in LETTERS), state, backend=backend)
    assert rel_rms(y, y_seq[:, 0]) < 1e-6 and rel_rms(state, s_seq) < 1e-6


@pytest.mark.parametrize("backend", STEP_BACKENDS)
def test_float64_is_exact_to_float64(backend):
    x = step_inputs(2, 2, 6, dtype=torch.float64, seed=3)
    state = x["initial_state"].clone()
    y = wkv7_step(*(x[key] for key in LETTERS), state, backend=backend)
    y_ref, s_ref = step_float64(*(x[key] for key in LETTERS), x["initial_state"])
    assert y.dtype == torch.float64 and rel_rms(y, y_ref) < 1e-13 and rel_rms(state, s_ref) < 1e-13


@pytest.mark.parametrize("backend", STEP_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(backend, dtype):
    x = step_inputs(2, 4, 32, dtype=dtype, seed=5)
    state = x["initial_state"].clone()
    y = wkv7_step(*(x[key] for key in LETTERS), state, backend=backend)
    y_seq, s_seq = wkv7(
        *(x[key].unsqueeze(1).double() for key in LETTERS), x["initial_state"].double(), True, backend="reference"
    )
    assert y.dtype == dtype and state.dtype == torch.float32
    assert rel_rms(y, y_seq[:, 0]) < 5e-3 and rel_rms(state, s_seq) < 1e-6  # the state stays float32


@pytest.mark.parametrize("backend", STEP_BACKENDS)
def test_token_by_token_equals_the_sequence_op(backend):
    """Eleven steps from a given state give wkv7's outputs and final state over those eleven tokens."""
    x = make_inputs(2, 11, 3, 32, seed=9)
    y_seq, s_seq = wkv7(*(x[key] for key in LETTERS), x["initial_state"], True, backend="reference")
    state = x["initial_state"].clone()
    ys = [wkv7_step(*(x[key][:, i] for key in LETTERS), state, backend=backend) for i in range(11)]
    assert rel_rms(torch.stack(ys, 1), y_seq) < 1e-6 and rel_rms(state, s_seq) < 1e-6


@pytest.mark.parametrize("backend", STEP_BACKENDS)
def test_extreme_decays(backend):
    """w = 0, -1e-6, -50, -1e8 and -inf, mixed over channels and steps: the steps equal the float64 loop."""
    x = make_inputs(1, 10, 2, 16, seed=10)
    w = x["w"].clone()
    for i, value in enumerate((0.0, -1e-6, -50.0, -1e8, -float("inf"))):
        w[:, i::5, :, i::5] = value
    x["w"] = w
    y_seq, s_seq = wkv7(*(x[key].double() for key in LETTERS), x["initial_state"].double(), True, backend="reference")
    state = x["initial_state"].clone()
    ys = [wkv7_step(*(x[key][:, i] for key in LETTERS), state, backend=backend) for i in range(10)]
    assert rel_rms(torch.stack(ys, 1), y_seq) < 1e-6 and rel_rms(state, s_seq) < 1e-6


@settings(max_examples=20, deadline=None)
@given(bsz=st.integers(1, 3), h=st.integers(1, 3), n=st.integers(1, 20), t=st.integers(1, 6), seed=st.integers(0, 999))
def test_hypothesis_steps_equal_the_sequence_op(bsz, h, n, t, seed):
    x = make_inputs(bsz, t, h, n, dtype=torch.float64, seed=seed)
    y_seq, s_seq = wkv7(*(x[key] for key in LETTERS), x["initial_state"], True, backend="reference")
    for backend in STEP_BACKENDS:
        state = x["initial_state"].clone()
        ys = [wkv7_step(*(x[key][:, i] for key in LETTERS), state, backend=backend) for i in range(t)]
        assert rel_rms(torch.stack(ys, 1), y_seq) < 1e-12 and rel_rms(state, s_seq) < 1e-12, backend


def test_reference_twin_is_called_for_chunked_and_reference(monkeypatch):
    step_module = __import__("sys").modules["rwkv_vision.ops.wkv7_step"]
    calls = []
    monkeypatch.setattr(step_module, "wkv7_step_ref", lambda *a: calls.append("ref") or wkv7_step_ref(*a))
    x = step_inputs(1, 2, 4)
    for backend in ("chunked", "reference"):
        wkv7_step(*(x[key] for key in LETTERS), x["initial_state"].clone(), backend=backend)
    with use_backend("reference"):
        wkv7_step(*(x[key] for key in LETTERS), x["initial_state"].clone())
    monkeypatch.setattr(dispatch7, "kernel_ops7", lambda: None)
    monkeypatch.setattr(step_module, "kernel_ops7", lambda: None)
    wkv7_step(*(x[key] for key in LETTERS), x["initial_state"].clone(), backend="auto")
    assert calls == ["ref"] * 4
    with pytest.raises(ValueError, match="wkv7_step: backend='kernel' but no kernel applies"):
        wkv7_step(*(x[key] for key in LETTERS), x["initial_state"].clone(), backend="kernel")


# ---- bad input -----------------------------------------------------------------------------------


def _args(**over):
    x = step_inputs(2, 2, 8)
    x["state"] = x.pop("initial_state").clone()
    x.update(over)
    return [x[key] for key in (*LETTERS, "state")]


@pytest.mark.parametrize(
    "over, error, match",
    [
        ({"r": torch.randn(2, 16)}, ValueError, r"wkv7_step: r must be \[b, h, n\]"),
        ({"a": torch.randn(2, 2, 4)}, ValueError, r"wkv7_step: a must have the shape of r"),
        ({"w": -torch.rand(2, 3, 8)}, ValueError, r"wkv7_step: w must have the shape of r"),
        ({"b": torch.randn(2, 2, 8, dtype=torch.float64)}, TypeError, r"wkv7_step: b must have the dtype of r"),
        ({"k": torch.ones(2, 2, 8, dtype=torch.int64)}, TypeError, r"wkv7_step: k must be a floating-point"),
        ({"v": torch.randn(2, 2, 8, device="meta")}, ValueError, r"wkv7_step: v is on meta but r is on cpu"),
        ({"state": torch.zeros(2, 2, 8, 4)}, ValueError, r"state must be \[b, h, n, n\] = \[2, 2, 8, 8\]"),
        ({"state": torch.zeros(2, 2, 8, 8, dtype=torch.float64)}, TypeError, r"state must be torch.float32"),
        ({"state": torch.zeros(2, 2, 8, 8).transpose(-1, -2)}, ValueError, r"state must be contiguous"),
        ({"state": [0.0]}, TypeError, r"wkv7_step: state must be a torch.Tensor"),
    ],
)
def test_bad_input_names_the_argument(over, error, match):
    with torch.no_grad(), pytest.raises(error, match=match):
        wkv7_step(*_args(**over))


def test_refuses_gradients_and_unknown_backends():
    args = _args()
    args[0].requires_grad_(True)
    with pytest.raises(RuntimeError, match="wkv7_step: is for decoding and has no gradient"):
        wkv7_step(*args)
    with pytest.raises(ValueError, match="wkv7_step: backend must be one of"):
        wkv7_step(*_args(), backend="cuda_recurrent")
