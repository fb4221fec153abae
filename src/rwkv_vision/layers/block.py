"""Block: one RWKV-6 layer, a pre-LayerNorm residual pair of time-mix and channel-mix.

Letter legend: b batch, t time, h heads, n head size, c channels.

    if layer_id == 0: x = ln0(x)          # block 0 normalises the embeddings once
    x = x + att(ln1(x))
    x = x + ffn(ln2(x))

LayerNorm eps is 1e-5. Attribute names are the official ones (``ln0``/``ln1``/``ln2``, ``att``, ``ffn``), so
``blocks.{i}.*`` keys of an "x060" checkpoint load by name.

The whole recurrent memory of the block is a ``LayerState`` (time-mix shift [b, c], WKV [b, h, n, n],
channel-mix shift [b, c]); ``forward`` takes one (or None for a fresh sequence) and returns the next, so a
wrapper can run blocks one at a time, reorder the tokens between them, and keep each block's state.
"""

from __future__ import annotations

import torch
from torch import nn

from ..state import LayerState
from .channel_mix import ChannelMix
from .time_mix import TimeMix

__all__ = ["Block", "LN_EPS"]

LN_EPS = 1e-5


class Block(nn.Module):
    """One RWKV-6 block.

    Shapes: forward(x [b, t, c], state: LayerState | None) -> (x [b, t, c], LayerState).

    Example::

        >>> block = Block(layer_id=0, n_layer=1, n_embd=64, head_size=32)
        >>> y, state = block(torch.randn(2, 10, 64))          # a fresh sequence
        >>> y2, state = block(torch.randn(2, 3, 64), state)   # its continuation
    """

    def __init__(
        self,
        *,
        layer_id: int,
        n_layer: int,
        n_embd: int,
        head_size: int = 64,
        dim_ffn: int | None = None,
        d_mix: int = 32,
        d_decay: int = 64,
        data_dependent_lerp: bool = True,
        data_dependent_decay: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.layer_id = layer_id
        self.ln0 = nn.LayerNorm(n_embd, eps=LN_EPS, **factory) if layer_id == 0 else None
        self.ln1 = nn.LayerNorm(n_embd, eps=LN_EPS, **factory)
        self.ln2 = nn.LayerNorm(n_embd, eps=LN_EPS, **factory)
        self.att = TimeMix(
            n_embd=n_embd, head_size=head_size, d_mix=d_mix, d_decay=d_decay,
            data_dependent_lerp=data_dependent_lerp, data_dependent_decay=data_dependent_decay,
            layer_id=layer_id, n_layer=n_layer, **factory,
        )
        self.ffn = ChannelMix(n_embd=n_embd, dim_ffn=dim_ffn, layer_id=layer_id, n_layer=n_layer, **factory)

    def forward(self, x: torch.Tensor, state: LayerState | None = None) -> tuple[torch.Tensor, LayerState]:
        if self.ln0 is not None:
            x = self.ln0(x)
        att_shift = wkv = ffn_shift = None
        if state is not None:
            att_shift, wkv, ffn_shift = state.att_shift, state.wkv, state.ffn_shift
        dx, att_shift, wkv = self.att(self.ln1(x), att_shift, wkv)
        x = x + dx
        dx, ffn_shift = self.ffn(self.ln2(x), ffn_shift)
        x = x + dx
        return x, LayerState(att_shift=att_shift, wkv=wkv, ffn_shift=ffn_shift)
