"""Block: a pre-norm residual pair of a sequence mixer and a feed-forward, the unit every RWKV stack repeats.

Letter legend: b batch, t time, h heads, n head size, c channels.

    if embed_norm: x = ln0(x)            # the first block of an RWKV model normalises the embeddings once
    x = x + att(ln1(x))                   # the mixer: RWKV-6 TimeMix, RWKV-7 TimeMix7, or any module like them
    x = x + ffn(ln2(x))                   # the feed-forward: RWKV-6 ChannelMix, RWKV-7 ChannelMix7, or any other

The block is built from factories, as mamba's ``Block(dim, mixer_cls, mlp_cls)`` and timm's ViT blocks are, so
an RWKV-6 block (``Block.rwkv6``), an RWKV-7 block (``Block.rwkv7``) and a block with another mixer share one
implementation. Attribute names are
the official ones (``ln0``/``ln1``/``ln2``, ``att``, ``ffn``), so ``blocks.{i}.*`` keys of an "x060" checkpoint
load by name.

The whole recurrent memory of an RWKV-6 block is a ``LayerState`` (time-mix shift [b, c], WKV [b, h, n, n],
channel-mix shift [b, c]). ``forward`` returns the new stream, and with ``return_state=True`` also the next
state, so a wrapper can run blocks one at a time, reorder the tokens between them, and keep each block's
state. ``step`` reads one token and updates a state in place: what decoding runs.

RWKV-7 adds one activation that crosses blocks: the "value residual". Layer 0's time-mix value ``v_first``
[b, t, c] is mixed into the value of every later layer. A block whose mixer has ``value_residual = True``
(``TimeMix7``) takes it as ``v_first=`` and, with ``return_v_first=True``, returns it last; a model loop::

    v_first = None
    for block, layer_state in zip(blocks, states):
        x, layer_state, v_first = block(x, layer_state, return_state=True, v_first=v_first, return_v_first=True)

The state of an RWKV-7 block has the same three tensors as RWKV-6's: v_first is not carried across time.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from ..state import LayerState, TimeMixState
from .channel_mix import ChannelMix
from .channel_mix7 import ChannelMix7
from .time_mix import TimeMix
from .time_mix7 import TimeMix7

__all__ = ["Block", "LN_EPS"]

LN_EPS = 1e-5


class Block(nn.Module):
    """A pre-norm residual block: ``x + att(ln1(x))``, then ``x + ffn(ln2(x))``.

    Args:
        dim: channels c.
        mixer_cls: ``mixer_cls(dim, device=, dtype=)`` builds the sequence mixer. Its interface:
            ``forward(x [b, t, c], state, *, return_state)`` returning the output (and with
            ``return_state=True`` a ``(shift, wkv)`` pair), and ``step(x [b, c], shift, wkv)`` for decoding.
        mlp_cls: ``mlp_cls(dim, device=, dtype=)`` builds the feed-forward: ``forward(x, state, *,
            return_state)`` with a shift state [b, c], and ``step(x [b, c], shift)``.
        norm_cls: ``norm_cls(dim, device=, dtype=)`` builds each norm (None: LayerNorm with eps 1e-5).
        embed_norm: add ``ln0`` before everything (RWKV applies it in its first block only); explicit, so a
            block never changes shape because of where it sits.

    Shapes: forward(x [b, t, c], state: LayerState | None, *, return_state=False, cu_seqlens=None,
    attention_mask=None) -> x [b, t, c], or (x, LayerState) with ``return_state=True``; ``cu_seqlens`` [N + 1]
    packs N sequences in one row (x [1, T, c], states [N, ...]), ``attention_mask`` [b, t] marks padding (left
    or right), both handed to the mixer and the feed-forward. step(x [b, c], state: LayerState) -> x [b, c].
    With a value-residual mixer (RWKV-7) both also take ``v_first`` ([b, t, c] / [b, c]; None in block 0) and
    ``return_v_first=True`` appends it to the result: ``(x, v_first)`` or ``(x, LayerState, v_first)``.

    Example::

        >>> block = Block.rwkv6(n_embd=64, head_size=32, layer_id=0, n_layer=1, embed_norm=True)
        >>> y = block(torch.randn(2, 10, 64))                                # like a transformer block
        >>> y, state = block(torch.randn(2, 10, 64), return_state=True)      # a fresh sequence, and its state
        >>> y2, state = block(torch.randn(2, 3, 64), state, return_state=True)  # its continuation
    """

    def __init__(
        self,
        dim: int,
        mixer_cls: Callable[..., nn.Module],
        mlp_cls: Callable[..., nn.Module],
        *,
        norm_cls: Callable[..., nn.Module] | None = None,
        embed_norm: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        norm_cls = partial(nn.LayerNorm, eps=LN_EPS) if norm_cls is None else norm_cls
        self.ln0 = norm_cls(dim, **factory) if embed_norm else None
        self.ln1 = norm_cls(dim, **factory)
        self.ln2 = norm_cls(dim, **factory)
        self.att = mixer_cls(dim, **factory)
        self.ffn = mlp_cls(dim, **factory)

    @classmethod
    def rwkv6(
        cls,
        *,
        n_embd: int,
        layer_id: int,
        n_layer: int,
        embed_norm: bool,
        head_size: int = 64,
        dim_ffn: int | None = None,
        d_mix: int = 32,
        d_decay: int = 64,
        data_dependent_lerp: bool = True,
        data_dependent_decay: bool = True,
        device=None,
        dtype=None,
    ) -> "Block":
        """An RWKV-6 block: ``TimeMix`` and ``ChannelMix`` initialised for layer ``layer_id`` of ``n_layer``."""
        depth = dict(layer_id=layer_id, n_layer=n_layer)
        mixer = partial(
            TimeMix,
            head_size=head_size,
            d_mix=d_mix,
            d_decay=d_decay,
            data_dependent_lerp=data_dependent_lerp,
            data_dependent_decay=data_dependent_decay,
            **depth,
        )
        return cls(
            n_embd,
            mixer,
            partial(ChannelMix, dim_ffn=dim_ffn, **depth),
            embed_norm=embed_norm,
            device=device,
            dtype=dtype,
        )

    @classmethod
    def rwkv7(
        cls,
        *,
        n_embd: int,
        layer_id: int,
        n_layer: int,
        embed_norm: bool | None = None,
        head_size: int = 64,
        dim_ffn: int | None = None,
        d_w: int | None = None,
        d_a: int | None = None,
        d_v: int | None = None,
        d_g: int | None = None,
        device=None,
        dtype=None,
    ) -> "Block":
        """An RWKV-7 ("x070") block: ``TimeMix7`` and ``ChannelMix7`` initialised for layer ``layer_id`` of
        ``n_layer``. ``embed_norm`` (ln0) defaults to ``layer_id == 0``, as in the official model; block 0 is
        also the value-residual source (it returns v_first, the others take it)."""
        depth = dict(layer_id=layer_id, n_layer=n_layer)
        mixer = partial(TimeMix7, head_size=head_size, d_w=d_w, d_a=d_a, d_v=d_v, d_g=d_g, **depth)
        return cls(
            n_embd,
            mixer,
            partial(ChannelMix7, dim_ffn=dim_ffn, **depth),
            embed_norm=layer_id == 0 if embed_norm is None else embed_norm,
            device=device,
            dtype=dtype,
        )

    @property
    def value_residual(self) -> bool:
        """Whether the mixer takes layer 0's value (RWKV-7): then forward/step take ``v_first``."""
        return bool(getattr(self.att, "value_residual", False))

    def forward(
        self,
        x: torch.Tensor,
        state: LayerState | None = None,
        *,
        return_state: bool = False,
        cu_seqlens: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        v_first: torch.Tensor | None = None,
        return_v_first: bool = False,
    ) -> torch.Tensor | tuple:
        if state is not None and not isinstance(state, LayerState):
            raise TypeError(f"Block: state must be a LayerState or None, got {type(state).__name__}")
        # Packed (cu_seqlens) or padded (attention_mask) sequences: handed on only when given, so a mixer
        # without these keywords still serves unpadded batches.
        seq = {k: v for k, v in (("cu_seqlens", cu_seqlens), ("attention_mask", attention_mask)) if v is not None}
        if self.value_residual:
            return self._forward_value_residual(x, state, return_state, v_first, return_v_first, seq)
        if v_first is not None or return_v_first:
            raise TypeError(
                f"Block: v_first / return_v_first need a value-residual mixer (RWKV-7's TimeMix7); this block's "
                f"mixer is {type(self.att).__name__}"
            )
        if self.ln0 is not None:
            x = self.ln0(x)
        att_state = None if state is None else TimeMixState(state.att_shift, state.wkv)
        ffn_state = None if state is None else state.ffn_shift
        if not return_state:
            x = x + self.att(self.ln1(x), att_state, **seq)
            return x + self.ffn(self.ln2(x), ffn_state, **seq)
        dx, (att_shift, wkv) = self.att(self.ln1(x), att_state, return_state=True, **seq)
        x = x + dx
        dx, ffn_shift = self.ffn(self.ln2(x), ffn_state, return_state=True, **seq)
        return x + dx, LayerState(att_shift=att_shift, wkv=wkv, ffn_shift=ffn_shift)

    def _forward_value_residual(self, x, state, return_state, v_first, return_v_first, seq):
        if self.ln0 is not None:
            x = self.ln0(x)
        att_state = None if state is None else TimeMixState(state.att_shift, state.wkv)
        ffn_state = None if state is None else state.ffn_shift
        out = self.att(self.ln1(x), att_state, return_state=return_state, v_first=v_first, return_v_first=True, **seq)
        if return_state:
            dx, att_state, v_first = out
        else:
            dx, v_first = out
        x = x + dx
        if return_state:
            dx, ffn_shift = self.ffn(self.ln2(x), ffn_state, return_state=True, **seq)
            result = (x + dx, LayerState(att_shift=att_state.shift, wkv=att_state.wkv, ffn_shift=ffn_shift))
        else:
            result = (x + self.ffn(self.ln2(x), ffn_state, **seq),)
        if return_v_first:
            result += (v_first,)
        return result[0] if len(result) == 1 else result

    @torch.no_grad()
    def step(
        self,
        x: torch.Tensor,
        state: LayerState,
        *,
        v_first: torch.Tensor | None = None,
        return_v_first: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """One token: x [b, c] -> x [b, c] (and v_first [b, c] with ``return_v_first``, RWKV-7 blocks);
        ``state``'s tensors are updated in place."""
        if not self.value_residual:
            if v_first is not None or return_v_first:
                raise TypeError(
                    f"Block.step: v_first / return_v_first need a value-residual mixer (RWKV-7's TimeMix7); this "
                    f"block's mixer is {type(self.att).__name__}"
                )
            if self.ln0 is not None:
                x = self.ln0(x)
            x = x + self.att.step(self.ln1(x), state.att_shift, state.wkv)
            return x + self.ffn.step(self.ln2(x), state.ffn_shift)
        if self.ln0 is not None:
            x = self.ln0(x)
        dx, v_first = self.att.step(self.ln1(x), state.att_shift, state.wkv, v_first=v_first, return_v_first=True)
        x = x + dx
        x = x + self.ffn.step(self.ln2(x), state.ffn_shift)
        return (x, v_first) if return_v_first else x
