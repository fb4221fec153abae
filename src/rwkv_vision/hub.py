"""Loading and saving VisualRWKV checkpoints: save_pretrained directories, the released files, the Hub.

What :func:`from_pretrained` (``VisualRWKV.from_pretrained``) accepts:

* a directory written by :func:`save_pretrained`: ``config.json`` + ``model.safetensors`` (+ ``tokenizer.json``),
  see :mod:`rwkv_vision.model_config`;
* a released flat checkpoint ``.pth`` (pickled dict of bf16 tensors), read with ``torch.load(weights_only=True)``
  only — tensors and dicts, nothing else is unpickled — and memory-mapped;
* a ``.safetensors`` file with the released key names (what :func:`save_pretrained` writes for a ``.safetensors``
  path), read without pickle at all;
* a Hugging Face Hub repo id: with ``filename`` the file is fetched with ``huggingface_hub.hf_hub_download``
  (e.g. ``"howard-hou/visualrwkv-6"``, ``"VisualRWKV-v060-1B6-v1.0-20240612.pth"``); without it the repo must
  hold a save_pretrained directory. The cache and offline mode are the Hub's own (``HF_HUB_CACHE``,
  ``HF_HOME``, ``HF_HUB_OFFLINE``; read when called, so setting them after import works);
* the short names of :data:`OFFICIAL_CHECKPOINTS` and ``"owner/repo/path/in/repo"``.

The released files' key prefixes are :data:`OFFICIAL_PREFIXES` (defined with the model in
``rwkv_vision.models.visualrwkv`` and re-exported here): ``rwkv.`` (the language model, official RWKV-6 names),
``vit.vision_model.`` (a transformers 4.x ``CLIPVisionModel``), ``proj.weight`` (``[c, w]``, no bias).

Every unreadable file gives a :class:`CheckpointError` naming the file and what was expected; a state dict
that does not fit gives one ``StateDictError`` listing every missing, unexpected and mis-shaped key.
"""

from __future__ import annotations

import json
import os
import re
import sys
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from .model_config import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    model_from_config,
    model_to_config,
    parse_dtype,
    validate_config,
)
from .errors import StateDictError
from .models.visualrwkv import OFFICIAL_PREFIXES, VisualRWKV

__all__ = [
    "OFFICIAL_CHECKPOINTS",
    "OFFICIAL_PREFIXES",
    "REPO_ID",
    "CheckpointError",
    "PROGRESS_MIN_BYTES",
    "load_checkpoint",
    "load_config",
    "read_tensor_specs",
    "resolve_checkpoint",
    "from_pretrained",
    "save_pretrained",
    "describe_checkpoint",
]

REPO_ID = "howard-hou/visualrwkv-6"
#: Short names of the released v6.0 checkpoints -> (Hugging Face repo, file).
OFFICIAL_CHECKPOINTS: dict[str, tuple[str, str]] = {
    "visualrwkv-6.0-1b6": (REPO_ID, "VisualRWKV-v060-1B6-v1.0-20240612.pth"),
    "visualrwkv-6.0-3b": (REPO_ID, "VisualRWKV-v060-3B-v1.0-20240612.pth"),
    "visualrwkv-6.0-7b": (REPO_ID, "VisualRWKV-v060-7B-v1.0-20240612.pth"),
}
#: With ``progress=None`` a progress bar (stderr) is shown for files at least this big.
PROGRESS_MIN_BYTES = 256 * 2**20

_PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
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

    return tqdm(total=total_bytes, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                leave=False)


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
            out[name] = _cast(t, dtype, device) if (dtype is not None or device is not None) else t
            if bar is not None:
                bar.update(t.numel() * t.element_size())
    finally:
        if bar is not None:
            bar.close()
    return out


# --- reading files ----------------------------------------------------------------------------------------


def _weights_only_detail(message: str) -> str:
    m = re.search(r"WeightsUnpickler error:\s*([^\n]+)", message)
    if not m:
        return message.strip().splitlines()[0] if message.strip() else ""
    # torch goes on to explain how to allow-list the class; that advice is not ours to give for untrusted files
    return m.group(1).split(" was not an allowed global")[0].strip()


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
        if "Weights only load failed" in message and "Unsupported global" in message:
            raise CheckpointError(
                f"{path}: refusing to unpickle untrusted data: the file holds Python objects other than tensors "
                f"and dicts ({_weights_only_detail(message)}), and loading them could run arbitrary code. "
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
            return _materialise(((k, lambda k=k: f.get_tensor(k)) for k in keys), total_bytes=size, dtype=dtype,
                                device=device, progress=progress, desc=f"loading {path.name}")
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{path}: a tensor cannot be read ({e}); the file is corrupt or truncated") from None


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
    if path.suffix == ".safetensors":
        return _read_safetensors(path, dtype=dtype, device=device, progress=progress)
    sd = _torch_load(path)
    if not isinstance(sd, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        kind = type(sd).__name__
        raise CheckpointError(
            f"{str(path)!r} is not a flat dict of tensors (the released VisualRWKV format); it holds a {kind}"
            + (" (a training checkpoint? take its 'state_dict' entry)" if isinstance(sd, Mapping) and "state_dict" in sd else "")
        )
    if dtype is None and device is None:
        return dict(sd)
    return _materialise(sd.items(), total_bytes=path.stat().st_size, dtype=dtype, device=device, progress=progress,
                        desc=f"loading {path.name}")


def load_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The validated ``config.json`` of a save_pretrained directory."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{path}: missing; a save_pretrained directory holds {CONFIG_NAME} and {WEIGHTS_NAME} "
            f"(found: {sorted(p.name for p in Path(directory).iterdir())[:10]})"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); expected the config written by save_pretrained") from None
    validate_config(config, source=str(path))
    return config


# --- finding the files ------------------------------------------------------------------------------------


def _hub_cache_dir(cache_dir) -> str | None:
    # huggingface_hub reads HF_HUB_CACHE / HF_HOME once, at import; reading them here honours a change made
    # after that (a test, a notebook cell), with the Hub's own precedence.
    if cache_dir is not None:
        return str(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE") or bool(constants.HF_HUB_OFFLINE)


def _hub_download(repo_id: str, filename: str, *, revision, cache_dir) -> Path:
    from huggingface_hub import hf_hub_download

    offline = _hub_offline()
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, revision=revision,
                                    cache_dir=_hub_cache_dir(cache_dir), local_files_only=offline))
    except Exception as e:  # noqa: BLE001 - the Hub's errors (not found, offline, HTTP) all mean "no file"
        where = f"{repo_id}/{filename}" + (f"@{revision}" if revision else "")
        from huggingface_hub import constants

        why = (f"offline (HF_HUB_OFFLINE) and not in the cache {_hub_cache_dir(cache_dir) or constants.HF_HUB_CACHE}"
               if offline else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        raise FileNotFoundError(f"name_or_path: cannot get {where} from the Hugging Face Hub: {why}") from e


def resolve_checkpoint(
    name_or_path: str | os.PathLike,
    *,
    filename: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """A local file or save_pretrained directory for any accepted ``name_or_path`` (see the module notes);
    Hub files are downloaded to (or found in) the Hugging Face cache."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a path or a Hub repo id, got {type(name_or_path).__name__}")
    if filename is not None and (not isinstance(filename, str) or not filename):
        raise ValueError(f"filename must be a non-empty str, got {filename!r}")
    local = Path(name_or_path)
    if local.is_dir():
        if filename is None:
            return local
        if not (local / filename).is_file():
            raise FileNotFoundError(f"filename: no file {filename!r} in the directory {str(local)!r}")
        return local / filename
    if local.is_file():
        if filename is not None:
            raise ValueError(f"filename: {str(local)!r} is already a file; pass filename only with a directory or repo id")
        return local
    name = str(name_or_path)
    if name in OFFICIAL_CHECKPOINTS and filename is None:
        repo_id, filename = OFFICIAL_CHECKPOINTS[name]
    elif _REPO_ID.match(name):
        repo_id = name
    elif name.count("/") >= 2 and filename is None and not name.startswith(("/", ".")):
        owner, repo, filename = name.split("/", 2)
        repo_id = f"{owner}/{repo}"
    else:
        raise ValueError(
            f"name_or_path: {name!r} is not a file, a directory, a known name {sorted(OFFICIAL_CHECKPOINTS)}, "
            "a Hub repo id 'owner/repo' (with filename=, or holding a save_pretrained directory) or 'owner/repo/filename'"
        )
    if filename is not None:
        return _hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir)
    # A save_pretrained directory on the Hub: its files, one by one, land in the same snapshot folder.
    config_path = _hub_download(repo_id, CONFIG_NAME, revision=revision, cache_dir=cache_dir)
    directory = config_path.parent
    config = load_config(directory)
    _hub_download(repo_id, WEIGHTS_NAME, revision=revision, cache_dir=cache_dir)
    tok_file = config["tokenizer"].get("file") if isinstance(config["tokenizer"], Mapping) else None
    if tok_file:
        _hub_download(repo_id, tok_file, revision=revision, cache_dir=cache_dir)
    return directory


# --- loading ----------------------------------------------------------------------------------------------


def _check_weights(model: torch.nn.Module, specs: Mapping[str, torch.Tensor], path: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(expected.keys() - specs.keys())
    unexpected = sorted(specs.keys() - expected.keys())
    mismatched = [(k, tuple(specs[k].shape), expected[k]) for k in sorted(expected.keys() & specs.keys())
                  if tuple(specs[k].shape) != expected[k]]
    if missing or unexpected or mismatched:
        raise StateDictError(missing, unexpected, mismatched,
                             hint=f"in {path} (the model config.json describes)")


def _load_directory(directory: Path, *, cls, dtype, device, progress, **kwargs: Any) -> VisualRWKV:
    config = load_config(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(
            f"{weights}: missing; a save_pretrained directory holds {CONFIG_NAME} and {WEIGHTS_NAME}"
        )
    specs = read_tensor_specs(weights)
    # Built on the meta device: nothing is allocated or initialised, every tensor comes from the file.
    model = model_from_config(config, cls=cls, device="meta", directory=directory,
                              source=str(directory / CONFIG_NAME), **kwargs)
    _check_weights(model, specs, weights)
    sd = _read_safetensors(weights, dtype=dtype, device=device, progress=progress)
    model.load_state_dict(sd, strict=True, assign=True)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"{weights}: no values for {left} (tensors the model has outside its state dict)")
    return model


def from_pretrained(
    name_or_path: str | os.PathLike,
    filename: str | None = None,
    revision: str | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
    cls: type | None = None,
    **kwargs: Any,
) -> VisualRWKV:
    """A ``VisualRWKV`` from a save_pretrained directory, a released ``.pth``, an official-names ``.safetensors``,
    or the Hugging Face Hub (see the module notes).

    Args:
        name_or_path: a local directory or file, a Hub repo id, a short name of :data:`OFFICIAL_CHECKPOINTS`.
        filename: the file inside a repo (or a local directory) to load, e.g. a released ``.pth``.
        revision: Hub branch, tag or commit.
        dtype: cast floating tensors (default: the file's dtype, bf16 for the released files).
        device: move tensors (default: CPU).
        cache_dir: Hub cache (default: ``HF_HUB_CACHE`` / ``HF_HOME/hub`` / the Hub's default).
        progress: a progress bar on stderr while reading; None: only for files >= 256 MiB.
        cls: the class to build (``VisualRWKV`` or a subclass).
        kwargs: ``scan=``, ``layout=``, ``tokenizer=``, ``preprocessor=``, ``freeze_encoder=``, replacing the
            checkpoint's (released files: BiDir, Sandwich, World tokenizer, CLIP preprocessing at 336).
    Returns:
        the model in eval mode, with ``tokenizer`` and ``image_preprocessor`` set.
    """
    cls = VisualRWKV if cls is None else cls
    dtype = parse_dtype(dtype)
    path = resolve_checkpoint(name_or_path, filename=filename, revision=revision, cache_dir=cache_dir)
    if path.is_dir():
        model = _load_directory(path, cls=cls, dtype=dtype, device=device, progress=progress, **kwargs)
    else:
        if path.suffix != ".safetensors" and path.suffix not in _PICKLE_SUFFIXES:
            raise CheckpointError(
                f"{path}: unknown checkpoint type {path.suffix!r}; expected a .safetensors file, a "
                f"{'/'.join(_PICKLE_SUFFIXES)} file or a save_pretrained directory"
            )
        sd = load_checkpoint(path, dtype=dtype, device=device, progress=progress)
        if any(k.startswith("encoder.vit.") for k in sd) and not any(k.startswith(OFFICIAL_PREFIXES["vit"]) for k in sd):
            raise CheckpointError(
                f"{path}: holds a save_pretrained model.safetensors (module names), which needs its config.json; "
                "load the directory that contains both"
            )
        model = cls.from_official_state_dict(sd, **kwargs)
        from .tokenizer import WORLD_VOCAB_SIZE, WorldTokenizer

        if model.tokenizer is None and model.rwkv.vocab_size == WORLD_VOCAB_SIZE:
            model.tokenizer = WorldTokenizer()  # the released models' tokenizer (its vocabulary is bundled)
    return model.eval()


# --- saving -----------------------------------------------------------------------------------------------


def _safetensors_ready(sd: Mapping[str, torch.Tensor], dtype) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors no two of which share memory (safetensors refuses shared storage: the
    official q/k/v are views of one timm qkv tensor). Only those that need it are copied."""
    out, seen = {}, set()
    for k, v in sd.items():
        v = _cast(v.detach(), dtype, "cpu")
        key = (v.untyped_storage().data_ptr(), v.device.type)
        if key in seen or not v.is_contiguous() or v.storage_offset() != 0 or v.untyped_storage().nbytes() != v.nbytes:
            v = v.contiguous().clone()
        seen.add((v.untyped_storage().data_ptr(), v.device.type))
        out[k] = v
    return out


def _json_text(obj: Any, depth: int = 0) -> str:
    """JSON with objects one field per line and lists of plain values on one line (mean, std, sizes,
    permutations), so that config.json reads like the schema."""
    pad = "  " * (depth + 1)
    if isinstance(obj, Mapping) and obj:
        if not all(isinstance(k, str) for k in obj):
            raise TypeError(f"JSON object keys must be strings, got {list(obj)[:5]}")
        fields = (f"{pad}{json.dumps(k)}: {_json_text(v, depth + 1)}" for k, v in obj.items())
        return "{\n" + ",\n".join(fields) + "\n" + "  " * depth + "}"
    if isinstance(obj, (list, tuple)) and any(isinstance(v, (Mapping, list, tuple)) for v in obj):
        return "[\n" + ",\n".join(pad + _json_text(v, depth + 1) for v in obj) + "\n" + "  " * depth + "]"
    return json.dumps(obj, allow_nan=False)


def save_pretrained(
    model: VisualRWKV,
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` to ``path`` and return ``path``.

    A directory (any path not ending in ``.safetensors``): ``config.json`` + ``model.safetensors`` (+
    ``tokenizer.json``), loadable by ``from_pretrained`` without code changes. A ``.safetensors`` path: one
    file in the released flat layout (``model.official_state_dict()``, v6.0 linear projector only).
    ``dtype`` casts floating tensors as they are written; ``metadata`` (JSON) is stored in config.json.
    """
    from safetensors.torch import save_file

    if not isinstance(model, VisualRWKV):
        raise TypeError(f"model must be a VisualRWKV, got {type(model).__name__}")
    dtype = parse_dtype(dtype)
    path = Path(path)
    if path.suffix == ".safetensors":
        if metadata is not None:
            raise ValueError("metadata: only a save_pretrained directory has a config.json to hold it")
        sd = _safetensors_ready(model.official_state_dict(), dtype)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(sd, str(path), metadata={"format": "pt", "layout": "visualrwkv-v6.0-official"})
        return path
    if path.suffix in _PICKLE_SUFFIXES:
        raise ValueError(
            f"path must be a directory or end in .safetensors, got {str(path)!r} (pickle files are not written)"
        )
    if path.exists() and not path.is_dir():
        raise ValueError(f"path: {str(path)!r} exists and is not a directory")
    config, tokenizer = model_to_config(model, metadata=metadata)
    if dtype is not None:
        config["dtype"] = str(dtype).removeprefix("torch.")
    try:
        text = _json_text(config) + "\n"
    except (TypeError, ValueError) as e:
        raise ValueError(f"metadata must hold JSON values only ({e})") from None
    path.mkdir(parents=True, exist_ok=True)
    save_file(_safetensors_ready(model.state_dict(), dtype), str(path / WEIGHTS_NAME), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save(path / config["tokenizer"]["file"])
    # config.json last: a directory with a config is complete (an interrupted save leaves none).
    (path / CONFIG_NAME).write_text(text, encoding="utf-8")
    return path


# --- describing -------------------------------------------------------------------------------------------


def describe_checkpoint(
    name_or_path: str | os.PathLike,
    filename: str | None = None,
    revision: str | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """What a checkpoint holds, without reading its tensor data: the model config (sizes, encoder,
    projector, scan, layout, preprocessing, tokenizer, dtype) plus ``format``, ``path``, ``parameters``
    (total and per part), ``tensors`` and ``dtypes``. Released files report the defaults they load with."""
    path = resolve_checkpoint(name_or_path, filename=filename, revision=revision, cache_dir=cache_dir)
    if path.is_dir():
        config = load_config(path)
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"{weights}: missing; a save_pretrained directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
        specs = read_tensor_specs(weights)
        fmt = "save_pretrained directory"
        parts = {"rwkv": "rwkv.", "encoder": "encoder.", "projector": "proj."}
    else:
        specs = read_tensor_specs(path)
        if any(k.startswith("encoder.vit.") for k in specs):
            raise CheckpointError(f"{path}: a save_pretrained model.safetensors needs its config.json; describe the directory")
        model = VisualRWKV.from_official_state_dict(specs)  # meta tensors: sizes only
        config, _ = model_to_config(model)
        config["dtype"] = str(specs[OFFICIAL_PREFIXES["rwkv"] + "emb.weight"].dtype).removeprefix("torch.")
        fmt = "official .safetensors" if path.suffix == ".safetensors" else f"official {path.suffix}"
        parts = {"rwkv": OFFICIAL_PREFIXES["rwkv"], "encoder": OFFICIAL_PREFIXES["vit"], "projector": "proj."}
    by_part = {name: sum(t.numel() for k, t in specs.items() if k.startswith(p) and not k.endswith("position_ids"))
               for name, p in parts.items()}
    info = {"path": str(path), "format": fmt, **{k: v for k, v in config.items() if k not in ("format", "format_version")}}
    if path.is_dir():
        info["format_version"] = config["format_version"]
    info.update(
        parameters=sum(by_part.values()), parameters_by_part=by_part, tensors=len(specs),
        dtypes=sorted({str(t.dtype).removeprefix("torch.") for t in specs.values()}),
    )
    return info
