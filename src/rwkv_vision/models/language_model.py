"""RWKVLanguageModel: what the RWKV-6 and RWKV-7 language models share (one library, two mixers).

Letter legend: b batch, t time, h heads, n head size, c channels, v vocabulary.

    x      = emb(input_ids)                    # [b, t, c]   (or inputs_embeds)
    x, new = forward_blocks(x, state)          # the subclass's blocks (RWKV-7 carries block 0's value)
    logits = head(ln_out(x))                   # [b, t, v]   (head is not tied to emb)

Both have the same embedding, output norm and head, the same :class:`~rwkv_vision.state.RWKVState`, and the
same ``forward`` (argument checks, chunked prefill, padding, packing, labels, ``logits_to_keep``). A subclass
gives its config class, its blocks (``_make_block``), its head initialisation (``_init_head``), its loop
over the blocks (``_run_blocks``, under the shared ``forward_blocks``), ``step``, and its official loading.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from ..layers.block import LN_EPS
from ..ops.cu_seqlens import check_cu_seqlens
from ..state import RWKVState
from .output import (
    IGNORE_INDEX,
    ModelOutput,
    mask_padded_labels,
    next_token_loss,
    padding_mask,
    reject_unknown_keywords,
)

__all__ = ["RWKVLanguageModel"]

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


class RWKVLanguageModel(nn.Module):
    """The parts of an RWKV language model that do not depend on the mixer; subclassed by ``RWKV6`` and
    ``RWKV7``, not built itself.

    Shapes: forward(input_ids [b, t] | inputs_embeds [b, t, c], state) -> ModelOutput(logits [b, t, v],
    RWKVState, loss); embed [b, t] -> [b, t, c]; unembed [b, t, c] -> [b, t, v].
    """

    #: The name errors start with ("RWKV6", "RWKV7").
    _name: ClassVar[str]
    #: The config class the constructor takes (and builds from keyword fields).
    config_class: ClassVar[type]
    #: RWKV6.forward took ``chunk_size=True`` / ``logits_to_keep=True`` as 1 before RWKV-7 tightened the
    #: check; kept per class so that no caller of either model sees a change.
    _bool_sizes_are_ints: ClassVar[bool] = False

    def __init__(self, config=None, *, device=None, dtype=None, **fields):
        super().__init__()
        name = self._name
        if config is None:
            config = self.config_class(**fields)
        elif fields:
            raise TypeError(f"{name}: pass a config or its fields, not both (got config and {sorted(fields)})")
        if not isinstance(config, self.config_class):
            raise TypeError(f"{name}: config must be an {self.config_class.__name__}, got {type(config).__name__}")
        self._config = config
        n_layer, n_embd, head_size, vocab_size = config.n_layer, config.n_embd, config.head_size, config.vocab_size
        self.n_layer, self.n_embd, self.head_size = n_layer, n_embd, head_size
        self.n_head, self.vocab_size = n_embd // head_size, vocab_size
        factory = dict(device=device, dtype=dtype)

        self.emb = nn.Embedding(vocab_size, n_embd, **factory)
        self.blocks = nn.ModuleList(self._make_block(config, i, factory) for i in range(n_layer))
        self.ln_out = nn.LayerNorm(n_embd, eps=LN_EPS, **factory)
        self.head = nn.Linear(n_embd, vocab_size, bias=False, **factory)
        with torch.no_grad():
            # A tiny embedding followed by ln0 (RWKV's "small init embedding"): the first updates move the
            # embedding far relative to its size, which trains fast and stably.
            self.emb.weight.uniform_(-1e-4, 1e-4)
            self._init_head()

    def _make_block(self, config, layer_id: int, factory: dict[str, Any]) -> nn.Module:
        """Block ``layer_id`` of the model (block 0 applies ln0 to the embeddings)."""
        raise NotImplementedError

    def _init_head(self) -> None:
        """Initialise ``self.head.weight`` (called under no_grad, after the embedding)."""
        raise NotImplementedError

    @property
    def config(self):
        """The configuration this model was built from (``RWKV6(model.config)`` or ``RWKV7(model.config)``
        builds another)."""
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
        self._check_state_type(state)
        self.check_state(state, batch_size)

    def _check_state_type(self, state) -> None:
        if not isinstance(state, RWKVState):
            raise TypeError(f"{self._name}.forward: state must be an RWKVState or None, got {type(state).__name__}")

    def check_state(self, state: RWKVState, batch_size: int) -> None:
        """Raise a ValueError naming the first tensor of ``state`` whose shape does not fit this model."""
        where = f"{self._name}.forward"
        if len(state) != self.n_layer:
            raise ValueError(f"{where}: state has {len(state)} layers but the model has {self.n_layer}")
        b, c, h, n = batch_size, self.n_embd, self.n_head, self.head_size
        want = {"att_shift": (b, c), "wkv": (b, h, n, n), "ffn_shift": (b, c)}
        for i, layer in enumerate(state):
            for name, shape in want.items():
                got = tuple(getattr(layer, name).shape)
                if got != shape:
                    raise ValueError(
                        f"{where}: state[{i}].{name} must be {list(shape)} for a batch of {b} "
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

        A wrapper that needs to act between blocks (e.g. reorder image tokens per layer) runs the same loop;
        RWKV-6's::

            for i, block in enumerate(model.blocks):
                x, layer_state = block(x, None if state is None else state[i], return_state=True)

        RWKV-7's, carrying block 0's value::

            v_first = None
            for i, block in enumerate(model.blocks):
                x, layer_state, v_first = block(x, None if state is None else state[i], return_state=True,
                                                v_first=v_first, return_v_first=True)
        """
        seq = {k: v for k, v in (("cu_seqlens", cu_seqlens), ("attention_mask", attention_mask)) if v is not None}
        return self._run_blocks(x, state, seq)

    def _run_blocks(self, x: torch.Tensor, state: RWKVState | None, seq: dict) -> tuple[torch.Tensor, RWKVState]:
        """The subclass's loop over its blocks; ``seq``: the keyword arguments every block takes."""
        raise NotImplementedError

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the last hidden states: x [b, t, c] -> head(ln_out(x)) [b, t, v]."""
        return self.head(self.ln_out(x))

    # --- the model ----------------------------------------------------------------------------------------

    def _is_size(self, value: Any) -> bool:
        return isinstance(value, int) and (self._bool_sizes_are_ints or not isinstance(value, bool))

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
                (k = 0 and no decay there, for RWKV-7 no low-rank update either, and the token shift skips
                them), so a row's logits at its tokens equal that row run alone and ``out.state`` row i is the
                state after row i's last token. Padded positions are never scored (nor a left-padded row's
                first token, which has no predecessor in the row).
            cu_seqlens: [N + 1] offsets of N sequences packed into one row (input_ids [1, T]; no padding;
                ``rwkv_vision.ops.pack_offsets``): each sequence is read from its own state (``state`` with N
                rows, or zeros) and ``out.state`` has one row per sequence; the logits of each sequence equal
                the sequence run alone, and with labels no target crosses a boundary (each sequence's first
                label is ignored). Not with ``attention_mask`` or ``chunk_size``.

        Returns:
            a :class:`~rwkv_vision.models.output.ModelOutput`: ``.logits`` [b, t, v] (or [b, k, v]), ``.state``
            (the new ``RWKVState``), ``.loss`` (None without labels); ``logits, state = model(...)`` unpacks.
        """
        where = f"{self._name}.forward"
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
                # Checked here (one device sync) because an out-of-range id on CUDA is an opaque device assert.
                low, high = (int(v) for v in torch.stack(torch.aminmax(input_ids)).tolist())
                if low < 0 or high >= self.vocab_size:
                    raise ValueError(
                        f"{where}: input_ids must be in [0, vocab_size = {self.vocab_size}), got values in "
                        f"[{low}, {high}]"
                    )
            b, t = input_ids.shape
        else:
            embeds = inputs_embeds
            if not isinstance(embeds, torch.Tensor) or embeds.dim() != 3 or embeds.shape[-1] != self.n_embd:
                shape = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
                raise ValueError(f"{where}: inputs_embeds must be [b, t, c = {self.n_embd}], got {shape}")
            b, t, _ = inputs_embeds.shape
            inputs_embeds = inputs_embeds.to(self.emb.weight.dtype)
        if t == 0:
            raise ValueError(f"{where}: the sequence is empty (t = 0); pass at least one token")
        chunk_size = t if chunk_size is None else chunk_size
        if not self._is_size(chunk_size) or chunk_size < 1:
            raise ValueError(f"{where}: chunk_size must be a positive int or None, got {chunk_size!r}")
        if not self._is_size(logits_to_keep) or logits_to_keep < 0:
            raise ValueError(f"{where}: logits_to_keep must be an int >= 0, got {logits_to_keep!r}")
        rows = b
        if cu_seqlens is not None:
            if attention_mask is not None:
                raise ValueError(f"{where}: pass cu_seqlens (packed) or attention_mask (padded), not both")
            if chunk_size != t:
                raise ValueError(f"{where}: chunk_size cannot split packed sequences (cu_seqlens); leave it None")
            rows = check_cu_seqlens(cu_seqlens, b, t, where)
        self._check_state(state, rows)
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

    # --- checking state dicts (implemented in rwkv_vision.checkpoint) -------------------------------------

    def check_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Raise ``StateDictError`` listing every key of ``state_dict`` that does not fit this model."""
        from ..checkpoint.diff import check_state_dict

        check_state_dict(self, state_dict)

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """The parameters under their official names (x060 for RWKV-6, x070 for RWKV-7; without ``rwkv.``):
        the names are the module's own."""
        return dict(self.state_dict())
