"""Inputs and comparisons shared by the CPU and CUDA tests of wkv6."""

from __future__ import annotations

import torch

from rwkv_vision.ops import wkv6_ref

NAMES = ("r", "k", "v", "w", "u", "initial_state")


def make_inputs(b, t, h, n, *, dtype=torch.float32, device="cpu", with_state=True, seed=0):
    """Random inputs, never zero, with decays spread over (0, 1) from ~1e-9 (strong) to ~0.9997 (weak)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device)

    acc = torch.float64 if dtype == torch.float64 else torch.float32
    log_neg_w = torch.empty(b, t, h, n, dtype=torch.float64).uniform_(-8.0, 3.0, generator=g)
    inputs = {
        "r": rnd(b, t, h, n).to(dtype),
        "k": rnd(b, t, h, n, scale=0.5).to(dtype),
        "v": rnd(b, t, h, n).to(dtype),
        "w": (-torch.exp(log_neg_w)).to(device=device, dtype=acc),
        "u": rnd(h, n, scale=0.5).to(acc),
        "initial_state": rnd(b, h, n, n).to(acc) if with_state else None,
    }
    return inputs


def rel_rms(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double().cpu(), expected.double().cpu()
    assert torch.isfinite(actual).all(), "non-finite values (an unwritten output is NaN-poisoned)"
    return ((actual - expected).pow(2).mean().sqrt() / expected.pow(2).mean().sqrt().clamp_min(1e-30)).item()


def run_with_grads(fn, inputs, *, state_loss=True, seed=1):
    """Output, final state and gradients of every input for a random loss on y (and final_state)."""
    leaves = {k: (x.detach().clone().requires_grad_(True) if x is not None else None) for k, x in inputs.items()}
    y, s = fn(*[leaves[k] for k in NAMES], output_final_state=True)
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
    as64 = {k: (x.detach().double() if x is not None else None) for k, x in inputs.items()}
    return run_with_grads(wkv6_ref, as64, **kw)


def assert_matches_reference(fn, inputs, tol, *, state_loss=True):
    y, s, grads = run_with_grads(fn, inputs, state_loss=state_loss)
    y_ref, s_ref, grads_ref = reference_float64(inputs, state_loss=state_loss)
    errors = {"y": rel_rms(y, y_ref), "final_state": rel_rms(s, s_ref)}
    errors.update({f"d{k}": rel_rms(grads[k], grads_ref[k]) for k in grads})
    bad = {k: e for k, e in errors.items() if not e < tol}
    assert not bad, f"relative RMS error above {tol}: {bad}"
    for k, grad in grads.items():
        assert grad.dtype == inputs[k].dtype, f"d{k} has dtype {grad.dtype}, expected {inputs[k].dtype}"
    return errors


def in_two_segments(run, split):
    """``run`` over [0, split) then [split, t) with the state carried, as one call with run's signature."""

    def call(r, k, v, w, u, s0, output_final_state):
        y1, s1 = run(r[:, :split], k[:, :split], v[:, :split], w[:, :split], u, s0, output_final_state=True)
        y2, s2 = run(r[:, split:], k[:, split:], v[:, split:], w[:, split:], u, s1, output_final_state=True)
        return torch.cat([y1, y2], dim=1), s2

    return call
