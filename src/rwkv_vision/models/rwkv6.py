"""RWKV6: the RWKV-6 ("Finch", checkpoint format "x060") language model.

Letter legend: b batch, t time, h heads, n head size, c channels, v vocabulary.

    x      = emb(input_ids)                    # [b, t, c]   (or inputs_embeds)
    x      = blocks[i](x, state[i])            # block 0 applies ln0 first
    logits = head(ln_out(x))                   # [b, t, v]   (head is not tied to emb)

Module and parameter names are the official ones, so ``model.state_dict()`` has exactly the keys of an
official checkpoint with its ``rwkv.`` prefix stripped (``emb.weight``, ``blocks.0.ln0.weight``,
``blocks.3.att.time_maa_w1``, ...), and ``from_official_state_dict`` is a strict ``load_state_dict`` after
reading every size off the tensor shapes.

Reading a sequence in one pass, in chunks with the returned ``RWKVState`` carried, or one token at a time
gives the same logits and the same state; ``chunk_size`` uses this to prefill long prompts in bounded memory.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..layers.block import Block
from ..state import RWKVState
from .config import RWKV6Config
from .language_model import RWKVLanguageModel

__all__ = ["RWKV6", "RWKV6Config"]


class RWKV6(RWKVLanguageModel):
    """The RWKV-6 language model.

    Args:
        config: an :class:`RWKV6Config`; or its fields as keyword arguments (``RWKV6(n_layer=2, n_embd=64)``).
        device, dtype: where and in what the parameters are made.

    Shapes: forward(input_ids [b, t] | inputs_embeds [b, t, c], state) -> (logits [b, t, v], RWKVState);
    step(input_ids [b], state) -> logits [b, v], the state updated in place.

    ``forward``, ``forward_blocks``, ``embed``, ``unembed``, ``init_state`` and ``check_state`` are the shared
    ones of
    :class:`~rwkv_vision.models.language_model.RWKVLanguageModel`.
    """

    _name = "RWKV6"
    config_class = RWKV6Config
    _bool_sizes_are_ints = True

    def __init__(self, config: RWKV6Config | None = None, *, device=None, dtype=None, **fields):
        super().__init__(config, device=device, dtype=dtype, **fields)

    def _make_block(self, config: RWKV6Config, layer_id: int, factory: dict) -> Block:
        return Block.rwkv6(
            n_embd=config.n_embd,
            layer_id=layer_id,
            n_layer=config.n_layer,
            embed_norm=layer_id == 0,
            head_size=config.head_size,
            dim_ffn=config.dim_ffn,
            d_mix=config.d_mix,
            d_decay=config.d_decay,
            data_dependent_lerp=config.data_dependent_lerp,
            data_dependent_decay=config.data_dependent_decay,
            **factory,
        )

    def _init_head(self) -> None:
        # ln_out gives unit-variance features; this makes the initial logits spread ~0.5.
        self.head.weight.normal_(0.0, 0.5 / self.n_embd**0.5)

    # --- the blocks (forward_blocks, embed and unembed are the shared ones) ---------------------------------

    def _run_blocks(self, x: torch.Tensor, state: RWKVState | None, seq: dict) -> tuple[torch.Tensor, RWKVState]:
        layers = []
        for i, block in enumerate(self.blocks):
            x, layer_state = block(x, None if state is None else state[i], return_state=True, **seq)
            layers.append(layer_state)
        return x, RWKVState(layers)

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor, state: RWKVState) -> torch.Tensor:
        """One token per row: input_ids [b] (int64, on the model's device) -> logits [b, v]; ``state`` is
        updated in place (its tensors must be writable buffers, e.g. ``init_state``'s). No host syncs and no
        checks, so a decoder can capture it into a CUDA graph; ids must be in range."""
        x = self.emb(input_ids)  # [b, c]
        for block, layer_state in zip(self.blocks, state):
            x = block.step(x, layer_state)
        return self.head(self.ln_out(x))

    # --- loading (implemented in rwkv_vision.checkpoint) ---------------------------------------------------

    @classmethod
    def from_official_state_dict(cls, state_dict: Mapping[str, torch.Tensor], *, device=None, dtype=None) -> "RWKV6":
        """Build a model from an official "x060" state dict (keys without the ``rwkv.`` prefix); see
        :func:`rwkv_vision.checkpoint.official.rwkv6_from_official_state_dict`."""
        from ..checkpoint.official import rwkv6_from_official_state_dict

        return rwkv6_from_official_state_dict(state_dict, cls=cls, device=device, dtype=dtype)
