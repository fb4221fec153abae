"""Pure-PyTorch reference of the RWKV-6 WKV recurrence.

Letter legend (used across the library): b batch, t time, h heads, n head size, c channels.

This is the oracle the kernels are tested against and the fallback wherever no kernel applies
(no compiled extension, an unsupported head size, a device without a kernel). It is a plain loop
over time, differentiable by autograd, written to be read rather than to be fast.
"""

from __future__ import annotations

import torch

from .cu_seqlens import seqlens_list

__all__ = ["wkv6_ref"]


def wkv6_ref(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    *,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The WKV6 recurrence, one time step at a time.

    Args:
        r, k, v: [b, t, h, n] receptance, key, value.
        w: [b, t, h, n] log of the per-step decay (w <= 0; the decay is exp(w)).
        u: [h, n] the bonus applied to the current token.
        initial_state: [b, h, n, n] state S[b, h, j, i] (j key channel, i value channel); zeros if None.
        output_final_state: also return the state after the last step.
        cu_seqlens: optional [N + 1] offsets of N sequences packed into one row (b == 1; ops/cu_seqlens.py):
            each sequence runs alone from its own initial state (initial_state [N, h, n, n]), and the
            final states are [N, h, n, n].

    Returns:
        y: [b, t, h, n] in the dtype of r.
        final_state: [b, h, n, n] float32 (float64 for float64 inputs), or None.

    Per batch and head: ``y_t[i] = sum_j r_t[j] (u[j] k_t[j] v_t[i] + S[j, i])``, then
    ``S[j, i] = exp(w_t[j]) S[j, i] + k_t[j] v_t[i]``. Arithmetic is float32 (float64 for float64 r).
    """
    if cu_seqlens is not None:
        return _packed(r, k, v, w, u, initial_state, output_final_state, cu_seqlens)
    out_dtype = r.dtype
    acc = torch.float64 if out_dtype == torch.float64 else torch.float32
    b, t, h, n = r.shape
    r, k, v, w = (x.to(acc) for x in (r, k, v, w))
    u = u.to(acc)
    if initial_state is None:
        state = r.new_zeros(b, h, n, n)
    else:
        state = initial_state.to(acc)
    ys = []
    for step in range(t):
        r_t, k_t, v_t, w_t = r[:, step], k[:, step], v[:, step], w[:, step]  # [b, h, n]
        kv = k_t.unsqueeze(-1) * v_t.unsqueeze(-2)  # [b, h, n(j), n(i)]
        y_t = torch.einsum("bhj,bhji->bhi", r_t, u.unsqueeze(-1) * kv + state)
        ys.append(y_t)
        state = torch.exp(w_t).unsqueeze(-1) * state + kv
    y = torch.stack(ys, dim=1).to(out_dtype)
    return y, (state if output_final_state else None)


def _packed(r, k, v, w, u, initial_state, output_final_state, cu_seqlens):
    """Each packed sequence through the plain loop alone, outputs concatenated, states stacked."""
    _, t, h, n = r.shape
    acc = torch.float64 if r.dtype == torch.float64 else torch.float32
    ys, states = [], []
    for i, (start, end) in enumerate(seqlens_list(cu_seqlens)):
        if initial_state is None:
            s0 = r.new_zeros(1, h, n, n, dtype=acc)
        else:
            s0 = initial_state[i : i + 1].to(acc)
        if end == start:  # an empty sequence hands its initial state straight back
            states.append(s0)
            continue
        span = slice(start, end)
        y, s = wkv6_ref(r[:, span], k[:, span], v[:, span], w[:, span], u, s0, output_final_state=True)
        ys.append(y)
        states.append(s)
    y = torch.cat(ys, dim=1) if ys else r.new_zeros(1, 0, h, n)
    return y, (torch.cat(states, dim=0) if output_final_state else None)
