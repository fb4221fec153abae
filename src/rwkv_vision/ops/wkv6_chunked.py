"""Chunked pure-PyTorch WKV6: the same recurrence as ``wkv6_ref`` with t / L sequential steps instead of t.

Letter legend: b batch, t time, h heads, n head size; L the chunk length, m the number of chunks.

Where no compiled kernel applies (no extension, an unsupported device or head size), ``wkv6`` runs this.
It is differentiable by autograd and works on any device torch supports.

Within a chunk of L steps, with A_t the cumulative log-decay from the chunk start up to and including
step t (A_{-1} = 0, every w <= 0 so A only falls) and S0 the state at the chunk start::

    y_t = (r_t * exp(A_{t-1})) S0                                   from the previous chunks: a matmul
        + sum_{s<t} [sum_j r_t[j] k_s[j] exp(A_{t-1}[j] - A_s[j])] v_s    within the chunk: an L x L matrix
        + (r_t . (u * k_t)) v_t                                     the current token's bonus
    S_end = exp(A_{L-1}) * S0 + (k * exp(A_{L-1} - A))^T v            the state handed to the next chunk

Every exponent above is <= 0, so nothing overflows whatever the decays. (The usual factorisation of the
within-chunk term into (r exp(A)) (k exp(-A))^T would put exp(-A) in the middle, which overflows float32
once the decay over a chunk passes e^-88; the within-chunk coefficients are therefore formed pair by
pair, one sub-diagonal of the L x L matrix at a time: L (L - 1) / 2 pairs of n channels per chunk, which
bounds L in practice to a few tens.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .cu_seqlens import seqlens_list

__all__ = ["wkv6_chunked", "DEFAULT_CHUNK"]


#: L when none is given: the fastest of 4, 8, 16, 32 on the CPU (docs/performance.md, "The pure-PyTorch
#: fallback"). Larger L means fewer sequential steps but L (L - 1) / 2 pair terms per chunk.
DEFAULT_CHUNK = 16


def _lower_triangular(diagonals: list[torch.Tensor], L: int, *, like: torch.Tensor) -> torch.Tensor:
    """[..., L, L] with diagonals[d - 1] ([..., L - d]) on sub-diagonal d and zeros on and above the diagonal."""
    batch = like.shape[:-2]
    if L == 1:
        return like.new_zeros(*batch, 1, 1)
    # Row t of the result holds, at column s < t, diagonal t - s at position s: lay the diagonals out as
    # [..., L - 1 (d), L (s)], zero-padded on the right, then gather.
    padded = torch.stack([F.pad(x, (0, d)) for d, x in enumerate(diagonals, 1)], dim=-2)
    steps = torch.arange(L, device=like.device)
    d = steps.view(L, 1) - steps.view(1, L)  # [L(t), L(s)]: the sub-diagonal of each entry
    valid = d > 0
    index = (d.clamp(min=1) - 1) * L + steps.view(1, L)  # entry (t, s) is element s of diagonal t - s
    flat = padded.flatten(-2)[..., index.flatten()].view(*batch, L, L)
    return flat * valid


def wkv6_chunked(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    *,
    chunk_size: int | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The WKV6 recurrence, chunk by chunk; the contract of ``wkv6_ref`` (same arguments and results).

    Args:
        r, k, v: [b, t, h, n]; w: [b, t, h, n] log-decay (w <= 0); u: [h, n];
        initial_state: [b, h, n, n] or None; output_final_state: also return the final state.
        chunk_size: L, steps per chunk (>= 1; None: ``DEFAULT_CHUNK``). Memory grows with L,
            sequential steps with t / L.
        cu_seqlens: optional [N + 1] offsets of N sequences packed into one row (b == 1;
            ops/cu_seqlens.py); initial and final states are then [N, h, n, n]. The sequences are laid
            out as a right-padded batch [N, longest, h, n] whose padded steps have k = 0 and w = 0 (they
            leave the state as it is), run together, and packed back.

    Returns:
        y [b, t, h, n] in the dtype of r, and the final state [b, h, n, n] float32 (float64 for float64
        inputs) or None.
    """
    if cu_seqlens is not None:
        return _packed(r, k, v, w, u, initial_state, output_final_state, chunk_size, cu_seqlens)
    if chunk_size is None:
        chunk_size = DEFAULT_CHUNK
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"wkv6_chunked: chunk_size must be a positive int, got {chunk_size!r}")
    out_dtype = r.dtype
    acc = torch.float64 if out_dtype == torch.float64 else torch.float32
    b, t, h, n = r.shape
    L = min(chunk_size, t)
    m = -(-t // L)
    pad = m * L - t

    def chunks(x: torch.Tensor) -> torch.Tensor:
        # [b, t, h, n] -> [b, h, m, L, n]; padded steps have r = k = v = 0 and w = 0 (no decay, no input),
        # so they change neither the outputs kept nor the final state.
        x = x.to(acc).transpose(1, 2)
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
        return x.reshape(b, h, m, L, n)

    rc, kc, vc, wc = chunks(r), chunks(k), chunks(v), chunks(w)
    u = u.to(acc)
    # Every log-decay sum below is a sum of w's (all <= 0) that is accumulated directly, never the
    # difference of two cumulative sums: A_{t-1} - A_s computed as a difference cancels, with an error
    # of about |A| * eps that turns e^0 into e^(+-ulp(A)) (1e-5 off at w = -30, inf * 0 = NaN at
    # w = -1e8) and -inf - -inf = NaN at w = -inf. Sums of non-positive numbers do not cancel, so each
    # factor exp(sum) carries a relative error of a few eps times |sum|, and exp(x) |x| <= 1/e.
    A_prev = F.pad(wc[..., :-1, :], (0, 0, 1, 0)).cumsum(dim=-2)  # [b, h, m, L, n]: A_{t-1}, A_{-1} = 0
    A_last = wc.sum(dim=-2, keepdim=True)  # [b, h, m, 1, n]: the whole chunk's log-decay
    # sum_{q>s} w_q = A_{L-1} - A_s, as a reverse cumulative sum shifted by one step.
    to_end = F.pad(wc[..., 1:, :].flip(-2).cumsum(dim=-2).flip(-2), (0, 0, 0, 1))

    # Within each chunk, all chunks at once, one diagonal of the L x L score matrix at a time: offset d
    # pairs step t with step s = t - d. Only the L (L - 1) / 2 pairs with s < t are formed. The exponent
    # of pair (t, s) is E_d[s] = w_{s+1} + ... + w_{t-1} (<= 0), built up diagonal by diagonal:
    # E_1 = 0 and E_{d+1}[s] = E_d[s + 1] + w_{s+1}.
    diagonals = []
    E = None
    for d in range(1, L):
        if d == 1:
            coef = None  # exp(0)
        else:
            E = wc[..., 1 : L - d + 1, :] if E is None else E[..., 1:, :] + wc[..., 1 : L - d + 1, :]
            coef = torch.exp(E)  # [b, h, m, L - d, n]
        pair = rc[..., d:, :] * kc[..., : L - d, :]
        diagonals.append((pair if coef is None else pair * coef).sum(-1))  # [b, h, m, L - d]
    scores = _lower_triangular(diagonals, L, like=rc)  # [b, h, m, L(t), L(s)]
    bonus = (rc * u.view(1, h, 1, 1, n) * kc).sum(-1, keepdim=True)  # [b, h, m, L, 1]
    y = scores @ vc + bonus * vc  # [b, h, m, L, n]

    # Across chunks: the state, one matmul pair per chunk.
    q_decayed = rc * torch.exp(A_prev)  # r_t exp(A_{t-1})
    k_to_end = kc * torch.exp(to_end)  # k_s exp(A_{L-1} - A_s)
    state_decay = torch.exp(A_last).transpose(-1, -2)  # [b, h, m, n, 1]
    state = initial_state.to(acc) if initial_state is not None else r.new_zeros(b, h, n, n, dtype=acc)
    carried = []
    for c in range(m):
        carried.append(q_decayed[:, :, c] @ state)  # [b, h, L, n]
        state = state_decay[:, :, c] * state + k_to_end[:, :, c].transpose(-1, -2) @ vc[:, :, c]
    y = y + torch.stack(carried, dim=2)
    y = y.reshape(b, h, m * L, n)[:, :, :t].transpose(1, 2).to(out_dtype)
    return y, (state if output_final_state else None)


def _packed(r, k, v, w, u, initial_state, output_final_state, chunk_size, cu_seqlens):
    """Packed sequences as a right-padded batch: gather, run, gather back (differentiable throughout)."""
    _, t, h, n = r.shape
    bounds = seqlens_list(cu_seqlens)
    lengths = torch.tensor([end - start for start, end in bounds], device=r.device)
    longest = max(1, int(lengths.max()))
    starts = torch.tensor([start for start, _ in bounds], device=r.device)
    steps = torch.arange(longest, device=r.device)
    real = steps.view(1, -1) < lengths.view(-1, 1)  # [N, longest]
    index = (starts.view(-1, 1) + steps.view(1, -1)).clamp(max=max(t - 1, 0))  # [N, longest]
    mask = real.view(*real.shape, 1, 1)

    def padded(x: torch.Tensor) -> torch.Tensor:
        return x[0][index] * mask.to(x.dtype)  # [N, longest, h, n]; zero on padded steps

    y, state = wkv6_chunked(
        padded(r),
        padded(k),
        padded(v),
        padded(w),
        u,
        initial_state,
        output_final_state,
        chunk_size=chunk_size,
    )
    return y[real].unsqueeze(0), state
