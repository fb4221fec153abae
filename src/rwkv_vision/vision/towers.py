"""Vision towers: one timm backbone each, returning one feature vector per patch of a row-major grid.

A tower is the unit a :class:`~rwkv_vision.vision.multi_encoder.MultiEncoder` concatenates. Two kinds:

* :class:`ViTTower` — any timm ``VisionTransformer`` (CLIP, DINOv2 with registers, SigLIP, SigLIP2, ...):
  the hidden states after block ``layer`` (default ``-2``, the second-to-last block, as VisualRWKV v7.00
  reads DINOv2 and SigLIP), **patch tokens only** (CLS and register tokens dropped), **without the final
  norm** — what ``vit.get_intermediate_layers(x, n={depth - 2})`` returns in the official code.
* :class:`SamTower` — timm's ``VisionTransformerSAM`` (the Segment Anything image encoder, with its neck):
  the neck output ``[b, neck_chans, rows, cols]`` after a lossless ``f x f`` space-to-depth
  (:func:`~rwkv_vision.vision.spatial.space_to_depth`), flattened row-major. For SAM ViT-B at 1024 px:
  64 x 64 x 256 -> 32 x 32 x 1024.

Both are built from a timm model name plus overrides (``img_size``, ``depth``, ``embed_dim``, ...) with
:func:`timm_tower`, so tests build tiny random towers; weights come from a checkpoint
(:mod:`rwkv_vision.vision.convert_v7`). ``pretrained=True`` is timm's download and never the default.

The towers keep every part of the timm model, even those the features never reach (the final norm, the
blocks after ``layer``, SigLIP's attention-pool head): the released v7.00 files hold them, and a strict load
then needs no exceptions.

Shape legend: b batch, t time (patch tokens, rows*cols, row-major), c channels (the tower's feature width).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from .spatial import space_to_depth

__all__ = [
    "ViTTower",
    "SamTower",
    "timm_tower",
    "tower_input_size",
    "DINOV2_L14_REG4",
    "SIGLIP_SO400M_14",
    "SAM_B16",
    "SAM_NORM_EPS",
    "blocks_norm_eps",
]

#: timm model names of the three VisualRWKV v7.00 towers.
DINOV2_L14_REG4 = "vit_large_patch14_reg4_dinov2"
SIGLIP_SO400M_14 = "vit_so400m_patch14_siglip_384"
SAM_B16 = "samvit_base_patch16"
#: The LayerNorm eps of segment_anything's image encoder blocks (and of the official v7.00 copy).
SAM_NORM_EPS = 1e-6


def _check_pixels(pixel_values: Any, size: tuple[int, int], what: str) -> None:
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
        raise ValueError(
            f"{what} must be a tensor [b, 3, H, W], got {getattr(pixel_values, 'shape', type(pixel_values).__name__)}"
        )
    if tuple(pixel_values.shape[-2:]) != tuple(size):
        raise ValueError(f"{what} must be {size[0]}x{size[1]} pixels, got {tuple(pixel_values.shape[-2:])}")


def _to_model(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    param = next(model.parameters())
    return x.to(device=param.device, dtype=param.dtype)


class ViTTower(nn.Module):
    """A timm ``VisionTransformer`` returning the patch tokens after one block, without the final norm.

    Args:
        model: a timm ``VisionTransformer`` (any number of prefix tokens: CLS, registers, or none).
        layer: which block's output; negative counts from the end (``-2``: second-to-last, VisualRWKV v7.00).

    ``forward(pixel_values [b, 3, H, W]) -> [b, t, c]``, ``t = rows * cols`` (row-major), ``c = embed_dim``.
    For DINOv2 ViT-L/14 at 448 px: ``[b, 3, 448, 448] -> [b, 1024, 1024]``; SigLIP so400m/14 at 448 px:
    ``[b, 3, 448, 448] -> [b, 1024, 1152]``.
    """

    def __init__(self, model: nn.Module, *, layer: int = -2):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        if not isinstance(model, VisionTransformer):
            raise TypeError(f"model must be a timm VisionTransformer, got {type(model).__name__}")
        depth = len(model.blocks)
        if not isinstance(layer, int) or isinstance(layer, bool) or not -depth <= layer < depth:
            raise ValueError(f"layer must be an int in [-{depth}, {depth}) for a {depth}-block ViT, got {layer!r}")
        self.model = model
        self.layer = layer % depth

    @property
    def width(self) -> int:
        """c: the feature width."""
        return self.model.embed_dim

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.model.patch_embed.img_size)

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of the output tokens."""
        return tuple(self.model.patch_embed.grid_size)

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        _check_pixels(pixel_values, self.image_size, "pixel_values")
        # forward_intermediates = the official get_intermediate_layers(n={layer}) (norm=False, prefix tokens
        # dropped); stop_early skips the blocks after `layer`, which cannot change the result.
        (patches,) = self.model.forward_intermediates(
            _to_model(pixel_values, self.model),
            indices=[self.layer],
            return_prefix_tokens=False,
            norm=False,
            stop_early=True,
            output_fmt="NLC",
            intermediates_only=True,
        )
        return patches

    def extra_repr(self) -> str:
        return f"layer={self.layer}, grid={self.grid}, width={self.width}"


class SamTower(nn.Module):
    """timm's Segment Anything image encoder (``VisionTransformerSAM``, neck included), its neck output folded
    ``factor x factor`` into channels and flattened row-major.

    Args:
        model: a timm ``VisionTransformerSAM`` with a neck (``neck_chans`` > 0).
        factor: space-to-depth factor (2 in VisualRWKV v7.00; 1 keeps the neck grid).

    ``forward(pixel_values [b, 3, H, W]) -> [b, t, c]``, ``t = (rows/f) * (cols/f)``, ``c = neck_chans * f * f``,
    channel ``k * f*f + dy * f + dx`` holding neck channel ``k`` at offset ``(dy, dx)`` of each block. For SAM
    ViT-B at 1024 px: ``[b, 3, 1024, 1024] -> [b, 1024, 1024]``.

    Quirk kept (it defines the features): windowed blocks pad the grid to a multiple of the window with
    zeros *after* ``norm1`` and attend without a mask, so the padded tokens are keys in the border windows
    (segment_anything and timm both do this).
    """

    def __init__(self, model: nn.Module, *, factor: int = 2):
        super().__init__()
        from timm.models.vision_transformer_sam import VisionTransformerSAM

        if not isinstance(model, VisionTransformerSAM):
            raise TypeError(f"model must be a timm VisionTransformerSAM, got {type(model).__name__}")
        if not isinstance(model.neck, nn.Sequential):
            raise ValueError("model must have SAM's conv neck (build it with neck_chans > 0)")
        if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
            raise ValueError(f"factor must be a positive int, got {factor!r}")
        rows, cols = model.patch_embed.grid_size
        if rows % factor or cols % factor:
            raise ValueError(f"the {rows}x{cols} neck grid is not divisible by factor={factor}")
        self.model = model
        self.factor = factor

    @property
    def norm_eps(self) -> float | None:
        """The eps of the blocks' LayerNorms (1e-6 in segment_anything)."""
        return blocks_norm_eps(self.model)

    @property
    def neck_chans(self) -> int:
        return self.model.num_features

    @property
    def width(self) -> int:
        """c: the feature width, ``neck_chans * factor**2``."""
        return self.neck_chans * self.factor**2

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.model.patch_embed.img_size)

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of the output tokens (the neck grid divided by ``factor``)."""
        rows, cols = self.model.patch_embed.grid_size
        return rows // self.factor, cols // self.factor

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        _check_pixels(pixel_values, self.image_size, "pixel_values")
        neck = self.model.forward_features(_to_model(pixel_values, self.model))  # [b, neck_chans, rows, cols]
        return space_to_depth(neck, self.factor).flatten(2).transpose(1, 2)

    def extra_repr(self) -> str:
        return f"factor={self.factor}, grid={self.grid}, width={self.width}"


def timm_tower(
    name: str,
    *,
    layer: int = -2,
    factor: int = 2,
    norm_eps: float | None = None,
    pretrained: bool = False,
    device=None,
    dtype=None,
    **timm_kwargs: Any,
) -> ViTTower | SamTower:
    """A tower from a timm model name and overrides: a :class:`ViTTower` for a ``VisionTransformer``, a
    :class:`SamTower` for a ``VisionTransformerSAM``.

    Args:
        name: timm model name (``"vit_large_patch14_reg4_dinov2"``, ``"vit_so400m_patch14_siglip_384"``,
            ``"samvit_base_patch16"``, ``"vit_base_patch16_siglip_384"``, ...).
        layer: ViT towers: the block whose output is returned (``-2``: second-to-last).
        factor: SAM towers: the space-to-depth factor.
        norm_eps: the eps of the blocks' LayerNorms. ``None``: timm's own for ViTs; for SAM towers
            :data:`SAM_NORM_EPS` (1e-6, segment_anything's), because timm's ``VisionTransformerSAM`` builds its
            blocks with eps 1e-5 (its 1e-6 default is shadowed by ``norm_layer=nn.LayerNorm``), which moves
            the features by ~1e-7 relative.
        pretrained: timm's own download (network); the default builds random weights.
        timm_kwargs: ``timm.create_model`` overrides (``img_size``, ``depth``, ``embed_dim``, ``num_heads``,
            ``global_attn_indexes``, ``window_size``, ...); ``num_classes`` is 0.
    """
    import timm
    from timm.models.vision_transformer import VisionTransformer
    from timm.models.vision_transformer_sam import VisionTransformerSAM

    # a pretrained tag ("vit_large_patch14_reg4_dinov2.lvd142m", as the official code names it) is allowed
    if not isinstance(name, str) or not timm.is_model(name.split(".", 1)[0]):
        raise ValueError(f"name must be a timm model name, got {name!r}")
    if norm_eps is not None and (
        isinstance(norm_eps, bool) or not isinstance(norm_eps, (int, float)) or not 0 < norm_eps < 1
    ):
        raise ValueError(f"norm_eps must be a number in (0, 1) or None, got {norm_eps!r}")
    timm_kwargs.setdefault("num_classes", 0)
    if device is not None and torch.device(device).type == "meta":
        # timm's initialisation of meta tensors runs Python reference ops (seconds a tower) and sets nothing
        timm_kwargs.setdefault("weight_init", "skip")
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = timm.create_model(name, pretrained=pretrained, **timm_kwargs)
    if norm_eps is None and isinstance(model, VisionTransformerSAM):
        norm_eps = SAM_NORM_EPS
    if norm_eps is not None:
        for m in model.blocks.modules():
            if isinstance(m, nn.LayerNorm):
                m.eps = float(norm_eps)
    if isinstance(model, VisionTransformerSAM):
        tower: ViTTower | SamTower = SamTower(model, factor=factor)
    elif isinstance(model, VisionTransformer):
        tower = ViTTower(model, layer=layer)
    else:
        raise ValueError(f"name: {name!r} is a timm {type(model).__name__}, not a VisionTransformer(SAM)")
    return tower.to(dtype=dtype) if dtype is not None else tower


def blocks_norm_eps(model: nn.Module) -> float | None:
    """The eps of the first LayerNorm inside ``model.blocks`` (None if there is none)."""
    return next((float(m.eps) for m in model.blocks.modules() if isinstance(m, nn.LayerNorm)), None)


def tower_input_size(tower: nn.Module) -> tuple[int, int]:
    """(H, W) of the pixels a tower takes."""
    size = getattr(tower, "image_size", None)
    if not (isinstance(size, tuple) and len(size) == 2):
        raise ValueError(f"tower: a {type(tower).__name__} has no image_size (H, W)")
    return size
