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
two cumulative sums. The textbook factorisation (a exp(A)) (b exp(-A))^T overflows float32 once a chunk
decays past e^-88 and turns w = -inf into inf * 0 = NaN, and a difference of cumulative sums carries an
error of |A| * eps in the exponent. Instead the pair coefficients exp(A_{p-1} - A_q) are factored through
a step between q and p (``_pair_matrices``: the middle of the smallest power-of-two block holding both),
so both factors are exp of a non-positive direct sum, and each block's crossing pairs are still one
matmul. So every valid log-decay, from -1e-6 to -inf, gives finite values and gradients within float32
rounding of the float64 loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["wkv7_chunked", "DEFAULT_CHUNK"]

#: L when none is given (a power of two). Larger L means fewer sequential steps but L x L pair matrices.
DEFAULT_CHUNK = 16


def _pair_matrices(rows: torch.Tensor, cols: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The chunk's pair coefficients: [..., L, L, 4] holding, at row p and column q < p (zero elsewhere),
    the four dot products rows_p[i] . (cols_q[j] * exp(w_{q+1} + ... + w_{p-1})) for (i, j) in
    (0, 0), (0, 1), (1, 0), (1, 1). rows, cols: [..., L, 2, n]; w: [..., L, n]; L a power of two.

    Built bottom-up over blocks of 2, 4, ..., L steps. In a block of S steps, the pairs that cross its
    middle c (q < c <= p) factor through c: the exponent is sum_{s=c}^{p-1} w_s + sum_{s=q+1}^{c-1} w_s,
    two sums of non-positive numbers, so each factor is exp(<= 0) <= 1 and the block's crossing pairs are
    one [S, n] x [n, S] matmul; the pairs inside each half come from the level below.
    """
    batch, L, n = w.shape[:-2], w.shape[-2], w.shape[-1]
    pairs = w.new_zeros(*batch, L, 1, 1, 4)  # blocks of one step: no pair
    size = 1
    while size < L:
        half, size = size, 2 * size
        blocks = L // size
        w_halves = w.reshape(*batch, blocks, 2, half, n)
        # From the middle forward (exclusive: 0 at the middle) and from just before the middle back.
        after = F.pad(w_halves[..., 1, :-1, :], (0, 0, 1, 0)).cumsum(dim=-2)
        before = F.pad(w_halves[..., 0, 1:, :].flip(-2).cumsum(dim=-2).flip(-2), (0, 0, 0, 1))
        row = rows.reshape(*batch, blocks, 2, half, 2, n)[..., 1, :, :, :] * torch.exp(after).unsqueeze(-2)
        col = cols.reshape(*batch, blocks, 2, half, 2, n)[..., 0, :, :, :] * torch.exp(before).unsqueeze(-2)
        # [.., blocks, half (p) x 2 (i), n] @ [.., blocks, n, half (q) x 2 (j)] -> [.., blocks, half, half, 4]
        cross = row.flatten(-3, -2) @ col.flatten(-3, -2).transpose(-1, -2)
        cross = cross.view(*batch, blocks, half, 2, half, 2).transpose(-3, -2).flatten(-2)
        inner = pairs.reshape(*batch, blocks, 2, half, half, 4)
        top = torch.cat((inner[..., 0, :, :, :], torch.zeros_like(cross)), dim=-2)
        bottom = torch.cat((cross, inner[..., 1, :, :, :]), dim=-2)
        pairs = torch.cat((top, bottom), dim=-3)  # [.., blocks, size, size, 4]
    return pairs.reshape(*batch, L, L, 4)


def _one_sequence(r, w, k, v, a, b, state, L):
    """y [bb, h, t, n] (accumulation dtype) and the final state, for unpacked [bb, h, t, n] inputs."""
    bb, h, t, n = r.shape
    L = min(L, 1 << (t - 1).bit_length())  # a power of two, no longer than t needs
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

    # Rows a_p (for the solve) and r_p exp(w_p) (for y), columns b_q and k_q, with the decay between them.
    pairs = _pair_matrices(torch.stack((ac, r_dec), dim=-2), torch.stack((bc, kc), dim=-2), wc)  # [.., L, L, 4]
    # Strictly lower: a_p exp(A_{p-1} - A_q) . b_q and . k_q (the solve), r_p exp(A_p - A_q) . b_q and . k_q (y).
    T_ab, T_ak, R_b, R_k = pairs.unbind(-1)
    # The diagonal of the output's pair terms: step t reads its own update with no decay in between.
    R_b = R_b + torch.diag_embed((rc * bc).sum(-1))
    R_k = R_k + torch.diag_embed((rc * kc).sum(-1))

    # (I - T_ab) u = X S0 + T_ak v with X = a exp(A_{p-1}): solved for both right-hand sides at once.
    # (Products that share an operand are one matmul each: fewer, larger matmuls are faster on the CPU.)
    eye = torch.eye(L, dtype=rc.dtype, device=rc.device)
    X = ac * torch.exp(A_prev)  # [.., L, n]
    Tk_v, Rk_v = (torch.cat((T_ak, R_k), dim=-2) @ vc).split(L, dim=-2)  # T_ak v, R_k v: [.., L, n] each
    solved = torch.linalg.solve_triangular(eye - T_ab, torch.cat((X, Tk_v), dim=-1), upper=False, unitriangular=True)
    W_x, U_0 = solved[..., :n], solved[..., n:]  # u = W_x S0 + U_0

    # y = r exp(A) S0 + R_b u + R_k v = Q S0 + Y_0;  S_end = exp(A_{L-1}) S0 + B~^T u + K~^T v.
    Rb_Wx, Rb_U0 = (R_b @ solved).split(n, dim=-1)
    Q = rc * torch.exp(A) + Rb_Wx  # [.., L, n]
    Y_0 = Rb_U0 + Rk_v  # [.., L, n]
    decay_to_end = torch.exp(to_end)
    B_end, K_end = bc * decay_to_end, kc * decay_to_end  # b_s, k_s decayed to the chunk end: [.., L, n]
    H = torch.cat((B_end, K_end), dim=-2).transpose(-1, -2) @ torch.cat((U_0, vc), dim=-2)  # [.., n, n]
    B_end = B_end.transpose(-1, -2)  # [.., n, L]
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
        chunk_size: L, steps per chunk, a power of two (None: ``DEFAULT_CHUNK``).

    Returns:
        y [b, t, h, n] in the dtype of r, and the final state [b, h, n, n] (or [N, h, n, n]) float32
        (float64 for float64 inputs), or None.

    Arguments are not checked here (``rwkv_vision.ops.wkv7`` does that).
    """
    if chunk_size is None:
        chunk_size = DEFAULT_CHUNK
    if (
        not isinstance(chunk_size, int)
        or isinstance(chunk_size, bool)
        or chunk_size < 1
        or chunk_size & (chunk_size - 1)
    ):
        raise ValueError(f"wkv7_chunked: chunk_size must be a power of two (1, 2, 4, ...), got {chunk_size!r}")
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
