"""Pure-PyTorch reference of the RWKV-7 WKV recurrence (the generalised delta rule).

Letter legend (used across the library): b batch, t time, h heads, n head size, c channels.

The oracle every other WKV7 backend is tested against: a plain loop over time, differentiable by
autograd, written to be read rather than to be fast.
"""

from __future__ import annotations

import torch

__all__ = ["wkv7_ref"]


def wkv7_ref(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The WKV7 recurrence, one time step at a time.

    Args:
        r, k, v, a, b: [b, t, h, n] receptance, key, value and the two vectors of the low-rank update.
        w: [b, t, h, n] log of the per-step decay (w <= 0; the decay is exp(w)).
        initial_state: [b, h, n, n] (or [N, h, n, n] with ``cu_seqlens``) state S[j, i]
            (j key channel, i value channel); zeros if None.
        output_final_state: also return the state after the last step (of every sequence).
        cu_seqlens: optional [N + 1] integer offsets of N packed sequences along t (b must be 1); the
            state restarts at each boundary.

    Returns:
        y: [b, t, h, n] in the dtype of r.
        final_state: [b, h, n, n] (or [N, h, n, n]) float32 (float64 for float64 inputs), or None.

    Per batch and head, with the state S[j, i] the transpose of the official [V, K] one::

        S[j, i] = exp(w_t[j]) S[j, i] + b_t[j] sum_j' a_t[j'] S[j', i] + k_t[j] v_t[i]
        y_t[i]  = sum_j r_t[j] S[j, i]        (read after the update)

    An RWKV-7 layer passes a = -kk and b = kk * iclr (kk the normalised key, iclr the in-context
    learning rate). Arithmetic is float32 (float64 for float64 r).
    """
    if cu_seqlens is not None:
        bounds = [int(x) for x in cu_seqlens.tolist()]
        ys, finals = [], []
        for i, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
            s0 = None if initial_state is None else initial_state[i : i + 1]
            parts = [x[:, start:end] for x in (r, w, k, v, a, b)]
            if end > start:
                y_i, s_i = wkv7_ref(*parts, s0, True)
            else:  # an empty sequence: no output, its state passes through
                y_i = r[:, start:end]
                s_i = r.new_zeros(1, *r.shape[2:], r.shape[-1]) if s0 is None else s0
                s_i = s_i.to(torch.float64 if r.dtype == torch.float64 else torch.float32)
            ys.append(y_i)
            finals.append(s_i)
        y = torch.cat(ys, dim=1)
        return y, (torch.cat(finals, dim=0) if output_final_state else None)

    out_dtype = r.dtype
    acc = torch.float64 if out_dtype == torch.float64 else torch.float32
    bsz, t, h, n = r.shape
    r, w, k, v, a, b = (x.to(acc) for x in (r, w, k, v, a, b))
    state = r.new_zeros(bsz, h, n, n) if initial_state is None else initial_state.to(acc)
    ys = []
    for step in range(t):
        r_t, w_t, k_t, v_t, a_t, b_t = (x[:, step] for x in (r, w, k, v, a, b))  # [b, h, n]
        sa = torch.einsum("bhj,bhji->bhi", a_t, state)  # [b, h, n(i)]
        state = (
            torch.exp(w_t).unsqueeze(-1) * state
            + b_t.unsqueeze(-1) * sa.unsqueeze(-2)
            + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)
        )
        ys.append(torch.einsum("bhj,bhji->bhi", r_t, state))
    y = torch.stack(ys, dim=1).to(out_dtype) if t else r.new_empty(bsz, 0, h, n).to(out_dtype)
    return y, (state if output_final_state else None)
