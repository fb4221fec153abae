"""Inputs and comparisons shared by the tests of the compiled WKV7 ops (tests/ops/test_wkv7_kernel.py on the CPU,
tests/ops/test_wkv7_cuda.py on a GPU).

Letter legend: b batch, t time, h heads, n head size.
"""

from __future__ import annotations

import math

import torch

from rwkv_vision.ops.wkv7_kernel import kernel_ops7
from rwkv_vision.ops.wkv7_ref import wkv7_ref

NAMES = ("r", "w", "k", "v", "a", "b", "initial_state")
W_MIN = -math.exp(-0.5)  # an RWKV-7 layer's log-decays lie in [W_MIN, 0)
NOT_PACKED = torch.empty(0, dtype=torch.int64)


def make_inputs(b, t, h, n, *, dtype=torch.float32, seed=0, states=None, delta_rule=True, device="cpu"):
    """Random inputs, never zero. ``delta_rule``: a = -kk, b = kk * iclr as an RWKV-7 layer makes them (kk of
    unit norm, iclr in (0, 1)); else a, b independent Gaussians (a bounded, not contracting, update)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    acc = torch.float64 if dtype == torch.float64 else torch.float32
    if delta_rule:
        kk = torch.nn.functional.normalize(rnd(b, t, h, n), dim=-1)
        a_, b_ = -kk, kk * (torch.rand(b, t, h, n, generator=g, dtype=torch.float64) * 0.98 + 0.01)
    else:
        a_, b_ = rnd(b, t, h, n, scale=0.3 / math.sqrt(n)), rnd(b, t, h, n, scale=0.3)
    inputs = {
        "r": rnd(b, t, h, n),
        "w": W_MIN * (torch.rand(b, t, h, n, generator=g, dtype=torch.float64) * 0.999 + 0.001),
        "k": rnd(b, t, h, n, scale=0.5),
        "v": rnd(b, t, h, n),
        "a": a_,
        "b": b_,
        "initial_state": rnd(b if states is None else states, h, n, n),
    }
    return {key: x.to(device, acc if key in ("w", "initial_state") else dtype) for key, x in inputs.items()}


def kernel(r, w, k, v, a, b, initial_state, output_final_state=True, cu_seqlens=None):
    """The op with wkv7_ref's signature."""
    offsets = NOT_PACKED.to(r.device) if cu_seqlens is None else cu_seqlens.to(r.device)
    return kernel_ops7().wkv7_forward(r, w, k, v, a, b, initial_state, offsets)


def rel_rms(actual, expected):
    actual, expected = actual.double().cpu(), expected.double().cpu()
    assert torch.isfinite(actual).all(), "non-finite values (an unwritten output is NaN-poisoned)"
    return ((actual - expected).pow(2).mean().sqrt() / expected.pow(2).mean().sqrt().clamp_min(1e-30)).item()


def run_with_grads(fn, inputs, cu_seqlens=None, seed=1, state_loss=True):
    leaves = {k: x.detach().clone().requires_grad_(True) for k, x in inputs.items()}
    y, s = fn(*[leaves[k] for k in NAMES], True, cu_seqlens)
    g = torch.Generator().manual_seed(seed)
    loss = (y * torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.device, y.dtype)).sum(dtype=torch.float64)
    if state_loss:
        loss = loss + (s * torch.randn(s.shape, generator=g, dtype=torch.float64).to(s.device, s.dtype)).sum(
            dtype=torch.float64
        )
    grads = torch.autograd.grad(loss, [leaves[k] for k in NAMES])
    return {"y": y.detach(), "final_state": s.detach(), **{f"d{k}": gr for k, gr in zip(NAMES, grads)}}


def errors_against_float64(inputs, cu_seqlens=None, state_loss=True):
    got = run_with_grads(kernel, inputs, cu_seqlens, state_loss=state_loss)
    as64 = {k: x.double().cpu() for k, x in inputs.items()}
    cu = None if cu_seqlens is None else cu_seqlens.cpu()
    expected = run_with_grads(wkv7_ref, as64, cu, state_loss=state_loss)
    for k in NAMES:
        assert got[f"d{k}"].dtype == inputs[k].dtype, k
    return {name: rel_rms(got[name], expected[name]) for name in got}


def assert_below(errors, tol):
    bad = {k: e for k, e in errors.items() if not e < tol}
    assert not bad, f"relative RMS error above {tol}: {bad}"
