"""VisualRWKV v7.00 vision weights (``vit.{name}_featurizer.*``) <-> :class:`MultiEncoder` weights, strictly.

The official v7.00 ``SamDinoSigLIPViTBackbone`` holds three featurizers:

* ``vit.dino_featurizer.*`` — ``timm.create_model("vit_large_patch14_reg4_dinov2.lvd142m", img_size=448)``:
  timm names already, stored unchanged as ``towers.dino.model.*``.
* ``vit.siglip_featurizer.*`` — ``timm.create_model("vit_so400m_patch14_siglip_384", img_size=448)``: timm
  names, stored as ``towers.siglip.model.*`` (``attn_pool.*`` and ``norm.*`` included, though unused).
* ``vit.sam_featurizer.*`` — the official repository's own copy of segment_anything's ``ImageEncoderViT``
  (plus a parameter-free ``LosslessDownSampler``): the same names as timm's ``VisionTransformerSAM`` except
  the MLP, ``blocks.{i}.mlp.lin1/lin2`` -> ``blocks.{i}.mlp.fc1/fc2``; stored as ``towers.sam.model.*``.

Any :class:`MultiEncoder` converts the same way: tower ``X`` <-> ``{prefix}X_featurizer.``; SAM towers
(:class:`~rwkv_vision.vision.towers.SamTower`) get the MLP renaming. Keys outside ``prefix`` (``rwkv.*``,
``proj.*``) are ignored; keys under it that fit no tower, and tower keys missing from the file, are errors
that name them (:class:`~rwkv_vision.errors.StateDictError`), as are shape mismatches.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from ..errors import StateDictError, natural_key
from .multi_encoder import MultiEncoder
from .towers import SamTower

__all__ = [
    "V7_VISION_PREFIX",
    "sam_to_timm_state_dict",
    "timm_to_sam_state_dict",
    "v7_to_encoder_state_dict",
    "encoder_to_v7_state_dict",
    "load_v7_vision_state_dict",
]

#: Where the vision towers live in a v7.00 checkpoint.
V7_VISION_PREFIX = "vit."

_SAM_MLP = re.compile(r"^(blocks\.\d+\.mlp\.)lin([12])\.")
_TIMM_MLP = re.compile(r"^(blocks\.\d+\.mlp\.)fc([12])\.")


def sam_to_timm_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """segment_anything ``ImageEncoderViT`` keys (no prefix) -> timm ``VisionTransformerSAM`` keys."""
    return {_SAM_MLP.sub(r"\1fc\2.", k): v for k, v in state_dict.items()}


def timm_to_sam_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ``VisionTransformerSAM`` keys -> segment_anything ``ImageEncoderViT`` keys."""
    return {_TIMM_MLP.sub(r"\1lin\2.", k): v for k, v in state_dict.items()}


def _check_encoder(encoder: nn.Module) -> MultiEncoder:
    if not isinstance(encoder, MultiEncoder):
        raise TypeError(f"encoder must be a MultiEncoder, got {type(encoder).__name__}")
    return encoder


def v7_to_encoder_state_dict(
    state_dict: Mapping[str, torch.Tensor], encoder: MultiEncoder, *, prefix: str = V7_VISION_PREFIX
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The v7.00 vision keys of ``state_dict`` renamed to ``encoder``'s keys.

    Returns ``(converted, unexpected)``: ``unexpected`` lists the keys under ``prefix`` that belong to no
    tower of ``encoder`` (keys outside ``prefix`` are not looked at).
    """
    _check_encoder(encoder)
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, value in state_dict.items():
        if not isinstance(key, str) or not key.startswith(prefix):
            continue
        ours = _our_key(key, encoder, prefix)
        if ours is None:
            unexpected.append(key)
        else:
            out[ours] = value
    return out, unexpected


def _our_key(key: str, encoder: MultiEncoder, prefix: str) -> str | None:
    """The encoder's name for a v7.00 key under ``prefix``; None if it is under no tower's head."""
    for name, tower in encoder.towers.items():
        head = f"{prefix}{name}_featurizer."
        if key.startswith(head):
            rest = key[len(head) :]
            if isinstance(tower, SamTower):
                rest = _SAM_MLP.sub(r"\1fc\2.", rest)
            return f"towers.{name}.model.{rest}"
    return None


def encoder_to_v7_state_dict(encoder: MultiEncoder, *, prefix: str = V7_VISION_PREFIX) -> dict[str, torch.Tensor]:
    """``encoder``'s weights under the v7.00 names (``{prefix}{name}_featurizer.*``, SAM MLPs as ``lin1/lin2``)."""
    _check_encoder(encoder)
    out = {}
    for name, tower in encoder.towers.items():
        sd = tower.model.state_dict()
        if isinstance(tower, SamTower):
            sd = timm_to_sam_state_dict(sd)
        out.update({f"{prefix}{name}_featurizer.{k}": v for k, v in sd.items()})
    return out


def load_v7_vision_state_dict(
    encoder: MultiEncoder,
    state_dict: Mapping[str, torch.Tensor],
    *,
    prefix: str = V7_VISION_PREFIX,
    assign: bool = False,
) -> None:
    """Load the v7.00 vision weights of ``state_dict`` (a whole checkpoint is fine) into ``encoder``, strictly.

    Raises :class:`~rwkv_vision.errors.StateDictError` naming the missing (in ``encoder``, absent from the
    file), unexpected (under ``prefix``, fitting no tower) and mis-shaped keys, in the file's names.
    ``assign=True`` adopts the file's tensors (needed for an encoder built on ``device="meta"``).
    """
    converted, unexpected = v7_to_encoder_state_dict(state_dict, encoder, prefix=prefix)
    own = encoder.state_dict()
    theirs = {v: k for k, v in _renames(encoder, prefix).items()}  # our name -> v7.00 name
    missing = sorted((theirs[k] for k in own if k not in converted), key=natural_key)
    for key in state_dict:
        ours = _our_key(key, encoder, prefix) if isinstance(key, str) and key.startswith(prefix) else None
        if ours is not None and ours not in own:
            unexpected.append(key)
    mismatched = [
        (theirs[k], tuple(getattr(v, "shape", ())), tuple(own[k].shape))
        for k, v in converted.items()
        if k in own and (not isinstance(v, torch.Tensor) or tuple(v.shape) != tuple(own[k].shape))
    ]
    if missing or unexpected or mismatched:
        raise StateDictError(
            missing,
            sorted(unexpected, key=natural_key),
            mismatched,
            hint=f"(v7.00 vision keys under {prefix!r}: towers {encoder.names} as '{prefix}<name>_featurizer.*')",
        )
    encoder.load_state_dict(converted, strict=True, assign=assign)


def _renames(encoder: MultiEncoder, prefix: str) -> dict[str, str]:
    """v7.00 name -> encoder name, for every key of ``encoder``."""
    out = {}
    for name, tower in encoder.towers.items():
        for k in tower.model.state_dict():
            theirs = _TIMM_MLP.sub(r"\1lin\2.", k) if isinstance(tower, SamTower) else k
            out[f"{prefix}{name}_featurizer.{theirs}"] = f"towers.{name}.model.{k}"
    return out
