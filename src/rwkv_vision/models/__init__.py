"""Models: ``RWKV6`` (the language model) and named configurations."""

from .registry import MODEL_CONFIGS, create_model, get_config, list_models, register_model
from .rwkv6 import RWKV6, StateDictError, config_from_official_state_dict

__all__ = [
    "RWKV6",
    "StateDictError",
    "config_from_official_state_dict",
    "MODEL_CONFIGS",
    "create_model",
    "get_config",
    "list_models",
    "register_model",
]
