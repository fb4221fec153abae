"""Language-model checkpoints (RWKV-6 "x060" and RWKV-7 "x070"): loading, saving and describing them.

What :func:`load_language_model` accepts:

* an official ``.pth`` (a flat dict of tensors, as BlinkDL's released ``rwkv7-*.pth`` files), read with
  ``torch.load(weights_only=True)`` only and memory-mapped;
* a ``.safetensors`` file with the official key names (what :func:`save_language_model` writes for a
  ``.safetensors`` path);
* a directory written by :func:`save_language_model`: ``config.json`` + ``model.safetensors``.

:func:`resolve_language_model` finds such a file or directory for a name, as ``VisualRWKV.from_pretrained``
does: a local path, ``"owner/repo"`` (a save_language_model directory on the Hugging Face Hub), ``"owner/repo"``
with ``filename=`` or ``"owner/repo/file.pth"`` (a released file), through the Hub's cache and offline mode.

The architecture of an official file is read from its keys (:func:`~rwkv_vision.checkpoint.official.
official_architecture`; x070a/x070b variants are refused by name), every size from its shapes, and every key
is checked: a file that does not fit gives one ``StateDictError`` listing every missing, unexpected and
mis-shaped key.

``config.json`` of a language-model directory (``format_version`` 1; every field required, unknown fields an
error)::

    format          "rwkv_vision.LanguageModel"
    format_version  1
    architecture    "rwkv6" | "rwkv7"
    rwkv            the config's fields (RWKV6Config / RWKV7Config ``to_dict``)
    tokenizer       {"type": "world"} (the bundled World vocabulary) or null
    dtype           dtype of the parameters as saved ("float32", "bfloat16", ...)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError, StateDictError
from ..models.config import RWKV6Config, RWKV7Config
from ..models.rwkv6 import RWKV6
from ..models.rwkv7 import RWKV7
from .atomic import atomic_save
from .config_json import CONFIG_NAME, MAX_CONFIG_BYTES, WEIGHTS_NAME, parse_dtype
from .diff import assign_state_dict, diff_state_dict
from .files import PICKLE_SUFFIXES, _read_safetensors, check_device, load_checkpoint, read_tensor_specs
from .hub import _REPO_ID, _hub_download, resolve_checkpoint
from .official import official_architecture, rwkv6_from_official_state_dict, rwkv7_from_official_state_dict

__all__ = [
    "LM_FORMAT",
    "LM_FORMAT_VERSION",
    "ARCHITECTURES",
    "load_language_model",
    "resolve_language_model",
    "save_language_model",
    "describe_language_model",
    "is_language_model_checkpoint",
]

LM_FORMAT = "rwkv_vision.LanguageModel"
LM_FORMAT_VERSION = 1
#: architecture name -> (config class, model class, official loader, official format name)
ARCHITECTURES = {
    "rwkv6": (RWKV6Config, RWKV6, rwkv6_from_official_state_dict, "x060"),
    "rwkv7": (RWKV7Config, RWKV7, rwkv7_from_official_state_dict, "x070"),
}
_FIELDS = ("format", "format_version", "architecture", "rwkv", "tokenizer", "dtype")


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; a language-model directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes; not a config.json")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({str(e)[:200]})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: must hold a JSON object, got {type(config).__name__}")
    if config.get("format") != LM_FORMAT:
        raise CheckpointError(f"{path}: format must be {LM_FORMAT!r} (a language model), got {config.get('format')!r}")
    problems = [f"{k} is missing" for k in _FIELDS if k not in config]
    unknown = sorted(set(config) - set(_FIELDS))
    if unknown:
        problems.append(f"unknown field(s) {unknown}")
    if config.get("format_version") != LM_FORMAT_VERSION:
        problems.append(f"format_version must be {LM_FORMAT_VERSION}, got {config.get('format_version')!r}")
    if not isinstance(config.get("architecture"), str) or config["architecture"] not in ARCHITECTURES:
        problems.append(f"architecture must be one of {sorted(ARCHITECTURES)}, got {config.get('architecture')!r}")
    tok = config.get("tokenizer")
    if tok is not None and tok != {"type": "world"}:
        problems.append(f'tokenizer must be {{"type": "world"}} or null, got {tok!r}')
    if problems:
        raise CheckpointError(f"{path}: " + "; ".join(problems))
    return config


def is_language_model_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a language-model directory or a file whose keys are a bare language model (no
    ``rwkv.``/``vit.``/``proj`` parts). Reads no tensor data."""
    path = Path(path)
    if path.is_dir():
        cfg = path / CONFIG_NAME
        try:
            return cfg.is_file() and json.loads(cfg.read_text(encoding="utf-8")).get("format") == LM_FORMAT
        except (ValueError, OSError, AttributeError):
            return False
    if not path.is_file():
        return False
    specs = read_tensor_specs(path)
    return "emb.weight" in specs and not any(k.startswith(("rwkv.", "vit.", "proj")) for k in specs)


def _with_tokenizer(model, use_world: bool):
    from ..tokenizers import WORLD_VOCAB_SIZE, WorldTokenizer

    if use_world and model.vocab_size == WORLD_VOCAB_SIZE:
        model.tokenizer = WorldTokenizer()  # the released models' tokenizer (its vocabulary is bundled)
    return model


def resolve_language_model(
    name_or_path: str | os.PathLike,
    *,
    filename: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """A local checkpoint file or language-model directory for ``name_or_path``: a local file or directory
    (``filename`` inside it), a Hub repo id ``"owner/repo"`` holding a :func:`save_language_model` directory
    (its ``config.json`` and ``model.safetensors`` fetched into one snapshot folder), ``"owner/repo"`` with
    ``filename=`` or ``"owner/repo/filename"`` (one file, e.g. a released ``.pth``). Hub files come from (or go
    to) the Hugging Face cache (``cache_dir``, ``HF_HUB_CACHE``/``HF_HOME``; ``HF_HUB_OFFLINE=1``: the cache
    only); ``revision``: a branch, tag or commit."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a path or a Hub repo id, got {type(name_or_path).__name__}")
    if filename is None and not Path(name_or_path).exists() and _REPO_ID.match(str(name_or_path)):
        config = _hub_download(str(name_or_path), CONFIG_NAME, revision=revision, cache_dir=cache_dir)
        _hub_download(str(name_or_path), WEIGHTS_NAME, revision=revision, cache_dir=cache_dir)
        return config.parent
    return resolve_checkpoint(name_or_path, filename=filename, revision=revision, cache_dir=cache_dir)


def load_language_model(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    progress: bool | None = None,
):
    """An ``RWKV7`` or ``RWKV6`` (in eval mode) from an official ``.pth``, an official-names ``.safetensors``
    or a directory of :func:`save_language_model`. ``dtype`` casts floating tensors (default: the file's),
    ``device`` moves them. A 65536-token model gets the World tokenizer as ``model.tokenizer``."""
    dtype = parse_dtype(dtype)
    check_device(device)
    path = Path(path)
    if path.is_dir():
        config = _read_config(path)
        cfg_cls, model_cls, _, _ = ARCHITECTURES[config["architecture"]]
        try:
            cfg = cfg_cls.from_dict(config["rwkv"], source=f"{path / CONFIG_NAME}: rwkv")
        except ConfigError as e:
            raise CheckpointError(str(e)) from None
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"{weights}: missing; a language-model directory holds {CONFIG_NAME} and it")
        specs = read_tensor_specs(weights)
        n_file = 1 + max(
            (int(k.split(".")[1]) for k in specs if k.startswith("blocks.") and k.split(".")[1].isdigit()), default=-1
        )
        if n_file != cfg.n_layer:
            raise CheckpointError(f"{path / CONFIG_NAME}: rwkv.n_layer is {cfg.n_layer} but {weights} holds {n_file}")
        model = model_cls(cfg, device="meta")
        missing, unexpected, mismatched = diff_state_dict(model.state_dict(), specs)
        if missing or unexpected or mismatched:
            raise StateDictError(
                missing, unexpected, mismatched, hint=f"in {weights} (the model config.json describes)"
            )
        sd = _read_safetensors(weights, dtype=dtype, device=device, progress=progress)
        assign_state_dict(model, sd)  # child by child: torch's one call is quadratic in the layer count
        return _with_tokenizer(model, config["tokenizer"] is not None).eval()
    if path.suffix != ".safetensors" and path.suffix not in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: unknown checkpoint type {path.suffix!r}; expected a .safetensors file, a "
            f"{'/'.join(PICKLE_SUFFIXES)} file or a language-model directory"
        )
    sd = load_checkpoint(path, dtype=dtype, device=device, progress=progress)
    try:
        arch = official_architecture(sd)
        model = ARCHITECTURES[arch][2](sd)
    except StateDictError as e:
        hint = f"{e.hint} (in {path})" if e.hint else f"in {path}"
        raise StateDictError(e.missing, e.unexpected, e.mismatched, hint=hint) from None
    return _with_tokenizer(model, True).eval()


def _architecture_of(model) -> str:
    for name, (_, cls, _, _) in ARCHITECTURES.items():
        if isinstance(model, cls):
            return name
    raise TypeError(f"model must be an RWKV6 or RWKV7 language model, got {type(model).__name__}")


def save_language_model(model, path: str | os.PathLike, *, dtype: torch.dtype | str | None = None) -> Path:
    """Write ``model`` (``RWKV6`` or ``RWKV7``) to ``path`` and return ``path``, atomically.

    A directory (any path not ending in ``.safetensors``): ``config.json`` (with ``"architecture"``) +
    ``model.safetensors``. A ``.safetensors`` path: one file under the official key names, which the official
    loaders of this library read back (``rwkv-vision convert x.pth x.safetensors``). ``dtype`` casts floating
    tensors as they are written. Pickle files are never written.
    """
    from .pretrained import _json_text, _safetensors_ready, _writers

    arch = _architecture_of(model)
    dtype = parse_dtype(dtype)
    path = Path(path)
    sd = _safetensors_ready(model.state_dict(), dtype)
    if path.suffix == ".safetensors":
        header = {"format": "pt", "layout": f"rwkv-{ARCHITECTURES[arch][3]}-official"}
        return atomic_save(path, lambda out: _writers.save_file(sd, str(out), metadata=header), directory=False)
    if path.suffix in PICKLE_SUFFIXES:
        raise ValueError(
            f"path must be a directory or end in .safetensors, got {str(path)!r} (pickles are not written)"
        )
    config = {
        "format": LM_FORMAT,
        "format_version": LM_FORMAT_VERSION,
        "architecture": arch,
        "rwkv": model.config.to_dict(),
        "tokenizer": {"type": "world"} if getattr(model, "tokenizer", None) is not None else None,
        "dtype": str(dtype or model.emb.weight.dtype).removeprefix("torch."),
    }
    text = _json_text(config) + "\n"

    def write(tmp: Path) -> None:
        _writers.save_file(sd, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        _writers.write_text(tmp / CONFIG_NAME, text)

    return atomic_save(path, write, directory=True, owned=(CONFIG_NAME, WEIGHTS_NAME))


def describe_language_model(path: str | os.PathLike) -> dict[str, Any]:
    """What a language-model checkpoint holds, without reading tensor data: ``architecture`` ("rwkv7"),
    ``official_format`` ("x070"), the config fields (sizes: n_layer, n_embd, head_size, n_head, dim_ffn, the
    LoRA ranks, vocab_size), ``parameters``, ``tensors``, ``dtypes``, ``format`` and ``path``."""
    path = Path(path)
    if path.is_dir():
        config = _read_config(path)
        arch = config["architecture"]
        specs = read_tensor_specs(path / WEIGHTS_NAME)
        cfg = ARCHITECTURES[arch][0].from_dict(config["rwkv"], source="rwkv")
        fmt = "language-model directory"
    else:
        specs = read_tensor_specs(path)
        arch = official_architecture(specs)
        cfg = ARCHITECTURES[arch][2](specs).config  # meta tensors: sizes only, every key checked
        fmt = f"official {path.suffix}"
    return {
        "path": str(path),
        "format": fmt,
        "architecture": arch,
        "official_format": ARCHITECTURES[arch][3],
        **cfg.to_dict(),
        "n_head": cfg.n_head,
        "parameters": sum(t.numel() for t in specs.values()),
        "tensors": len(specs),
        "dtypes": sorted({str(t.dtype).removeprefix("torch.") for t in specs.values()}),
    }
