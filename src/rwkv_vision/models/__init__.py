"""Models: ``RWKV6`` and ``RWKV7`` (the language models), ``VisualRWKV`` (the VLM), their configs, named sizes and outputs."""

from ..errors import StateDictError
from .config import RWKV6Config, RWKV7Config
from .output import IGNORE_INDEX, ModelOutput
from .registry import MODEL_CONFIGS, create_model, get_config, list_models, register_model
from .rwkv6 import RWKV6
from .rwkv7 import RWKV7


def __getattr__(name: str):
    # Moved to the checkpoint package (models never import loaders); kept here for one release.
    if name == "config_from_official_state_dict":
        import warnings

        from ..checkpoint.official import config_from_official_state_dict

        warnings.warn(
            "rwkv_vision.models.config_from_official_state_dict moved to "
            "rwkv_vision.checkpoint.official.config_from_official_state_dict (it now returns an RWKV6Config)",
            DeprecationWarning,
            stacklevel=2,
        )
        return config_from_official_state_dict
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "RWKV6",
    "RWKV6Config",
    "RWKV7",
    "RWKV7Config",
    "ModelOutput",
    "IGNORE_INDEX",
    "StateDictError",
    "MODEL_CONFIGS",
    "create_model",
    "get_config",
    "list_models",
    "register_model",
]
