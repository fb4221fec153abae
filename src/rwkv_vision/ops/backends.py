"""The names of the WKV6 implementations (``backend=``) and the process-wide default.

Shared by ``wkv6`` and ``wkv6_step`` and reported by ``backend_info()``; imports nothing of the package, so
every ops module can read it. docs/ops.md, "Choosing a kernel".
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator

__all__ = [
    "BACKENDS",
    "BACKEND_ENV",
    "KERNEL_CODES",
    "EXPERIMENTAL_CUDA_VARIANTS",
    "WKV7_BACKENDS",
    "wkv7_default_backend",
    "default_backend",
    "use_backend",
]

#: Values of ``backend`` (docs/ops.md, "Choosing a kernel"):
#:   "auto"            the device's compiled kernel where one applies, else "chunked";
#:   "kernel"          the device's compiled kernel (the CPU kernel; on CUDA "cuda_recurrent"), or an error;
#:   "cuda_recurrent"  the recurrent CUDA forward and backward;
#:   "cuda_split"      the split CUDA forward (four threads per state column), the recurrent backward;
#:   "cuda_chunked"    the chunked tensor-core CUDA forward and backward (takes ``segments``);
#:   "chunked"         ``wkv6_chunked``, pure PyTorch, any device;
#:   "reference"       ``wkv6_ref``, the step-by-step loop every other backend is tested against.
#: "cuda_split" and "cuda_chunked" are experimental: built only with RWKV_VISION_EXPERIMENTAL_CUDA_KERNELS=ON.
BACKENDS = ("auto", "kernel", "cuda_recurrent", "cuda_split", "cuda_chunked", "chunked", "reference")
#: The environment variable that sets the process-wide default of ``backend`` (read once, at import).
BACKEND_ENV = "RWKV_VISION_WKV6_BACKEND"
#: Backend name -> the ``kernel`` argument of the compiled ops (``Wkv6Kernel`` in ``csrc/wkv6.h``), for the
#: CUDA variants; "kernel" on CUDA is code 0 too.
KERNEL_CODES = {"cuda_recurrent": 0, "cuda_split": 1, "cuda_chunked": 2}
#: The CUDA variants that the build compiles only with RWKV_VISION_EXPERIMENTAL_CUDA_KERNELS=ON.
EXPERIMENTAL_CUDA_VARIANTS = ("cuda_split", "cuda_chunked")


#: Values of ``backend`` for ``wkv7`` and ``wkv7_step`` (docs/ops.md, "WKV7"): "auto", "kernel",
#: "chunked", "reference", meaning what they mean for wkv6. WKV7 has one compiled kernel per device.
WKV7_BACKENDS = ("auto", "kernel", "chunked", "reference")
#: The process default (a wkv6 name) -> the wkv7 backend it stands for: a CUDA variant of wkv6 asks for
#: a compiled kernel, and wkv7's one compiled kernel is the nearest.
_WKV7_FROM_DEFAULT = {"cuda_recurrent": "kernel", "cuda_split": "kernel", "cuda_chunked": "kernel"}


def _read_env_default() -> tuple[str, str | None]:
    """The default backend from ``RWKV_VISION_WKV6_BACKEND`` ("auto" when unset), and the error to raise
    where its value is not one of ``BACKENDS`` (None when it is)."""
    raw = os.environ.get(BACKEND_ENV, "")
    value = raw.strip() or "auto"
    if value not in BACKENDS:
        return "auto", (
            f"the environment variable {BACKEND_ENV}={raw!r} is not a wkv6 backend; accepted "
            f"values: {', '.join(BACKENDS)} (unset means 'auto')"
        )
    return value, None


# Read once, at import; a refused value raises at the first call that relies on the default.
_ENV_DEFAULT, _ENV_ERROR = _read_env_default()
_override: str | None = None  # set by use_backend()

_RETIRED_ENV = ("RWKV_VISION_CUDA_FORWARD", "RWKV_VISION_CUDA_BACKWARD", "RWKV_VISION_CUDA_SEGMENTS")
if any(name in os.environ for name in _RETIRED_ENV):
    warnings.warn(
        f"ignoring {', '.join(n for n in _RETIRED_ENV if n in os.environ)}: the CUDA kernel is chosen by argument "
        "now; pass wkv6(backend='cuda_split' | 'cuda_chunked', segments=N) or use rwkv_vision.ops.use_backend() "
        "(docs/ops.md, 'Choosing a kernel')",
        stacklevel=2,
    )


def default_backend() -> str:
    """What ``backend=None`` means now: the innermost :func:`use_backend`, else ``RWKV_VISION_WKV6_BACKEND``
    as read at import, else "auto". Raises ValueError, naming the variable, if its value is not a backend."""
    if _override is not None:
        return _override
    if _ENV_ERROR is not None:
        raise ValueError(_ENV_ERROR)
    return _ENV_DEFAULT


def wkv7_default_backend() -> str:
    """What ``backend=None`` means for wkv7 now: :func:`default_backend`, with wkv6's CUDA variant names
    ("cuda_recurrent", "cuda_split", "cuda_chunked") read as "kernel"."""
    value = default_backend()
    return _WKV7_FROM_DEFAULT.get(value, value)


@contextlib.contextmanager
def use_backend(backend: str) -> Iterator[None]:
    """Make ``backend`` the default of :func:`wkv6` and :func:`wkv6_step` within the block, process-wide;
    also of :func:`wkv7` and :func:`wkv7_step`, where a CUDA variant's name means "kernel".

    For code that calls the ops without a ``backend`` argument, such as the RWKV-6 layers::

        with rwkv_vision.ops.use_backend("cuda_chunked"):
            logits = model(input_ids)
    """
    if backend not in BACKENDS:
        raise ValueError(f"use_backend: backend must be one of {BACKENDS}, got {backend!r}")
    global _override
    previous, _override = _override, backend
    try:
        yield
    finally:
        _override = previous
