"""wkv6_step, the in-place one-token step used while decoding: against an independent float64 loop, against
wkv6 over t = 1, several tokens in a row, dtypes, head sizes, and bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rwkv_vision.ops import has_extension, wkv6, wkv6_step, wkv6_step_ref

from .wkv6_cases import make_inputs, rel_rms

BACKENDS = ["reference", "kernel"] if has_extension() else ["reference"]


def step_float64(r, k, v, w, u, state):
    """Written from the formula, element by element: y[i] = sum_j r[j] (u[j] k[j] v[i] + S[j, i]),
    then S[j, i] = exp(w[j]) S[j, i] + k[j] v[i]. Returns (y, new state), all float64."""
    r, k, v, w, u, S = (x.double().clone() for x in (r, k, v, w, u, state))
    b, h, n = r.shape
    y = torch.zeros(b, h, n, dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            for j in range(n):
                y[bi, hi] += r[bi, hi, j] * (u[hi, j] * k[bi, hi, j] * v[bi, hi] + S[bi, hi, j])
                S[bi, hi, j] = torch.exp(w[bi, hi, j]) * S[bi, hi, j] + k[bi, hi, j] * v[bi, hi]
    return y, S


def step_inputs(b, h, n, *, dtype=torch.float32, seed=0, device="cpu"):
    x = make_inputs(b, 1, h, n, dtype=dtype, seed=seed, device=device)
    return {key: (val[:, 0].contiguous() if key in "rkvw" else val) for key, val in x.items()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [1, 5, 32, 64, 128])
def test_matches_float64_formula(backend, n):
    x = step_inputs(2, 3, n, seed=n)
    state = x["initial_state"].clone()
    y = wkv6_step(x["r"], x["k"], x["v"], x["w"], x["u"], state, backend=backend)
    y_ref, s_ref = step_float64(x["r"], x["k"], x["v"], x["w"], x["u"], x["initial_state"])
    assert y.dtype == torch.float32 and y.shape == (2, 3, n)
    assert rel_rms(y, y_ref) < 1e-6 and rel_rms(state, s_ref) < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_is_exact_to_float64(backend):
    x = step_inputs(2, 2, 16, dtype=torch.float64, seed=3)
    state = x["initial_state"].clone()
    y = wkv6_step(x["r"], x["k"], x["v"], x["w"], x["u"], state, backend=backend)
    y_ref, s_ref = step_float64(x["r"], x["k"], x["v"], x["w"], x["u"], x["initial_state"])
    assert rel_rms(y, y_ref) < 1e-13 and rel_rms(state, s_ref) < 1e-13


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(backend, dtype):
    x = step_inputs(2, 4, 64, dtype=dtype, seed=5)
    state = x["initial_state"].clone()
    y = wkv6_step(x["r"], x["k"], x["v"], x["w"], x["u"], state, backend=backend)
    y_ref, s_ref = step_float64(x["r"], x["k"], x["v"], x["w"], x["u"], x["initial_state"])
    assert y.dtype == dtype and state.dtype == torch.float32
    assert rel_rms(y, y_ref) < 5e-3 and rel_rms(state, s_ref) < 1e-6  # the state is float32 throughout


@pytest.mark.parametrize("backend", BACKENDS)
def test_token_by_token_equals_the_sequence_op(backend):
    """Eleven steps from a given state give wkv6's outputs and final state over those eleven tokens."""
    x = make_inputs(2, 11, 3, 32, seed=9)
    y_seq, s_seq = wkv6(
        x["r"], x["k"], x["v"], x["w"], x["u"], x["initial_state"], output_final_state=True, backend="reference"
    )
    state = x["initial_state"].clone()
    ys = [wkv6_step(*(x[key][:, i].contiguous() for key in "rkvw"), x["u"], state, backend=backend) for i in range(11)]
    assert rel_rms(torch.stack(ys, 1), y_seq) < 1e-6 and rel_rms(state, s_seq) < 1e-6


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 3), h=st.integers(1, 4), n=st.integers(1, 40), seed=st.integers(0, 10_000))
def test_kernel_and_twin_agree(b, h, n, seed):
    # float64, so that a near-cancelling sum over a few elements cannot turn rounding into a failure.
    x = step_inputs(b, h, n, dtype=torch.float64, seed=seed)
    s1, s2 = x["initial_state"].clone(), x["initial_state"].clone()
    y1 = wkv6_step(x["r"], x["k"], x["v"], x["w"], x["u"], s1)
    y2 = wkv6_step_ref(x["r"], x["k"], x["v"], x["w"], x["u"], s2)
    assert rel_rms(y1, y2) < 1e-10 and rel_rms(s1, s2) < 1e-10


def test_state_is_updated_in_place_and_inputs_are_not():
    x = step_inputs(1, 2, 8, seed=1)
    state = x["initial_state"].clone()
    ptr, before = state.data_ptr(), {k: x[k].clone() for k in "rkvw"}
    wkv6_step(x["r"], x["k"], x["v"], x["w"], x["u"], state)
    assert state.data_ptr() == ptr and not torch.equal(state, x["initial_state"])
    for k in "rkvw":
        assert torch.equal(x[k], before[k])


def test_works_under_torch_compile_fullgraph():
    x = step_inputs(1, 2, 8, seed=2)
    s_eager, s_comp = x["initial_state"].clone(), x["initial_state"].clone()
    y_eager = wkv6_step(x["r"], x["k"], x["v"], x["w"], x["u"], s_eager)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(r, k, v, w, u, s):
        return wkv6_step(r, k, v, w, u, s) * 2

    y_comp = f(x["r"], x["k"], x["v"], x["w"], x["u"], s_comp)
    assert torch.allclose(y_comp, 2 * y_eager) and torch.equal(s_comp, s_eager)


@pytest.mark.parametrize(
    "change, error, message",
    [
        (dict(r=torch.randn(2, 3)), ValueError, "r must be \\[b, h, n\\]"),
        (dict(k=torch.randn(1, 2, 7)), ValueError, "k must have the shape of r"),
        (dict(v=torch.randn(1, 2, 8, dtype=torch.float64)), TypeError, "v must have the dtype of r"),
        (dict(u=torch.randn(2, 7)), ValueError, "u must be \\[h, n\\] = \\[2, 8\\]"),
        (dict(state=torch.randn(1, 2, 8, 7)), ValueError, "state must be \\[b, h, n, n\\]"),
        (dict(state=torch.randn(1, 2, 8, 8, dtype=torch.float64)), TypeError, "state must be torch.float32"),
        (dict(state=torch.randn(1, 2, 8, 8).transpose(-1, -2)), ValueError, "state must be contiguous"),
        (dict(w=torch.ones(1, 2, 8, dtype=torch.long)), TypeError, "w must be a floating-point tensor"),
        (dict(r=torch.randn(1, 2, 8, device="meta")), ValueError, "k is on cpu but r is on meta"),
    ],
)
def test_bad_input_is_named(change, error, message):
    x = step_inputs(1, 2, 8)
    args = {"r": x["r"], "k": x["k"], "v": x["v"], "w": x["w"], "u": x["u"], "state": x["initial_state"].clone()}
    args.update(change)
    with pytest.raises(error, match=message):
        wkv6_step(**args)


def test_refuses_gradients():
    x = step_inputs(1, 2, 8)
    with pytest.raises(RuntimeError, match="no gradient; train with wkv6"):
        wkv6_step(x["r"].requires_grad_(), x["k"], x["v"], x["w"], x["u"], x["initial_state"].clone())
    with torch.no_grad():
        wkv6_step(x["r"], x["k"], x["v"], x["w"], x["u"], x["initial_state"].clone())


def test_unknown_backend():
    x = step_inputs(1, 1, 4)
    with pytest.raises(ValueError, match="backend must be one of"):
        wkv6_step(x["r"], x["k"], x["v"], x["w"], x["u"], x["initial_state"], backend="fast")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", [32, 64, 128])
def test_cuda_kernel_matches_float64_formula(n, dtype):
    x = step_inputs(3, 5, n, dtype=dtype, seed=n, device="cuda")
    state = x["initial_state"].clone()
    y = wkv6_step(x["r"], x["k"], x["v"], x["w"], x["u"], state, backend="kernel")
    cpu = {k: v.cpu() for k, v in x.items()}
    y_ref, s_ref = step_float64(cpu["r"], cpu["k"], cpu["v"], cpu["w"], cpu["u"], cpu["initial_state"])
    tol = 1e-5 if dtype == torch.float32 else 5e-3
    assert y.dtype == dtype and rel_rms(y, y_ref) < tol and rel_rms(state, s_ref) < 1e-5


@pytest.mark.cuda
def test_cuda_kernel_many_steps_equal_the_sequence_kernel():
    x = make_inputs(2, 40, 4, 64, dtype=torch.bfloat16, seed=4, device="cuda")
    y_seq, s_seq = wkv6(
        x["r"], x["k"], x["v"], x["w"], x["u"], x["initial_state"], output_final_state=True, backend="kernel"
    )
    state = x["initial_state"].clone()
    ys = [wkv6_step(*(x[key][:, i].contiguous() for key in "rkvw"), x["u"], state, backend="kernel") for i in range(40)]
    assert rel_rms(torch.stack(ys, 1), y_seq) < 5e-3 and rel_rms(state, s_seq) < 1e-5


needs_extension = pytest.mark.skipif(not has_extension(), reason="compiled extension not built")


@needs_extension
def test_opcheck_schema_and_fake_kernel():
    """The mutating schema (state is Tensor(a!)) matches what the kernel does, and the fake kernel
    matches its output (torch.library.opcheck)."""
    x = step_inputs(2, 3, 8, seed=4)
    args = [x["r"], x["k"], x["v"], x["w"], x["u"], x["initial_state"].clone()]
    torch.library.opcheck(torch.ops.rwkv_vision.wkv6_step.default, args, test_utils=("test_schema", "test_faketensor"))


@needs_extension
@pytest.mark.parametrize(
    "index, bad, message",
    [
        (0, torch.randn(1, 2, 8, 1), r"r must be \[b, h, n\]"),
        (3, torch.randn(1, 2, 8, dtype=torch.float64), "w must be float32"),
        (4, torch.randn(3, 8), r"u must be \[h, n\]"),
        (5, torch.randn(1, 2, 8, 8, dtype=torch.float64), "state must be float32"),
        (1, torch.randn(1, 2, 7), "k must have the shape of r"),
        (2, torch.randn(1, 8, 2).transpose(1, 2), "v must be contiguous"),
    ],
)
def test_compiled_op_checks_its_contract(index, bad, message):
    """Called directly (without ops.wkv6_step's own checks), the C++ op still names what is wrong."""
    x = step_inputs(1, 2, 8)
    args = [x["r"], x["k"], x["v"], x["w"], x["u"], x["initial_state"].clone()]
    args[index] = bad
    with pytest.raises(RuntimeError, match=message):
        torch.ops.rwkv_vision.wkv6_step(*args)
