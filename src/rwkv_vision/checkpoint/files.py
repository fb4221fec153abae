"""Reading checkpoint files: safetensors (no pickle at all) and weights-only PyTorch pickles.

``.pth`` files are read with ``torch.load(weights_only=True)`` only — tensors and dicts, nothing else is
unpickled — and memory-mapped. Every unreadable file gives a :class:`~rwkv_vision.errors.CheckpointError`
naming the file and what was expected.
"""

from __future__ import annotations

import os
import re
import sys
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, DeviceError, UnsafeCheckpointError
from .config_json import parse_dtype

__all__ = [
    "PROGRESS_MIN_BYTES",
    "PICKLE_SUFFIXES",
    "load_checkpoint",
    "read_tensor_specs",
    "read_safetensors",
    "cast_tensor",
    "check_device",
]

#: With ``progress=None`` a progress bar (stderr) is shown for files at least this big.
PROGRESS_MIN_BYTES = 256 * 2**20
#: Suffixes read as (weights-only) PyTorch pickles; never written.
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


# --- progress ---------------------------------------------------------------------------------------------


def _progress_bar(progress: bool | None, total_bytes: int, desc: str):
    """A tqdm bar in bytes on stderr, or None. ``progress=None``: only for files >= PROGRESS_MIN_BYTES."""
    if progress is None:
        progress = total_bytes >= PROGRESS_MIN_BYTES
    if not progress:
        return None
    from tqdm.auto import tqdm  # a dependency of huggingface_hub

    return tqdm(
        total=total_bytes, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, leave=False
    )


def check_device(device: Any, *, name: str = "device") -> torch.device | None:
    """``device`` as a ``torch.device`` that exists here, or a :class:`DeviceError` naming it (``cuda`` on a
    machine without CUDA, ``cuda:3`` with two GPUs, a misspelt name); None stays None."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise DeviceError(f"{name}: {device!r} is not a device ({str(e).splitlines()[0][:200]})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"{name} {str(device)!r}: CUDA is not available on this machine (torch {torch.__version__}, "
                f"built with CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s) visible); use 'cpu'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"{name} {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) exist here")
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise DeviceError(f"{name} {str(device)!r}: MPS is not available on this machine; use 'cpu'")
    elif dev.type not in ("cpu", "meta"):
        try:
            torch.empty(0, device=dev)
        except Exception as e:  # noqa: BLE001 - any backend's way of saying "not here"
            raise DeviceError(
                f"{name} {str(device)!r} is not available here ({str(e).splitlines()[0][:200]})"
            ) from None
    return dev


def _cast(t: torch.Tensor, dtype: torch.dtype | None, device) -> torch.Tensor:
    # Integer buffers (position_ids) keep their dtype; only floating tensors follow `dtype`.
    return t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else None)


def _materialise(
    items: Iterable[tuple[str, Any]], *, total_bytes: int, dtype, device, progress, desc: str
) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` from (name, tensor or zero-argument reader) pairs, cast one tensor at a time (so a
    cast never holds two full copies of the model) and counted on a progress bar."""
    bar = _progress_bar(progress, total_bytes, desc)
    out = {}
    try:
        for name, t in items:
            t = t() if callable(t) else t
            if dtype is not None or device is not None:
                try:
                    out[name] = _cast(t, dtype, device)
                except (RuntimeError, torch.OutOfMemoryError) as e:  # the file was read: the device failed
                    raise DeviceError(
                        f"{desc}: cannot put tensor {name!r} on device {str(device)!r} as {dtype} "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
                    ) from None
            else:
                out[name] = t
            if bar is not None:
                bar.update(t.numel() * t.element_size())
    finally:
        if bar is not None:
            bar.close()
    return out


# --- reading files ----------------------------------------------------------------------------------------


def _weights_only_detail(message: str) -> str:
    """What torch's weights-only unpickler objected to, without its boilerplate (advice to reload with
    ``weights_only=False`` or to allow-list the class is not ours to give for untrusted files)."""
    m = re.search(r"WeightsUnpickler error:\s*([^\n]+)", message)
    if m:
        return m.group(1).split(" was not an allowed global")[0].strip()
    paragraphs = [p.strip() for p in message.split("\n\n") if p.strip()]
    useful = [
        p
        for p in paragraphs
        if not p.startswith(("Weights only load failed", "Check the documentation", "Please file an issue"))
    ]
    if useful:
        return " ".join(useful[0].split())
    return paragraphs[0].splitlines()[0] if paragraphs else ""


_SAFETY_WORDS = (
    "global",
    "reduce",
    "can only",
    "unrecognized",
    "not allowed",
    "blocked",
    "unsupported class",
    "persistent_load",
)


def _refused_for_safety(message: str) -> bool:
    """True when torch's weights-only unpickler refused an object (a class, a function to call), as opposed
    to bytes it cannot parse (random data, a truncated file: "Unsupported operand")."""
    if "Weights only load failed" not in message and "WeightsUnpickler" not in message:
        return False
    detail = _weights_only_detail(message).lower()
    return any(w in detail for w in _SAFETY_WORDS)


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into a CheckpointError naming the file."""
    expected = "a PyTorch checkpoint written by torch.save (a zip archive of tensors)"
    with open(path, "rb") as f:
        magic = f.read(4)
    if not magic:
        raise CheckpointError(f"{path}: the file is empty; expected {expected}")
    is_zip = magic == b"PK\x03\x04"
    if is_zip and not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: truncated or corrupt zip archive (its central directory, at the end of the file, is missing); "
            f"expected {expected}. Download the file again."
        )
    try:
        # mmap: a 16 GB checkpoint is paged in as it is used instead of being read into memory first;
        # only the zip format (torch >= 1.6) can be memory-mapped.
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as e:  # noqa: BLE001 - every reader failure becomes one clear error
        message = str(e)
        if _refused_for_safety(message):
            raise UnsafeCheckpointError(
                f"{path}: refusing to unpickle untrusted data (refused for safety; the file is not corrupt): it "
                "holds Python objects other than tensors "
                f"and dicts ({_weights_only_detail(message)[:200]}), and unpickling them could run arbitrary code. "
                "Only weights-only checkpoints (tensors in a flat dict) are read."
            ) from None
        raise CheckpointError(
            f"{path}: cannot be read as {expected}; the file is corrupt, truncated or of another format "
            f"({type(e).__name__}: {_weights_only_detail(message)[:200]})"
        ) from None


def _open_safetensors(path: Path):
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, ...
        raise CheckpointError(
            f"{path}: cannot be read as a safetensors file (an 8-byte header length, a JSON header, then the "
            f"tensor data): {e}. The file is corrupt or truncated; write or download it again."
        ) from None


def read_tensor_specs(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``{name: meta tensor}`` (shape and dtype only, no data read) of a ``.safetensors`` file or a ``.pth``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        with _open_safetensors(path) as f:
            out = {}
            for k in f.keys():
                sl = f.get_slice(k)
                dt = _SAFETENSORS_DTYPES.get(sl.get_dtype())
                if dt is None:
                    raise CheckpointError(f"{path}: tensor {k!r} has unsupported dtype {sl.get_dtype()}")
                out[k] = torch.empty(sl.get_shape(), dtype=dt, device="meta")
            return out
    return {k: torch.empty_like(v, device="meta") for k, v in load_checkpoint(path).items()}


def _read_safetensors(path: Path, *, dtype, device, progress) -> dict[str, torch.Tensor]:
    size = path.stat().st_size
    with _open_safetensors(path) as f:
        keys = list(f.keys())
        try:
            return _materialise(
                ((k, lambda k=k: f.get_tensor(k)) for k in keys),
                total_bytes=size,
                dtype=dtype,
                device=device,
                progress=progress,
                desc=f"loading {path.name}",
            )
        except (CheckpointError, DeviceError):
            raise
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{path}: a tensor cannot be read ({e}); the file is corrupt or truncated") from None


def _check_dense(sd: Mapping[str, torch.Tensor], path: Path) -> None:
    """Every tensor of a pickled file must own as many bytes of storage as its shape needs: an expanded
    (stride 0) or self-overlapping tensor lets a tiny file claim terabytes, which a cast or a copy would then
    allocate, and its "weights" would share one value."""
    for name, t in sd.items():
        need = t.numel() * t.element_size()
        have = t.untyped_storage().nbytes() - t.storage_offset() * t.element_size()
        if need > have or any(st == 0 and n > 1 for n, st in zip(t.shape, t.stride())):
            raise CheckpointError(
                f"{path}: tensor {name[:200]!r} of shape {list(t.shape)} needs {need} bytes but is a view of "
                f"{max(have, 0)} stored bytes (an expanded or overlapping tensor); a checkpoint stores every "
                "tensor densely"
            )


def load_checkpoint(
    path: str | os.PathLike, *, dtype: torch.dtype | str | None = None, device=None, progress: bool | None = None
) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` dict from a ``.safetensors`` file or a ``.pth``/``.pt``/``.bin`` file.

    ``.pth`` files are read with ``weights_only=True`` and memory-mapped: without ``dtype``/``device`` no data
    is read until used. ``dtype`` casts floating tensors, ``device`` moves them, one tensor at a time (with
    a progress bar for big files; ``progress=True/False`` forces it on/off).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no checkpoint file at {str(path)!r}")
    dtype = parse_dtype(dtype)
    check_device(device)
    if path.suffix == ".safetensors":
        return _read_safetensors(path, dtype=dtype, device=device, progress=progress)
    sd = _torch_load(path)
    if not isinstance(sd, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()
    ):
        kind = type(sd).__name__
        raise CheckpointError(
            f"{str(path)!r} is not a flat dict of tensors (the released VisualRWKV format); it holds a {kind}"
            + (
                " (a training checkpoint? take its 'state_dict' entry)"
                if isinstance(sd, Mapping) and "state_dict" in sd
                else ""
            )
        )
    _check_dense(sd, path)
    if dtype is None and device is None:
        return dict(sd)
    return _materialise(
        sd.items(),
        total_bytes=path.stat().st_size,
        dtype=dtype,
        device=device,
        progress=progress,
        desc=f"loading {path.name}",
    )


def read_safetensors(path: str | os.PathLike, *, dtype=None, device=None, progress=None) -> dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` file, cast and moved one at a time."""
    return _read_safetensors(Path(path), dtype=parse_dtype(dtype), device=device, progress=progress)


def cast_tensor(t: torch.Tensor, dtype: torch.dtype | None, device) -> torch.Tensor:
    """``t`` on ``device``, floating tensors in ``dtype`` (integer buffers keep theirs)."""
    return _cast(t, dtype, device)
