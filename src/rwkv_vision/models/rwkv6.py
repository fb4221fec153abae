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
from typing import Any

import torch
from torch import nn

from ..layers.block import LN_EPS, Block
from ..ops.cu_seqlens import check_cu_seqlens
from ..state import RWKVState
from .config import RWKV6Config
from .output import (
    IGNORE_INDEX,
    ModelOutput,
    mask_padded_labels,
    next_token_loss,
    padding_mask,
    reject_unknown_keywords,
)

__all__ = ["RWKV6", "RWKV6Config"]

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


class RWKV6(nn.Module):
    """The RWKV-6 language model.

    Args:
        config: an :class:`RWKV6Config`; or its fields as keyword arguments (``RWKV6(n_layer=2, n_embd=64)``).
        device, dtype: where and in what the parameters are made.

    Shapes: forward(input_ids [b, t] | inputs_embeds [b, t, c], state) -> (logits [b, t, v], RWKVState);
    step(input_ids [b], state) -> logits [b, v], the state updated in place.
    """

    def __init__(self, config: RWKV6Config | None = None, *, device=None, dtype=None, **fields):
        super().__init__()
        if config is None:
            config = RWKV6Config(**fields)
        elif fields:
            raise TypeError(f"RWKV6: pass a config or its fields, not both (got config and {sorted(fields)})")
        if not isinstance(config, RWKV6Config):
            raise TypeError(f"RWKV6: config must be an RWKV6Config, got {type(config).__name__}")
        self._config = config
        n_layer, n_embd, head_size, vocab_size = config.n_layer, config.n_embd, config.head_size, config.vocab_size
        self.n_layer, self.n_embd, self.head_size = n_layer, n_embd, head_size
        self.n_head, self.vocab_size = n_embd // head_size, vocab_size
        factory = dict(device=device, dtype=dtype)

        self.emb = nn.Embedding(vocab_size, n_embd, **factory)
        self.blocks = nn.ModuleList(
            Block.rwkv6(
                n_embd=n_embd,
                layer_id=i,
                n_layer=n_layer,
                embed_norm=i == 0,
                head_size=head_size,
                dim_ffn=config.dim_ffn,
                d_mix=config.d_mix,
                d_decay=config.d_decay,
                data_dependent_lerp=config.data_dependent_lerp,
                data_dependent_decay=config.data_dependent_decay,
                **factory,
            )
            for i in range(n_layer)
        )
        self.ln_out = nn.LayerNorm(n_embd, eps=LN_EPS, **factory)
        self.head = nn.Linear(n_embd, vocab_size, bias=False, **factory)
        with torch.no_grad():
            # A tiny embedding followed by ln0 (RWKV's "small init embedding"): the first updates move the
            # embedding far relative to its size, which trains fast and stably.
            self.emb.weight.uniform_(-1e-4, 1e-4)
            # ln_out gives unit-variance features; this makes the initial logits spread ~0.5.
            self.head.weight.normal_(0.0, 0.5 / n_embd**0.5)

    @property
    def config(self) -> RWKV6Config:
        """The configuration this model was built from (``RWKV6(model.config)`` builds another)."""
        return self._config

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

    def _check_state(self, state, batch_size: int) -> None:
        if state is None:
            return
        if not isinstance(state, RWKVState):
            raise TypeError(f"RWKV6.forward: state must be an RWKVState or None, got {type(state).__name__}")
        self.check_state(state, batch_size)

    def check_state(self, state: RWKVState, batch_size: int) -> None:
        """Raise a ValueError naming the first tensor of ``state`` whose shape does not fit this model."""
        if len(state) != self.n_layer:
            raise ValueError(f"RWKV6.forward: state has {len(state)} layers but the model has {self.n_layer}")
        b, c, h, n = batch_size, self.n_embd, self.n_head, self.head_size
        for i, layer in enumerate(state):
            want = {"att_shift": (b, c), "wkv": (b, h, n, n), "ffn_shift": (b, c)}
            for name, shape in want.items():
                got = tuple(getattr(layer, name).shape)
                if got != shape:
                    raise ValueError(
                        f"RWKV6.forward: state[{i}].{name} must be {list(shape)} for a batch of {b} "
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

        A wrapper that needs to act between blocks (e.g. reorder image tokens per layer) runs the same loop::

            for i, block in enumerate(model.blocks):
                x, layer_state = block(x, None if state is None else state[i], return_state=True)
        """
        seq = {k: v for k, v in (("cu_seqlens", cu_seqlens), ("attention_mask", attention_mask)) if v is not None}
        layers = []
        for i, block in enumerate(self.blocks):
            x, layer_state = block(x, None if state is None else state[i], return_state=True, **seq)
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
        """Logits for a sequence, continuing from ``state``.

        Args:
            input_ids: [b, t] token ids (int64); or
            inputs_embeds: [b, t, c] embeddings (e.g. text and image embeddings interleaved). Exactly one.
            state: the ``RWKVState`` after the tokens before these (None: a fresh sequence).
            chunk_size: read the sequence ``chunk_size`` tokens at a time through all blocks, carrying the
                state; without gradients the activation memory is then bounded by the chunk, not by t.
                The result equals one pass (up to float rounding).
            logits_to_keep: 0 for logits at every position, k > 0 for the last k only ([b, k, v]); a
                prefill needs just the last one, and [b, t, v] logits are the largest tensor of a long prompt.
            labels: [b, t] int targets aligned with the inputs (e.g. ``input_ids.clone()``), -100 where not
                scored; shifted inside, so ``logits[:, i]`` is scored against ``labels[:, i + 1]`` (the first
                label is never a target). Gives ``out.loss``; needs ``logits_to_keep=0``.
            attention_mask: [b, t] 1 for tokens and 0 for padding, on the left (as for generation), the right,
                or both; each row's tokens one contiguous run. Padded steps leave the recurrent state as it is
                (k = 0 and no decay there, and the token shift skips them), so a row's logits at its tokens
                equal that row run alone and ``out.state`` row i is the state after row i's last token.
                Padded positions are never scored (nor a left-padded row's first token, which has no
                predecessor in the row).
            cu_seqlens: [N + 1] offsets of N sequences packed into one row (input_ids [1, T]; no padding;
                ``rwkv_vision.ops.pack_offsets``): each sequence is read from its own state (``state`` with N
                rows, or zeros) and ``out.state`` has one row per sequence; the logits of each sequence equal
                the sequence run alone, and with labels no target crosses a boundary (each sequence's first
                label is ignored). Not with ``attention_mask`` or ``chunk_size``.

        Returns:
            a :class:`~rwkv_vision.models.output.ModelOutput`: ``.logits`` [b, t, v] (or [b, k, v]), ``.state``
            (the new ``RWKVState``), ``.loss`` (None without labels); ``logits, state = model(...)`` unpacks.
        """
        reject_unknown_keywords("RWKV6.forward", unknown, _FORWARD_KEYWORDS)
        if (input_ids is None) == (inputs_embeds is None):
            which = "both" if input_ids is not None else "neither"
            raise ValueError(
                f"RWKV6.forward: pass exactly one of input_ids [b, t] or inputs_embeds [b, t, c]; got {which}"
            )
        if input_ids is not None:
            if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
                shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
                raise ValueError(
                    f"RWKV6.forward: input_ids must be a [b, t] tensor (use ids.unsqueeze(0) for one sequence), "
                    f"got {shape}"
                )
            if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
                raise TypeError(f"RWKV6.forward: input_ids must be an integer tensor, got {input_ids.dtype}")
            if input_ids.numel():
                # Checked here (one device sync) because an out-of-range id on CUDA is an opaque device assert.
                low, high = (int(v) for v in torch.stack(torch.aminmax(input_ids)).tolist())
                if low < 0 or high >= self.vocab_size:
                    raise ValueError(
                        f"RWKV6.forward: input_ids must be in [0, vocab_size = {self.vocab_size}), got values in "
                        f"[{low}, {high}]"
                    )
            b, t = input_ids.shape
        else:
            embeds = inputs_embeds
            if not isinstance(embeds, torch.Tensor) or embeds.dim() != 3 or embeds.shape[-1] != self.n_embd:
                shape = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
                raise ValueError(f"RWKV6.forward: inputs_embeds must be [b, t, c = {self.n_embd}], got {shape}")
            b, t, _ = inputs_embeds.shape
            inputs_embeds = inputs_embeds.to(self.emb.weight.dtype)
        if t == 0:
            raise ValueError("RWKV6.forward: the sequence is empty (t = 0); pass at least one token")
        if chunk_size is None:
            chunk_size = t
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"RWKV6.forward: chunk_size must be a positive int or None, got {chunk_size!r}")
        if not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise ValueError(f"RWKV6.forward: logits_to_keep must be an int >= 0, got {logits_to_keep!r}")
        rows = b
        if cu_seqlens is not None:
            if attention_mask is not None:
                raise ValueError("RWKV6.forward: pass cu_seqlens (packed) or attention_mask (padded), not both")
            if chunk_size != t:
                raise ValueError("RWKV6.forward: chunk_size cannot split packed sequences (cu_seqlens); leave it None")
            rows = check_cu_seqlens(cu_seqlens, b, t, "RWKV6.forward")
        self._check_state(state, rows)
        mask = padding_mask("RWKV6.forward", attention_mask, b, t)
        if labels is not None and logits_to_keep:
            raise ValueError("RWKV6.forward: labels score every position; pass logits_to_keep=0 with them")

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
                raise ValueError(f"RWKV6.forward: labels must be [b, t] = {[b, t]} like the inputs, got {got}")
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

    def check_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Raise ``StateDictError`` listing every key of ``state_dict`` that does not fit this model."""
        from ..checkpoint.diff import check_state_dict

        check_state_dict(self, state_dict)

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """The parameters under their official names (without ``rwkv.``): the names are the module's own."""
        return dict(self.state_dict())
