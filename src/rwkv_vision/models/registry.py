"""Named RWKV-6 configurations and ``create_model``.

A name stands for an :class:`RWKV6Config`. The official sizes are those of the released RWKV-6 World
checkpoints behind VisualRWKV (head size 64, vocabulary 65536, dim_ffn = int(3.5*c)//32*32).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config import RWKV6Config
from .rwkv6 import RWKV6

__all__ = ["MODEL_CONFIGS", "list_models", "get_config", "register_model", "create_model"]

MODEL_CONFIGS: dict[str, RWKV6Config] = {
    # For tests and examples: runs in milliseconds on a CPU. Head size 32 is one the CUDA kernel takes.
    "rwkv6-test-tiny": RWKV6Config(n_layer=2, n_embd=64, head_size=32, d_mix=8, d_decay=16, vocab_size=256),
    "rwkv6-1b6": RWKV6Config(n_layer=24, n_embd=2048, head_size=64, d_mix=32, d_decay=64, vocab_size=65536),
    "rwkv6-3b": RWKV6Config(n_layer=32, n_embd=2560, head_size=64, d_mix=32, d_decay=64, vocab_size=65536),
    "rwkv6-7b": RWKV6Config(n_layer=32, n_embd=4096, head_size=64, d_mix=64, d_decay=128, vocab_size=65536),
}


def list_models() -> list[str]:
    return sorted(MODEL_CONFIGS)


def get_config(name: str) -> RWKV6Config:
    """The named configuration; unknown names raise a ValueError listing the known ones."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model name {name!r}; known: {list_models()}")
    return MODEL_CONFIGS[name]


def register_model(name: str, config: RWKV6Config | Mapping[str, Any], *, overwrite: bool = False) -> None:
    """Add a named configuration (an ``RWKV6Config``, or its fields as a dict)."""
    if name in MODEL_CONFIGS and not overwrite:
        raise ValueError(f"model name {name!r} is already registered (pass overwrite=True to replace it)")
    MODEL_CONFIGS[name] = config if isinstance(config, RWKV6Config) else RWKV6Config(**config)


def create_model(name: str, *, device=None, dtype=None, **overrides: Any) -> RWKV6:
    """``RWKV6(get_config(name).replace(**overrides))``, e.g. ``create_model("rwkv6-1b6", device="meta")``."""
    config = get_config(name)
    return RWKV6(config.replace(**overrides) if overrides else config, device=device, dtype=dtype)
