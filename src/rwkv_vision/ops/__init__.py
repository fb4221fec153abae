"""Functional ops of rwkv_vision: compiled kernels with pure-PyTorch twins.

Letter legend used throughout the library: b batch, t time, h heads, n head size, c channels.
"""

from .backends import BACKEND_ENV, BACKENDS, WKV7_BACKENDS, default_backend, use_backend
from .cu_seqlens import pack_offsets
from .extension import ExtensionError, backend_info, has_extension
from .wkv6 import CUDA_HEAD_SIZES, wkv6
from .wkv6_chunked import wkv6_chunked
from .wkv6_ref import wkv6_ref
from .wkv6_step import wkv6_step, wkv6_step_ref
from .wkv7 import wkv7
from .wkv7_chunked import wkv7_chunked
from .wkv7_ref import wkv7_ref
from .wkv7_step import wkv7_step, wkv7_step_ref

__all__ = [
    "wkv6",
    "wkv6_ref",
    "wkv6_chunked",
    "wkv6_step",
    "wkv6_step_ref",
    "wkv7",
    "wkv7_ref",
    "wkv7_chunked",
    "wkv7_step",
    "wkv7_step_ref",
    "WKV7_BACKENDS",
    "pack_offsets",
    "has_extension",
    "backend_info",
    "ExtensionError",
    "CUDA_HEAD_SIZES",
    "BACKENDS",
    "BACKEND_ENV",
    "default_backend",
    "use_backend",
]
