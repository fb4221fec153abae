"""Token shift: each position sees the features of the token before it.

Letter legend: b batch, t time, c channels.

RWKV mixes every token with its predecessor (x_{t-1}) before its projections. At t = 0 the predecessor is
zeros, or the last token of the previous segment when a sequence is read in pieces; carrying that one
vector is what makes chunked reading equal to reading in one pass.

Two layouts of several sequences of different lengths keep each sequence's predecessors its own:

- packed (``cu_seqlens`` [N + 1], x [1, T, c]; ops/cu_seqlens.py): the first token of each sequence gets
  that sequence's state row (or zeros), never the previous sequence's last token;
- padded (``mask`` [b, t] bool, True for tokens): each row's tokens are one contiguous run, padded on the
  left, the right or both; a token whose predecessor is padding gets the state (or zeros), and the new
  state is the row's last real token (the state passed in, for a row of padding only).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TokenShift", "token_shift"]


def token_shift(
    x: torch.Tensor,
    state: torch.Tensor | None = None,
    *,
    cu_seqlens: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The previous token's features.

    Args:
        x: [b, t, c].
        state: [b, c] the token before x[:, 0] (zeros if None); [N, c] with ``cu_seqlens``.
        cu_seqlens: optional [N + 1] offsets of N sequences packed into one row (b == 1).
        mask: optional [b, t] bool, True for tokens, False for padding (one contiguous run of tokens per row).

    Returns:
        x_prev: [b, t, c] with x_prev[:, 0] = state and x_prev[:, s] = x[:, s - 1] (per sequence: see above).
        new_state: [b, c] = x[:, -1], the state for the next segment ([N, c]: each sequence's last token;
        with ``mask`` each row's last token).
    """
    if x.dim() != 3:
        raise ValueError(f"token_shift: x must be [b, t, c], got shape {tuple(x.shape)}")
    b, t, c = x.shape
    rows = b if cu_seqlens is None else cu_seqlens.numel() - 1
    if state is not None and state.shape != (rows, c):
        what = "[N, c] (one row per packed sequence)" if cu_seqlens is not None else "[b, c]"
        raise ValueError(f"token_shift: state must be {what} = [{rows}, {c}], got {tuple(state.shape)}")
    start = x.new_zeros(rows, c) if state is None else state.to(x.dtype)
    if cu_seqlens is not None:
        return _packed(x, start, cu_seqlens)
    x_prev = torch.cat([start.unsqueeze(1), x[:, :-1]], dim=1)
    if mask is None:
        return x_prev, x[:, -1]
    if mask.shape != (b, t):
        raise ValueError(f"token_shift: mask must be [b, t] = [{b}, {t}], got {tuple(mask.shape)}")
    mask = mask.to(device=x.device, dtype=torch.bool)
    # A token after padding (a left-padded row's first token) starts from the state, as at t = 0.
    after_pad = torch.cat([mask.new_ones(b, 1), mask[:, :-1]], dim=1).unsqueeze(-1)
    x_prev = torch.where(after_pad, x_prev, start.unsqueeze(1))
    steps = torch.arange(t, device=x.device)
    last = torch.where(mask, steps, -1).amax(dim=1)  # [b]: each row's last token, -1 for none
    new_state = torch.where((last >= 0).unsqueeze(-1), x[torch.arange(b, device=x.device), last.clamp(min=0)], start)
    return x_prev, new_state


def _packed(x: torch.Tensor, start: torch.Tensor, cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token shift of sequences packed in one row: each sequence's first token gets its own start row."""
    cu = cu_seqlens.to(device=x.device, dtype=torch.long)
    t = x.shape[1]
    firsts, ends = cu[:-1], cu[1:]
    nonempty = ends > firsts  # [N]
    x_prev = torch.cat([x.new_zeros(1, 1, x.shape[-1]), x[:, :-1]], dim=1)
    # Each step's sequence index; a first step of sequence i takes start[i] instead of the step before it.
    seq_of_step = torch.searchsorted(ends, torch.arange(t, device=x.device), right=True)  # [t]
    # Marked by scatter, not boolean indexing, so that no step waits for the device (an empty sequence's
    # mark goes to a spare slot past the end).
    marks = torch.zeros(t + 1, dtype=torch.bool, device=x.device)
    is_first = marks.index_fill(0, torch.where(nonempty, firsts, t), True)[:t]
    x_prev = torch.where(is_first.view(1, t, 1), start[seq_of_step.clamp(max=start.shape[0] - 1)].unsqueeze(0), x_prev)
    last = x[0, (ends - 1).clamp(min=0)]  # [N, c]
    return x_prev, torch.where(nonempty.unsqueeze(-1), last, start)


class TokenShift(nn.Module):
    """``token_shift`` as a module (it has no parameters): ``x_prev, state = TokenShift()(x, state)``.

    Shapes: x [b, t, c], state [b, c] or None -> x_prev [b, t, c], new state [b, c] (``cu_seqlens`` and
    ``mask`` as in :func:`token_shift`).
    """

    def forward(
        self,
        x: torch.Tensor,
        state: torch.Tensor | None = None,
        *,
        cu_seqlens: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return token_shift(x, state, cu_seqlens=cu_seqlens, mask=mask)
