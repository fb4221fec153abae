"""Functional ops of rwkv_vision: compiled kernels with pure-PyTorch twins.

Letter legend used throughout the library: b batch, t time, h heads, n head size, c channels.
"""

from .backends import BACKEND_ENV, BACKENDS, default_backend, use_backend
from .cu_seqlens import pack_offsets
from .extension import ExtensionError, backend_info, has_extension
from .wkv6 import CUDA_HEAD_SIZES, wkv6
from .wkv6_chunked import wkv6_chunked
from .wkv6_ref import wkv6_ref
from .wkv6_step import wkv6_step, wkv6_step_ref

__all__ = [
    "wkv6",
    "wkv6_ref",
    "wkv6_chunked",
    "wkv6_step",
    "wkv6_step_ref",
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
