"""``config.json`` of a ``save_pretrained`` directory: everything needed to rebuild a :class:`VisualRWKV`.

A directory written by ``VisualRWKV.save_pretrained`` holds ``config.json`` (this module), ``model.safetensors``
(``model.state_dict()`` under the module's own names: ``rwkv.*`` official RWKV-6 names, ``encoder.vit.*`` timm
names, ``proj.*``) and, for a tokenizer that can save itself, ``tokenizer.json``. The config is plain JSON
and fully describes the model, so loading needs no code changes and no pickle.

Schema (``format_version`` 1); every field is required unless marked optional, and unknown fields are an
error (a newer writer's field must not be silently dropped)::

    format            "rwkv_vision.VisualRWKV"
    format_version    1
    rwkv              RWKV6 keyword arguments: n_layer, n_embd, head_size, dim_ffn, d_mix, d_decay, vocab_size,
                      data_dependent_lerp, data_dependent_decay
    encoder           kind "timm_vit"; timm_model (a timm model name, or null for a bare VisionTransformer);
                      timm_kwargs (the timm arguments that differ from that model's defaults, plus img_size,
                      patch_size, embed_dim, depth, num_heads always); layer (block index >= 0); cls
                      ("last" | "first" | null); frozen (bool: encoder gradients off)
    projector         type "linear" | "mlp" | "gated_mlp"; in_features; out_features; bias;
                      hidden_features (mlp and gated_mlp only)
    scan              name "unidir" | "bidir" | "multidir" | "snake" | "zigzag" | "custom"; snake: bidirectional;
                      zigzag: bidirectional, transpose; custom: permutations (lists of ints, or null = row-major)
    layout            name "image_first" | "image_last" | "sandwich"; user_role; assistant_role;
                      instruction (sandwich only)
    preprocessor      size, crop_size, mean [3], std [3], resample, alpha (see ImagePreprocessor)
    tokenizer         type "world" (bundled vocabulary, no file) | "word" (WordTokenizer, file) | "class"
                      (another tokenizer with save()/from_file(), class "module:Name", file) | null (none);
                      file: the tokenizer file name in the directory
    dtype             dtype of the language model's parameters as saved ("bfloat16", "float32", ...)
    metadata          optional: free-form JSON (e.g. how the model was trained); kept, never interpreted
    architecture      optional: "rwkv6" (the default when absent) or "rwkv7"; with "rwkv7" the rwkv section holds
                      RWKV7 keyword arguments (n_layer, n_embd, head_size, dim_ffn, d_w, d_a, d_v, d_g, vocab_size)
    padding           optional: {"multiple": m, "token": id}: fresh sequences are left-padded with the embedding
                      of id up to a multiple of m (the official v7.00 forward: 16, 261); absent: no padding

Shape legend: n images, k tokens per image, w vision width, c channels (LM width).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError
from ..models.config import RWKV6Config, RWKV7Config, VisualRWKVConfig
from ..sections import (
    TOKENIZER_NAME,
    check_section,
    dtype_name,
    encoder_from_config,
    encoder_to_config,
    layout_from_config,
    layout_to_config,
    parse_dtype,
    preprocessor_from_config,
    preprocessor_to_config,
    projector_from_config,
    projector_to_config,
    scan_from_config,
    scan_to_config,
    tokenizer_from_config,
    tokenizer_to_config,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "TOKENIZER_NAME",
    "CheckpointError",
    "model_to_config",
    "model_from_config",
    "validate_config",
    "scan_to_config",
    "scan_from_config",
    "layout_to_config",
    "layout_from_config",
    "encoder_to_config",
    "encoder_from_config",
    "projector_to_config",
    "projector_from_config",
    "preprocessor_to_config",
    "preprocessor_from_config",
    "tokenizer_to_config",
    "tokenizer_from_config",
    "parse_dtype",
    "load_config",
]

#: The language-model config of each ``architecture`` value (absent: "rwkv6", every file before RWKV-7).
_LM_CONFIGS = {"rwkv6": RWKV6Config, "rwkv7": RWKV7Config}

FORMAT = "rwkv_vision.VisualRWKV"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: The largest config.json read (the shipped one is 3 KiB); checked before it is parsed.
MAX_CONFIG_BYTES = 16 * 2**20


# --- the whole model --------------------------------------------------------------------------------------


def model_to_config(model, *, metadata: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], Any]:
    """(config.json data, the tokenizer object to save as ``tokenizer.json`` or None) for a VisualRWKV."""
    from ..models.visualrwkv import VisualRWKV

    if not isinstance(model, VisualRWKV):
        raise TypeError(f"model must be a VisualRWKV, got {type(model).__name__}")
    tok_entry, tok_obj = tokenizer_to_config(model.tokenizer, vocab_size=model.rwkv.vocab_size)
    config: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **({"architecture": "rwkv7"} if isinstance(model.rwkv.config, RWKV7Config) else {}),
        "rwkv": model.rwkv.config.to_dict(),
        "encoder": encoder_to_config(model.encoder),
        "projector": projector_to_config(model.proj),
        "scan": scan_to_config(model.scan),
        "layout": layout_to_config(model.layout),
        "preprocessor": preprocessor_to_config(model.image_preprocessor),
        "tokenizer": tok_entry,
        "dtype": dtype_name(model.rwkv.emb.weight.dtype),
    }
    if model.padding_config() is not None:
        config["padding"] = model.padding_config()
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise TypeError(f"metadata must be a dict of JSON values, got {type(metadata).__name__}")
        config["metadata"] = dict(metadata)
    return config, tok_obj


_TOP = (
    "format",
    "format_version",
    "rwkv",
    "encoder",
    "projector",
    "scan",
    "layout",
    "preprocessor",
    "tokenizer",
    "dtype",
)


def validate_config(config: Any, *, source: str = "config.json") -> None:
    """Raise ``CheckpointError`` naming ``source`` and every problem: wrong format or version, missing or
    unknown fields, values of the wrong kind. Sections are then checked again as they are built."""
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{source}: expected a JSON object, got {type(config).__name__}")
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{source}: 'format' must be {FORMAT!r}, got {config.get('format')!r}")
    version = config.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise CheckpointError(
            f"{source}: format_version {version!r} is not supported (this rwkv_vision reads version "
            f"{FORMAT_VERSION}{'; upgrade rwkv_vision' if isinstance(version, int) and version > FORMAT_VERSION else ''})"
        )
    problems = check_section("config", config, required=_TOP, optional=("metadata", "architecture", "padding"))
    architecture = config.get("architecture", "rwkv6")
    if not isinstance(architecture, str) or architecture not in _LM_CONFIGS:
        problems.append(f"architecture must be one of {sorted(_LM_CONFIGS)}, got {architecture!r}")
    elif "rwkv" in config:
        try:  # the language model's section is its RWKV6Config/RWKV7Config: one set of checks for code and files
            _LM_CONFIGS[architecture].from_dict(config["rwkv"], source="rwkv")
        except ConfigError as e:
            problems.append(str(e))
    if "padding" in config:
        try:
            VisualRWKVConfig(RWKV6Config(1, 64), {}, {}, {}, {}, padding=config["padding"])
        except ConfigError as e:
            problems.append(str(e).replace("VisualRWKVConfig.", ""))
        else:
            vocab = config["rwkv"].get("vocab_size") if isinstance(config.get("rwkv"), Mapping) else None
            if isinstance(vocab, int) and config["padding"]["token"] >= vocab:
                problems.append(
                    f"padding.token must be an id below rwkv.vocab_size {vocab}, got {config['padding']['token']}"
                )
    if "dtype" in config:
        try:
            parse_dtype(config["dtype"])
        except ValueError:
            problems.append(f"dtype must be a dtype name such as 'bfloat16', got {config['dtype']!r}")
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems))


def model_from_config(
    config: Mapping[str, Any],
    *,
    cls=None,
    device=None,
    dtype=None,
    tokenizer: Any = None,
    directory=None,
    source: str = "config.json",
    **overrides: Any,
):
    """A VisualRWKV built from config data (random weights; ``device="meta"`` for a load that assigns them).

    ``tokenizer`` replaces the config's; otherwise it is built from the config (``directory`` holds its file).
    ``overrides`` (``scan=``, ``layout=``, ``preprocessor=``, ``freeze_encoder=``) replace the config's choices.
    """
    from ..models.rwkv6 import RWKV6
    from ..models.rwkv7 import RWKV7
    from ..models.visualrwkv import VisualRWKV

    validate_config(config, source=source)
    cls = VisualRWKV if cls is None else cls
    lm_cls = RWKV7 if config.get("architecture", "rwkv6") == "rwkv7" else RWKV6
    try:
        rwkv_config = _LM_CONFIGS[config.get("architecture", "rwkv6")].from_dict(config["rwkv"])
        # Cheap checks first: sections that are wrong fail before the language model is built.
        scan = overrides.pop("scan", None) or scan_from_config(config["scan"])
        layout = overrides.pop("layout", None) or layout_from_config(config["layout"])
        preprocessor = overrides.pop("preprocessor", None) or preprocessor_from_config(config["preprocessor"])
        proj_data = config["projector"]
        if isinstance(proj_data, Mapping) and proj_data.get("out_features") != rwkv_config.n_embd:
            raise CheckpointError(
                f"projector.out_features {proj_data.get('out_features')!r} must equal rwkv.n_embd {rwkv_config.n_embd}"
            )
        if tokenizer is None:
            tokenizer = tokenizer_from_config(config["tokenizer"], directory=directory)
        # Random weights: built in the order language model, encoder, projector, so that the initialisation
        # is stable; on the meta device (a load) the cheaper encoder goes first, so a bad section fails fast.
        meta = device is not None and torch.device(device).type == "meta"
        rwkv = None if meta else lm_cls(rwkv_config, device=device, dtype=dtype)
        encoder = encoder_from_config(config["encoder"], device=device, dtype=dtype)
        if isinstance(proj_data, Mapping) and proj_data.get("in_features") != encoder.width:
            raise CheckpointError(
                f"projector.in_features {proj_data.get('in_features')!r} must equal the encoder width {encoder.width}"
            )
        proj = projector_from_config(proj_data, device=device, dtype=dtype)
        if rwkv is None:
            rwkv = lm_cls(rwkv_config, device=device, dtype=dtype)
    except (CheckpointError, ConfigError) as e:
        raise CheckpointError(f"{source}: {e}") from None
    except (TypeError, ValueError, KeyError, IndexError, ArithmeticError, AssertionError, RuntimeError) as e:
        # A value of the right kind that the builders still refuse: the file is wrong, not the library.
        if isinstance(e, RuntimeError) and _is_device_error(e, device):
            raise
        text = str(e)
        text = text if len(text) <= 200 else text[:197] + "..."
        raise CheckpointError(f"{source}: cannot build the model it describes ({type(e).__name__}: {text})") from None
    overrides.setdefault("freeze_encoder", bool(config["encoder"]["frozen"]))
    if "padding" in config:
        overrides.setdefault("pad_to_multiple", config["padding"]["multiple"])
        overrides.setdefault("pad_token_id", config["padding"]["token"])
    try:
        return cls(
            rwkv=rwkv,
            encoder=encoder,
            proj=proj,
            scan=scan,
            layout=layout,
            tokenizer=tokenizer,
            preprocessor=preprocessor,
            **overrides,
        )
    except (CheckpointError, ConfigError) as e:
        raise CheckpointError(f"{source}: {e}") from None


def _is_device_error(e: BaseException, device: Any) -> bool:
    return device is not None and str(device) != "meta" and any(w in str(e).lower() for w in ("cuda", "device", "mps"))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def load_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The validated ``config.json`` of a save_pretrained directory."""
    path = Path(directory) / CONFIG_NAME
    if os.path.lexists(path) and not path.is_file():
        raise CheckpointError(f"{path}: not a regular file; expected the config written by save_pretrained")
    if not path.is_file():
        raise CheckpointError(
            f"{path}: missing; a save_pretrained directory holds {CONFIG_NAME} and {WEIGHTS_NAME} "
            f"(found: {sorted(p.name for p in Path(directory).iterdir())[:10]})"
        )
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path}: {size} bytes is more than a config.json may hold ({MAX_CONFIG_BYTES})")
    try:
        config = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); expected the config written by save_pretrained") from None
    except RecursionError:
        raise CheckpointError(
            f"{path}: JSON nested too deeply; expected the config written by save_pretrained"
        ) from None
    except ValueError as e:  # NaN / Infinity, or an integer with too many digits
        raise CheckpointError(f"{path}: not valid JSON ({e}); expected the config written by save_pretrained") from None
    validate_config(config, source=str(path))
    return config
