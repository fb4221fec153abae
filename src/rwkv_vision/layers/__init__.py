"""Building blocks of RWKV-6, each usable on its own inside other models.

Letter legend: b batch, t time, h heads, n head size, c channels.
"""

from .block import Block
from .channel_mix import ChannelMix, default_dim_ffn
from .ddlerp import DDLerp, add_ddlerp_parameters, ddlerp
from .decay import DataDependentDecay, add_decay_parameters, log_decay
from .time_mix import TimeMix
from .token_shift import TokenShift, token_shift

__all__ = [
    "TokenShift",
    "token_shift",
    "DDLerp",
    "ddlerp",
    "add_ddlerp_parameters",
    "DataDependentDecay",
    "log_decay",
    "add_decay_parameters",
    "TimeMix",
    "ChannelMix",
    "default_dim_ffn",
    "Block",
]

_MOVED_TO_VISION = ("Projector", "LinearProjector", "MLPProjector", "GatedMLPProjector", "create_projector")


def __getattr__(name: str):
    # The projectors moved to rwkv_vision.vision.projector; the old names work for one release, with a warning.
    if name in _MOVED_TO_VISION:
        import warnings

        from ..vision import projector

        warnings.warn(
            f"rwkv_vision.layers.{name} is deprecated; import it from rwkv_vision.vision.projector "
            "(or rwkv_vision.vision)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(projector, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
