"""Honest autodiff and invalid decays, for every backend of wkv6 and for wkv6_step.

Forward-mode AD (torch.func.jvp, jacfwd, torch.autograd.forward_ad) and double backward either give the
right values (checked against finite differences and the float64 reference) or raise an error that says
they are not supported; never silent zeros. A log-decay w > 0 or NaN is rejected the same way by every
backend on the CPU (docs/ops.md, "Invalid decays")."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD

from rwkv_vision.ops import has_extension, wkv6, wkv6_ref, wkv6_step

from .wkv6_cases import NAMES, make_inputs, rel_rms

BACKENDS = ["kernel", "auto", "chunked", "reference"]


def _backends():
    return [b for b in BACKENDS if has_extension() or b not in ("kernel",)]


def _inputs(t=5, n=8, seed=0):
    inputs = make_inputs(2, t, 2, n, dtype=torch.float64, seed=seed)
    return [inputs[k] for k in NAMES]


def _f(backend):
    """All six inputs -> (y, final_state), through wkv6 with ``backend``."""
    return lambda *a: wkv6(*a, output_final_state=True, backend=backend)


def _finite_difference_jvp(f, args, tangents, eps=1e-6):
    plus = f(*[a + eps * d for a, d in zip(args, tangents)])
    minus = f(*[a - eps * d for a, d in zip(args, tangents)])
    return tuple((p - m) / (2 * eps) for p, m in zip(plus, minus))


def _tangents(args, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(a.shape, generator=g, dtype=a.dtype) for a in args]


@pytest.mark.parametrize("backend", ["auto", "chunked", "reference"])
def test_jvp_matches_finite_differences(backend):
    args = _inputs(t=7)
    tangents = _tangents(args)
    (y, s), (dy, ds) = torch.func.jvp(_f(backend), tuple(args), tuple(tangents))
    fd_y, fd_s = _finite_difference_jvp(_f("reference"), args, tangents)
    assert rel_rms(dy, fd_y) < 1e-6 and rel_rms(ds, fd_s) < 1e-6
    assert dy.abs().sum() > 0


@pytest.mark.parametrize("backend", ["auto", "chunked", "reference"])
def test_jacfwd_equals_jacrev_of_the_reference(backend):
    args = _inputs(t=3, n=4)
    jf = torch.func.jacfwd(lambda w: wkv6(args[0], args[1], args[2], w, *args[4:], backend=backend)[0])(args[3])
    jr = torch.autograd.functional.jacobian(lambda w: wkv6_ref(*args[:3], w, *args[4:])[0], args[3])
    assert rel_rms(jf, jr) < 1e-10


@pytest.mark.parametrize("backend", ["auto", "chunked", "reference"])
def test_forward_ad_dual_tensors(backend):
    args = _inputs(t=6)
    tangents = _tangents(args, seed=5)
    with fwAD.dual_level():
        duals = [fwAD.make_dual(a, d) for a, d in zip(args, tangents)]
        y, s = _f(backend)(*duals)
        dy, ds = fwAD.unpack_dual(y).tangent, fwAD.unpack_dual(s).tangent
    fd_y, fd_s = _finite_difference_jvp(_f("reference"), args, tangents)
    assert rel_rms(dy, fd_y) < 1e-6 and rel_rms(ds, fd_s) < 1e-6


@pytest.mark.skipif(not has_extension(), reason="compiled extension not built")
def test_forward_ad_through_an_explicit_kernel_is_refused():
    args = _inputs()
    with pytest.raises(ValueError, match="forward-mode AD .* not supported by the compiled kernels"):
        torch.func.jvp(_f("kernel"), tuple(args), tuple(_tangents(args)))
    with pytest.raises(ValueError, match="torch.func gradient transforms .* not supported"):
        torch.func.grad(lambda r: wkv6(r, *args[1:], backend="kernel")[0].sum())(args[0])


@pytest.mark.parametrize("backend", _backends())
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


@pytest.mark.parametrize("backend", _backends())
def test_gradgradcheck(backend):
    args = [a.clone().requires_grad_(True) for a in _inputs(t=3, n=3, seed=2)]
    assert torch.autograd.gradgradcheck(_f(backend), args)


@pytest.mark.skipif(not has_extension(), reason="compiled extension not built")
def test_double_backward_in_float32_through_the_kernel():
    inputs = make_inputs(1, 17, 2, 8, seed=4)
    args = [inputs[k] for k in NAMES]

    def second(fn, dtype):
        leaves = [a.to(dtype).clone().requires_grad_(True) for a in args]
        y, s = fn(*leaves)
        (gw,) = torch.autograd.grad((y**2).sum() + s.sum(), leaves[3], create_graph=True)
        return torch.autograd.grad(gw.sum(), leaves)

    got, expected = second(_f("kernel"), torch.float32), second(_f("reference"), torch.float64)
    for name, a, b in zip(NAMES, got, expected):
        assert rel_rms(a, b) < 1e-4, name


def _step_args(dtype=torch.float64):
    args = _inputs(t=1)
    r, k, v, w = (x[:, 0] for x in args[:4])
    return r, k, v, w, args[4], args[5].clone()


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_wkv6_step_refuses_forward_ad_and_func_transforms(backend):
    r, k, v, w, u, state = _step_args()
    step = lambda r: wkv6_step(r, k, v, w, u, state.clone(), backend=backend)  # noqa: E731
    with pytest.raises(RuntimeError, match="wkv6_step: .*forward-mode AD .* not supported"):
        torch.func.jvp(step, (r,), (torch.ones_like(r),))
    with pytest.raises(RuntimeError, match="wkv6_step: .*not supported"):
        torch.func.jacfwd(step)(r)
    with pytest.raises(RuntimeError, match="wkv6_step: is for decoding and has no gradient"):
        torch.func.grad(lambda r: step(r).sum())(r)
    with fwAD.dual_level(), pytest.raises(RuntimeError, match="wkv6_step: .*forward-mode AD"):
        step(fwAD.make_dual(r, torch.ones_like(r)))
    with pytest.raises(RuntimeError, match="wkv6_step: is for decoding and has no gradient"):
        wkv6_step(r.requires_grad_(True), k, v, w, u, state, backend=backend)


@pytest.mark.parametrize("bad", [1e-3, 5.0, 100.0, float("inf"), float("nan")], ids=str)
@pytest.mark.parametrize("backend", _backends())
def test_invalid_decay_is_rejected_by_every_backend(backend, bad):
    args = [a.float() for a in _inputs()]
    w = args[3].clone()
    w[1, 2, 0, 3] = bad
    with pytest.raises(
        ValueError, match=r"wkv6: w \(the log-decay\) must be <= 0 and not NaN.*1 invalid.*w\[1, 2, 0, 3\]"
    ):
        wkv6(*args[:3], w, *args[4:], backend=backend)
    r, k, v, wt, u, state = (x.float() for x in _step_args())
    wt = wt.clone()
    wt[0, 1, 2] = bad
    step_backend = "reference" if backend == "chunked" else backend
    with torch.no_grad(), pytest.raises(ValueError, match=r"wkv6_step: w \(the log-decay\) must be <= 0"):
        wkv6_step(r, k, v, wt, u, state, backend=step_backend)


@pytest.mark.parametrize("backend", _backends())
def test_zero_and_minus_inf_decays_are_valid_everywhere(backend):
    args = [a.float() for a in _inputs(t=20)]
    w = args[3].clone()
    w[:, ::2] = 0.0
    w[:, 1::4] = -0.0
    w[:, 3::4] = -float("inf")
    y, s = wkv6(*args[:3], w, *args[4:], output_final_state=True, backend=backend)
    y_ref, s_ref = wkv6_ref(*[a.double() for a in args[:3]], w.double(), *[a.double() for a in args[4:]], True)
    assert rel_rms(y, y_ref) < 1e-5 and rel_rms(s, s_ref) < 1e-5


@pytest.mark.parametrize("backend", _backends())
def test_vmap_runs_and_still_checks_w(backend):
    args = [a.float() for a in _inputs(t=5)]

    def one(r, k, v, w, s):
        return wkv6(r[None], k[None], v[None], w[None], args[4], s[None], backend=backend)[0][0]

    batched = [args[i] for i in (0, 1, 2, 3, 5)]
    y = torch.func.vmap(one)(*batched)
    y_ref, _ = wkv6_ref(*args)
    assert rel_rms(y, y_ref) < 1e-5
    bad = args[3].clone()
    bad[1, 1, 0, 1] = 0.5
    batched[3] = bad
    with pytest.raises(ValueError, match=r"wkv6: w \(the log-decay\)"):
        torch.func.vmap(one)(*batched)


def test_fake_tensors_trace_without_the_w_check():
    from torch._subclasses.fake_tensor import FakeTensorMode

    args = [a.float() for a in _inputs(t=5)]
    with FakeTensorMode() as mode:
        fakes = [mode.from_tensor(a) for a in args]
        for backend in _backends():
            y, _ = wkv6(*fakes, backend=backend)
            assert y.shape == args[0].shape
