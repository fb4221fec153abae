"""Building blocks of RWKV-6 and RWKV-7, each usable on its own inside other models.

Letter legend: b batch, t time, h heads, n head size, c channels.
"""

from .._moved import moved_names
from .block import Block
from .channel_mix import ChannelMix, default_dim_ffn
from .channel_mix7 import ChannelMix7
from .ddlerp import DDLerp, add_ddlerp_parameters, ddlerp
from .decay import DataDependentDecay, add_decay_parameters, log_decay
from .time_mix import TimeMix
from .time_mix7 import TimeMix7, default_lora_sizes7, log_decay7
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
    "TimeMix7",
    "ChannelMix7",
    "default_lora_sizes7",
    "log_decay7",
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
