"""Loading and saving VisualRWKV models: save_pretrained directories, the released files, the Hub.

What :func:`from_pretrained` (``VisualRWKV.from_pretrained``) accepts:

* a directory written by :func:`save_pretrained`: ``config.json`` + ``model.safetensors`` (+ ``tokenizer.json``),
  see :mod:`rwkv_vision.checkpoint.config_json`;
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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError, StateDictError
from ..models.visualrwkv import VisualRWKV
from .atomic import atomic_save
from .config_json import (
    CONFIG_NAME,
    TOKENIZER_NAME,
    WEIGHTS_NAME,
    load_config,
    model_from_config,
    model_to_config,
    parse_dtype,
)
from .diff import assign_state_dict, diff_state_dict
from .files import PICKLE_SUFFIXES, _cast, _read_safetensors, check_device, load_checkpoint, read_tensor_specs
from .hub import resolve_checkpoint
from .official import OFFICIAL_PREFIXES, visualrwkv_from_official_state_dict

__all__ = ["from_pretrained", "save_pretrained", "describe_checkpoint", "checkpoint_metadata", "METADATA_KEY"]

#: The safetensors header entry holding ``metadata`` (JSON text) in a single-file save.
METADATA_KEY = "rwkv_vision.metadata"


# --- loading ----------------------------------------------------------------------------------------------


def _check_weights(model: torch.nn.Module, specs: Mapping[str, torch.Tensor], path: Path) -> None:
    missing, unexpected, mismatched = diff_state_dict(model.state_dict(), specs)
    if missing or unexpected or mismatched:
        raise StateDictError(missing, unexpected, mismatched, hint=f"in {path} (the model config.json describes)")


def _count_layers(specs: Mapping[str, Any], prefix: str) -> int:
    """1 + the largest layer index among keys ``{prefix}{i}.*`` (0 without any); indices of more than nine
    digits count as 10**9."""
    top = -1
    for key in specs:
        if key.startswith(prefix):
            digits = key[len(prefix) :].split(".", 1)[0]
            if digits.isdigit():
                top = max(top, int(digits) if len(digits) <= 9 else 10**9)
    return top + 1


def _check_layer_counts(config: Mapping[str, Any], specs: Mapping[str, Any], source: Path, weights: Path) -> None:
    """config.json and the weights must agree on the layer counts before anything is built: a config asking
    for 1000 layers beside a file holding 4 fails at once, naming both files and the field."""
    pairs = [("rwkv.n_layer", config["rwkv"]["n_layer"], _count_layers(specs, "rwkv.blocks."))]
    kwargs = config["encoder"].get("timm_kwargs") if isinstance(config["encoder"], Mapping) else None
    if isinstance(kwargs, Mapping) and "depth" in kwargs:
        pairs.append(("encoder.timm_kwargs.depth", kwargs["depth"], _count_layers(specs, "encoder.vit.blocks.")))
    for field, want, have in pairs:
        if want != have:
            raise CheckpointError(f"{source}: {field} is {want!r} but {weights} holds {have} layer(s) of that part")


def _load_directory(directory: Path, *, cls, dtype, device, progress, **kwargs: Any) -> VisualRWKV:
    config = load_config(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing; a save_pretrained directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    specs = read_tensor_specs(weights)
    _check_layer_counts(config, specs, directory / CONFIG_NAME, weights)
    # Built on the meta device: nothing is allocated or initialised, every tensor comes from the file.
    model = model_from_config(
        config, cls=cls, device="meta", directory=directory, source=str(directory / CONFIG_NAME), **kwargs
    )
    _check_weights(model, specs, weights)
    sd = _read_safetensors(weights, dtype=dtype, device=device, progress=progress)
    assign_state_dict(model, sd)  # child by child: torch's one call is quadratic in the layer count
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
    check_device(device)
    path = resolve_checkpoint(name_or_path, filename=filename, revision=revision, cache_dir=cache_dir)
    if path.is_dir():
        model = _load_directory(path, cls=cls, dtype=dtype, device=device, progress=progress, **kwargs)
    else:
        if path.suffix != ".safetensors" and path.suffix not in PICKLE_SUFFIXES:
            raise CheckpointError(
                f"{path}: unknown checkpoint type {path.suffix!r}; expected a .safetensors file, a "
                f"{'/'.join(PICKLE_SUFFIXES)} file or a save_pretrained directory"
            )
        sd = load_checkpoint(path, dtype=dtype, device=device, progress=progress)
        if any(k.startswith("encoder.vit.") for k in sd) and not any(
            k.startswith(OFFICIAL_PREFIXES["vit"]) for k in sd
        ):
            raise CheckpointError(
                f"{path}: holds a save_pretrained model.safetensors (module names), which needs its config.json; "
                "load the directory that contains both"
            )
        try:
            model = load_released_state_dict(sd, cls=cls, source=path, **kwargs)
        except StateDictError as e:
            hint = f"{e.hint} (in {path})" if e.hint else f"in {path}"
            raise StateDictError(e.missing, e.unexpected, e.mismatched, hint=hint) from None
        except ConfigError as e:
            raise CheckpointError(f"{path}: {e}") from None
        from ..tokenizers import WORLD_VOCAB_SIZE, WorldTokenizer

        if model.tokenizer is None and model.rwkv.vocab_size == WORLD_VOCAB_SIZE:
            model.tokenizer = WorldTokenizer()  # the released models' tokenizer (its vocabulary is bundled)
    return model.eval()


def released_family_loader(state_dict: Mapping[str, Any]) -> str:
    """Which loader a released flat state dict goes to, from its keys alone: ``"v7.00"`` (HD towers and an
    x070 language model), ``"hd/uhd"`` (HD towers, x060) or ``"v6.0"`` (everything else, whose strict loader
    then names every key that does not fit)."""
    from .families import TOWER_PREFIX

    towers = any(k.startswith(tuple(TOWER_PREFIX.values())) for k in state_dict)
    if not towers:
        return "v6.0"
    x070 = any(k.startswith("rwkv.blocks.") and k.endswith((".att.r_k", ".att.w0", ".att.k_k")) for k in state_dict)
    return "v7.00" if x070 else "hd/uhd"


def load_released_state_dict(state_dict: Mapping[str, Any], *, cls=None, source: Any = "state_dict", **kwargs: Any):
    """A ``VisualRWKV`` from a released flat state dict of any family it can load: v6.0
    (``official.visualrwkv_from_official_state_dict``), HD (``families.visualrwkv_hd_from_official_state_dict``)
    UHD (``families.visualrwkv_uhd_from_official_state_dict``; HD and UHD told apart by
    :func:`~rwkv_vision.checkpoint.families.detect_family`) or v7.00
    (``families.visualrwkv7_from_official_state_dict``)."""
    from .families import FAMILIES, detect_family, visualrwkv7_from_official_state_dict

    kind = released_family_loader(state_dict)
    if kind == "v7.00":
        return visualrwkv7_from_official_state_dict(state_dict, cls=cls, **kwargs)
    if kind == "hd/uhd":
        family = FAMILIES[detect_family(state_dict).name]  # a StateDictError naming the misfits otherwise
        if family.name == "hd":
            from .families import visualrwkv_hd_from_official_state_dict

            return visualrwkv_hd_from_official_state_dict(state_dict, cls=cls, **kwargs)
        if family.name == "uhd":
            from .families import visualrwkv_uhd_from_official_state_dict

            return visualrwkv_uhd_from_official_state_dict(state_dict, cls=cls, **kwargs)
        raise CheckpointError(f"{source}: a VisualRWKV {family.name} checkpoint that this loader does not take")
    return visualrwkv_from_official_state_dict(state_dict, cls=VisualRWKV if cls is None else cls, **kwargs)


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
    ``dtype`` casts floating tensors as they are written; ``metadata`` (JSON) is stored in config.json (in
    the header of a ``.safetensors`` file).

    The save is atomic (see :mod:`rwkv_vision.checkpoint.atomic`): everything is written into a temporary
    directory beside ``path`` and swapped in by renames, so an interruption leaves the old checkpoint or the
    new one, never a mix, and no temporary files.
    """
    if not isinstance(model, VisualRWKV):
        raise TypeError(f"model must be a VisualRWKV, got {type(model).__name__}")
    dtype = parse_dtype(dtype)
    path = Path(path)
    if path.suffix == ".safetensors":
        from ..models.rwkv7 import RWKV7
        from ..vision.tiles import TiledEncoder

        multi = "uhd" if isinstance(model.encoder, TiledEncoder) else "hd"
        family = "v7.00" if isinstance(model.rwkv, RWKV7) else (multi if _is_multi_tower(model) else "v6.0")
        header = {"format": "pt", "layout": f"visualrwkv-{family}-official"}
        if metadata is not None:
            header[METADATA_KEY] = _metadata_text(metadata)
        sd = _safetensors_ready(model.official_state_dict(), dtype)
        return atomic_save(path, lambda out: _writers.save_file(sd, str(out), metadata=header), directory=False)
    if path.suffix in PICKLE_SUFFIXES:
        raise ValueError(
            f"path must be a directory or end in .safetensors, got {str(path)!r} (pickle files are not written)"
        )
    if os.path.lexists(path) and not path.is_dir() and not path.is_symlink():
        raise ValueError(f"path: {str(path)!r} exists and is not a directory")
    config, tokenizer = model_to_config(model, metadata=metadata)
    if dtype is not None:
        config["dtype"] = str(dtype).removeprefix("torch.")
    try:
        text = _json_text(config) + "\n"
    except (TypeError, ValueError, RecursionError) as e:
        raise ValueError(f"metadata must hold JSON values only ({type(e).__name__}: {str(e)[:200]})") from None
    sd = _safetensors_ready(model.state_dict(), dtype)

    def write(tmp: Path) -> None:
        _writers.save_file(sd, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        if tokenizer is not None:
            _writers.save_tokenizer(tokenizer, tmp / config["tokenizer"]["file"])
        _writers.write_text(tmp / CONFIG_NAME, text)

    return atomic_save(path, write, directory=True, owned=(CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_NAME))


def _is_multi_tower(model: Any) -> bool:
    from ..vision.multi_encoder import MultiEncoder

    return isinstance(model.encoder, MultiEncoder)


def _metadata_text(metadata: Any) -> str:
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict of JSON values, got {type(metadata).__name__}")
    try:
        return json.dumps(dict(metadata), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as e:
        raise ValueError(f"metadata must hold JSON values only ({type(e).__name__}: {str(e)[:200]})") from None


class _writers:
    """Every write a save makes goes through here (the tests make each one fail in turn)."""

    @staticmethod
    def save_file(sd: Mapping[str, torch.Tensor], path: str, *, metadata: Mapping[str, str]) -> None:
        from safetensors.torch import save_file

        save_file(sd, path, metadata=dict(metadata))

    @staticmethod
    def save_tokenizer(tokenizer: Any, path: Path) -> None:
        tokenizer.save(path)

    @staticmethod
    def write_text(path: Path, text: str) -> None:
        path.write_text(text, encoding="utf-8")


def checkpoint_metadata(name_or_path: str | os.PathLike, filename: str | None = None, **kwargs: Any) -> Any:
    """The ``metadata`` a checkpoint carries (config.json of a directory, or the header of a .safetensors
    written by :func:`save_pretrained`), or None."""
    path = resolve_checkpoint(name_or_path, filename=filename, **kwargs)
    if path.is_dir():
        return load_config(path).get("metadata")
    if path.suffix == ".safetensors":
        from .files import _open_safetensors

        with _open_safetensors(path) as f:
            text = (f.metadata() or {}).get(METADATA_KEY)
        if text is not None:
            try:
                return json.loads(text)
            except (ValueError, RecursionError):
                raise CheckpointError(f"{path}: its {METADATA_KEY!r} header is not valid JSON") from None
    return None


# --- describing -------------------------------------------------------------------------------------------


def _directory_family(config: Mapping[str, Any], specs: Mapping[str, Any]) -> str | None:
    """The released family a save_pretrained directory has the layout of (its parts, not its key names), or
    None: v7.00 (RWKV-7, the three towers, the context-gating projector), v6.0 (RWKV-6, one ViT, linear), HD
    (RWKV-6, the three towers, gated_mlp), UHD (RWKV-6, the three towers tiled, relu_mlp)."""
    projector = config.get("projector", {}).get("type")
    encoder = config.get("encoder", {})
    towers = [t.get("name") for t in encoder.get("towers", [])] if isinstance(encoder.get("towers"), list) else []
    if config.get("architecture") == "rwkv7" and projector == "context_gating" and towers == ["dino", "siglip", "sam"]:
        return "v7.00"
    if config.get("architecture", "rwkv6") == "rwkv6" and projector == "linear" and encoder.get("kind") == "timm_vit":
        return "v6.0"
    rwkv6 = config.get("architecture", "rwkv6") == "rwkv6" and towers == ["dino", "siglip", "sam"]
    if rwkv6 and projector == "relu_mlp" and encoder.get("kind") == "tiled":
        return "uhd"
    if rwkv6 and projector == "gated_mlp" and encoder.get("kind") == "multi":
        return "hd"
    return None


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
    from .families import FAMILIES, detect_family

    path = resolve_checkpoint(name_or_path, filename=filename, revision=revision, cache_dir=cache_dir)
    if path.is_dir():
        config = load_config(path)
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(
                f"{weights}: missing; a save_pretrained directory holds {CONFIG_NAME} and {WEIGHTS_NAME}"
            )
        specs = read_tensor_specs(weights)
        fmt = "save_pretrained directory"
        parts = {"rwkv": "rwkv.", "encoder": "encoder.", "projector": "proj."}
    else:
        specs = read_tensor_specs(path)
        if any(k.startswith("encoder.vit.") for k in specs):
            raise CheckpointError(
                f"{path}: a save_pretrained model.safetensors needs its config.json; describe the directory"
            )
        try:
            model = load_released_state_dict(specs, source=path)  # meta tensors: sizes only
            config, _ = model_to_config(model)
        except StateDictError as e:
            detect_family(specs)  # no family fits: that error
            # A family's keys, but parts of sizes no registered module has (towers of other widths): the
            # family and the tensors are described, not a model config.
            config = {"not_loadable": str(e)}
        try:
            released = FAMILIES[detect_family(specs).name]
            config |= {"files": released.files, "description": released.description}
        except StateDictError:
            pass  # loaded by the lenient side of a loader yet no family's exact keys: "family" is null below
        config["dtype"] = str(specs[OFFICIAL_PREFIXES["rwkv"] + "emb.weight"].dtype).removeprefix("torch.")
        fmt = "official .safetensors" if path.suffix == ".safetensors" else f"official {path.suffix}"
        vit = OFFICIAL_PREFIXES["vit"] if released_family_loader(specs) == "v6.0" else "vit."
        parts = {"rwkv": OFFICIAL_PREFIXES["rwkv"], "encoder": vit, "projector": "proj."}
    by_part = {
        name: sum(t.numel() for k, t in specs.items() if k.startswith(p) and not k.endswith("position_ids"))
        for name, p in parts.items()
    }
    try:
        family = detect_family(specs).name if not path.is_dir() else _directory_family(config, specs)
    except StateDictError:
        family = None
    info = {
        "path": str(path),
        "format": fmt,
        "family": family,
        **{k: v for k, v in config.items() if k not in ("format", "format_version")},
    }
    if path.is_dir():
        info["format_version"] = config["format_version"]
    info.update(
        parameters=sum(by_part.values()),
        parameters_by_part=by_part,
        tensors=len(specs),
        dtypes=sorted({str(t.dtype).removeprefix("torch.") for t in specs.values()}),
    )
    return info
