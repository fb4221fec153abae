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

from .projector import GatedMLPProjector, LinearProjector, MLPProjector, Projector, create_projector

__all__ += ["Projector", "LinearProjector", "MLPProjector", "GatedMLPProjector", "create_projector"]
