"""Named RWKV-6 and RWKV-7 configurations and ``create_model`` (which also builds the models shipped in the
package).

A name stands for an :class:`RWKV6Config` (``rwkv6-*``) or an :class:`RWKV7Config` (``rwkv7-*``). The official
RWKV-6 sizes are those of the released RWKV-6 World checkpoints behind VisualRWKV (head size 64, vocabulary 65536,
dim_ffn = int(3.5*c)//32*32); the RWKV-7 ones those of the released x070 models (head size 64, vocabulary 65536,
dim_ffn = 4c, and the LoRA ranks of the released files, which differ from the training code's suggestion above
0.4B).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config import RWKV6Config, RWKV7Config
from .rwkv6 import RWKV6
from .rwkv7 import RWKV7

__all__ = ["MODEL_CONFIGS", "list_models", "get_config", "register_model", "create_model"]

MODEL_CONFIGS: dict[str, RWKV6Config | RWKV7Config] = {
    # For tests and examples: runs in milliseconds on a CPU. Head size 32 is one the CUDA kernel takes.
    "rwkv6-test-tiny": RWKV6Config(n_layer=2, n_embd=64, head_size=32, d_mix=8, d_decay=16, vocab_size=256),
    "rwkv6-1b6": RWKV6Config(n_layer=24, n_embd=2048, head_size=64, d_mix=32, d_decay=64, vocab_size=65536),
    "rwkv6-3b": RWKV6Config(n_layer=32, n_embd=2560, head_size=64, d_mix=32, d_decay=64, vocab_size=65536),
    "rwkv6-7b": RWKV6Config(n_layer=32, n_embd=4096, head_size=64, d_mix=64, d_decay=128, vocab_size=65536),
    # RWKV-7 ("x070"). The tiny one is for tests and examples (milliseconds on a CPU).
    "rwkv7-tiny": RWKV7Config(n_layer=2, n_embd=64, head_size=32, d_w=8, d_a=8, d_v=8, d_g=16, vocab_size=256),
    "rwkv7-0.1b": RWKV7Config(n_layer=12, n_embd=768, d_w=64, d_a=64, d_v=32, d_g=128),
    "rwkv7-0.4b": RWKV7Config(n_layer=24, n_embd=1024, d_w=64, d_a=64, d_v=32, d_g=128),
    "rwkv7-1.5b": RWKV7Config(n_layer=24, n_embd=2048, d_w=96, d_a=96, d_v=64, d_g=256),
    "rwkv7-2.9b": RWKV7Config(n_layer=32, n_embd=2560, d_w=96, d_a=96, d_v=64, d_g=320),
    "rwkv7-7.2b": RWKV7Config(n_layer=32, n_embd=4096, d_w=128, d_a=128, d_v=96, d_g=480),
}

_ARCHITECTURES = {"rwkv6": (RWKV6Config, RWKV6), "rwkv7": (RWKV7Config, RWKV7)}


def list_models() -> list[str]:
    return sorted(MODEL_CONFIGS)


def get_config(name: str) -> RWKV6Config | RWKV7Config:
    """The named configuration; unknown names raise a ValueError listing the known ones."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model name {name!r}; known: {list_models()}")
    return MODEL_CONFIGS[name]


def register_model(
    name: str, config: RWKV6Config | RWKV7Config | Mapping[str, Any], *, overwrite: bool = False
) -> None:
    """Add a named configuration (an ``RWKV6Config`` or ``RWKV7Config``, or fields as a dict: RWKV-6 ones, or
    with ``"architecture": "rwkv7"`` RWKV-7 ones)."""
    if name in MODEL_CONFIGS and not overwrite:
        raise ValueError(f"model name {name!r} is already registered (pass overwrite=True to replace it)")
    if not isinstance(config, (RWKV6Config, RWKV7Config)):
        fields = dict(config)
        arch = fields.pop("architecture", "rwkv6")
        if arch not in _ARCHITECTURES:
            raise ValueError(f"register_model: architecture must be one of {sorted(_ARCHITECTURES)}, got {arch!r}")
        config = _ARCHITECTURES[arch][0](**fields)
    MODEL_CONFIGS[name] = config


def create_model(name: str, *, pretrained: bool = False, device=None, dtype=None, **overrides: Any):
    """A model by name, as timm's ``create_model``.

    - An RWKV-6 or RWKV-7 size (:func:`list_models`): ``RWKV6(get_config(name).replace(**overrides))`` (or
      ``RWKV7(...)`` for an ``RWKV7Config``), freshly initialised, e.g. ``create_model("rwkv6-1b6",
      device="meta")``, ``create_model("rwkv7-tiny")``. No weights ship for these, so
      ``pretrained=True`` raises a ValueError (load released weights with ``RWKV6.from_official_state_dict``).
    - A model shipped in the package (:func:`rwkv_vision.pretrained.list_pretrained`, e.g.
      ``"shapes-vqa-tiny"``): with ``pretrained=True`` the trained :class:`VisualRWKV` in eval mode (as
      ``VisualRWKV.from_pretrained(name)``; ``overrides`` go to it, e.g. ``scan="multidir"``); with
      ``pretrained=False`` the same architecture, tokenizer and preprocessor, freshly initialised.
    """
    from ..pretrained.paths import list_pretrained

    if name in list_pretrained():
        from .visualrwkv import VisualRWKV

        loaded = VisualRWKV.from_pretrained(name, device=device, dtype=dtype, **overrides)
        if pretrained:
            return loaded
        return VisualRWKV.from_config(
            loaded.config,
            device=device,
            dtype=dtype,
            tokenizer=loaded.tokenizer,
            preprocessor=loaded.preprocessor,
        )
    if name not in MODEL_CONFIGS:
        raise ValueError(
            f"unknown model name {name!r}; sizes: {list_models()}; shipped pretrained models: {list_pretrained()}"
        )
    if pretrained:
        raise ValueError(
            f"create_model({name!r}, pretrained=True): no weights ship for the size {name!r}; pretrained models "
            f"shipped in the package: {list_pretrained()} (released RWKV-6 weights load with "
            "RWKV6.from_official_state_dict or VisualRWKV.from_pretrained)"
        )
    config = get_config(name)
    cls = RWKV7 if isinstance(config, RWKV7Config) else RWKV6
    return cls(config.replace(**overrides) if overrides else config, device=device, dtype=dtype)
