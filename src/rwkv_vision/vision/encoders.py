"""Vision encoders built with timm, with explicit feature selection.

VisualRWKV v6.0 uses OpenAI CLIP ViT-L/14 at 336 px (24 layers, width 1024, quick-GELU, pre-norm) and feeds
the LM the **last encoder layer's hidden states without the post-LayerNorm**, ordered as the 576 patches
row-major followed by the CLS token (577 tokens). :class:`VisionEncoder` wraps any timm
``VisionTransformer`` and returns exactly that selection: hidden states after block ``layer``, CLS moved to
``cls`` position (``"last"``, ``"first"`` or dropped with ``None``).

Encoders are built with ``pretrained=False`` (no network); weights come from a checkpoint through
:mod:`rwkv_vision.vision.convert_clip`.

Shape legend: b batch, t time (image tokens: rows*cols patches, plus CLS), c channels (encoder width).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

# timm is imported where it is used: it costs ~2 s at import, and `import rwkv_vision` should not pay that
# for text-only use.

from ..image_tokens import ClsPosition
from ..registry import Registry

__all__ = [
    "VisionEncoder",
    "timm_vit",
    "clip_vit_l14_336",
    "tiny_clip",
    "create_encoder",
    "register_encoder",
    "list_encoders",
    "ENCODERS",
    "CLIP_VIT_L14_336",
]

#: Vision encoder builders by name (exact names), each ``builder(layer=, cls=, device=, dtype=, ...) ->
#: VisionEncoder`` — or, for multi-tower stacks (``"visualrwkv7-sam-dino-siglip"``, registered in
#: :mod:`rwkv_vision.vision.multi_encoder`), ``builder(pool=, frozen=, device=, dtype=) -> MultiEncoder``;
#: :func:`create_encoder` also accepts any timm ViT name.
ENCODERS: Registry[Callable[..., VisionEncoder]] = Registry("vision encoder", normalize=None)

# timm's plain "vit_large_patch14_clip_336" uses exact GELU (for the LAION towers); OpenAI CLIP needs
# quick-GELU, so it is forced here rather than relying on the *_quickgelu_* alias.
CLIP_VIT_L14_336: dict[str, Any] = dict(act_layer="quick_gelu", num_classes=0)


class VisionEncoder(nn.Module):
    """A timm ViT returning the hidden states of one block, CLS placed where the LM expects it.

    Args:
        vit: a timm ``VisionTransformer`` with one CLS prefix token (and no register tokens).
        layer: which block's output to return; negative counts from the end (``-1``: last block,
            VisualRWKV; ``-2``: LLaVA). The final ``norm`` is never applied.
        cls: ``"last"`` (VisualRWKV v6.0), ``"first"`` (timm / v5 order) or ``None`` (patches only).

    ``forward(pixel_values [b, 3, H, W]) -> [b, t, c]`` with ``t = rows*cols + (cls is not None)``.
    """

    def __init__(self, vit: VisionTransformer, *, layer: int = -1, cls: ClsPosition = "last"):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        if not isinstance(vit, VisionTransformer):
            raise TypeError(f"vit must be a timm VisionTransformer, got {type(vit).__name__}")
        if getattr(vit, "num_prefix_tokens", 1) != 1 or not getattr(vit, "has_class_token", True):
            raise ValueError(
                f"vit must have exactly one prefix token (CLS); got num_prefix_tokens={vit.num_prefix_tokens}"
            )
        depth = len(vit.blocks)
        if not isinstance(layer, int) or not -depth <= layer < depth:
            raise ValueError(f"layer must be an int in [-{depth}, {depth}) for a {depth}-block ViT, got {layer!r}")
        if cls not in ("first", "last", None):
            raise ValueError(f"cls must be 'first', 'last' or None, got {cls!r}")
        self.vit = vit
        self.layer = layer % depth
        self.cls = cls

    @property
    def width(self) -> int:
        """c: the feature width."""
        return self.vit.embed_dim

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.vit.patch_embed.img_size)

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(self.vit.patch_embed.patch_size)

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of the patch grid at the native image size."""
        return tuple(self.vit.patch_embed.grid_size)

    @property
    def num_tokens(self) -> int:
        """t: tokens per image (patches, plus CLS unless ``cls is None``)."""
        return self.grid[0] * self.grid[1] + (self.cls is not None)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(
                f"pixel_values must be [b, 3, H, W], got {getattr(pixel_values, 'shape', type(pixel_values).__name__)}"
            )
        if tuple(pixel_values.shape[-2:]) != self.image_size and not getattr(self.vit, "dynamic_img_size", False):
            raise ValueError(
                f"pixel_values must be {self.image_size[0]}x{self.image_size[1]}, got {tuple(pixel_values.shape[-2:])}"
            )
        param = next(self.vit.parameters())
        x = pixel_values.to(device=param.device, dtype=param.dtype)
        # forward_intermediates with stop_early skips the blocks after `layer`, and norm=False leaves out
        # the final LayerNorm (VisualRWKV reads the raw residual stream).
        ((patches, prefix),) = self.vit.forward_intermediates(
            x,
            indices=[self.layer],
            return_prefix_tokens=True,
            norm=False,
            stop_early=True,
            output_fmt="NLC",
            intermediates_only=True,
        )
        if self.cls == "last":
            return torch.cat([patches, prefix], dim=1)
        if self.cls == "first":
            return torch.cat([prefix, patches], dim=1)
        return patches

    def extra_repr(self) -> str:
        return f"layer={self.layer}, cls={self.cls!r}, grid={self.grid}, width={self.width}"


def timm_vit(
    name: str,
    *,
    layer: int = -1,
    cls: ClsPosition = "last",
    pretrained: bool = False,
    device=None,
    dtype=None,
    **timm_kwargs: Any,
) -> VisionEncoder:
    """Any timm ViT by model name (e.g. ``"vit_base_patch16_clip_224"``) wrapped as a :class:`VisionEncoder`.

    ``timm_kwargs`` go to ``timm.create_model`` (``img_size``, ``act_layer``, ...); ``num_classes`` is 0.
    ``pretrained=True`` downloads timm's weights (network) — the default never touches the network.
    """
    import timm

    if not isinstance(name, str) or name not in timm.list_models():
        raise ValueError(f"name must be a timm model name, got {name!r}")
    timm_kwargs.setdefault("num_classes", 0)
    if device is not None and torch.device(device).type == "meta":
        # timm's initialisation of meta tensors runs Python reference ops (seconds for ViT-L) and sets nothing
        timm_kwargs.setdefault("weight_init", "skip")
    # Building under the target device avoids a CPU initialisation of every weight first (seconds for
    # ViT-L); with device="meta" nothing is allocated at all, which is how a checkpoint load starts.
    with torch.device(device) if device is not None else contextlib.nullcontext():
        vit = timm.create_model(name, pretrained=pretrained, **timm_kwargs)
    enc = VisionEncoder(vit, layer=layer, cls=cls)
    return enc.to(dtype=dtype) if dtype is not None else enc


@ENCODERS.register("clip-vit-l14-336")
def clip_vit_l14_336(*, layer: int = -1, cls: ClsPosition = "last", device=None, dtype=None) -> VisionEncoder:
    """OpenAI CLIP ViT-L/14 at 336 px as VisualRWKV v6.0 uses it (random weights; load a checkpoint).

    ``[b, 3, 336, 336] -> [b, 577, 1024]`` with the defaults (24 x 24 patches row-major, CLS last).
    """
    return timm_vit("vit_large_patch14_clip_336", layer=layer, cls=cls, device=device, dtype=dtype, **CLIP_VIT_L14_336)


@ENCODERS.register("tiny-clip")
def tiny_clip(
    *, image_size: int = 28, layer: int = -1, cls: ClsPosition = "last", device=None, dtype=None, **kwargs: Any
) -> VisionEncoder:
    """A CLIP-shaped ViT small enough for tests: 2 blocks, width 64, 1 head (= width/64, as VisualRWKV
    infers heads), patch 14, quick-GELU, pre-norm. ``image_size`` 28 gives a 2 x 2 grid, 56 a 4 x 4 grid.
    ``kwargs`` override the timm arguments (``depth``, ``embed_dim``, ``num_heads``, ...)."""
    args = dict(
        patch_size=14,
        embed_dim=64,
        depth=2,
        num_heads=1,
        mlp_ratio=4.0,
        pre_norm=True,
        img_size=image_size,
        act_layer="quick_gelu",
        num_classes=0,
    )
    args.update(kwargs)
    return timm_vit("vit_base_patch16_clip_224", layer=layer, cls=cls, device=device, dtype=dtype, **args)


def register_encoder(name: str, builder: Callable[..., VisionEncoder]) -> None:
    """Register ``builder(layer=, cls=, device=, dtype=, ...) -> VisionEncoder`` under ``name`` in
    :data:`ENCODERS` (replacing an earlier builder of that name); ``@ENCODERS.register(name)`` does the same
    as a decorator."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    if not callable(builder):
        raise TypeError(f"builder must be callable, got {type(builder).__name__}")
    ENCODERS.register(name, builder, override=True)


def list_encoders() -> list[str]:
    """Names accepted by :func:`create_encoder` (besides any timm ViT name)."""
    return ENCODERS.names()


def create_encoder(name: str, **kwargs: Any) -> VisionEncoder:
    """A registered encoder (``"clip-vit-l14-336"``, ``"tiny-clip"``, ``"visualrwkv7-sam-dino-siglip"``, ...) or,
    failing that, a timm ViT name."""
    if name in ENCODERS:
        return ENCODERS.get(name)(**kwargs)
    if isinstance(name, str):
        import timm

        if name in timm.list_models():
            return timm_vit(name, **kwargs)
    raise ValueError(f"name: unknown encoder {name!r}; registered: {list_encoders()}, or any timm ViT name")
