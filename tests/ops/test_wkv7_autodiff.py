"""Honest autodiff and invalid decays for every backend of wkv7 and for wkv7_step.

Forward-mode AD (torch.func.jvp, jacfwd, torch.autograd.forward_ad) and double backward either give the
right values (checked against finite differences and the float64 loop) or raise an error that says they
are not supported; never silent zeros. A log-decay w > 0 or NaN is rejected by every backend on the CPU."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD

from rwkv_vision.ops import wkv7, wkv7_ref, wkv7_step

from .wkv7_cases import BACKENDS, NAMES, dispatch7, kernel, make_inputs, rel_rms

PYTHON_BACKENDS = ["auto", "chunked", "reference"]


def _inputs(t=5, n=8, seed=0):
    inputs = make_inputs(2, t, 2, n, dtype=torch.float64, seed=seed)
    return [inputs[k] for k in NAMES]


def _f(backend):
    """All seven inputs -> (y, final_state), through wkv7 with ``backend``."""
    return lambda *a: wkv7(*a, output_final_state=True, backend=backend)


def _finite_difference_jvp(f, args, tangents, eps=1e-6):
    plus = f(*[a + eps * d for a, d in zip(args, tangents)])
    minus = f(*[a - eps * d for a, d in zip(args, tangents)])
    return tuple((p - m) / (2 * eps) for p, m in zip(plus, minus))


def _tangents(args, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(a.shape, generator=g, dtype=a.dtype) for a in args]


@pytest.mark.parametrize("backend", PYTHON_BACKENDS)
def test_jvp_matches_finite_differences(backend, monkeypatch):
    calls = []
    real = dispatch7.wkv7_chunked
    monkeypatch.setattr(dispatch7, "wkv7_chunked", lambda *a: calls.append(1) or real(*a))
    args = _inputs(t=7)
    tangents = _tangents(args)
    (y, s), (dy, ds) = torch.func.jvp(_f(backend), tuple(args), tuple(tangents))
    fd_y, fd_s = _finite_difference_jvp(_f("reference"), args, tangents)
    assert rel_rms(dy, fd_y) < 1e-6 and rel_rms(ds, fd_s) < 1e-6
    assert dy.abs().sum() > 0
    assert bool(calls) == (backend != "reference")  # auto runs the chunked form under forward-mode AD


@pytest.mark.parametrize("backend", PYTHON_BACKENDS)
def test_jacfwd_equals_jacrev_of_the_reference(backend):
    args = _inputs(t=3, n=4)
    jf = torch.func.jacfwd(lambda a: wkv7(*args[:4], a, *args[5:], backend=backend)[0])(args[4])
    jr = torch.autograd.functional.jacobian(lambda a: wkv7_ref(*args[:4], a, *args[5:])[0], args[4])
    assert rel_rms(jf, jr) < 1e-10


@pytest.mark.parametrize("backend", PYTHON_BACKENDS)
def test_forward_ad_dual_tensors(backend):
    args = _inputs(t=6)
    tangents = _tangents(args, seed=5)
    with fwAD.dual_level():
        duals = [fwAD.make_dual(a, d) for a, d in zip(args, tangents)]
        y, s = _f(backend)(*duals)
        dy, ds = fwAD.unpack_dual(y).tangent, fwAD.unpack_dual(s).tangent
    fd_y, fd_s = _finite_difference_jvp(_f("reference"), args, tangents)
    assert rel_rms(dy, fd_y) < 1e-6 and rel_rms(ds, fd_s) < 1e-6


@pytest.mark.parametrize("backend", PYTHON_BACKENDS)
def test_func_grad_matches_autograd(backend):
    args = _inputs(t=5)
    g = torch.func.grad(lambda w: wkv7(args[0], w, *args[2:], backend=backend)[0].square().sum())(args[1])
    leaf = args[1].clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(wkv7_ref(args[0], leaf, *args[2:])[0].square().sum(), leaf)
    assert rel_rms(g, g_ref) < 1e-10


@kernel
def test_forward_ad_through_an_explicit_kernel_is_refused():
    args = _inputs()
    with pytest.raises(ValueError, match="wkv7: forward-mode AD .* not supported by the compiled kernel"):
        torch.func.jvp(_f("kernel"), tuple(args), tuple(_tangents(args)))
    with pytest.raises(ValueError, match="wkv7: torch.func gradient transforms .* not supported"):
        torch.func.grad(lambda r: wkv7(r, *args[1:], backend="kernel")[0].sum())(args[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_double_backward_matches_the_reference(backend):
    """Second derivatives through the loss's gradient: the same as through the float64 loop."""
    args = _inputs(t=9)

    def second(fn):
        leaves = [a.clone().requires_grad_(True) for a in args]
        y, s = fn(*leaves)
        grads = torch.autograd.grad((y**2).sum() + (s**3).sum(), leaves, create_graph=True)
        loss = sum((g * torch.cos(x)).sum() for g, x in zip(grads, leaves))
        return torch.autograd.grad(loss, leaves)

    got, expected = second(_f(backend)), second(_f("reference"))
    for name, a, b in zip(NAMES, got, expected):
        assert rel_rms(a, b) < 1e-10, name


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b not in ("auto", "reference")])
def test_gradgradcheck(backend):
    inputs = make_inputs(1, 3, 1, 3, dtype=torch.float64, seed=2)
    args = [inputs[k].clone().requires_grad_(True) for k in NAMES]
    assert torch.autograd.gradgradcheck(_f(backend), args)


def _step_args():
    args = _inputs(t=1)
    return (*(x[:, 0] for x in args[:6]), args[6].clone())


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "chunked"])
def test_wkv7_step_refuses_forward_ad_and_func_transforms(backend):
    r, w, k, v, a, b, state = _step_args()
    step = lambda r: wkv7_step(r, w, k, v, a, b, state.clone(), backend=backend)  # noqa: E731
    with pytest.raises(RuntimeError, match="wkv7_step: .*forward-mode AD .* not supported"):
        torch.func.jvp(step, (r,), (torch.ones_like(r),))
    with pytest.raises(RuntimeError, match="wkv7_step: .*not supported"):
        torch.func.jacfwd(step)(r)
    with pytest.raises(RuntimeError, match="wkv7_step: is for decoding and has no gradient"):
        torch.func.grad(lambda r: step(r).sum())(r)
    with fwAD.dual_level(), pytest.raises(RuntimeError, match="wkv7_step: .*forward-mode AD"):
        step(fwAD.make_dual(r, torch.ones_like(r)))


@pytest.mark.parametrize("bad", [1e-3, 5.0, float("inf"), float("nan")], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_invalid_decay_is_rejected_by_every_backend(backend, bad):
    args = [a.float() for a in _inputs()]
    w = args[1].clone()
    w[1, 2, 0, 3] = bad
    with pytest.raises(
        ValueError, match=r"wkv7: w \(the log-decay\) must be <= 0 and not NaN.*1 invalid.*w\[1, 2, 0, 3\]"
    ):
        wkv7(args[0], w, *args[2:], backend=backend)
    r, wt, k, v, a, b, state = (x.float() for x in _step_args())
    wt = wt.clone()
    wt[0, 1, 2] = bad
    with torch.no_grad(), pytest.raises(ValueError, match=r"wkv7_step: w \(the log-decay\) must be <= 0"):
        wkv7_step(r, wt, k, v, a, b, state, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_and_minus_inf_decays_are_valid_everywhere(backend):
    args = [a.float() for a in _inputs(t=20)]
    w = args[1].clone()
    w[:, ::2] = 0.0
    w[:, 1::4] = -0.0
    w[:, 3::4] = -float("inf")
    y, s = wkv7(args[0], w, *args[2:], output_final_state=True, backend=backend)
    y_ref, s_ref = wkv7_ref(args[0].double(), w.double(), *[a.double() for a in args[2:]], True)
    assert rel_rms(y, y_ref) < 1e-5 and rel_rms(s, s_ref) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_vmap_runs_and_still_checks_w(backend):
    args = [a.float() for a in _inputs(t=5)]

    def one(*xs):
        return wkv7(*(x[None] for x in xs), backend=backend)[0][0]

    y = torch.func.vmap(one)(*args)
    y_ref, _ = wkv7_ref(*args)
    assert rel_rms(y, y_ref) < 1e-5
    bad = args[1].clone()
    bad[1, 1, 0, 1] = 0.5
    with pytest.raises(ValueError, match=r"wkv7: w \(the log-decay\)"):
        torch.func.vmap(one)(args[0], bad, *args[2:])


def test_fake_tensors_trace_without_the_w_check():
    from torch._subclasses.fake_tensor import FakeTensorMode

    args = [a.float() for a in _inputs(t=5)]
    with FakeTensorMode() as mode:
        fakes = [mode.from_tensor(a) for a in args]
        for backend in BACKENDS:
            y, _ = wkv7(*fakes, backend=backend)
            assert y.shape == args[0].shape
