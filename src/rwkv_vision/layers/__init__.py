"""Building blocks of RWKV-6, each usable on its own inside other models.

Letter legend: b batch, t time, h heads, n head size, c channels.
"""

from .._moved import moved_names
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

# The projectors moved to rwkv_vision.vision.projector; the old names work for one release, with a warning.
__getattr__, __dir__ = moved_names(
    __name__,
    dict.fromkeys(
        ("Projector", "LinearProjector", "MLPProjector", "GatedMLPProjector", "create_projector"),
        "rwkv_vision.vision.projector",
    ),
    hint="or rwkv_vision.vision",
)
