"""The official key layouts, converted on the loading side: RWKV-6 "x060" language models (``blocks.{i}.*``,
the modules' own names) and the released VisualRWKV v6.0 flat checkpoints (``rwkv.*``, ``vit.vision_model.*``
with Hugging Face CLIP names, ``proj.weight``).

Every size is read off tensor shapes; every key must be present with its shape and nothing else may be,
otherwise one ``StateDictError`` lists every missing, unexpected and mis-shaped key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ..errors import StateDictError
from ..models.config import RWKV6Config
from ..models.rwkv6 import RWKV6
from .diff import check_state_dict

__all__ = ["config_from_official_state_dict", "rwkv6_from_official_state_dict"]


def config_from_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> RWKV6Config:
    """The ``RWKV6Config`` of an official "x060" state dict (keys without ``rwkv.``).

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
    return RWKV6Config(**config)


def rwkv6_from_official_state_dict(
    state_dict: Mapping[str, torch.Tensor], *, cls: type[RWKV6] = RWKV6, device=None, dtype=None
) -> RWKV6:
    """Build an ``RWKV6`` from an official "x060" state dict (keys without the ``rwkv.`` prefix).

    Sizes are read from the tensor shapes (``config_from_official_state_dict``), then every key must be
    present with its shape and nothing else may be: otherwise a ``StateDictError`` lists every missing,
    unexpected and mis-shaped key. The parameters keep the state dict's dtype unless ``dtype`` is given,
    and share memory with its tensors when neither ``device`` nor ``dtype`` asks for a copy.
    """
    config = config_from_official_state_dict(state_dict)
    model = cls(config, device="meta")  # no memory, no init: every tensor comes from the state dict
    check_state_dict(model, state_dict)
    model.load_state_dict(dict(state_dict), strict=True, assign=True)
    return model.to(device=device, dtype=dtype)
