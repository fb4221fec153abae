"""``wkv7``: the RWKV-7 WKV recurrence (the generalised delta rule), on the compiled kernels where they apply.

Letter legend: b batch, t time, h heads, n head size.

Per batch and head, with a state S[j, i] (j key channel, i value channel; the transpose of the official
RNN's [V, K] state)::

    S[j, i] = exp(w_t[j]) S[j, i] + b_t[j] sum_j' a_t[j'] S[j', i] + k_t[j] v_t[i]
    y_t[i]  = sum_j r_t[j] S[j, i]

An RWKV-7 layer passes a = -kk, b = kk * iclr. Unlike wkv6, the output reads the state after the update.
"""

from __future__ import annotations

import torch

from .backends import default_backend
from .wkv7_ref import wkv7_ref

__all__ = ["wkv7", "WKV7_BACKENDS"]

# Skeleton: the dispatcher grows the "chunked" and compiled backends (docs/ops.md).
WKV7_BACKENDS = ("auto", "reference")


def wkv7(
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
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The RWKV-7 WKV recurrence over a whole sequence, with state in and out.

    Args:
        r, w, k, v, a, b: [b, t, h, n]; w is the log-decay (w <= 0).
        initial_state: optional [b, h, n, n] (or [N, h, n, n] with ``cu_seqlens``) float state.
        output_final_state: return the state after the last step (else None).
        cu_seqlens: optional [N + 1] offsets of N sequences packed along t (b = 1).
        backend: one of ``WKV7_BACKENDS`` (None: the process default).

    Returns:
        y: [b, t, h, n] in the dtype of r; final_state [b, h, n, n] (or [N, h, n, n]) float32
        (float64 for float64 inputs), or None.
    """
    backend = default_backend() if backend is None else backend
    return wkv7_ref(r, w, k, v, a, b, initial_state, output_final_state, cu_seqlens)
