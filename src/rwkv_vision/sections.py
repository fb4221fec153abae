"""Each component of a VisualRWKV as JSON data and back: the sections of ``config.json``.

A section describes one part (scan policy, prompt layout, projector, image preprocessing, tokenizer, vision
encoder) with the name its class is registered under and its options, so that a model and its processor can
be rebuilt without code or pickle. The model config (``models.config.VisualRWKVConfig``), the processor and
the checkpoint package all read and write parts through these functions; the file format around them is
``checkpoint.config_json``. Every problem raises a ``CheckpointError`` naming the field.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError
from .prompt import LAYOUTS, ImageFirstRun, PromptLayout, Sandwich
from .scan import SCANS, Custom, ScanPolicy, Snake, Zigzag
from .tokenizers import TOKENIZERS
from .vision.multi_preprocess import MultiImagePreprocessor, SquareResize
from .vision.preprocess import ImagePreprocessor
from .vision.projector import PROJECTORS, ContextGatingProjector, GatedMLPProjector, LinearProjector, MLPProjector
from .vision.relu_projector import ReLUProjector  # noqa: F401  (registers "relu_mlp", VisualRWKV-UHD's projector)
from .vision.tile_preprocess import TilePreprocessor

#: The file name of a tokenizer saved beside config.json.
TOKENIZER_NAME = "tokenizer.json"
#: The largest tokenizer file read (the bundled World vocabulary is under 1 MiB).
MAX_TOKENIZER_BYTES = 64 * 2**20

#: Upper bounds on a vision tower described by a file (far above CLIP ViT-L/14-336 and ViT-g, far below
#: what would make building it run without bound): checked before any module is built.
VIT_LIMITS = dict(
    embed_dim=16384,
    depth=256,
    num_heads=1024,
    patch_size=1024,
    img_size=8192,
    patches=65536,
    mlp_ratio=64.0,
    other_int=65536,
)
#: Upper bound on projector widths (the language model's n_embd is at most 65536).
MAX_FEATURES = 1 << 20
#: The most towers a multi-tower encoder described by a file may have.
MAX_TOWERS = 8

__all__ = [
    "TOKENIZER_NAME",
    "VIT_LIMITS",
    "MAX_FEATURES",
    "contained_path",
    "parse_dtype",
    "dtype_name",
    "check_section",
    "scan_to_config",
    "scan_from_config",
    "layout_to_config",
    "layout_from_config",
    "projector_to_config",
    "projector_from_config",
    "preprocessor_to_config",
    "preprocessor_from_config",
    "tokenizer_to_config",
    "tokenizer_from_config",
    "encoder_to_config",
    "encoder_from_config",
]

_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp16": torch.float16,
    "float64": torch.float64,
    "double": torch.float64,
}


def parse_dtype(dtype: torch.dtype | str | None, *, name: str = "dtype") -> torch.dtype | None:
    """A ``torch.dtype`` from a dtype or its name (``"bfloat16"``, ``"bf16"``, ``"float32"``, ...); None stays None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.lower().removeprefix("torch.")]
    raise ValueError(f"{name} must be a torch.dtype or one of {sorted(_DTYPES)}, got {dtype!r}")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _is_pos_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def check_section(name: str, data: Any, *, required: tuple, optional: tuple) -> list[str]:
    if not isinstance(data, Mapping):
        return [f"{name} must be an object, got {type(data).__name__}"]
    problems = [f"{name}.{k} is missing" for k in required if k not in data]
    unknown = sorted(set(data) - set(required) - set(optional))
    if unknown:
        problems.append(f"{name} has unknown field(s) {unknown} (expected {sorted(set(required) | set(optional))})")
    return problems


# --- scan policies ----------------------------------------------------------------------------------------


def scan_to_config(policy: ScanPolicy) -> dict[str, Any]:
    """A scan policy as JSON data: ``{"name": ...}`` plus its options (Custom: its permutations as lists)."""
    # Exact types only: a subclass may change the order, and its name would then describe another policy.
    kind = SCANS.name_of(policy)
    if kind is not None and kind not in _SCAN_FIELDS and policy._key():
        kind = None  # a registered policy with options this format cannot record
    if kind is None:
        raise ValueError(
            f"scan: a {type(policy).__name__} policy has no config.json form; use one of "
            f"{SCANS.names()} (Custom for any fixed permutations)"
        )
    out: dict[str, Any] = {"name": kind}
    if isinstance(policy, Snake):
        out["bidirectional"] = policy.bidirectional
    elif isinstance(policy, Zigzag):
        out.update(bidirectional=policy.bidirectional, transpose=policy.transpose)
    elif isinstance(policy, Custom):
        out["permutations"] = [None if p is None else list(p) for p in policy.permutations]
    return out


_SCAN_FIELDS = {
    "unidir": (),
    "bidir": (),
    "multidir": (),
    "snake": ("bidirectional",),
    "zigzag": ("bidirectional", "transpose"),
    "custom": ("permutations",),
}


def scan_from_config(data: Mapping[str, Any]) -> ScanPolicy:
    """The policy :func:`scan_to_config` described."""
    name = data.get("name") if isinstance(data, Mapping) else None
    if not isinstance(name, str) or name not in SCANS.names():
        raise CheckpointError(f"scan.name must be one of {SCANS.names()}, got {name!r}")
    problems = check_section("scan", data, required=("name", *_SCAN_FIELDS.get(name, ())), optional=())
    if problems:
        raise CheckpointError("; ".join(problems))
    if name == "custom":
        perms = data["permutations"]
        if not isinstance(perms, list) or not all(p is None or isinstance(p, list) for p in perms):
            raise CheckpointError(f"scan.permutations must be a list of int lists (or null), got {perms!r}")
        try:
            return Custom(perms)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"scan.permutations: {e}") from None
    flags = {k: data[k] for k in _SCAN_FIELDS.get(name, ())}
    bad = [k for k, v in flags.items() if not isinstance(v, bool)]
    if bad:
        raise CheckpointError(f"scan: {', '.join(bad)} must be true or false, got {[flags[k] for k in bad]}")
    return SCANS.get(name)(**flags)


# --- prompt layouts ---------------------------------------------------------------------------------------


def layout_to_config(layout: PromptLayout) -> dict[str, Any]:
    """A layout as JSON data; its grid and CLS position are not stored (they follow the encoder)."""
    kind = LAYOUTS.name_of(layout)
    if kind is None:
        raise ValueError(f"layout: a {type(layout).__name__} has no config.json form; use one of {LAYOUTS.names()}")
    out: dict[str, Any] = {"name": kind, "user_role": layout.user_role, "assistant_role": layout.assistant_role}
    if isinstance(layout, Sandwich):
        out["instruction"] = layout.instruction
    if isinstance(layout, ImageFirstRun):
        out["image_token_id"] = layout.image_token_id
    return out


def layout_from_config(data: Mapping[str, Any]) -> PromptLayout:
    """The layout :func:`layout_to_config` described (grid (24, 24) until the model sets the encoder's)."""
    name = data.get("name") if isinstance(data, Mapping) else None
    if not isinstance(name, str) or name not in LAYOUTS.names():
        raise CheckpointError(f"layout.name must be one of {LAYOUTS.names()}, got {name!r}")
    cls = LAYOUTS.get(name)
    extra = ("instruction",) if issubclass(cls, Sandwich) else ()
    ints = ("image_token_id",) if issubclass(cls, ImageFirstRun) else ()
    problems = check_section("layout", data, required=("name", "user_role", "assistant_role", *extra), optional=ints)
    problems += [
        f"layout.{k} must be a string"
        for k in ("user_role", "assistant_role", *extra)
        if k in data and not isinstance(data[k], str)
    ]
    problems += [
        f"layout.{k} must be an int in 0..{MAX_FEATURES}, got {_brief(data[k])}"
        for k in ints
        if k in data
        and not (isinstance(data[k], int) and not isinstance(data[k], bool) and 0 <= data[k] <= MAX_FEATURES)
    ]
    if problems:
        raise CheckpointError("; ".join(problems))
    return cls(**{k: data[k] for k in ("user_role", "assistant_role", *extra, *ints) if k in data})


# --- projectors -------------------------------------------------------------------------------------------


def projector_to_config(proj: nn.Module) -> dict[str, Any]:
    """``{"type", "in_features", "out_features", "bias"[, "hidden_features"]}`` (w -> c)."""
    kind = PROJECTORS.name_of(proj)
    if kind is None or not isinstance(proj, (LinearProjector, MLPProjector, GatedMLPProjector, ContextGatingProjector)):
        raise ValueError(f"proj: a {type(proj).__name__} has no config.json form; use one of {PROJECTORS.names()}")
    if isinstance(proj, ContextGatingProjector):
        return {
            "type": kind,
            "in_features": proj.in_features,
            "out_features": proj.out_features,
            "bias": proj.gate.bias is not None,
            "eps": proj.ln_v.eps,
        }
    if isinstance(proj, LinearProjector):
        return {
            "type": kind,
            "in_features": proj.in_features,
            "out_features": proj.out_features,
            "bias": proj.bias is not None,
        }
    first = proj.fc1 if isinstance(proj, MLPProjector) else proj.proj
    return {
        "type": kind,
        "in_features": proj.in_features,
        "out_features": proj.out_features,
        "hidden_features": first.out_features,
        "bias": first.bias is not None,
    }


def projector_from_config(data: Mapping[str, Any], *, device=None, dtype=None) -> nn.Module:
    """The projector :func:`projector_to_config` described (freshly initialised)."""
    kind = data.get("type") if isinstance(data, Mapping) else None
    if not isinstance(kind, str) or kind not in PROJECTORS.names():
        raise CheckpointError(f"projector.type must be one of {PROJECTORS.names()}, got {kind!r}")
    gating = PROJECTORS.get(kind) is ContextGatingProjector
    sizes = ("in_features", "out_features") + (("hidden_features",) if kind != "linear" and not gating else ())
    floats = ("eps",) if gating else ()
    problems = check_section("projector", data, required=("type", *sizes, "bias", *floats), optional=())
    problems += [
        f"projector.{k} must be a number in (0, 1), got {_brief(data[k])}"
        for k in floats
        if k in data and not (isinstance(data[k], (int, float)) and not isinstance(data[k], bool) and 0 < data[k] < 1)
    ]
    problems += [
        f"projector.{k} must be an int in 1..{MAX_FEATURES}, got {data[k]!r}"
        for k in sizes
        if k in data and not (_is_pos_int(data[k]) and data[k] <= MAX_FEATURES)
    ]
    if "bias" in data and not isinstance(data["bias"], bool):
        problems.append(f"projector.bias must be true or false, got {data['bias']!r}")
    if problems:
        raise CheckpointError("; ".join(problems))
    kwargs = {k: data[k] for k in (*sizes[2:], *floats)}
    return PROJECTORS.get(kind)(
        data["in_features"], data["out_features"], bias=data["bias"], device=device, dtype=dtype, **kwargs
    )


# --- preprocessing ----------------------------------------------------------------------------------------

_PRE_FIELDS = ("size", "crop_size", "mean", "std", "resample", "alpha")


def preprocessor_to_config(pre: ImagePreprocessor | MultiImagePreprocessor) -> dict[str, Any]:
    """An :class:`ImagePreprocessor` (``size``, ``crop_size``, ...) or a :class:`MultiImagePreprocessor`
    (``{"towers": {name: {"size", "mean", "std", "resample"}}, "alpha"}``) as JSON data."""
    if isinstance(pre, MultiImagePreprocessor):
        towers = {
            name: {"size": list(t.size), "mean": list(t.mean), "std": list(t.std), "resample": t.resample}
            for name, t in pre.transforms.items()
        }
        if isinstance(pre, TilePreprocessor):
            return {"towers": towers, "tiles": pre.tiles, "alpha": pre.alpha}
        return {"towers": towers, "alpha": pre.alpha}
    if not isinstance(pre, ImagePreprocessor):
        raise ValueError(
            f"preprocessor: a {type(pre).__name__} has no config.json form; use an ImagePreprocessor or a "
            "MultiImagePreprocessor"
        )
    return {
        "size": pre.size,
        "crop_size": pre.crop_size,
        "mean": list(pre.mean),
        "std": list(pre.std),
        "resample": pre.resample,
        "alpha": pre.alpha,
    }


def _multi_preprocessor_from_config(data: Mapping[str, Any]) -> MultiImagePreprocessor:
    problems = check_section("preprocessor", data, required=("towers", "alpha"), optional=())
    if problems:
        raise CheckpointError("; ".join(problems))
    towers = data["towers"]
    if not isinstance(towers, Mapping) or not 1 <= len(towers) <= MAX_TOWERS:
        raise CheckpointError(f"preprocessor.towers must be an object of 1..{MAX_TOWERS} towers, got {_brief(towers)}")
    out = {}
    for name, t in towers.items():
        where = f"preprocessor.towers[{_brief(name, 40)}]"
        problems = check_section(where, t, required=("size", "mean", "std", "resample"), optional=())
        if problems:
            raise CheckpointError("; ".join(problems))
        for k in ("size", "mean", "std"):
            v = t[k]
            if (
                not isinstance(v, list)
                or len(v) > 3
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
            ):
                raise CheckpointError(f"{where}.{k} must be a list of numbers, got {_brief(v)}")
        try:
            out[name] = SquareResize(tuple(t["size"]), mean=t["mean"], std=t["std"], resample=t["resample"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{where}: {e}") from None
    try:
        return MultiImagePreprocessor(out, alpha=data["alpha"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"preprocessor: {e}") from None


def _tile_preprocessor_from_config(data: Mapping[str, Any]) -> TilePreprocessor:
    from .vision.tiles import MAX_TILES

    tiles = data["tiles"]
    if not (_is_pos_int(tiles) and tiles <= MAX_TILES):
        raise CheckpointError(f"preprocessor.tiles must be an int in 1..{MAX_TILES}, got {_brief(tiles)}")
    plain = _multi_preprocessor_from_config({k: v for k, v in data.items() if k != "tiles"})
    return TilePreprocessor(plain.transforms, tiles=tiles, alpha=plain.alpha)


def preprocessor_from_config(data: Mapping[str, Any]) -> ImagePreprocessor | MultiImagePreprocessor:
    """The preprocessor :func:`preprocessor_to_config` described."""
    if isinstance(data, Mapping) and "towers" in data and "tiles" in data:
        return _tile_preprocessor_from_config(data)
    if isinstance(data, Mapping) and "towers" in data:
        return _multi_preprocessor_from_config(data)
    problems = check_section("preprocessor", data, required=_PRE_FIELDS, optional=())
    if problems:
        raise CheckpointError("; ".join(problems))
    for k in ("mean", "std"):
        v = data[k]
        if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            raise CheckpointError(f"preprocessor.{k} must be a list of 3 numbers, got {_brief(v)}")
    for k in ("size", "crop_size", "resample", "alpha"):
        if isinstance(data[k], (list, dict)):
            raise CheckpointError(f"preprocessor.{k} must be a plain value, got {_brief(data[k])}")
    try:
        return ImagePreprocessor(
            data["size"],
            crop_size=data["crop_size"],
            mean=data["mean"],
            std=data["std"],
            resample=data["resample"],
            alpha=data["alpha"],
        )
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"preprocessor: {e}") from None


# --- tokenizers -------------------------------------------------------------------------------------------


def tokenizer_to_config(tokenizer: Any, *, vocab_size: int) -> tuple[dict[str, Any], Any]:
    """(the config entry, the object whose ``save(path)`` writes ``tokenizer.json`` or None)."""
    from .tokenizers import WORLD_VOCAB_SIZE

    if tokenizer is None:
        # VisualRWKV.get_tokenizer falls back to World, which only fits a World-sized vocabulary.
        return ({"type": "world"} if vocab_size == WORLD_VOCAB_SIZE else {"type": None}), None
    kind = TOKENIZERS.name_of(tokenizer)
    if kind is not None:  # a registered class: stored in a file if it has one (word), else rebuilt bare (world)
        if _tokenizer_has_file(type(tokenizer)):
            return {"type": kind, "file": TOKENIZER_NAME}, tokenizer
        return {"type": kind}, None
    cls = type(tokenizer)
    if callable(getattr(tokenizer, "save", None)) and callable(getattr(cls, "from_file", None)):
        return {"type": "class", "class": f"{cls.__module__}:{cls.__qualname__}", "file": TOKENIZER_NAME}, tokenizer
    raise ValueError(
        f"tokenizer: a {cls.__name__} cannot be saved (it needs save(path) and a from_file(path) classmethod); "
        "set model.tokenizer = None or pass a tokenizer that can"
    )


def _tokenizer_has_file(cls: type) -> bool:
    return callable(getattr(cls, "save", None)) and callable(getattr(cls, "from_file", None))


def tokenizer_from_config(data: Mapping[str, Any], *, directory=None) -> Any:
    """The tokenizer of a config entry (``directory`` holds its file). ``{"type": null}`` gives None.

    Only tokenizer classes inside ``rwkv_vision`` are imported by name: a config file must not be able to
    make the loader import arbitrary code. Others need ``tokenizer=`` passed to ``from_pretrained``.
    """

    kind = data.get("type", "missing") if isinstance(data, Mapping) else "missing"
    registered = isinstance(kind, str) and kind != "class" and kind in TOKENIZERS.names()
    if not (registered or kind in ("class", None)):
        known = ", ".join(repr(n) for n in [*TOKENIZERS.names(), "class"])
        raise CheckpointError(f"tokenizer.type must be {known} or null, got {kind!r}")
    if registered:
        fields = ("file",) if _tokenizer_has_file(TOKENIZERS.get(kind)) else ()
    else:
        fields = {None: (), "class": ("class", "file")}[kind]
    problems = check_section("tokenizer", data, required=("type", *fields), optional=())
    if problems:
        raise CheckpointError("; ".join(problems))
    if kind is None:
        return None
    if registered and not fields:
        return TOKENIZERS.get(kind)()
    if directory is None:
        raise CheckpointError(f"tokenizer: its file {_brief(data['file'])} needs the checkpoint directory")
    if registered:
        cls = TOKENIZERS.get(kind)
    else:
        cls = _registered_tokenizer_class(data["class"])
    path = contained_path(directory, data["file"], field="tokenizer.file")
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; config.json says the tokenizer is stored in this file")
    size = path.stat().st_size
    if size > MAX_TOKENIZER_BYTES:
        raise CheckpointError(f"{path}: {size} bytes is more than a tokenizer file may hold ({MAX_TOKENIZER_BYTES})")
    try:
        return cls.from_file(path)
    except Exception as e:  # noqa: BLE001 - whatever a bad file makes the reader raise names the file
        raise CheckpointError(f"{path}: not a valid {cls.__name__} file ({type(e).__name__}: {_brief(e)})") from None


def _registered_tokenizer_class(spec: Any) -> type:
    """The class named ``"module:Name"`` if it is one of the registered tokenizers (``TOKENIZERS``): a config
    file never makes the loader import a module or look up an attribute by name."""
    for name in TOKENIZERS.names():
        cls = TOKENIZERS.get(name)
        if isinstance(cls, type) and isinstance(spec, str) and spec == f"{cls.__module__}:{cls.__qualname__}":
            return cls
    raise CheckpointError(
        f"tokenizer.class {_brief(spec)} is not a registered tokenizer (registered: {TOKENIZERS.names()}); "
        "a class is never imported by name from a config file: pass tokenizer= to from_pretrained"
    )


def _brief(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages about values from files."""
    try:
        text = repr(value) if not isinstance(value, BaseException) else str(value)
    except Exception:  # noqa: BLE001 - a repr that fails (deep nesting) still gives a message
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def contained_path(directory: Any, name: Any, *, field: str) -> Any:
    """``directory / name`` for a file name read from a config file or an argument, refused (a
    ``CheckpointError`` naming ``field``) unless it stays inside ``directory``: no absolute paths, no ``..``,
    no symbolic link that leads out (but into the blobs of a Hugging Face cache snapshot)."""
    import os
    from pathlib import Path, PurePosixPath, PureWindowsPath

    if not isinstance(name, str) or not name or "\x00" in name or len(name) > 255:
        raise CheckpointError(f"{field} must be a file name inside the checkpoint directory, got {_brief(name)}")
    parts = PurePosixPath(name).parts
    if (
        PurePosixPath(name).is_absolute()
        or PureWindowsPath(name).is_absolute()
        or PureWindowsPath(name).drive
        or ".." in parts
        or ".." in PureWindowsPath(name).parts
    ):
        raise CheckpointError(f"{field} {name!r} leaves the checkpoint directory {str(directory)!r}; refused")
    base = Path(directory)
    path = base / name
    real = os.path.realpath(path)
    roots = [os.path.realpath(base)]
    if base.parent.name == "snapshots":  # a Hugging Face cache snapshot links its files to the repo's blobs
        roots.append(os.path.realpath(base.parent.parent / "blobs"))
    if not any(os.path.commonpath([root, real]) == root for root in roots):
        raise CheckpointError(
            f"{field} {name!r} resolves to {real}, outside the checkpoint directory {str(directory)!r}; refused"
        )
    return path


# --- vision encoders --------------------------------------------------------------------------------------


def _act_name(module: nn.Module) -> str | None:
    from timm.layers.activations import GELU as TimmGELU
    from timm.layers.activations import GELUTanh, QuickGELU

    if isinstance(module, QuickGELU):
        return "quick_gelu"
    if isinstance(module, GELUTanh) or (isinstance(module, nn.GELU) and module.approximate == "tanh"):
        return "gelu_tanh"
    if isinstance(module, (nn.GELU, TimmGELU)):
        return "gelu"
    return {nn.SiLU: "silu", nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid"}.get(type(module))


def _vit_options(vit: nn.Module) -> dict[str, Any]:
    """The timm ``VisionTransformer`` arguments readable off a built model (those that shape it)."""
    blk = vit.blocks[0]
    out: dict[str, Any] = dict(
        img_size=list(vit.patch_embed.img_size),
        patch_size=list(vit.patch_embed.patch_size),
        in_chans=vit.patch_embed.proj.in_channels,
        embed_dim=vit.embed_dim,
        depth=len(vit.blocks),
        class_token=bool(vit.has_class_token),
        no_embed_class=bool(vit.no_embed_class),
        pre_norm=not isinstance(vit.norm_pre, nn.Identity),
        final_norm=not isinstance(vit.norm, nn.Identity),
        global_pool=vit.global_pool,
        dynamic_img_size=bool(vit.dynamic_img_size),
    )
    attn = getattr(blk, "attn", None)
    if attn is not None and hasattr(attn, "num_heads"):
        out["num_heads"] = attn.num_heads
    qkv = getattr(attn, "qkv", None)
    if isinstance(qkv, nn.Linear):
        out["qkv_bias"] = qkv.bias is not None
    fc1 = getattr(getattr(blk, "mlp", None), "fc1", None)
    if isinstance(fc1, nn.Linear):
        out["mlp_ratio"] = fc1.out_features / vit.embed_dim
    act = getattr(getattr(blk, "mlp", None), "act", None)
    if act is not None and _act_name(act) is not None:
        out["act_layer"] = _act_name(act)
    out["init_values"] = 1e-5 if not isinstance(getattr(blk, "ls1", nn.Identity()), nn.Identity) else None
    return out


_ALWAYS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads")


def _fingerprint(vit: nn.Module) -> list:
    """What must agree between a model and its rebuild: module types (activations by behaviour), norm eps,
    head counts, a few top-level flags, and every parameter and buffer shape."""
    mods = []
    for name, m in vit.named_modules():
        act = _act_name(m)
        mods.append((name, act or type(m).__name__, getattr(m, "eps", None), getattr(m, "num_heads", None)))
    flags = [getattr(vit, k, None) for k in ("num_prefix_tokens", "no_embed_class", "dynamic_img_size", "global_pool")]
    shapes = sorted((k, tuple(v.shape)) for k, v in vit.state_dict().items())
    return [mods, flags, shapes]


def encoder_to_config(encoder: nn.Module) -> dict[str, Any]:
    """A :class:`VisionEncoder` or a :class:`MultiEncoder` as JSON data; raises if rebuilding from that data
    would give another model."""
    from .vision.encoders import VisionEncoder
    from .vision.multi_encoder import MultiEncoder
    from .vision.tiles import TiledEncoder

    if isinstance(encoder, TiledEncoder):
        return _tiled_encoder_to_config(encoder)
    if isinstance(encoder, MultiEncoder):
        return _multi_encoder_to_config(encoder)
    if not isinstance(encoder, VisionEncoder):
        raise ValueError(
            f"encoder: a {type(encoder).__name__} has no config.json form; use a VisionEncoder or a MultiEncoder"
        )
    vit = encoder.vit
    arch = (getattr(vit, "pretrained_cfg", None) or {}).get("architecture")
    ours = _vit_options(vit)
    if arch is not None:
        import timm

        if arch not in timm.list_models():
            arch = None
    kwargs = dict(ours)
    if arch is not None:
        # Only what differs from the timm model's own defaults is recorded (plus the main sizes, for
        # readers): the model name then supplies what JSON cannot say, such as the norm layer's eps.
        with torch.device("meta"):
            import timm

            # weight_init="skip": only shapes are read; initialising meta tensors costs seconds for nothing
            base = _vit_options(timm.create_model(arch, pretrained=False, num_classes=0, weight_init="skip"))
        kwargs = {k: v for k, v in ours.items() if k in _ALWAYS or base.get(k, object()) != v}
    if kwargs.get("init_values") is None:
        kwargs.pop("init_values", None)
    data = {
        "kind": "timm_vit",
        "timm_model": arch,
        "timm_kwargs": kwargs,
        "layer": encoder.layer,
        "cls": encoder.cls,
        "frozen": not any(p.requires_grad for p in encoder.parameters()),
    }
    rebuilt = encoder_from_config(data, device="meta")
    if _fingerprint(rebuilt.vit) != _fingerprint(vit):
        a, b = _fingerprint(rebuilt.vit), _fingerprint(vit)
        where = next(
            (f"{x} vs {y}" for part_a, part_b in zip(a, b) for x, y in zip(part_a, part_b) if x != y),
            "different module counts",
        )
        raise ValueError(
            f"encoder: rebuilding timm model {arch!r} with {kwargs} does not give this ViT (first difference: "
            f"{where}); build the encoder with timm_vit(name, **kwargs) so it can be described in config.json"
        )
    return data


def _size_pair(name: str, v: Any) -> tuple[int, int]:
    if _is_pos_int(v):
        return v, v
    if isinstance(v, list) and len(v) == 2 and all(_is_pos_int(x) for x in v):
        return v[0], v[1]
    raise CheckpointError(f"encoder.timm_kwargs.{name} must be a positive int or a list of 2, got {_brief(v)}")


def _check_vit_kwargs(kwargs: Mapping[str, Any], *, layer: Any) -> None:
    """Sizes and kinds of the timm arguments from a file, against :data:`VIT_LIMITS` and each other, before
    anything is built: a huge depth, width or image size must fail at once, not after minutes."""
    lim = VIT_LIMITS

    def plain(v: Any) -> bool:
        if v is None or isinstance(v, (bool, str)):
            return isinstance(v, str) is False or len(v) <= 64
        if isinstance(v, int):
            return -lim["other_int"] <= v <= lim["other_int"]
        if isinstance(v, float):
            return math.isfinite(v) and abs(v) <= lim["other_int"]
        return isinstance(v, list) and len(v) <= 4 and all(plain(x) and not isinstance(x, list) for x in v)

    bad = [k for k, v in kwargs.items() if not plain(v)]
    if bad:
        raise CheckpointError(
            f"encoder.timm_kwargs: {bad[:5]} must be numbers within +-{lim['other_int']}, booleans, short strings, "
            f"null or short lists of them, got {[_brief(kwargs[k]) for k in bad[:5]]}"
        )
    for name in ("embed_dim", "depth", "num_heads"):
        if name in kwargs and not (_is_pos_int(kwargs[name]) and kwargs[name] <= lim[name]):
            raise CheckpointError(
                f"encoder.timm_kwargs.{name} must be an int in 1..{lim[name]}, got {_brief(kwargs[name])}"
            )
    img = _size_pair("img_size", kwargs.get("img_size", 224))
    patch = _size_pair("patch_size", kwargs.get("patch_size", 16))
    if max(img) > lim["img_size"] or max(patch) > lim["patch_size"]:
        raise CheckpointError(
            f"encoder.timm_kwargs: img_size {list(img)} must be <= {lim['img_size']} and patch_size {list(patch)} "
            f"<= {lim['patch_size']}"
        )
    if patch[0] > img[0] or patch[1] > img[1] or (img[0] // patch[0]) * (img[1] // patch[1]) > lim["patches"]:
        raise CheckpointError(
            f"encoder.timm_kwargs: img_size {list(img)} / patch_size {list(patch)} must give 1..{lim['patches']} patches"
        )
    width, heads = kwargs.get("embed_dim", 768), kwargs.get("num_heads", 12)
    if ("embed_dim" in kwargs or "num_heads" in kwargs) and width % heads:
        raise CheckpointError(f"encoder.timm_kwargs: embed_dim {width} must be a multiple of num_heads {heads}")
    ratio = kwargs.get("mlp_ratio", 4.0)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= lim["mlp_ratio"]:
        raise CheckpointError(f"encoder.timm_kwargs.mlp_ratio must be in (0, {lim['mlp_ratio']}], got {_brief(ratio)}")
    for name in ("in_chans", "reg_tokens"):
        if name in kwargs and not (isinstance(kwargs[name], int) and 0 <= kwargs[name] <= 64):
            raise CheckpointError(f"encoder.timm_kwargs.{name} must be an int in 0..64, got {_brief(kwargs[name])}")
    depth = kwargs.get("depth", lim["depth"])  # a timm model's own depth is checked by VisionEncoder
    if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < depth:
        raise CheckpointError(f"encoder.layer must be a block index in 0..{depth - 1}, got {_brief(layer)}")


def encoder_from_config(data: Mapping[str, Any], *, device=None, dtype=None):
    """The :class:`VisionEncoder` :func:`encoder_to_config` described (random weights; ``device="meta"``
    allocates nothing)."""
    from timm.models.vision_transformer import VisionTransformer

    from .vision.encoders import VisionEncoder, timm_vit

    if isinstance(data, Mapping) and data.get("kind") == "multi":
        return _multi_encoder_from_config(data, device=device, dtype=dtype)
    if isinstance(data, Mapping) and data.get("kind") == "tiled":
        return _tiled_encoder_from_config(data, device=device, dtype=dtype)
    problems = check_section(
        "encoder", data, required=("kind", "timm_model", "timm_kwargs", "layer", "cls", "frozen"), optional=()
    )
    if problems:
        raise CheckpointError("; ".join(problems))
    if data["kind"] != "timm_vit":
        raise CheckpointError(f"encoder.kind must be 'timm_vit', 'multi' or 'tiled', got {data['kind']!r}")
    kwargs = data["timm_kwargs"]
    if not isinstance(kwargs, Mapping):
        raise CheckpointError(f"encoder.timm_kwargs must be an object, got {type(kwargs).__name__}")
    allowed = set(inspect.signature(VisionTransformer.__init__).parameters) - {"self", "device", "dtype"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise CheckpointError(f"encoder.timm_kwargs: unknown timm VisionTransformer argument(s) {unknown}")
    if not isinstance(data["layer"], int) or isinstance(data["layer"], bool) or data["layer"] < 0:
        raise CheckpointError(f"encoder.layer must be a block index >= 0, got {_brief(data['layer'])}")
    if data["cls"] not in ("first", "last", None):
        raise CheckpointError(f"encoder.cls must be 'first', 'last' or null, got {data['cls']!r}")
    _check_vit_kwargs(kwargs, layer=data["layer"])
    if data["timm_model"] is not None and not isinstance(data["timm_model"], str):
        raise CheckpointError(f"encoder.timm_model must be a timm model name or null, got {_brief(data['timm_model'])}")
    if not isinstance(data["frozen"], bool):
        raise CheckpointError(f"encoder.frozen must be true or false, got {_brief(data['frozen'])}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    kwargs["num_classes"] = 0
    try:
        if data["timm_model"] is None:
            with torch.device(device) if device is not None else contextlib.nullcontext():
                enc = VisionEncoder(VisionTransformer(**kwargs), layer=data["layer"], cls=data["cls"])
        else:
            enc = timm_vit(data["timm_model"], layer=data["layer"], cls=data["cls"], device=device, **kwargs)
    except Exception as e:  # noqa: BLE001 - timm's asserts, ZeroDivisionError, ... all mean a bad section
        raise CheckpointError(
            f"encoder: cannot build the ViT from config.json ({type(e).__name__}: {_brief(e, 200)})"
        ) from None
    if dtype is not None:
        enc = enc.to(dtype=dtype)
    if data["frozen"]:
        enc.requires_grad_(False)
    return enc


# --- multi-tower encoders ---------------------------------------------------------------------------------


def _sam_options(model: nn.Module) -> dict[str, Any]:
    """The timm ``VisionTransformerSAM`` arguments readable off a built model."""
    blk = model.blocks[0]
    hidden = blk.mlp.fc1.out_features
    return dict(
        img_size=list(model.patch_embed.img_size),
        patch_size=list(model.patch_embed.patch_size),
        embed_dim=model.embed_dim,
        depth=len(model.blocks),
        num_heads=blk.attn.num_heads,
        # timm builds int(embed_dim * mlp_ratio) hidden units: half a unit over keeps the rebuild exact
        mlp_ratio=(hidden + 0.5) / model.embed_dim,
        qkv_bias=blk.attn.qkv.bias is not None,
        use_abs_pos=model.pos_embed is not None,
        use_rel_pos=bool(blk.attn.use_rel_pos),
        window_size=max(b.window_size for b in model.blocks),
        global_attn_indexes=[i for i, b in enumerate(model.blocks) if b.window_size == 0],
        neck_chans=model.num_features,
    )


def _tower_to_config(name: str, tower: nn.Module) -> dict[str, Any]:
    import timm

    from .vision.towers import SamTower, ViTTower, blocks_norm_eps

    if not isinstance(tower, (ViTTower, SamTower)):
        raise ValueError(f"encoder.towers[{name!r}]: a {type(tower).__name__} has no config.json form")
    model = tower.model
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if arch is None or arch not in timm.list_models():
        raise ValueError(
            f"encoder.towers[{name!r}] has no timm model name; build it with timm_tower(name, **kwargs) so it can "
            "be described in config.json"
        )
    read = _sam_options if isinstance(tower, SamTower) else _vit_options
    ours = read(model)
    if isinstance(tower, ViTTower):
        ours["reg_tokens"] = model.num_reg_tokens
        fc1 = getattr(model.blocks[0].mlp, "fc1", None)
        if isinstance(fc1, nn.Linear):
            ours["mlp_ratio"] = (fc1.out_features + 0.5) / model.embed_dim
    with torch.device("meta"):
        # weight_init="skip": only shapes are read; initialising meta tensors costs seconds for nothing
        base_model = timm.create_model(arch, pretrained=False, num_classes=0, weight_init="skip")
    base = read(base_model)
    if isinstance(tower, ViTTower):
        base["reg_tokens"] = base_model.num_reg_tokens
        fc1 = getattr(base_model.blocks[0].mlp, "fc1", None)
        if isinstance(fc1, nn.Linear):
            hidden = int(model.embed_dim * fc1.out_features / base_model.embed_dim)
            base["mlp_ratio"] = ours["mlp_ratio"] if hidden == model.blocks[0].mlp.fc1.out_features else None
    else:
        hidden = int(model.embed_dim * base_model.blocks[0].mlp.fc1.out_features / base_model.embed_dim)
        base["mlp_ratio"] = ours["mlp_ratio"] if hidden == model.blocks[0].mlp.fc1.out_features else None
    kwargs = {k: v for k, v in ours.items() if k in _ALWAYS or base.get(k, object()) != v}
    if kwargs.get("init_values") is None:
        kwargs.pop("init_values", None)
    out: dict[str, Any] = {"name": name, "type": "sam" if isinstance(tower, SamTower) else "vit"}
    out.update(timm_model=arch, timm_kwargs=kwargs, norm_eps=blocks_norm_eps(model))
    if isinstance(tower, SamTower):
        out["factor"] = tower.factor
    else:
        out["layer"] = tower.layer
    return out


def _multi_encoder_to_config(encoder: nn.Module) -> dict[str, Any]:
    data = {
        "kind": "multi",
        "towers": [_tower_to_config(name, tower) for name, tower in encoder.towers.items()],
        "pool": None if encoder.pool is None else list(encoder.pool),
        "frozen": not any(p.requires_grad for p in encoder.parameters()),
    }
    rebuilt = encoder_from_config(data, device="meta")
    for name, tower in encoder.towers.items():
        a, b = _fingerprint(rebuilt.towers[name].model), _fingerprint(tower.model)
        if a != b:
            where = next(
                (f"{x} vs {y}" for part_a, part_b in zip(a, b) for x, y in zip(part_a, part_b) if x != y),
                "different module counts",
            )
            raise ValueError(
                f"encoder.towers[{name!r}]: rebuilding it from {data['towers']} does not give this model (first "
                f"difference: {where}); build towers with timm_tower(name, **kwargs)"
            )
    return data


def _check_sam_kwargs(kwargs: Mapping[str, Any], where: str) -> None:
    """Sizes of a SAM tower's timm arguments from a file, bounded before anything is built."""
    lim = VIT_LIMITS
    allowed = {
        "img_size": None,
        "patch_size": None,
        "embed_dim": lim["embed_dim"],
        "depth": lim["depth"],
        "num_heads": lim["num_heads"],
        "mlp_ratio": None,
        "qkv_bias": None,
        "use_abs_pos": None,
        "use_rel_pos": None,
        "window_size": lim["img_size"],
        "global_attn_indexes": None,
        "neck_chans": lim["embed_dim"],
    }
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise CheckpointError(f"{where}.timm_kwargs: unknown SAM argument(s) {unknown} (expected {sorted(allowed)})")
    for k, top in allowed.items():
        if top is not None and k in kwargs and not (_is_pos_int(kwargs[k]) and kwargs[k] <= top):
            if k == "window_size" and kwargs[k] == 0:
                continue
            raise CheckpointError(f"{where}.timm_kwargs.{k} must be an int in 1..{top}, got {_brief(kwargs[k])}")
    for k in ("qkv_bias", "use_abs_pos", "use_rel_pos"):
        if k in kwargs and not isinstance(kwargs[k], bool):
            raise CheckpointError(f"{where}.timm_kwargs.{k} must be true or false, got {_brief(kwargs[k])}")
    img = _size_pair("img_size", kwargs.get("img_size", 1024))
    patch = _size_pair("patch_size", kwargs.get("patch_size", 16))
    if max(img) > lim["img_size"] or max(patch) > lim["patch_size"]:
        raise CheckpointError(f"{where}.timm_kwargs: img_size {list(img)} / patch_size {list(patch)} too large")
    if patch[0] > img[0] or patch[1] > img[1] or (img[0] // patch[0]) * (img[1] // patch[1]) > lim["patches"]:
        raise CheckpointError(f"{where}.timm_kwargs: img_size / patch_size must give 1..{lim['patches']} patches")
    ratio = kwargs.get("mlp_ratio", 4.0)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= lim["mlp_ratio"]:
        raise CheckpointError(f"{where}.timm_kwargs.mlp_ratio must be in (0, {lim['mlp_ratio']}], got {_brief(ratio)}")
    depth = kwargs.get("depth", lim["depth"])
    gi = kwargs.get("global_attn_indexes", [])
    if (
        not isinstance(gi, list)
        or len(gi) > depth
        or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < depth for i in gi)
    ):
        raise CheckpointError(
            f"{where}.timm_kwargs.global_attn_indexes must be a list of block indices below {depth}, got {_brief(gi)}"
        )
    width, heads = kwargs.get("embed_dim", 768), kwargs.get("num_heads", 12)
    if width % heads:
        raise CheckpointError(f"{where}.timm_kwargs: embed_dim {width} must be a multiple of num_heads {heads}")


def _tower_from_config(t: Any, j: int, *, device=None) -> tuple[str, nn.Module]:
    from timm.models.vision_transformer import VisionTransformer

    from .vision.towers import timm_tower

    where = f"encoder.towers[{j}]"
    kind = t.get("type") if isinstance(t, Mapping) else None
    if kind not in ("vit", "sam"):
        raise CheckpointError(f"{where}.type must be 'vit' or 'sam', got {_brief(kind)}")
    own = ("layer",) if kind == "vit" else ("factor",)
    problems = check_section(
        where, t, required=("name", "type", "timm_model", "timm_kwargs", "norm_eps", *own), optional=()
    )
    if problems:
        raise CheckpointError("; ".join(problems))
    name = t["name"]
    if not isinstance(name, str) or not name.isidentifier() or len(name) > 64:
        raise CheckpointError(f"{where}.name must be an identifier, got {_brief(name)}")
    import timm

    if not isinstance(t["timm_model"], str) or t["timm_model"] not in timm.list_models():
        raise CheckpointError(f"{where}.timm_model must be a timm model name, got {_brief(t['timm_model'])}")
    kwargs = t["timm_kwargs"]
    if not isinstance(kwargs, Mapping):
        raise CheckpointError(f"{where}.timm_kwargs must be an object, got {type(kwargs).__name__}")
    eps = t["norm_eps"]
    if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1):
        raise CheckpointError(f"{where}.norm_eps must be a number in (0, 1) or null, got {_brief(eps)}")
    if kind == "vit":
        allowed = set(inspect.signature(VisionTransformer.__init__).parameters) - {"self", "device", "dtype"}
        unknown = sorted(set(kwargs) - allowed)
        if unknown:
            raise CheckpointError(f"{where}.timm_kwargs: unknown timm VisionTransformer argument(s) {unknown}")
        _check_vit_kwargs(kwargs, layer=t["layer"])
        extra = {"layer": t["layer"]}
    else:
        _check_sam_kwargs(kwargs, where)
        factor = t["factor"]
        if not _is_pos_int(factor) or factor > 64:
            raise CheckpointError(f"{where}.factor must be an int in 1..64, got {_brief(factor)}")
        extra = {"factor": factor}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    try:
        tower = timm_tower(t["timm_model"], norm_eps=eps, device=device, **extra, **kwargs)
    except Exception as e:  # noqa: BLE001 - timm's asserts, ZeroDivisionError, ... all mean a bad section
        raise CheckpointError(f"{where}: cannot build the tower ({type(e).__name__}: {_brief(e, 200)})") from None
    return name, tower


def _multi_encoder_from_config(data: Mapping[str, Any], *, device=None, dtype=None) -> nn.Module:
    from .vision.multi_encoder import MultiEncoder

    problems = check_section("encoder", data, required=("kind", "towers", "pool", "frozen"), optional=())
    if problems:
        raise CheckpointError("; ".join(problems))
    towers = data["towers"]
    if not isinstance(towers, list) or not 1 <= len(towers) <= MAX_TOWERS:
        raise CheckpointError(f"encoder.towers must be a list of 1..{MAX_TOWERS} towers, got {_brief(towers)}")
    pool = data["pool"]
    if pool is not None and not (isinstance(pool, list) and len(pool) == 2 and all(_is_pos_int(v) for v in pool)):
        raise CheckpointError(f"encoder.pool must be null or [rows, cols] of positive ints, got {_brief(pool)}")
    if not isinstance(data["frozen"], bool):
        raise CheckpointError(f"encoder.frozen must be true or false, got {_brief(data['frozen'])}")
    built = {}
    for j, t in enumerate(towers):
        name, tower = _tower_from_config(t, j, device=device)
        if name in built:
            raise CheckpointError(f"encoder.towers[{j}].name {name!r} is used twice")
        built[name] = tower
    try:
        enc = MultiEncoder(built, pool=None if pool is None else tuple(pool), frozen=data["frozen"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"encoder: {e}") from None
    return enc.to(dtype=dtype) if dtype is not None else enc


def _tiled_encoder_to_config(encoder: nn.Module) -> dict[str, Any]:
    """A :class:`~rwkv_vision.vision.tiles.TiledEncoder`: its towers as a MultiEncoder's, ``kind`` "tiled" and
    ``tiles`` per side."""
    data = _multi_encoder_to_config(encoder)
    del data["pool"]  # a TiledEncoder keeps the towers' grid
    return {"kind": "tiled", "towers": data["towers"], "tiles": encoder.tiles, "frozen": data["frozen"]}


def _tiled_encoder_from_config(data: Mapping[str, Any], *, device=None, dtype=None) -> nn.Module:
    from .vision.tiles import MAX_TILES, TiledEncoder

    problems = check_section("encoder", data, required=("kind", "towers", "tiles", "frozen"), optional=())
    if problems:
        raise CheckpointError("; ".join(problems))
    tiles = data["tiles"]
    if not (_is_pos_int(tiles) and tiles <= MAX_TILES):
        raise CheckpointError(f"encoder.tiles must be an int in 1..{MAX_TILES}, got {_brief(tiles)}")
    plain = {"kind": "multi", "towers": data["towers"], "pool": None, "frozen": data["frozen"]}
    multi = _multi_encoder_from_config(plain, device=device, dtype=dtype)
    try:
        return TiledEncoder(dict(multi.towers), tiles=tiles, frozen=data["frozen"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"encoder: {e}") from None
