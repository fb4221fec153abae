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

from ..layers.block import LN_EPS, Block
from ..layers.time_mix7 import _gemv_weight, _orthogonal_
from ..ops.cu_seqlens import check_cu_seqlens
from ..state import RWKVState
from .config import RWKV7Config
from .output import (
    IGNORE_INDEX,
    ModelOutput,
    mask_padded_labels,
    next_token_loss,
    padding_mask,
    reject_unknown_keywords,
)

__all__ = ["RWKV7", "RWKV7Config"]

_FORWARD_KEYWORDS = (
    "input_ids",
    "inputs_embeds",
    "state",
    "chunk_size",
    "logits_to_keep",
    "labels",
    "attention_mask",
    "cu_seqlens",
)


def _layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """``norm(x)`` without the module call (RWKV7.step's hot loop); any other norm module is called."""
    if type(norm) is not nn.LayerNorm:
        return norm(x)
    return torch.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


class RWKV7(nn.Module):
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
    """

    def __init__(self, config: RWKV7Config | None = None, *, device=None, dtype=None, **fields):
        super().__init__()
        if config is None:
            config = RWKV7Config(**fields)
        elif fields:
            raise TypeError(f"RWKV7: pass a config or its fields, not both (got config and {sorted(fields)})")
        if not isinstance(config, RWKV7Config):
            raise TypeError(f"RWKV7: config must be an RWKV7Config, got {type(config).__name__}")
        self._config = config
        n_layer, n_embd, head_size, vocab_size = config.n_layer, config.n_embd, config.head_size, config.vocab_size
        self.n_layer, self.n_embd, self.head_size = n_layer, n_embd, head_size
        self.n_head, self.vocab_size = n_embd // head_size, vocab_size
        factory = dict(device=device, dtype=dtype)

        self.emb = nn.Embedding(vocab_size, n_embd, **factory)
        self.blocks = nn.ModuleList(
            Block.rwkv7(
                n_embd=n_embd,
                layer_id=i,
                n_layer=n_layer,
                head_size=head_size,
                dim_ffn=config.dim_ffn,
                d_w=config.d_w,
                d_a=config.d_a,
                d_v=config.d_v,
                d_g=config.d_g,
                **factory,
            )
            for i in range(n_layer)
        )
        self.ln_out = nn.LayerNorm(n_embd, eps=LN_EPS, **factory)
        self.head = nn.Linear(n_embd, vocab_size, bias=False, **factory)
        self.tokenizer = None  # set by from_pretrained for World-vocabulary models
        with torch.no_grad():
            # The "small init embedding" (with ln0 after it): early updates move it far relative to its size.
            self.emb.weight.uniform_(-1e-4, 1e-4)
            gain = 0.5 * (vocab_size / n_embd) ** 0.5 if vocab_size > n_embd else 0.5
            _orthogonal_(self.head.weight, gain)

    @property
    def config(self) -> RWKV7Config:
        """The configuration this model was built from (``RWKV7(model.config)`` builds another)."""
        return self._config

    @property
    def architecture(self) -> str:
        """``"rwkv7"`` (official checkpoint format "x070")."""
        return self._config.architecture

    # --- state --------------------------------------------------------------------------------------------

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> RWKVState:
        """A zero state (the state before any token): shift states in ``dtype`` (default: the model's)."""
        weight = self.emb.weight
        return RWKVState.zeros(
            n_layer=self.n_layer,
            batch_size=batch_size,
            n_embd=self.n_embd,
            n_head=self.n_head,
            head_size=self.head_size,
            device=device or weight.device,
            dtype=dtype or weight.dtype,
        )

    def check_state(self, state: RWKVState, batch_size: int) -> None:
        """Raise a ValueError naming the first tensor of ``state`` whose shape does not fit this model."""
        if not isinstance(state, RWKVState):
            raise TypeError(f"RWKV7.forward: state must be an RWKVState or None, got {type(state).__name__}")
        if len(state) != self.n_layer:
            raise ValueError(f"RWKV7.forward: state has {len(state)} layers but the model has {self.n_layer}")
        b, c, h, n = batch_size, self.n_embd, self.n_head, self.head_size
        want = {"att_shift": (b, c), "wkv": (b, h, n, n), "ffn_shift": (b, c)}
        for i, layer in enumerate(state):
            for name, shape in want.items():
                got = tuple(getattr(layer, name).shape)
                if got != shape:
                    raise ValueError(
                        f"RWKV7.forward: state[{i}].{name} must be {list(shape)} for a batch of {b} "
                        f"(batch, channels {c}, heads {h}, head size {n}), got {list(got)}"
                    )

    # --- the three stages, for callers that run blocks themselves ----------------------------------------

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings: input_ids [b, t] (int) -> [b, t, c]. Block 0's ln0 comes later, in the block."""
        return self.emb(input_ids)

    def forward_blocks(
        self,
        x: torch.Tensor,
        state: RWKVState | None = None,
        *,
        cu_seqlens: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, RWKVState]:
        """All blocks: x [b, t, c] (embeddings) -> (hidden [b, t, c] before ln_out, new state). ``cu_seqlens``
        (packed sequences, x [1, T, c], state of N rows) and ``attention_mask`` ([b, t] bool padding) go to
        every block.

        A wrapper that acts between blocks runs the same loop, carrying block 0's value::

            v_first = None
            for i, block in enumerate(model.blocks):
                x, layer_state, v_first = block(x, None if state is None else state[i], return_state=True,
                                                v_first=v_first, return_v_first=True)
        """
        seq = {k: v for k, v in (("cu_seqlens", cu_seqlens), ("attention_mask", attention_mask)) if v is not None}
        layers = []
        v_first = None
        for i, block in enumerate(self.blocks):
            x, layer_state, v_first = block(
                x, None if state is None else state[i], return_state=True, v_first=v_first, return_v_first=True, **seq
            )
            layers.append(layer_state)
        return x, RWKVState(layers)

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the last hidden states: x [b, t, c] -> head(ln_out(x)) [b, t, v]."""
        return self.head(self.ln_out(x))

    # --- the model ----------------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        state: RWKVState | None = None,
        chunk_size: int | None = None,
        logits_to_keep: int = 0,
        *,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        **unknown: Any,
    ) -> ModelOutput:
        """Logits for a sequence, continuing from ``state``; the arguments are those of ``RWKV6.forward``.

        Args:
            input_ids: [b, t] token ids; or inputs_embeds: [b, t, c]. Exactly one.
            state: the ``RWKVState`` after the tokens before these (None: a fresh sequence).
            chunk_size: read the sequence ``chunk_size`` tokens at a time through all blocks, carrying the state
                (bounded activation memory without gradients; equal to one pass up to float rounding).
            logits_to_keep: 0 for logits at every position, k > 0 for the last k only ([b, k, v]).
            labels: [b, t] targets aligned with the inputs, -100 where not scored (shifted inside); gives loss.
            attention_mask: [b, t] 1 for tokens and 0 for padding, on the left (as for generation), the right,
                or both; each row's tokens one contiguous run. Padded steps leave the recurrent state as it is
                (k = 0, no decay and no low-rank update there, and the token shift skips them), so a row's
                logits at its tokens equal that row run alone and ``out.state`` row i is the state after row
                i's last token. Padded positions are never scored (nor a left-padded row's first token).
            cu_seqlens: [N + 1] offsets of N sequences packed into one row (input_ids [1, T]; no padding;
                ``rwkv_vision.ops.pack_offsets``): each sequence is read from its own state (``state`` with N
                rows, or zeros), ``out.state`` has one row per sequence, and with labels no target crosses a
                boundary. Not with ``attention_mask`` or ``chunk_size``.

        Returns:
            ``ModelOutput``: ``.logits``, ``.state``, ``.loss``; ``logits, state = model(...)`` unpacks.
        """
        where = "RWKV7.forward"
        reject_unknown_keywords(where, unknown, _FORWARD_KEYWORDS)
        if (input_ids is None) == (inputs_embeds is None):
            which = "both" if input_ids is not None else "neither"
            raise ValueError(f"{where}: pass exactly one of input_ids [b, t] or inputs_embeds [b, t, c]; got {which}")
        if input_ids is not None:
            if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
                shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
                raise ValueError(
                    f"{where}: input_ids must be a [b, t] tensor (use ids.unsqueeze(0) for one sequence), got {shape}"
                )
            if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
                raise TypeError(f"{where}: input_ids must be an integer tensor, got {input_ids.dtype}")
            if input_ids.numel():
                # Checked here (one device sync): an out-of-range id on CUDA is an opaque device assert.
                low, high = (int(v) for v in torch.stack(torch.aminmax(input_ids)).tolist())
                if low < 0 or high >= self.vocab_size:
                    raise ValueError(
                        f"{where}: input_ids must be in [0, vocab_size = {self.vocab_size}), got values in "
                        f"[{low}, {high}]"
                    )
            b, t = input_ids.shape
        else:
            if (
                not isinstance(inputs_embeds, torch.Tensor)
                or inputs_embeds.dim() != 3
                or inputs_embeds.shape[-1] != self.n_embd
            ):
                shape = (
                    tuple(inputs_embeds.shape)
                    if isinstance(inputs_embeds, torch.Tensor)
                    else type(inputs_embeds).__name__
                )
                raise ValueError(f"{where}: inputs_embeds must be [b, t, c = {self.n_embd}], got {shape}")
            b, t, _ = inputs_embeds.shape
            inputs_embeds = inputs_embeds.to(self.emb.weight.dtype)
        if t == 0:
            raise ValueError(f"{where}: the sequence is empty (t = 0); pass at least one token")
        chunk_size = t if chunk_size is None else chunk_size
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ValueError(f"{where}: chunk_size must be a positive int or None, got {chunk_size!r}")
        if not isinstance(logits_to_keep, int) or isinstance(logits_to_keep, bool) or logits_to_keep < 0:
            raise ValueError(f"{where}: logits_to_keep must be an int >= 0, got {logits_to_keep!r}")
        rows = b
        if cu_seqlens is not None:
            if attention_mask is not None:
                raise ValueError(f"{where}: pass cu_seqlens (packed) or attention_mask (padded), not both")
            if chunk_size != t:
                raise ValueError(f"{where}: chunk_size cannot split packed sequences (cu_seqlens); leave it None")
            rows = check_cu_seqlens(cu_seqlens, b, t, where)
        if state is not None:
            self.check_state(state, rows)
        mask = padding_mask(where, attention_mask, b, t)
        if labels is not None and logits_to_keep:
            raise ValueError(f"{where}: labels score every position; pass logits_to_keep=0 with them")

        first_kept = max(t - logits_to_keep, 0) if logits_to_keep else 0
        logits = []
        for start in range(0, t, chunk_size):
            end = min(start + chunk_size, t)
            x = self.embed(input_ids[:, start:end]) if input_ids is not None else inputs_embeds[:, start:end]
            seq = {"cu_seqlens": cu_seqlens} if cu_seqlens is not None else {}
            if mask is not None:
                seq["attention_mask"] = mask[:, start:end].to(x.device)
            x, state = self.forward_blocks(x, state, **seq)
            if end > first_kept:
                logits.append(self.unembed(x[:, max(first_kept - start, 0) :]))
        logits = logits[0] if len(logits) == 1 else torch.cat(logits, dim=1)
        loss = None
        if labels is not None:
            if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != (b, t):
                got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
                raise ValueError(f"{where}: labels must be [b, t] = {[b, t]} like the inputs, got {got}")
            if mask is not None:
                labels = mask_padded_labels(labels, mask)
            if cu_seqlens is not None:  # a sequence's first label is no target of the sequence before it
                cu = cu_seqlens.to(device=labels.device, dtype=torch.long)
                labels = labels.clone()
                labels[:, cu[:-1][cu[1:] > cu[:-1]]] = IGNORE_INDEX
            loss = next_token_loss(logits, labels)
        return ModelOutput(logits=logits, state=state, loss=loss)

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

    def check_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Raise ``StateDictError`` listing every key of ``state_dict`` that does not fit this model."""
        from ..checkpoint.diff import check_state_dict

        check_state_dict(self, state_dict)

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """The parameters under their official x070 names: the module's own."""
        return dict(self.state_dict())
