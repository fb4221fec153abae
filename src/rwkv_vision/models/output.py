"""What the models' ``forward`` returns: logits, state and (with ``labels``) the loss, by name or unpacked.

``out = model(ids)`` gives ``out.logits``, ``out.state`` and ``out.loss``; ``logits, state = model(ids)``
and ``model(ids)[0]`` keep working as with the plain ``(logits, state)`` tuple of earlier releases (the loss
is read by name only, so unpacking always yields exactly two values).

Labels follow the transformers convention: ``labels`` is aligned with the *inputs* (a copy of ``input_ids``
with ``IGNORE_INDEX`` = -100 where no loss is wanted); the model shifts them itself, so position ``i``'s
logits are scored against ``labels[i + 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "IGNORE_INDEX",
    "ModelOutput",
    "next_token_loss",
    "check_attention_mask",
    "padding_mask",
    "mask_padded_labels",
    "reject_unknown_keywords",
]

#: Labels equal to this are not scored (``torch.nn.functional.cross_entropy``'s default ``ignore_index``).
IGNORE_INDEX = -100


@dataclass(eq=False)
class ModelOutput:
    """The output of ``RWKV6.forward`` and ``VisualRWKV.forward``.

    Attributes:
        logits: ``[b, T, v]`` (or the last ``logits_to_keep`` positions).
        state: the ``RWKVState`` after the sequence.
        loss: the mean next-token cross entropy over the scored positions when ``labels`` were given, else
            None (a 0-dim float32 tensor; NaN when no position is scored, as ``cross_entropy`` gives).

    Iterating yields ``(logits, state)``, so ``logits, state = model(...)`` unpacks as before; ``out[0]`` and
    ``out[1]`` index the same pair, and ``out.to_tuple()`` returns it.
    """

    logits: torch.Tensor
    state: Any = None
    loss: torch.Tensor | None = None

    def to_tuple(self) -> tuple[torch.Tensor, Any]:
        return (self.logits, self.state)

    def __iter__(self):
        return iter(self.to_tuple())

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index):
        return self.to_tuple()[index]


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy of ``logits[:, i]`` against ``labels[:, i + 1]`` over labels != -100.

    logits [b, T, v], labels [b, T] (int) -> a 0-dim float32 tensor (computed in float32 whatever the logits'
    dtype)."""
    if labels.shape != logits.shape[:2]:
        raise ValueError(
            f"labels must be [b, T] = {list(logits.shape[:2])} to match the logits, got {list(labels.shape)}"
        )
    shifted_logits = logits[:, :-1].float()
    targets = labels[:, 1:].to(device=logits.device, dtype=torch.long)
    return F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
    )


def reject_unknown_keywords(where: str, unknown: dict[str, Any], accepted) -> None:
    """Raise a TypeError naming the keywords ``where`` does not take, and the ones it does."""
    if unknown:
        names = ", ".join(repr(k) for k in sorted(unknown))
        raise TypeError(f"{where}: unexpected keyword argument(s) {names}; accepted: {', '.join(accepted)}")


def check_attention_mask(where: str, attention_mask: torch.Tensor | None, b: int, t: int) -> bool:
    """Check a ``[b, t]`` right-padding mask (1 = token, 0 = padding); True when some row is padded.

    Only right padding is supported: left padding or holes raise NotImplementedError (a recurrent model would
    read the padding into its state before the row's tokens)."""
    if attention_mask is None:
        return False
    if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != (b, t):
        got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise ValueError(f"{where}: attention_mask must be [b, t] = {[b, t]} like input_ids, got {got}")
    mask = attention_mask != 0
    if bool(mask.all()):
        return False
    # Right padding: once a row has a 0, the rest of the row is 0 (the mask never rises again).
    if bool((mask[:, 1:] & ~mask[:, :-1]).any()) or not bool(mask[:, 0].all()):
        raise NotImplementedError(
            f"{where}: attention_mask supports right padding only (each row's tokens first, then zeros); left "
            "padding or gaps would be read into the recurrent state and change the logits. Pad on the right, or "
            "run rows of different lengths one by one (rwkv_vision.generate takes a list of prompts)."
        )
    return True


def padding_mask(where: str, attention_mask: torch.Tensor | None, b: int, t: int) -> torch.Tensor | None:
    """A ``[b, t]`` padding mask (1 = token, 0 = padding) as bool, or None when nothing is padded.

    Each row's tokens must be one contiguous run: padding on the left (as transformers users pad for
    generation), on the right, or both. A gap inside a row raises ValueError: the layers treat the first token
    after padding as the start of the row (its token shift starts from the state), which a gap would break."""
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != (b, t):
        got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise ValueError(f"{where}: attention_mask must be [b, t] = {[b, t]} like input_ids, got {got}")
    mask = attention_mask != 0
    if attention_mask.dtype != torch.bool and bool((mask & (attention_mask != 1)).any()):
        # 0.5 or 2 is no padding flag: a float mask of attention weights would be silently read as all tokens
        raise ValueError(f"{where}: attention_mask must hold 1 (token) and 0 (padding), got other values")
    if bool(mask.all()):
        return None
    rises = (mask[:, 1:] & ~mask[:, :-1]).sum(dim=1) + mask[:, 0].long()  # starts of runs of tokens, per row
    if bool((rises > 1).any()):
        row = int((rises > 1).nonzero()[0, 0])
        raise ValueError(
            f"{where}: attention_mask row {row} has padding between its tokens; each row's tokens must be one "
            "contiguous run (padding on the left, the right, or both)"
        )
    return mask


def mask_padded_labels(labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Labels [b, t] with -100 wherever the label or the position scored against it (the one before) is
    padding: a left-padded row's first token is then no target, as the first token of a row alone is not."""
    mask = mask.to(labels.device)
    before = torch.cat([mask.new_ones(mask.shape[0], 1), mask[:, :-1]], dim=1)
    return labels.masked_fill(~(mask & before), IGNORE_INDEX)
