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

import re
from typing import Mapping

import torch
from torch import nn

from ..layers.block import LN_EPS, Block
from ..layers.channel_mix import default_dim_ffn
from ..state import RWKVState

__all__ = ["RWKV6", "StateDictError", "config_from_official_state_dict"]


class StateDictError(ValueError):
    """A state dict that does not fit the model; lists every missing, unexpected and mis-shaped key.

    Attributes: ``missing`` (list of keys), ``unexpected`` (list of keys), ``mismatched`` (list of
    (key, shape in the state dict, shape the model expects)).
    """

    def __init__(self, missing, unexpected, mismatched, hint: str = ""):
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
        lines = [
            f"state dict does not match the model: {len(self.missing)} missing, {len(self.unexpected)} "
            f"unexpected, {len(self.mismatched)} mis-shaped key(s)"
        ]
        lines += [f"  missing:    {k}" for k in self.missing]
        lines += [f"  unexpected: {k}" for k in self.unexpected]
        lines += [f"  mis-shaped: {k}: got {list(got)}, expected {list(want)}" for k, got, want in self.mismatched]
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))


def _natural_key(key: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def config_from_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """The ``RWKV6`` keyword arguments of an official "x060" state dict (keys without ``rwkv.``).

    Every size comes from tensor shapes: n_layer (block indices), n_embd and vocab_size (``emb.weight``),
    heads and head size (``time_faaaa`` [h, n]), dim_ffn (``ffn.key.weight``), d_mix (``time_maa_w1``
    [c, 5*d_mix]) and d_decay (``time_decay_w1`` [c, d_decay]), from the first block that has the key. The lerp
    and the decay are data-dependent if any block has their LoRA tensors (the static variants have none).
    """

    def dim(name: str, *sources: tuple[str, int, int]) -> int:
        # The first (key, axis, divisor) present gives the size; later ones are fallbacks for a missing key
        # (which the strict load then reports together with every other offending key).
        for key, axis, div in sources:
            if key in state_dict and state_dict[key].dim() > axis:
                return state_dict[key].shape[axis] // div
        keys = [key for key, _, _ in sources]
        raise StateDictError([], [], [], hint=f"cannot infer {name}: none of the keys {keys} is present")

    layer_ids = {int(m.group(1)) for key in state_dict for m in [re.match(r"blocks\.(\d+)\.", key)] if m}
    if not layer_ids:
        prefixed = any(key.startswith("rwkv.") for key in state_dict)
        hint = " (its keys start with 'rwkv.': strip that prefix first)" if prefixed else ""
        raise StateDictError([], [], [], hint=f"no 'blocks.{{i}}.*' keys: not an RWKV-6 state dict{hint}")
    layers = sorted(layer_ids)

    def in_blocks(suffix: str, axis: int, div: int = 1) -> list[tuple[str, int, int]]:
        return [(f"blocks.{i}.{suffix}", axis, div) for i in layers]

    def anywhere(*suffixes: str) -> bool:
        return any(f"blocks.{i}.{s}" in state_dict for i in layers for s in suffixes)

    data_dependent_lerp = anywhere("att.time_maa_x", "att.time_maa_w1", "att.time_maa_w2")
    data_dependent_decay = anywhere("att.time_decay_w1", "att.time_decay_w2")
    n_embd = dim("n_embd", ("emb.weight", 1, 1), ("head.weight", 1, 1), *in_blocks("ln1.weight", 0))
    head_size = dim("head_size", *in_blocks("att.time_faaaa", 1))
    config = dict(
        n_layer=layers[-1] + 1,
        n_embd=n_embd,
        head_size=head_size,
        dim_ffn=dim("dim_ffn", *in_blocks("ffn.key.weight", 0), *in_blocks("ffn.value.weight", 1)),
        vocab_size=dim("vocab_size", ("emb.weight", 0, 1), ("head.weight", 0, 1)),
        data_dependent_lerp=data_dependent_lerp,
        data_dependent_decay=data_dependent_decay,
    )
    if data_dependent_lerp:
        config["d_mix"] = dim("d_mix", *in_blocks("att.time_maa_w1", 1, 5), *in_blocks("att.time_maa_w2", 1))
    if data_dependent_decay:
        config["d_decay"] = dim("d_decay", *in_blocks("att.time_decay_w1", 1), *in_blocks("att.time_decay_w2", 0))
    if n_embd % head_size != 0:
        raise StateDictError(
            [], [], [], hint=f"n_embd {n_embd} (from the embedding) is not a multiple of head_size {head_size} "
            f"(from att.time_faaaa)",
        )
    return config


class RWKV6(nn.Module):
    """The RWKV-6 language model.

    Args (keyword only):
        n_layer: number of blocks.
        n_embd: channels c (a multiple of head_size).
        head_size: n, channels per head (the CUDA kernel takes 32, 64, 128; the CPU kernel any).
        dim_ffn: channel-mix hidden size (default int(3.5*c)//32*32).
        d_mix, d_decay: ranks of the token-shift and decay LoRAs.
        vocab_size: v.
        data_dependent_lerp, data_dependent_decay: False gives the static RWKV-5-style variants (ablation).
        device, dtype: where and in what the parameters are made.

    Shapes: forward(input_ids [b, t] | inputs_embeds [b, t, c], state) -> (logits [b, t, v], RWKVState).
    """

    def __init__(
        self,
        *,
        n_layer: int,
        n_embd: int,
        head_size: int = 64,
        dim_ffn: int | None = None,
        d_mix: int = 32,
        d_decay: int = 64,
        vocab_size: int = 65536,
        data_dependent_lerp: bool = True,
        data_dependent_decay: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if n_layer < 1:
            raise ValueError(f"RWKV6: n_layer must be at least 1, got {n_layer}")
        if head_size <= 0 or n_embd % head_size != 0:
            raise ValueError(f"RWKV6: n_embd ({n_embd}) must be a multiple of head_size ({head_size})")
        dim_ffn = default_dim_ffn(n_embd) if dim_ffn is None else dim_ffn
        #: The keyword arguments that rebuild this model (no device/dtype): ``RWKV6(**model.config)``.
        self.config = dict(
            n_layer=n_layer, n_embd=n_embd, head_size=head_size, dim_ffn=dim_ffn, d_mix=d_mix, d_decay=d_decay,
            vocab_size=vocab_size, data_dependent_lerp=data_dependent_lerp, data_dependent_decay=data_dependent_decay,
        )
        self.n_layer, self.n_embd, self.head_size = n_layer, n_embd, head_size
        self.n_head, self.vocab_size = n_embd // head_size, vocab_size
        factory = dict(device=device, dtype=dtype)

        self.emb = nn.Embedding(vocab_size, n_embd, **factory)
        self.blocks = nn.ModuleList(
            Block(
                layer_id=i, n_layer=n_layer, n_embd=n_embd, head_size=head_size, dim_ffn=dim_ffn,
                d_mix=d_mix, d_decay=d_decay, data_dependent_lerp=data_dependent_lerp,
                data_dependent_decay=data_dependent_decay, **factory,
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

    # --- loading ------------------------------------------------------------------------------------------

    @classmethod
    def from_official_state_dict(
        cls, state_dict: Mapping[str, torch.Tensor], *, device=None, dtype=None
    ) -> "RWKV6":
        """Build a model from an official "x060" state dict (keys without the ``rwkv.`` prefix).

        Sizes are read from the tensor shapes (``config_from_official_state_dict``), then every key must be
        present with its shape and nothing else may be: otherwise a ``StateDictError`` lists every missing,
        unexpected and mis-shaped key. The parameters keep the state dict's dtype unless ``dtype`` is given,
        and share memory with its tensors when neither ``device`` nor ``dtype`` asks for a copy.
        """
        config = config_from_official_state_dict(state_dict)
        model = cls(**config, device="meta")  # no memory, no init: every tensor comes from the state dict
        model.check_state_dict(state_dict)
        model.load_state_dict(dict(state_dict), strict=True, assign=True)
        return model.to(device=device, dtype=dtype)

    def check_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Raise ``StateDictError`` listing every key of ``state_dict`` that does not fit this model."""
        expected = {key: tuple(t.shape) for key, t in self.state_dict().items()}
        missing = sorted(expected.keys() - state_dict.keys(), key=_natural_key)
        unexpected = sorted(state_dict.keys() - expected.keys(), key=_natural_key)
        mismatched = [
            (key, tuple(state_dict[key].shape), expected[key])
            for key in sorted(expected.keys() & state_dict.keys(), key=_natural_key)
            if tuple(state_dict[key].shape) != expected[key]
        ]
        if missing or unexpected or mismatched:
            hint = ""
            if any(key.startswith("rwkv.") for key in unexpected):
                hint = "hint: keys start with 'rwkv.'; strip that prefix (official checkpoints carry it)"
            raise StateDictError(missing, unexpected, mismatched, hint)

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """The parameters under their official names (without ``rwkv.``): the names are the module's own."""
        return dict(self.state_dict())

    # --- state --------------------------------------------------------------------------------------------

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> RWKVState:
        """A zero state (the state before any token): shift states in ``dtype`` (default: the model's)."""
        weight = self.emb.weight
        return RWKVState.zeros(
            n_layer=self.n_layer, batch_size=batch_size, n_embd=self.n_embd, n_head=self.n_head,
            head_size=self.head_size, device=device or weight.device, dtype=dtype or weight.dtype,
        )

    def _check_state(self, state, batch_size: int) -> None:
        if state is None:
            return
        if not isinstance(state, RWKVState):
            raise TypeError(f"RWKV6.forward: state must be an RWKVState or None, got {type(state).__name__}")
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

    def forward_blocks(self, x: torch.Tensor, state: RWKVState | None = None) -> tuple[torch.Tensor, RWKVState]:
        """All blocks: x [b, t, c] (embeddings) -> (hidden [b, t, c] before ln_out, new state).

        A wrapper that needs to act between blocks (e.g. reorder image tokens per layer) runs the same loop::

            for i, block in enumerate(model.blocks):
                x, layer_state = block(x, None if state is None else state[i])
        """
        layers = []
        for i, block in enumerate(self.blocks):
            x, layer_state = block(x, None if state is None else state[i])
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
    ) -> tuple[torch.Tensor, RWKVState]:
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

        Returns:
            logits [b, t, v] (or [b, k, v]) and the new ``RWKVState``.
        """
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
        self._check_state(state, b)

        first_kept = max(t - logits_to_keep, 0) if logits_to_keep else 0
        logits = []
        for start in range(0, t, chunk_size):
            end = min(start + chunk_size, t)
            x = self.embed(input_ids[:, start:end]) if input_ids is not None else inputs_embeds[:, start:end]
            x, state = self.forward_blocks(x, state)
            if end > first_kept:
                logits.append(self.unembed(x[:, max(first_kept - start, 0):]))
        return (logits[0] if len(logits) == 1 else torch.cat(logits, dim=1)), state
