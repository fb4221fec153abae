"""Inputs and comparisons shared by the tests of wkv7 (every backend) and wkv7_step."""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch

from rwkv_vision.ops import wkv7_ref

#: The module of the dispatcher (``rwkv_vision.ops.wkv7`` is the function).
dispatch7 = sys.modules["rwkv_vision.ops.wkv7"]
HAS_KERNEL = dispatch7.kernel_ops7() is not None
#: With RWKV_VISION_REQUIRE_EXTENSION=1 a missing kernel is a failure, not a skip: the kernel tests run
#: and fail on "no kernel applies".
KERNEL_REQUIRED = os.environ.get("RWKV_VISION_REQUIRE_EXTENSION") == "1"
kernel = pytest.mark.skipif(
    not (HAS_KERNEL or KERNEL_REQUIRED), reason="no compiled wkv7 kernel in this build (ops/wkv7_kernel.py)"
)
#: The backends a test of "every backend" runs: the compiled one where present (or required).
BACKENDS = (["kernel"] if HAS_KERNEL or KERNEL_REQUIRED else []) + ["auto", "chunked", "reference"]

NAMES = ("r", "w", "k", "v", "a", "b", "initial_state")
#: The log-decays an RWKV-7 layer produces: w = -exp(-0.5) sigmoid(d), so exp(-e^-0.5) <= decay < 1.
W_MIN = -math.exp(-0.5)


def make_inputs(b, t, h, n, *, dtype=torch.float32, device="cpu", with_state=True, seed=0, states=None, w_low=W_MIN):
    """Random inputs, never zero, shaped as an RWKV-7 layer makes them: a = -kk, b = kk * iclr with kk of
    unit norm per head and iclr in (0, 1), log-decays uniform in (w_low, 0). ``states``: the number of
    initial states (default b; N with cu_seqlens)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    acc = torch.float64 if dtype == torch.float64 else torch.float32
    kk = torch.nn.functional.normalize(rnd(b, t, h, n), dim=-1)
    iclr = torch.rand(b, t, h, n, generator=g, dtype=torch.float64) * 0.98 + 0.01
    w = w_low * (torch.rand(b, t, h, n, generator=g, dtype=torch.float64) * 0.999 + 0.001)
    inputs = {
        "r": rnd(b, t, h, n),
        "w": w,
        "k": rnd(b, t, h, n, scale=0.5),
        "v": rnd(b, t, h, n),
        "a": -kk,
        "b": kk * iclr,
        "initial_state": rnd(b if states is None else states, h, n, n) if with_state else None,
    }
    return {
        key: (None if x is None else x.to(device=device, dtype=acc if key in ("w", "initial_state") else dtype))
        for key, x in inputs.items()
    }


def with_decay(inputs, value):
    """The inputs with every log-decay set to ``value``."""
    out = dict(inputs)
    out["w"] = torch.full_like(inputs["w"], value)
    return out


def rel_rms(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double().cpu(), expected.double().cpu()
    assert torch.isfinite(actual).all(), "non-finite values (an unwritten output is NaN-poisoned)"
    return ((actual - expected).pow(2).mean().sqrt() / expected.pow(2).mean().sqrt().clamp_min(1e-30)).item()


def run_with_grads(fn, inputs, *, state_loss=True, seed=1, **kw):
    """Output, final state and gradients of every input for a random loss on y (and final_state)."""
    leaves = {k: (x.detach().clone().requires_grad_(True) if x is not None else None) for k, x in inputs.items()}
    y, s = fn(*[leaves[k] for k in NAMES], output_final_state=True, **kw)
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.device, y.dtype)
    loss = (y * gy).sum(dtype=torch.float64)
    if state_loss:
        gs = torch.randn(s.shape, generator=g, dtype=torch.float64).to(s.device, s.dtype)
        loss = loss + (s * gs).sum(dtype=torch.float64)
    present = [k for k in NAMES if leaves[k] is not None]
    grads = torch.autograd.grad(loss, [leaves[k] for k in present])
    return y.detach(), s.detach(), dict(zip(present, grads))


def reference_float64(inputs, **kw):
    as64 = {k: (x.detach().double().cpu() if x is not None else None) for k, x in inputs.items()}
    return run_with_grads(wkv7_ref, as64, **kw)


def assert_matches_reference(fn, inputs, tol, *, state_loss=True, **kw):
    """fn's y, final state and every gradient within relative RMS ``tol`` of the float64 loop's."""
    y, s, grads = run_with_grads(fn, inputs, state_loss=state_loss, **kw)
    y_ref, s_ref, grads_ref = reference_float64(inputs, state_loss=state_loss, **kw)
    errors = {"y": rel_rms(y, y_ref), "final_state": rel_rms(s, s_ref)}
    errors.update({f"d{k}": rel_rms(grads[k], grads_ref[k]) for k in grads})
    bad = {k: e for k, e in errors.items() if not e < tol}
    assert not bad, f"relative RMS error above {tol}: {bad}"
    for k, grad in grads.items():
        assert grad.dtype == inputs[k].dtype, f"d{k} has dtype {grad.dtype}, expected {inputs[k].dtype}"
    return errors


def general_low_rank(inputs, seed=0, scale=0.3):
    """The inputs with a and b drawn independently (not the layer's -kk, kk * iclr), small enough
    (|a . b| well under 1) that the recurrence stays bounded."""
    g = torch.Generator().manual_seed(seed)
    out = dict(inputs)
    n = inputs["a"].shape[-1]
    for key in ("a", "b"):
        x = torch.randn(inputs[key].shape, generator=g, dtype=torch.float64) * scale / n**0.5
        out[key] = x.to(inputs[key])
    return out


def in_two_segments(run, split):
    """``run`` over [0, split) then [split, t) with the state carried, as one call with run's signature."""

    def call(r, w, k, v, a, b, s0, output_final_state):
        first = [x[:, :split] for x in (r, w, k, v, a, b)]
        second = [x[:, split:] for x in (r, w, k, v, a, b)]
        y1, s1 = run(*first, s0, output_final_state=True)
        y2, s2 = run(*second, s1, output_final_state=True)
        return torch.cat([y1, y2], dim=1), s2

    return call
