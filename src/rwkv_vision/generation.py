"""Text generation for recurrent models: prefill once, then O(1) work per new token from the cached state.

Letter legend: b batch, t time, v vocabulary.

Works with any model called as ``model(input_ids=ids [b, t], state=state) -> (logits [b, t, v], state)``
(``RWKV6``, ``RWKV7``, or a multimodal wrapper whose state also came from a prefill it ran itself: pass that
state and the last logits as ``state=`` and ``next_logits=``).

The loop, per step: pick a token from the last logits (greedy, or sampled with temperature / top-k / top-p),
hand it to the streamer, stop a row when it picks a stop token (the stop token is kept in its output, as the
original VisualRWKV does), then feed the picked tokens back in as a [b, 1] batch. Rows that have stopped keep
their state unchanged (when the state has ``where``, as ``RWKVState`` does) while the others go on.
"""

from __future__ import annotations

import inspect
import math
import numbers
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

__all__ = [
    "GenerationConfig",
    "GenerationOutput",
    "generate",
    "make_config",
    "decode_loop",
    "sample_next_token",
    "TextStreamer",
    "CHAT_STOP_TOKENS",
]

#: The stop tokens of the RWKV World chat format and of VisualRWKV: "\n\n" (261) and end-of-text (0).
CHAT_STOP_TOKENS = (261, 0)


@dataclass
class GenerationConfig:
    """How to pick tokens and when to stop.

    Attributes:
        max_new_tokens: the most tokens generated per row (the stop token counts).
        do_sample: False for greedy decoding (argmax); True to sample with the settings below.
        temperature: divides the logits before sampling (> 0; 0 means greedy).
        top_k: sample among the k most likely tokens only (0: all).
        top_p: sample among the most likely tokens whose probabilities add up to top_p (1.0: all).
        stop_tokens: ids that end a row; the stop token is included in the output. E.g. CHAT_STOP_TOKENS.
            ``eos_token_id`` (an int or a list, transformers' name) is accepted as an alias wherever a
            config field is (``generate(..., eos_token_id=261)``).
        prefill_chunk_size: read the prompt this many tokens at a time (bounded memory for long prompts).
        pad_token_id: the id that pads rows that stopped early in ``GenerationOutput.sequences`` (None: the
            row's stop token, or 0 if it has none).
    """

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    stop_tokens: tuple[int, ...] = ()
    prefill_chunk_size: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        def is_int(v):
            return isinstance(v, numbers.Integral) and not isinstance(v, bool)

        def is_number(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        where = "GenerationConfig"
        if is_int(self.stop_tokens):
            self.stop_tokens = (self.stop_tokens,)
        # A string is a sequence too ("261" would become three tokens): only ints, one or a list of them.
        if isinstance(self.stop_tokens, (str, bytes)) or not isinstance(self.stop_tokens, (tuple, list, range)):
            raise TypeError(f"{where}: stop_tokens must be an int or a list of ints, got {self.stop_tokens!r}")
        if not all(is_int(t) and t >= 0 for t in self.stop_tokens):
            raise ValueError(f"{where}: stop_tokens must hold token ids (ints >= 0), got {self.stop_tokens!r}")
        self.stop_tokens = tuple(int(t) for t in self.stop_tokens)
        if not is_int(self.max_new_tokens) or self.max_new_tokens < 0:
            raise ValueError(f"{where}: max_new_tokens must be an int >= 0, got {self.max_new_tokens!r}")
        if not isinstance(self.do_sample, bool):
            raise TypeError(f"{where}: do_sample must be True or False, got {self.do_sample!r}")
        if not is_number(self.temperature) or self.temperature < 0:
            raise ValueError(f"{where}: temperature must be a finite number >= 0, got {self.temperature!r}")
        if not is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"{where}: top_k must be an int >= 0, got {self.top_k!r}")
        if not is_number(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"{where}: top_p must be a number in (0, 1], got {self.top_p!r}")
        if self.prefill_chunk_size is not None and (not is_int(self.prefill_chunk_size) or self.prefill_chunk_size < 1):
            raise ValueError(
                f"{where}: prefill_chunk_size must be a positive int or None, got {self.prefill_chunk_size!r}"
            )
        if self.pad_token_id is not None and (not is_int(self.pad_token_id) or self.pad_token_id < 0):
            raise ValueError(
                f"{where}: pad_token_id must be a token id (an int >= 0) or None, got {self.pad_token_id!r}"
            )


@dataclass
class GenerationOutput:
    """What ``generate`` returns.

    Attributes:
        tokens: per row, the generated ids (a stop token, if reached, is the last one).
        finish_reasons: per row, "stop" (a stop token) or "length" (max_new_tokens).
        state: the model state after the prompt and every generated token of a row except its last one;
            to continue a conversation, feed that last token (e.g. the stop token "\\n\\n") first. (A row that
            stopped early keeps its state only if the state has ``where``; otherwise it ran on.)
    """

    tokens: list[list[int]]
    finish_reasons: list[str]
    state: Any = field(repr=False, default=None)
    pad_token_id: int | None = field(repr=False, default=None)

    @property
    def sequences(self) -> torch.Tensor:
        """The generated ids as one int64 tensor ``[b, n]`` (n: the longest row), rows that stopped early
        right-padded with ``pad_token_id`` (default: the row's own stop token; 0 for an empty row).

        Unlike transformers' ``sequences``, the prompt is *not* included (a VisualRWKV prompt holds image
        placeholders, which no tokenizer decodes): this is transformers' ``out.sequences[:, prompt_len:]``.
        ``tokens`` has the same ids per row without padding; ``finish_reasons`` says why each row ended."""
        n = max((len(row) for row in self.tokens), default=0)
        rows = []
        for row in self.tokens:
            pad = self.pad_token_id if self.pad_token_id is not None else (row[-1] if row else 0)
            rows.append(row + [pad] * (n - len(row)))
        return torch.tensor(rows, dtype=torch.long).view(len(self.tokens), n)

    @property
    def stop_reasons(self) -> list[str]:
        """Alias of ``finish_reasons``: per row, "stop" (a stop token) or "length" (max_new_tokens)."""
        return self.finish_reasons


_CONFIG_FIELDS = tuple(f.name for f in fields(GenerationConfig))
#: Keyword names from transformers' ``generate`` with the same meaning here.
_ALIASES = {"eos_token_id": "stop_tokens"}


def make_config(
    config: GenerationConfig | None, overrides: dict[str, Any], *, where: str = "generate", extra=()
) -> GenerationConfig:
    """``config`` (default: ``GenerationConfig()``) with keyword ``overrides`` applied.

    ``eos_token_id`` (int or list) is an alias of ``stop_tokens``; ``attention_mask`` raises
    NotImplementedError unless it masks nothing (:func:`generate` takes it out before, and prefills a padded
    batch with it); any other unknown keyword raises a TypeError naming it and the accepted ones (``extra``:
    the caller's own keywords, listed in that message)."""
    overrides = dict(overrides)
    mask = overrides.pop("attention_mask", None)
    if mask is not None and not bool(torch.as_tensor(mask).bool().all()):
        raise NotImplementedError(
            f"{where}: padded batches (an attention_mask with zeros) are not supported in generation; pass the "
            "prompts as a list of lists of ids (rwkv_vision.generate reads prompts of different lengths one by "
            "one and decodes them together), or generate row by row"
        )
    for alias, name in _ALIASES.items():
        if alias in overrides:
            value = overrides.pop(alias)
            if name in overrides and overrides[name] != value:
                raise ValueError(f"{where}: pass {alias} or {name}, not both (they are the same setting)")
            overrides[name] = () if value is None else value
    unknown = sorted(set(overrides) - set(_CONFIG_FIELDS))
    if unknown:
        accepted = [*extra, *_CONFIG_FIELDS, *_ALIASES, "attention_mask"]
        raise TypeError(
            f"{where}: unexpected keyword argument(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(accepted)}"
        )
    return replace(config or GenerationConfig(), **overrides)


def sample_next_token(
    logits: torch.Tensor, config: GenerationConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pick one token per row: logits [b, v] -> ids [b] (int64)."""
    logits = logits.float()
    if not config.do_sample or config.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / config.temperature
    if config.top_k > 0:
        kth = torch.topk(logits, min(config.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the more likely ones already reach top_p; the most likely one always stays.
        drop = probs.cumsum(dim=-1) - probs >= config.top_p
        drop[:, 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def decode_loop(
    next_logits: torch.Tensor,
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    config: GenerationConfig,
    *,
    streamer: Callable[[int, int], None] | None = None,
    generator: torch.Generator | None = None,
    on_stop: Callable[[int], None] | None = None,
) -> tuple[list[list[int]], list[str]]:
    """The token loop every ``generate`` of the library runs, whatever holds the state.

    Per step: pick a token per row from ``next_logits`` [b, v], hand it to ``streamer(row, token)``, stop a
    row at a stop token (kept in its output; ``on_stop(row)`` is called before any further step), then
    ``step(picked [b], running [b] bool) -> next logits [b, v]`` feeds the picked tokens back. The last picked
    token is not fed: its logits would never be used.

    Returns:
        (tokens per row, finish reason per row: "stop" or "length").
    """
    logits = next_logits
    b = logits.shape[0]
    tokens: list[list[int]] = [[] for _ in range(b)]
    reasons = ["length"] * b
    stop = set(config.stop_tokens)
    for i in range(config.max_new_tokens):
        picked = sample_next_token(logits, config, generator)
        for row, token in enumerate(picked.tolist()):  # one device sync per step, not per row
            if reasons[row] == "stop":
                continue
            tokens[row].append(token)
            if streamer is not None:
                streamer(row, token)
            if token in stop:
                reasons[row] = "stop"
                if on_stop is not None:
                    on_stop(row)
        if all(r == "stop" for r in reasons) or i == config.max_new_tokens - 1:
            break
        running = torch.tensor([r != "stop" for r in reasons], device=logits.device)
        logits = step(picked, running)
    return tokens, reasons


class TextStreamer:
    """A streamer that turns token ids into text as they arrive, one incremental UTF-8 decoder per row.

    ``generate(..., streamer=TextStreamer(tokenizer))`` prints the text as it is generated; a character split
    across tokens is printed once its last byte arrives. ``on_text(row, text)`` replaces printing.
    ``texts`` holds the text so far per row.
    """

    def __init__(self, tokenizer, on_text: Callable[[int, str], None] | None = None):
        self.tokenizer = tokenizer
        self.on_text = on_text or (lambda row, text: print(text, end="", file=sys.stdout, flush=True))
        self.texts: dict[int, str] = {}
        self._decoders: dict[int, Any] = {}

    def __call__(self, row: int, token: int) -> None:
        if row not in self._decoders:
            make = getattr(self.tokenizer, "stream_decoder", None)
            self._decoders[row] = make() if make else None
            self.texts[row] = ""
        decoder = self._decoders[row]
        text = decoder.decode([token]) if decoder is not None else self.tokenizer.decode([token])
        if text:
            self.texts[row] += text
            self.on_text(row, text)


def _accepts(model, name: str) -> bool:
    forward = getattr(model, "forward", model)
    try:
        params = inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False
    # A named parameter only: the library's models take **kwargs just to reject unknown names clearly, and
    # what is passed here (chunk_size, logits_to_keep) is an optimisation a model may go without.
    return name in params and params[name].kind is not inspect.Parameter.VAR_KEYWORD


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


def _as_rows(input_ids) -> list[list[int]] | torch.Tensor:
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        if input_ids.dim() != 2:
            raise ValueError(f"generate: input_ids must be [t] or [b, t], got shape {tuple(input_ids.shape)}")
        return input_ids
    if isinstance(input_ids, Sequence) and input_ids and all(isinstance(i, int) for i in input_ids):
        return [list(input_ids)]
    if isinstance(input_ids, Sequence) and input_ids and all(isinstance(r, Sequence) for r in input_ids):
        return [list(r) for r in input_ids]
    raise ValueError("generate: input_ids must be a tensor [t] or [b, t], a list of ints, or a list of lists of ints")


def _left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths as one left-padded batch: ids [b, t] (padding id 0) and mask [b, t]."""
    t = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (t - len(r)) + r for r in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (t - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    return ids, mask


@torch.no_grad()
def _prefill(model, rows, state, config: GenerationConfig, device, mask=None) -> tuple[torch.Tensor, Any]:
    kwargs = {}
    if config.prefill_chunk_size is not None and _accepts(model, "chunk_size"):
        kwargs["chunk_size"] = config.prefill_chunk_size
    if _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = 1  # only the last position's logits are needed

    def run(ids: torch.Tensor, row_state):
        if ids.shape[1] == 0:
            raise ValueError("generate: a prompt is empty; give at least one token (or pass state and next_logits)")
        logits, new_state = model(input_ids=ids.to(device), state=row_state, **kwargs)
        return logits[:, -1], new_state

    if mask is not None:
        if not isinstance(rows, torch.Tensor):
            raise ValueError("generate: attention_mask goes with input_ids as one [b, t] tensor")
        mask = torch.as_tensor(mask)
        if tuple(mask.shape) != tuple(rows.shape):
            raise ValueError(f"generate: attention_mask must be [b, t] = {list(rows.shape)}, got {list(mask.shape)}")
        if bool(mask.bool().all()):
            mask = None
    if mask is not None:
        if not _accepts(model, "attention_mask"):
            make_config(None, {"attention_mask": mask})  # raises: this model cannot hide padding
        mask = mask.to(device).long()
        if not bool(mask[:, -1].all()):
            # Some row is padded on the right: its next-token logits sit at its last token, not at t - 1.
            kwargs.pop("logits_to_keep", None)
        logits, new_state = model(input_ids=rows.to(device), state=state, attention_mask=mask, **kwargs)
        steps = torch.arange(mask.shape[1], device=mask.device)
        last = torch.where(mask.bool(), steps, -1).amax(dim=1)
        if bool((last < 0).any()):
            raise ValueError("generate: a row of attention_mask has no tokens; give each prompt at least one")
        if logits.shape[1] == 1:
            return logits[:, -1], new_state
        return logits[torch.arange(logits.shape[0], device=logits.device), last.to(logits.device)], new_state

    if isinstance(rows, torch.Tensor) or len({len(r) for r in rows}) == 1:
        ids = rows if isinstance(rows, torch.Tensor) else torch.tensor(rows, dtype=torch.long)
        return run(ids, state)
    if _accepts(model, "attention_mask") and all(rows):
        # Ragged prompts in one call: left-padded, the padding masked (its steps leave the state alone), so
        # every row ends at the last position and its state is the row's own.
        ids, mask = _left_padded(rows)
        return _prefill(model, ids, state, config, device, mask)
    # A model without attention_mask: each prompt is read on its own and the states joined along the batch.
    if state is not None and not hasattr(state, "select"):
        raise ValueError("generate: prompts of different lengths need a state with select() (or no state)")
    results = [
        run(torch.tensor([r], dtype=torch.long), None if state is None else state.select(i)) for i, r in enumerate(rows)
    ]
    states = [s for _, s in results]
    if not hasattr(type(states[0]), "cat"):
        raise ValueError("generate: prompts of different lengths need a state class with cat(); pad them instead")
    return torch.cat([logit for logit, _ in results]), type(states[0]).cat(states)


@torch.no_grad()
def generate(
    model,
    input_ids=None,
    config: GenerationConfig | None = None,
    *,
    state=None,
    next_logits: torch.Tensor | None = None,
    streamer: Callable[[int, int], None] | None = None,
    generator: torch.Generator | None = None,
    **overrides,
) -> GenerationOutput:
    """Generate tokens after a prompt, decoding from the cached state one token per step.

    Args:
        model: called as ``model(input_ids=[b, t] int64, state=...) -> (logits [b, t, v], state)``.
        input_ids: the prompt: a tensor [t] or [b, t], a list of ints, or a list of lists (prompts of different
            lengths: for a model whose forward takes ``attention_mask``, e.g. ``RWKV6`` or ``RWKV7``, read in one
            call, left-padded and masked; otherwise one by one, their states joined). Or None, with ``next_logits``.
        config: a ``GenerationConfig``; keyword ``overrides`` replace its fields (``max_new_tokens=20``,
            ``do_sample=True``; ``eos_token_id`` is an alias of ``stop_tokens``). Unknown keywords raise a
            TypeError. ``attention_mask`` [b, t] (1 tokens, 0 padding; left padding as transformers users
            pad, right, or both) with a [b, t] tensor prefills the padded batch in one call, each row as if
            alone; a model whose forward has no ``attention_mask`` raises NotImplementedError for it.
        state: the state to start from (None: a fresh sequence). With ``next_logits`` [b, v] and no
            ``input_ids``, the prompt has already been read (e.g. a multimodal prefill) and decoding starts.
        streamer: called as ``streamer(row, token_id)`` for every new token, as soon as it is picked.
        generator: a ``torch.Generator`` for reproducible sampling.

    Returns:
        ``GenerationOutput`` (``tokens`` per row, stop token included, and ``sequences`` as one padded
        tensor; ``finish_reasons``; the final state).
    """
    attention_mask = overrides.pop("attention_mask", None)
    config = make_config(
        config, overrides, extra=("input_ids", "config", "state", "next_logits", "streamer", "generator")
    )
    device = _model_device(model)
    if input_ids is None:
        if next_logits is None or state is None:
            raise ValueError("generate: pass input_ids, or state and next_logits from a prefill you ran")
        if next_logits.dim() != 2:
            raise ValueError(f"generate: next_logits must be [b, v], got shape {tuple(next_logits.shape)}")
        logits = next_logits
    else:
        if next_logits is not None:
            raise ValueError("generate: pass input_ids or next_logits, not both")
        logits, state = _prefill(model, _as_rows(input_ids), state, config, device, attention_mask)

    current = [state]

    def step(picked: torch.Tensor, running: torch.Tensor) -> torch.Tensor:
        logits, new_state = model(input_ids=picked.view(-1, 1), state=current[0])
        if not bool(running.all()) and hasattr(new_state, "where"):
            new_state = new_state.where(running, current[0])  # stopped rows keep their state
        current[0] = new_state
        return logits[:, -1]

    tokens, reasons = decode_loop(logits, step, config, streamer=streamer, generator=generator)
    state = current[0]
    return GenerationOutput(tokens=tokens, finish_reasons=reasons, state=state, pad_token_id=config.pad_token_id)
