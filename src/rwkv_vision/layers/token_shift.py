"""Token shift: each position sees the features of the token before it.

Letter legend: b batch, t time, c channels.

RWKV mixes every token with its predecessor (x_{t-1}) before its projections. At t = 0 the predecessor is
zeros, or the last token of the previous segment when a sequence is read in pieces; carrying that one
vector is what makes chunked reading equal to reading in one pass.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TokenShift", "token_shift"]


def token_shift(x: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The previous token's features.

    Args:
        x: [b, t, c].
        state: [b, c] the token before x[:, 0] (zeros if None).

    Returns:
        x_prev: [b, t, c] with x_prev[:, 0] = state and x_prev[:, s] = x[:, s - 1].
        new_state: [b, c] = x[:, -1], the state for the next segment.
    """
    if x.dim() != 3:
        raise ValueError(f"token_shift: x must be [b, t, c], got shape {tuple(x.shape)}")
    b, _, c = x.shape
    if state is None:
        first = x.new_zeros(b, 1, c)
    else:
        if state.shape != (b, c):
            raise ValueError(f"token_shift: state must be [b, c] = [{b}, {c}], got {tuple(state.shape)}")
        first = state.to(x.dtype).unsqueeze(1)
    x_prev = torch.cat([first, x[:, :-1]], dim=1)
    return x_prev, x[:, -1]


class TokenShift(nn.Module):
    """``token_shift`` as a module (it has no parameters): ``x_prev, state = TokenShift()(x, state)``.

    Shapes: x [b, t, c], state [b, c] or None -> x_prev [b, t, c], new state [b, c].
    """

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return token_shift(x, state)
