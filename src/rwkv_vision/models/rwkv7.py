"""RWKV7: the RWKV-7 ("Goose", checkpoint format "x070") language model.

Letter legend: b batch, t time, h heads, n head size, c channels, v vocabulary.

    x       = emb(input_ids)                                 # [b, t, c]   (or inputs_embeds)
    x, v1   = blocks[0](x, state[0])                         # block 0 applies ln0 first; v1: its value
    x       = blocks[i](x, state[i], v_first=v1)             # i >= 1: the value residual from block 0
    logits  = head(ln_out(x))                                # [b, t, v]   (head is not tied to emb)

Module and parameter names are the official ones, so ``model.state_dict()`` has exactly the keys of an official
x070 checkpoint (``emb.weight``, ``blocks.0.ln0.weight``, ``blocks.3.att.w1``, ``blocks.3.att.r_k``, ...), and
``from_official_state_dict`` is a strict load after reading every size off the tensor shapes.

The state is the same :class:`~rwkv_vision.state.RWKVState` as RWKV-6's (per block: time-mix shift [b, c],
WKV [b, h, n, n] float32, channel-mix shift [b, c]); v_first lives only inside one forward. Reading a sequence
in one pass, in chunks with the state carried, or one token at a time gives the same logits and state.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.block import Block
from ..layers.time_mix7 import _gemv_weight, _orthogonal_
from ..state import RWKVState
from .config import RWKV7Config
from .language_model import RWKVLanguageModel

__all__ = ["RWKV7", "RWKV7Config"]


def _layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """``norm(x)`` without the module call (RWKV7.step's hot loop); any other norm module is called."""
    if type(norm) is not nn.LayerNorm:
        return norm(x)
    return torch.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


class RWKV7(RWKVLanguageModel):
    """The RWKV-7 ("x070") language model.

    Args:
        config: an :class:`RWKV7Config`; or its fields as keyword arguments (``RWKV7(n_layer=2, n_embd=64)``).
        device, dtype: where and in what the parameters are made.

    Shapes: forward(input_ids [b, t] | inputs_embeds [b, t, c], state) -> ModelOutput(logits [b, t, v],
    RWKVState, loss); step(input_ids [b], state) -> logits [b, v], the state updated in place.

    Initialised as the official training code (``generate_init_weight``): tiny uniform embedding (1e-4),
    orthogonal head with gain 0.5 sqrt(v / c), each block starting as the identity (zero output projections).

    Example::

        >>> model = RWKV7(n_layer=2, n_embd=64, head_size=16, vocab_size=100)
        >>> out = model(torch.randint(0, 100, (1, 9)))                      # logits [1, 9, 100], state
        >>> logits = model.step(torch.tensor([5]), out.state)               # one more token, in place

    ``forward``, ``forward_blocks``, ``embed``, ``unembed`` and ``init_state`` are the shared ones of
    :class:`~rwkv_vision.models.language_model.RWKVLanguageModel`.
    """

    _name = "RWKV7"
    config_class = RWKV7Config

    def __init__(self, config: RWKV7Config | None = None, *, device=None, dtype=None, **fields):
        super().__init__(config, device=device, dtype=dtype, **fields)
        self.tokenizer = None  # set by from_pretrained for World-vocabulary models

    def _make_block(self, config: RWKV7Config, layer_id: int, factory: dict) -> Block:
        return Block.rwkv7(
            n_embd=config.n_embd,
            layer_id=layer_id,
            n_layer=config.n_layer,
            head_size=config.head_size,
            dim_ffn=config.dim_ffn,
            d_w=config.d_w,
            d_a=config.d_a,
            d_v=config.d_v,
            d_g=config.d_g,
            **factory,
        )

    def _init_head(self) -> None:
        vocab_size, n_embd = self.vocab_size, self.n_embd
        gain = 0.5 * (vocab_size / n_embd) ** 0.5 if vocab_size > n_embd else 0.5
        _orthogonal_(self.head.weight, gain)

    @property
    def architecture(self) -> str:
        """``"rwkv7"`` (official checkpoint format "x070")."""
        return self._config.architecture

    def check_state(self, state: RWKVState, batch_size: int) -> None:
        """Raise a ValueError naming the first tensor of ``state`` whose shape does not fit this model (a
        TypeError if it is no ``RWKVState``)."""
        self._check_state_type(state)
        super().check_state(state, batch_size)

    # --- the blocks (forward_blocks, embed and unembed are the shared ones) ---------------------------------

    def _run_blocks(self, x: torch.Tensor, state: RWKVState | None, seq: dict) -> tuple[torch.Tensor, RWKVState]:
        layers = []
        v_first = None
        for i, block in enumerate(self.blocks):
            x, layer_state, v_first = block(
                x, None if state is None else state[i], return_state=True, v_first=v_first, return_v_first=True, **seq
            )
            layers.append(layer_state)
        return x, RWKVState(layers)

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor, state: RWKVState) -> torch.Tensor:
        """One token per row: input_ids [b] (int64, on the model's device) -> logits [b, v]; ``state`` is
        updated in place (writable buffers, e.g. ``init_state``'s). No host syncs and no checks.

        The blocks' ``step`` loop is inlined here (the same LayerNorms and residuals as ``Block.step``):
        at batch 1 a token costs about 600 small ops, and each module call and attribute lookup saved counts.
        On the CPU the first call re-lays out the tall and square float32 weights (head, projections,
        channel-mix key) in memory for the matrix-vector product (``layers.time_mix7._gemv_weight``: the same
        Parameters, values and shapes; only their strides change)."""
        x = F.embedding(input_ids, self.emb.weight)  # [b, c]
        v_first = None
        for block, layer_state in zip(self.blocks, state):
            if block.ln0 is not None:
                x = _layer_norm(x, block.ln0)
            # The residual adds ride in the output GEMMs (addmm): x + att(ln1(x)), then x + ffn(ln2(x)).
            x, v_first = block.att.step(
                _layer_norm(x, block.ln1),
                layer_state.att_shift,
                layer_state.wkv,
                v_first=v_first,
                return_v_first=True,
                residual=x,
            )
            x = block.ffn.step(_layer_norm(x, block.ln2), layer_state.ffn_shift, residual=x)
        return F.linear(_layer_norm(x, self.ln_out), _gemv_weight(self.head.weight))

    @torch.no_grad()
    def generate(self, input_ids=None, config=None, **kwargs: Any):
        """Generate after a prompt from the cached state: :func:`rwkv_vision.generation.generate` with this
        model (``max_new_tokens=``, ``do_sample=``, ``stop_tokens=``, ``streamer=``, ...). Returns its
        ``GenerationOutput``."""
        from ..generation import generate

        return generate(self, input_ids, config, **kwargs)

    # --- loading and saving (implemented in rwkv_vision.checkpoint) ---------------------------------------

    @classmethod
    def from_official_state_dict(cls, state_dict: Mapping[str, torch.Tensor], *, device=None, dtype=None) -> "RWKV7":
        """Build a model from an official x070 state dict (keys without a ``rwkv.`` prefix); see
        :func:`rwkv_vision.checkpoint.official.rwkv7_from_official_state_dict`."""
        from ..checkpoint.official import rwkv7_from_official_state_dict

        return rwkv7_from_official_state_dict(state_dict, cls=cls, device=device, dtype=dtype)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        filename: str | None = None,
        revision: str | None = None,
        *,
        device=None,
        dtype=None,
        cache_dir: str | os.PathLike | None = None,
    ) -> "RWKV7":
        """A model from an official x070 ``.pth`` (read with ``torch.load(weights_only=True)``), an
        official-names ``.safetensors`` file, or a directory written by :meth:`save_pretrained`; locally or on
        the Hugging Face Hub: ``"owner/repo"`` (a save_pretrained directory there), ``"owner/repo"`` with
        ``filename=`` or ``"owner/repo/file.pth"`` (a released file), ``revision`` a branch, tag or commit,
        through the Hub's cache (``cache_dir``; ``HF_HUB_OFFLINE=1`` reads the cache only). See
        :func:`rwkv_vision.checkpoint.lm.resolve_language_model` and ``load_language_model``. In eval mode, with
        the World tokenizer for 65536-token vocabularies."""
        from ..checkpoint.lm import load_language_model, resolve_language_model

        path = resolve_language_model(name_or_path, filename=filename, revision=revision, cache_dir=cache_dir)
        model = load_language_model(path, device=device, dtype=dtype)
        if not isinstance(model, cls):
            raise TypeError(f"{path}: holds a {type(model).__name__}, not an {cls.__name__}")
        return model

    def save_pretrained(self, path: str | os.PathLike, *, dtype=None) -> Any:
        """Write a directory (``config.json`` with ``"architecture": "rwkv7"`` + ``model.safetensors``), or one
        official-names ``.safetensors`` file for a path ending in ``.safetensors``; see
        :func:`rwkv_vision.checkpoint.lm.save_language_model`."""
        from ..checkpoint.lm import save_language_model

        return save_language_model(self, path, dtype=dtype)
