"""Hugging Face ``CLIPVisionModel`` weights <-> timm ``VisionTransformer`` weights, exactly.

The released VisualRWKV checkpoints store the vision tower under ``vit.vision_model.`` with transformers
4.x names; transformers 5 models drop the ``vision_model.`` level from their own keys. Both spellings
(and any outer prefix such as ``vit.``) are recognised by locating ``embeddings.patch_embedding.weight``.

Mapping (``L`` = ``encoder.layers.{i}``, ``B`` = ``blocks.{i}``):

==========================================  =======================================
Hugging Face                                 timm
==========================================  =======================================
``embeddings.class_embedding`` [c]           ``cls_token`` [1, 1, c]
``embeddings.position_embedding.weight``     ``pos_embed`` [1, 1 + rows*cols, c]
``embeddings.patch_embedding.weight``        ``patch_embed.proj.weight`` (no bias in CLIP)
``pre_layrnorm.*``                           ``norm_pre.*``
``L.layer_norm1.*`` / ``L.layer_norm2.*``    ``B.norm1.*`` / ``B.norm2.*``
``L.self_attn.{q,k,v}_proj.*``               ``B.attn.qkv.*`` (concatenated q, k, v on dim 0)
``L.self_attn.out_proj.*``                   ``B.attn.proj.*``
``L.mlp.fc1.*`` / ``L.mlp.fc2.*``            ``B.mlp.fc1.*`` / ``B.mlp.fc2.*``
``post_layernorm.*`` (unused by VisualRWKV)  ``norm.*``
``embeddings.position_ids`` (buffer)         dropped
==========================================  =======================================

Shape legend: c channels (encoder width).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch

from ..image_tokens import ClsPosition
from .encoders import VisionEncoder, timm_vit

__all__ = [
    "find_clip_prefix",
    "clip_config_from_state_dict",
    "clip_to_timm_state_dict",
    "timm_to_clip_state_dict",
    "load_clip_state_dict",
    "encoder_from_clip_state_dict",
]

_ANCHOR = "embeddings.patch_embedding.weight"
_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)")
_LAYER_MAP = {
    "layer_norm1.weight": "norm1.weight",
    "layer_norm1.bias": "norm1.bias",
    "layer_norm2.weight": "norm2.weight",
    "layer_norm2.bias": "norm2.bias",
    "self_attn.out_proj.weight": "attn.proj.weight",
    "self_attn.out_proj.bias": "attn.proj.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
_GLOBAL_MAP = {
    "embeddings.patch_embedding.weight": "patch_embed.proj.weight",
    "pre_layrnorm.weight": "norm_pre.weight",
    "pre_layrnorm.bias": "norm_pre.bias",
    "post_layernorm.weight": "norm.weight",
    "post_layernorm.bias": "norm.bias",
}
_QKV = ("q_proj", "k_proj", "v_proj")


def find_clip_prefix(state_dict: Mapping[str, Any]) -> str:
    """The prefix in front of the CLIP vision keys: ``""``, ``"vision_model."``, ``"vit.vision_model."``..."""
    hits = [k[: -len(_ANCHOR)] for k in state_dict if k.endswith(_ANCHOR)]
    if len(hits) != 1:
        raise ValueError(
            f"state_dict must hold exactly one CLIP vision tower (a key ending in {_ANCHOR!r}); found {len(hits)}"
            + (f": {hits}" if hits else "")
        )
    return hits[0]


def _sub(state_dict: Mapping[str, torch.Tensor], prefix: str | None) -> tuple[dict[str, torch.Tensor], str]:
    if prefix is None:
        prefix = find_clip_prefix(state_dict)
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}, prefix


def clip_config_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], *, prefix: str | None = None, head_dim: int = 64
) -> dict[str, Any]:
    """timm ``VisionTransformer`` arguments inferred from tensor shapes.

    The head count is not visible in the shapes; it is ``width // head_dim`` (64, as in OpenAI CLIP and
    as VisualRWKV assumes). Returns ``embed_dim, depth, num_heads, patch_size, img_size, mlp_ratio``.
    """
    sd, prefix = _sub(state_dict, prefix)
    try:
        patch = sd["embeddings.patch_embedding.weight"]
        pos = sd["embeddings.position_embedding.weight"]
        fc1 = sd["encoder.layers.0.mlp.fc1.weight"]
    except KeyError as e:
        raise ValueError(f"state_dict is missing {prefix}{e.args[0]}") from None
    width, _, p, p2 = patch.shape
    if p != p2:
        raise ValueError(f"non-square patches {p}x{p2} are not supported")
    grid = math.isqrt(pos.shape[0] - 1)
    if grid * grid != pos.shape[0] - 1:
        raise ValueError(f"position_embedding has {pos.shape[0]} rows, not 1 + a square grid")
    depth = 1 + max(int(m.group(1)) for k in sd if (m := _LAYER.match(k)))
    if width % head_dim:
        raise ValueError(f"width {width} is not a multiple of head_dim={head_dim}; pass head_dim")
    return dict(
        embed_dim=width,
        depth=depth,
        num_heads=width // head_dim,
        patch_size=p,
        img_size=grid * p,
        mlp_ratio=fc1.shape[0] / width,
    )


def clip_to_timm_state_dict(
    state_dict: Mapping[str, torch.Tensor], *, prefix: str | None = None
) -> dict[str, torch.Tensor]:
    """Hugging Face CLIP vision keys -> timm keys (see the module table). Keys under ``prefix`` that the
    table does not know are an error listing them; keys outside ``prefix`` are ignored."""
    sd, prefix = _sub(state_dict, prefix)
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for k, v in sd.items():
        if k == "embeddings.position_ids":
            continue
        if k == "embeddings.class_embedding":
            out["cls_token"] = v.reshape(1, 1, -1)
        elif k == "embeddings.position_embedding.weight":
            out["pos_embed"] = v.unsqueeze(0)
        elif k in _GLOBAL_MAP:
            out[_GLOBAL_MAP[k]] = v
        elif m := _LAYER.fullmatch(k):
            i, rest = int(m.group(1)), m.group(2)
            if rest in _LAYER_MAP:
                out[f"blocks.{i}.{_LAYER_MAP[rest]}"] = v
            elif qm := re.fullmatch(r"self_attn\.([qkv]_proj)\.(weight|bias)", rest):
                qkv.setdefault((i, qm.group(2)), {})[qm.group(1)] = v
            else:
                unknown.append(prefix + k)
        else:
            unknown.append(prefix + k)
    for (i, kind), parts in sorted(qkv.items()):
        missing = [n for n in _QKV if n not in parts]
        if missing:
            raise ValueError(
                f"layer {i}: missing {', '.join(f'{prefix}encoder.layers.{i}.self_attn.{n}.{kind}' for n in missing)}"
            )
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts[n] for n in _QKV], 0)
    if unknown:
        raise ValueError(f"unexpected CLIP vision keys: {unknown}")
    return out


def timm_to_clip_state_dict(
    state_dict: Mapping[str, torch.Tensor], *, prefix: str = "vision_model."
) -> dict[str, torch.Tensor]:
    """timm ViT keys -> Hugging Face CLIP vision keys under ``prefix`` (``"vision_model."`` for
    transformers 4.x / the official checkpoint, ``""`` for a transformers 5 ``CLIPVisionModel``).
    ``norm.*`` becomes ``post_layernorm.*``; keys without a CLIP counterpart are an error."""
    inv_layer = {v: k for k, v in _LAYER_MAP.items()}
    inv_global = {v: k for k, v in _GLOBAL_MAP.items()}
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for k, v in state_dict.items():
        if k == "cls_token":
            out["embeddings.class_embedding"] = v.reshape(-1)
        elif k == "pos_embed":
            out["embeddings.position_embedding.weight"] = v.reshape(v.shape[-2], v.shape[-1])
        elif k in inv_global:
            out[inv_global[k]] = v
        elif m := re.fullmatch(r"blocks\.(\d+)\.(.+)", k):
            i, rest = m.group(1), m.group(2)
            if rest in inv_layer:
                out[f"encoder.layers.{i}.{inv_layer[rest]}"] = v
            elif rest in ("attn.qkv.weight", "attn.qkv.bias"):
                kind = rest.rsplit(".", 1)[1]
                for n, part in zip(_QKV, v.chunk(3, 0)):
                    out[f"encoder.layers.{i}.self_attn.{n}.{kind}"] = part
            else:
                unknown.append(k)
        else:
            unknown.append(k)
    if unknown:
        raise ValueError(f"timm keys without a CLIP counterpart: {unknown}")
    return {prefix + k: v for k, v in out.items()}


def load_clip_state_dict(
    encoder: VisionEncoder | torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    prefix: str | None = None,
    assign: bool = False,
) -> None:
    """Load Hugging Face CLIP vision weights into a :class:`VisionEncoder` (or a bare timm ViT), strictly.

    A missing ``post_layernorm`` is tolerated (VisualRWKV never applies it; ``norm`` keeps its init).
    ``assign=True`` adopts the given tensors (for an encoder built on ``device="meta"``).
    """
    vit = encoder.vit if isinstance(encoder, VisionEncoder) else encoder
    converted = clip_to_timm_state_dict(state_dict, prefix=prefix)
    result = vit.load_state_dict(converted, strict=False, assign=assign)
    missing = [k for k in result.missing_keys if k not in ("norm.weight", "norm.bias")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"CLIP weights do not fit the encoder: missing {missing}, unexpected {list(result.unexpected_keys)}"
        )
    if assign and any(k in result.missing_keys for k in ("norm.weight", "norm.bias")) and vit.norm.weight.is_meta:
        vit.norm = torch.nn.LayerNorm(
            vit.embed_dim, eps=vit.norm.eps, device=vit.cls_token.device, dtype=vit.cls_token.dtype
        )


def encoder_from_clip_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    *,
    prefix: str | None = None,
    layer: int = -1,
    cls: ClsPosition = "last",
    head_dim: int = 64,
    act_layer: str = "quick_gelu",
    device=None,
    dtype=None,
) -> VisionEncoder:
    """Build a :class:`VisionEncoder` sized from the checkpoint's shapes and load it.

    ``act_layer`` is ``"quick_gelu"`` for OpenAI CLIP (VisualRWKV); the activation is not visible in the
    weights. Tensors are cast to ``dtype`` (default: the checkpoint's) and moved to ``device``.
    """
    cfg = clip_config_from_state_dict(state_dict, prefix=prefix, head_dim=head_dim)
    enc = timm_vit(
        "vit_base_patch16_clip_224",
        layer=layer,
        cls=cls,
        device="meta",
        pre_norm=True,
        act_layer=act_layer,
        **cfg,
    )
    sd, prefix = _sub(state_dict, prefix)
    sd = {prefix + k: v.to(device=device, dtype=dtype) for k, v in sd.items()}
    load_clip_state_dict(enc, sd, prefix=prefix, assign=True)
    return enc
