"""Chunked pure-PyTorch WKV7: the recurrence of ``wkv7_ref`` with t / L sequential steps instead of t.

Letter legend: b batch, t time, h heads, n head size; L the chunk length, m the number of chunks.

Where no compiled kernel applies (no extension, an unsupported device or head size, forward-mode AD),
``wkv7`` runs this. It is differentiable by autograd (double backward included) and runs on any device.

Per batch and head the step is S_t = (D_t + b_t a_t^T) S_{t-1} + k_t v_t^T, y_t = S_t^T r_t, with
D_t = diag(exp(w_t)) and S[j, i] (j key channel, i value channel). Within a chunk, S0 the state at its
start, A_t the log-decay summed from the chunk start up to and including step t, and
u_s = a_s^T S_{s-1} the row the low-rank term reads (what the delta rule "removes")::

    S_t = exp(A_t) S0 + sum_{s<=t} exp(A_t - A_s) (b_s u_s^T + k_s v_s^T)         (exp(.) diagonal)
    u_s = (a_s exp(A_{s-1}))^T S0 + sum_{q<s} [a_s exp(A_{s-1} - A_q) . b_q] u_q
                                 + sum_{q<s} [a_s exp(A_{s-1} - A_q) . k_q] v_q

The second line is a unit lower-triangular L x L system for the u of the whole chunk (the WY / UT
representation of the product of the (D + b a^T) factors), solved for all chunks at once; only the part
that multiplies S0 waits for the previous chunk. So each chunk costs one small triangular solve and a
few matmuls in parallel, and two [L, n] x [n, n] matmuls in the sequential loop over chunks.

Decays: every factor is exp of a sum of w's (all <= 0) accumulated directly, never the difference of
two cumulative sums, and the pairwise sums are formed one sub-diagonal at a time (as in ``wkv6_chunked``):
the textbook factorisation (a exp(A)) (b exp(-A))^T overflows float32 once a chunk decays past e^-88
and turns w = -inf into inf * 0 = NaN, and a difference of cumulative sums carries an error of
|A| * eps in the exponent. So every valid log-decay, from -1e-6 to -inf, gives finite values and
gradients within float32 rounding of the float64 loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["wkv7_chunked", "DEFAULT_CHUNK"]

#: L when none is given. Larger L means fewer sequential steps but L (L - 1) / 2 pair terms per chunk.
DEFAULT_CHUNK = 16


def _lower_triangular(diagonals: list[torch.Tensor], L: int, c: int, *, like: torch.Tensor) -> torch.Tensor:
    """[..., L, L, c] with diagonals[d - 1] ([..., L - d, c]) on sub-diagonal d, zeros on and above the diagonal."""
    batch = like.shape[:-2]
    if L == 1:
        return like.new_zeros(*batch, 1, 1, c)
    # Row p of the result holds, at column q < p, element q of diagonal p - q: lay the diagonals out as
    # [..., L - 1 (d), L (q), c], zero-padded along q, then gather all L x L entries at once.
    padded = torch.stack([F.pad(x, (0, 0, 0, d)) for d, x in enumerate(diagonals, 1)], dim=-3)
    steps = torch.arange(L, device=like.device)
    d = steps.view(L, 1) - steps.view(1, L)  # [L(row), L(col)]: the sub-diagonal of each entry
    index = (d.clamp(min=1) - 1) * L + steps.view(1, L)
    flat = padded.flatten(-3, -2)[..., index.flatten(), :].view(*batch, L, L, c)
    return flat * (d > 0).unsqueeze(-1)


def _one_sequence(r, w, k, v, a, b, state, L):
    """y [bb, h, t, n] (accumulation dtype) and the final state, for unpacked [bb, h, t, n] inputs."""
    bb, h, t, n = r.shape
    L = min(L, t)
    m = -(-t // L)
    pad = m * L - t

    def chunks(x: torch.Tensor) -> torch.Tensor:
        # Padded steps have every input 0 and w = 0 (no decay): they leave the state as it is.
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
        return x.reshape(bb, h, m, L, n)

    rc, wc, kc, vc, ac, bc = (chunks(x) for x in (r, w, k, v, a, b))
    A = wc.cumsum(dim=-2)  # [.., L, n] A_t, a running sum of non-positive numbers (no cancellation)
    A_prev = F.pad(wc[..., :-1, :], (0, 0, 1, 0)).cumsum(dim=-2)  # A_{t-1}, A_{-1} = 0
    # A_{L-1} - A_s = sum_{q>s} w_q: a reverse cumulative sum shifted by one step.
    to_end = F.pad(wc[..., 1:, :].flip(-2).cumsum(dim=-2).flip(-2), (0, 0, 0, 1))
    A_last = wc.sum(dim=-2)  # [.., n] the whole chunk's log-decay
    r_dec = rc * torch.exp(wc)  # r_t exp(w_t): pair (t, s < t) then needs exp(w_{s+1} + ... + w_{t-1}) only

    # Pairs (row p, column q < p) of the chunk, one sub-diagonal d = p - q at a time. Their exponent
    # E_d[q] = w_{q+1} + ... + w_{p-1} (<= 0) is built up diagonal by diagonal: E_1 = 0 and
    # E_{d+1}[q] = E_d[q + 1] + w_{q+1}. Rows are a_p (for the solve) and r_p exp(w_p) (for y); columns
    # are b_q and k_q: four dot products per pair, one broadcast product summed over n (a batch of tiny
    # matmuls is much slower, backward above all).
    rows = torch.stack((ac, r_dec), dim=-2).unsqueeze(-2)  # [.., L, 2, 1, n]
    cols = torch.stack((bc, kc), dim=-2).unsqueeze(-3)  # [.., L, 1, 2, n]
    diagonals = []
    E = None
    for d in range(1, L):
        row, col = rows[..., d:, :, :, :], cols[..., : L - d, :, :, :]
        if d > 1:
            E = wc[..., 1 : L - d + 1, :] if E is None else E[..., 1:, :] + wc[..., 1 : L - d + 1, :]
            row = row * torch.exp(E)[..., None, None, :]
        diagonals.append((row * col).sum(-1))  # [.., L - d, 2, 2]
    pairs = _lower_triangular([x.flatten(-2) for x in diagonals], L, 4, like=rc)  # [.., L, L, 4]
    # Strictly lower: a_p exp(A_{p-1} - A_q) . b_q and . k_q (the solve), r_p exp(A_p - A_q) . b_q and . k_q (y).
    T_ab, T_ak, R_b, R_k = pairs.unbind(-1)
    # The diagonal of the output's pair terms: step t reads its own update with no decay in between.
    R_b = R_b + torch.diag_embed((rc * bc).sum(-1))
    R_k = R_k + torch.diag_embed((rc * kc).sum(-1))

    # (I - T_ab) u = X S0 + T_ak v with X = a exp(A_{p-1}): solved for both right-hand sides at once.
    eye = torch.eye(L, dtype=rc.dtype, device=rc.device)
    X = ac * torch.exp(A_prev)  # [.., L, n]
    solved = torch.linalg.solve_triangular(
        eye - T_ab, torch.cat((X, T_ak @ vc), dim=-1), upper=False, unitriangular=True
    )
    W_x, U_0 = solved[..., :n], solved[..., n:]  # u = W_x S0 + U_0

    # y = r exp(A) S0 + R_b u + R_k v = Q S0 + Y_0;  S_end = exp(A_{L-1}) S0 + B~^T u + K~^T v.
    Q = rc * torch.exp(A) + R_b @ W_x  # [.., L, n]
    Y_0 = R_b @ U_0 + R_k @ vc  # [.., L, n]
    decay_to_end = torch.exp(to_end)
    B_end = (bc * decay_to_end).transpose(-1, -2)  # [.., n, L]
    H = B_end @ U_0 + (kc * decay_to_end).transpose(-1, -2) @ vc  # [.., n, n]
    G = torch.exp(A_last).unsqueeze(-1)  # [.., n, 1]

    # unbind, not indexing, per chunk: the backward of m selections would zero-fill m full-size gradients.
    per_chunk = zip(*(x.unbind(dim=2) for x in (Y_0, Q, G, B_end, W_x, H)))
    ys = []
    for y_0, q, g, b_end, w_x, h_c in per_chunk:
        ys.append(y_0 + q @ state)
        state = g * state + b_end @ (w_x @ state) + h_c
    y = torch.stack(ys, dim=2).reshape(bb, h, m * L, n)[:, :, :t]
    return y, state


def wkv7_chunked(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    *,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The WKV7 recurrence, chunk by chunk; the contract of ``wkv7_ref`` (same arguments and results).

    Args:
        r, w, k, v, a, b: [b, t, h, n]; w is the log-decay (w <= 0).
        initial_state: [b, h, n, n] (or [N, h, n, n] with ``cu_seqlens``) or None (zeros).
        output_final_state: also return the state after the last step (of every sequence).
        cu_seqlens: optional [N + 1] integer offsets of N sequences packed along t (b = 1); each runs
            alone, its state restarting from its own initial state. An empty sequence passes its state on.
        chunk_size: L, steps per chunk (>= 1; None: ``DEFAULT_CHUNK``).

    Returns:
        y [b, t, h, n] in the dtype of r, and the final state [b, h, n, n] (or [N, h, n, n]) float32
        (float64 for float64 inputs), or None.

    Arguments are not checked here (``rwkv_vision.ops.wkv7`` does that).
    """
    if chunk_size is None:
        chunk_size = DEFAULT_CHUNK
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"wkv7_chunked: chunk_size must be a positive int, got {chunk_size!r}")
    out_dtype = r.dtype
    acc = torch.float64 if out_dtype == torch.float64 else torch.float32
    bsz, t, h, n = r.shape
    # [b, t, h, n] -> [b, h, t, n] in the accumulation dtype (.to and .transpose are differentiable).
    r_, w_, k_, v_, a_, b_ = (x.to(acc).transpose(1, 2) for x in (r, w, k, v, a, b))
    if cu_seqlens is None:
        s0 = r_.new_zeros(bsz, h, n, n) if initial_state is None else initial_state.to(acc)
        y, state = _one_sequence(r_, w_, k_, v_, a_, b_, s0, chunk_size) if t else (r_, s0)
        return y.transpose(1, 2).to(out_dtype), (state if output_final_state else None)

    bounds = [int(x) for x in cu_seqlens.tolist()]
    ys, finals = [], []
    for i, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        s0 = r_.new_zeros(1, h, n, n) if initial_state is None else initial_state[i : i + 1].to(acc)
        if end > start:
            parts = [x[:, :, start:end] for x in (r_, w_, k_, v_, a_, b_)]
            y_i, s_i = _one_sequence(*parts, s0, chunk_size)
            ys.append(y_i)
        else:  # an empty sequence: no output, its state passes through
            s_i = s0
        finals.append(s_i)
    y = torch.cat(ys, dim=2) if ys else r_[:, :, :0]
    return y.transpose(1, 2).to(out_dtype), (torch.cat(finals, dim=0) if output_final_state else None)
