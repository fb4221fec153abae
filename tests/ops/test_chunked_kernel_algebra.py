"""The algebra of the chunked CUDA kernels (csrc/cuda/wkv6_chunked_cuda.cu), step for step in float64.

The CUDA kernels only run on a GPU; this checks on the CPU that the formulas they implement are right:
the chunk forward (Y = Rd S + P V, S' = E S + Kd^T V), the reverse chunk walk of the backward (dS, dV,
dRd, dKd, dP, dE, the pair sums of dr and dk, and dw as a reverse sum of r dr' and k dk' plus the
chunk-end term), and the time segments with their combine pass, in both directions. Each function
below mirrors one phase of the kernels, with the same names; autograd through ``wkv6_ref`` is the
judge.
"""

from __future__ import annotations

import pytest
import torch

from rwkv_vision.ops import wkv6_ref

from .wkv6_cases import NAMES, make_inputs, rel_rms

L = 16


def chunk_terms(r, k, w, u):
    """Per chunk [L, n] tiles: A (inclusive), A_prev, E = exp(A_last), Rd, Kd and P [L, L]."""
    A = w.cumsum(0)
    A_prev = A - w
    A_last = A[-1]
    Rd = r * torch.exp(A_prev)
    Kd = k * torch.exp(A_last - A)
    steps = torch.arange(r.shape[0])
    below = steps.view(-1, 1) > steps.view(1, -1)
    # P[t, s] = sum_j r_t k_s exp(A_prev_t - A_s) below the diagonal, pair by pair (exponents <= 0).
    x = A_prev.unsqueeze(1) - A.unsqueeze(0)  # [t, s, n]
    coef = torch.where(below.unsqueeze(-1), torch.exp(torch.where(below.unsqueeze(-1), x, 0.0)), 0.0)
    P = (r.unsqueeze(1) * k.unsqueeze(0) * coef).sum(-1)
    P = P + torch.diag((r * u * k).sum(-1))
    return A, A_prev, torch.exp(A_last), Rd, Kd, P, coef


def forward_chunks(r, k, v, w, u, S, t_begin, t_end):
    """One (b, h) over [t_begin, t_end): y, the final state and the state entering every chunk."""
    ys, states = [], []
    for t0 in range(t_begin, t_end, L):
        sl = slice(t0, min(t0 + L, t_end))
        pad = L - (sl.stop - sl.start)
        rc, kc, vc, wc = (torch.nn.functional.pad(x[sl], (0, 0, 0, pad)) for x in (r, k, v, w))
        _, _, E, Rd, Kd, P, _ = chunk_terms(rc, kc, wc, u)
        states.append(S.clone())
        ys.append((Rd @ S + P @ vc)[: L - pad])
        S = E.unsqueeze(1) * S + Kd.T @ vc
    return torch.cat(ys), S, states


def backward_chunks(r, k, v, w, u, dy, dS, states, t_begin, t_end):
    """The reverse chunk walk from dS (the gradient at t_end): dr, dk, dv, dw, du and dS at t_begin."""
    n = r.shape[1]
    dr, dk, dv, dw = (torch.zeros(t_end - t_begin, n, dtype=r.dtype) for _ in range(4))
    du = torch.zeros(n, dtype=r.dtype)
    chunk_starts = list(range(t_begin, t_end, L))
    for index in reversed(range(len(chunk_starts))):
        t0 = chunk_starts[index]
        sl = slice(t0, min(t0 + L, t_end))
        m = sl.stop - sl.start
        pad = L - m
        rc, kc, vc, wc, dyc = (torch.nn.functional.pad(x[sl], (0, 0, 0, pad)) for x in (r, k, v, w, dy))
        A, A_prev, E, Rd, Kd, P, coef = chunk_terms(rc, kc, wc, u)
        S = states[index]
        dE = (dS * S).sum(1)
        dV = P.T @ dyc + Kd @ dS
        dRd = dyc @ S.T
        dKd = vc @ dS.T
        dP = dyc @ vc.T
        below = torch.tril(dP, -1)
        drp = dRd * torch.exp(A_prev) + torch.einsum("ts,sj,tsj->tj", below, kc, coef)
        dkp = dKd * torch.exp(A[-1] - A) + torch.einsum("ts,tj,tsj->sj", below, rc, coef)
        diag = torch.diagonal(dP)
        du += (diag.unsqueeze(1) * rc * kc).sum(0)
        o = slice(t0 - t_begin, t0 - t_begin + m)
        dr[o] = (drp + diag.unsqueeze(1) * u * kc)[:m]
        dk[o] = (dkp + diag.unsqueeze(1) * u * rc)[:m]
        dv[o] = dV[:m]
        # dw_q = sum_{t > q} r_t dr'_t - sum_{t >= q} k_t dk'_t + sum_s Kd_s dKd_s + E dE
        d_last = (Kd * dKd).sum(0) + E * dE
        rdr, kdk = rc * drp, kc * dkp
        later_r = rdr.flip(0).cumsum(0).flip(0) - rdr
        from_k = kdk.flip(0).cumsum(0).flip(0)
        dw[o] = (later_r - from_k + d_last)[:m]
        dS = Rd.T @ dyc + E.unsqueeze(1) * dS
    return dr, dk, dv, dw, du, dS


def chunked_kernels(r, k, v, w, u, s0, dy, dsT, segments):
    """wkv6 forward and backward as the CUDA kernels compute them, for [t, h, n] inputs of one batch."""
    t, h, n = r.shape
    chunks = -(-t // L)
    seg_chunks = -(-chunks // segments)
    bounds = [(g * seg_chunks * L, min(t, (g + 1) * seg_chunks * L)) for g in range(-(-chunks // seg_chunks))]
    y = torch.empty_like(r)
    sT = torch.empty_like(s0)
    grads = {name: torch.empty_like(x) for name, x in (("r", r), ("k", k), ("v", v), ("w", w))}
    du = torch.zeros_like(u)
    ds0 = torch.empty_like(s0)
    for hh in range(h):
        x = [z[:, hh] for z in (r, k, v, w, dy)]
        uh = u[hh]
        # Forward, phase A: each segment but the last from a zero state; phase B chains them.
        starts = [s0[hh]]
        for t_begin, t_end in bounds[:-1]:
            _, local, _ = forward_chunks(*x[:4], uh, torch.zeros(n, n, dtype=r.dtype), t_begin, t_end)
            decay = torch.exp(x[3][t_begin:t_end].sum(0))
            starts.append(decay.unsqueeze(1) * starts[-1] + local)
        states = []
        for g, (t_begin, t_end) in enumerate(bounds):  # phase C
            y_seg, S_end, st = forward_chunks(*x[:4], uh, starts[g], t_begin, t_end)
            y[t_begin:t_end, hh] = y_seg
            states += st
        sT[hh] = S_end
        # Backward, phase A: each segment but the first from a zero end gradient; B chains them down.
        ends = [dsT[hh]]
        for g in reversed(range(1, len(bounds))):
            t_begin, t_end = bounds[g]
            seg_states = states[t_begin // L : -(-t_end // L)]
            *_, local = backward_chunks(*x[:4], uh, x[4], torch.zeros(n, n, dtype=r.dtype), seg_states, t_begin, t_end)
            decay = torch.exp(x[3][t_begin:t_end].sum(0))
            ends.insert(0, decay.unsqueeze(1) * ends[0] + local)
        for g, (t_begin, t_end) in enumerate(bounds):  # phase C
            seg_states = states[t_begin // L : -(-t_end // L)]
            out = backward_chunks(*x[:4], uh, x[4], ends[g], seg_states, t_begin, t_end)
            for name, grad in zip("rkvw", out[:4]):
                grads[name][t_begin:t_end, hh] = grad
            du[hh] += out[4]
            if g == 0:
                ds0[hh] = out[5]
    return y, sT, grads, du, ds0


@pytest.mark.parametrize("segments", [1, 2, 3, 5])
@pytest.mark.parametrize("t", [1, 16, 17, 40, 71])
def test_chunked_kernel_algebra_matches_autograd(t, segments):
    inputs = make_inputs(1, t, 2, 8, dtype=torch.float64, seed=t * 10 + segments)
    g = torch.Generator().manual_seed(3)
    dy = torch.randn(1, t, 2, 8, generator=g, dtype=torch.float64)
    dsT = torch.randn(1, 2, 8, 8, generator=g, dtype=torch.float64)

    leaves = {name: inputs[name].clone().requires_grad_(True) for name in NAMES}
    y_ref, s_ref = wkv6_ref(*[leaves[name] for name in NAMES], output_final_state=True)
    expected = torch.autograd.grad((y_ref * dy).sum() + (s_ref * dsT).sum(), [leaves[name] for name in NAMES])

    r, k, v, w = (inputs[name][0] for name in "rkvw")
    y, sT, grads, du, ds0 = chunked_kernels(
        r, k, v, w, inputs["u"], inputs["initial_state"][0], dy[0], dsT[0], segments
    )
    assert rel_rms(y, y_ref[0]) < 1e-12 and rel_rms(sT, s_ref[0]) < 1e-12
    actual = [grads["r"], grads["k"], grads["v"], grads["w"], du, ds0]
    for name, a, e in zip(NAMES, actual, expected):
        e = e[0] if name not in ("u",) else e
        assert rel_rms(a, e) < 1e-12, name
