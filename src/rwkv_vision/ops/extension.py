"""Finding and loading the compiled op library (``rwkv_vision/_C.so``).

Nothing is compiled at import. The library is built once by ``pip install`` (scikit-build-core and
``CMakeLists.txt``); when it is missing or fails to load, every op falls back to its pure-PyTorch twin
and :func:`backend_info` says why. Set ``RWKV_VISION_REQUIRE_EXTENSION=1`` to make a missing or broken
extension an error instead (CI does, so a silent fallback cannot pass for a kernel test). Set
``RWKV_VISION_EXTENSION_PATH`` to load the library from another file instead (a private build being tested
next to an installed one; its ``_build_info.py`` is read from the same folder).
"""

from __future__ import annotations

import importlib.util
import os
from functools import cache
from typing import Any

import torch

from ..errors import ExtensionError
from .backends import EXPERIMENTAL_CUDA_VARIANTS, KERNEL_CODES, default_backend

__all__ = [
    "has_extension",
    "has_kernel",
    "cuda_variants",
    "backend_info",
    "build_info",
    "load_extension",
    "ExtensionError",
]

OP_NAMESPACE = "rwkv_vision"


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _find(module: str) -> str | None:
    # find_spec goes through the editable-install finder too, which keeps compiled files in
    # site-packages while the Python sources stay in the checkout.
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None and spec.origin else None


@cache
def load_extension() -> tuple[bool, str | None, str | None]:
    """Load the op library once. Returns (loaded, path, reason it was not loaded)."""
    if _truthy("RWKV_VISION_DISABLE_EXTENSION"):
        return False, None, "disabled by RWKV_VISION_DISABLE_EXTENSION"
    path = os.environ.get("RWKV_VISION_EXTENSION_PATH") or _find(f"{__package__.rsplit('.', 1)[0]}._C")
    if path is None:
        reason = (
            "the compiled library rwkv_vision/_C.so was not found; install the package with "
            "`pip install --no-build-isolation .` (or `make install`) to build it"
        )
        return False, None, reason
    try:
        torch.ops.load_library(path)
    except (OSError, RuntimeError) as err:  # a torch or CUDA mismatch shows up here
        return False, path, f"loading {path} failed: {err}"
    return True, path, None


def has_extension() -> bool:
    """True when the compiled op library is loaded (raises if required but unavailable)."""
    loaded, _, reason = load_extension()
    if not loaded and _truthy("RWKV_VISION_REQUIRE_EXTENSION"):
        raise ExtensionError(f"RWKV_VISION_REQUIRE_EXTENSION is set but {reason}")
    return loaded


def has_kernel(op: str, device_type: str) -> bool:
    """True when ``rwkv_vision::<op>`` has a compiled kernel for ``device_type`` ('cpu', 'cuda')."""
    if not has_extension():
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if key is None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{OP_NAMESPACE}::{op}", key)


@cache
def build_info() -> dict[str, Any]:
    """What ``CMakeLists.txt`` recorded about the build (lower-case keys; empty when there is none)."""
    override = os.environ.get("RWKV_VISION_EXTENSION_PATH")
    if override:
        path = os.path.join(os.path.dirname(override), "_build_info.py")
        path = path if os.path.exists(path) else None
    else:
        path = _find(f"{__package__.rsplit('.', 1)[0]}._build_info")
    if path is None:
        return {}
    namespace: dict[str, Any] = {}
    with open(path, encoding="utf-8") as f:
        exec(compile(f.read(), path, "exec"), namespace)  # a file our own build wrote
    return {k.lower(): v for k, v in namespace.items() if k.isupper()}


def cuda_variants() -> tuple[str, ...]:
    """The ``backend`` names of the CUDA kernel variants compiled into the loaded library: ("cuda_recurrent",)
    in a default CUDA build, all three with RWKV_VISION_EXPERIMENTAL_CUDA_KERNELS=ON, () without CUDA kernels."""
    if not has_kernel("wkv6_forward", "cuda"):
        return ()
    experimental = build_info().get("experimental_cuda_kernels", False)
    return tuple(name for name in KERNEL_CODES if experimental or name not in EXPERIMENTAL_CUDA_VARIANTS)


def backend_info() -> dict[str, Any]:
    """What is loaded and why not: a dict for bug reports and for choosing code paths.

    Keys: ``extension`` (bool), ``path``, ``reason`` (why not loaded, or None), ``cpu_kernels``,
    ``cuda_kernels`` (compiled into the library), ``cuda_variants`` (the ``backend`` names of the CUDA
    kernel variants compiled in: ``cuda_recurrent``, and ``cuda_split`` and ``cuda_chunked`` in a build
    with RWKV_VISION_EXPERIMENTAL_CUDA_KERNELS=ON), ``cuda_available`` (a device is visible now),
    ``default_backend`` (what ``backend=None`` means now, or why the environment's value is refused),
    ``build`` (torch version, CUDA version, architectures and options the library was built with),
    ``torch``.
    """
    loaded, path, reason = load_extension()
    try:
        default = default_backend()
    except ValueError as err:
        default = f"invalid: {err}"
    return {
        "extension": loaded,
        "path": path,
        "reason": reason,
        "cpu_kernels": loaded and has_kernel("wkv6_forward", "cpu"),
        "cuda_kernels": loaded and has_kernel("wkv6_forward", "cuda"),
        "cuda_variants": list(cuda_variants()),
        "cuda_available": torch.cuda.is_available(),
        "default_backend": default,
        "build": build_info() if loaded else {},
        "torch": torch.__version__,
    }
