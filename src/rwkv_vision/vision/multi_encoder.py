"""Several vision towers over one image, their patch features concatenated per token.

:class:`MultiEncoder` runs each tower (:mod:`rwkv_vision.vision.towers`) on its own input (each tower has
its own resolution and normalisation, see :class:`~rwkv_vision.vision.multi_preprocess.MultiImagePreprocessor`),
checks that every tower gives the same ``rows x cols`` grid, concatenates the features in tower order and
optionally average-pools the grid to fewer tokens.

VisualRWKV v7.00 (:func:`visualrwkv7_encoder`, registered as ``"visualrwkv7-sam-dino-siglip"``): DINOv2
ViT-L/14 with 4 registers at 448 px (second-to-last block, patch tokens, no final norm: 1024 x 1024), SigLIP
so400m/14 at 448 px (the same selection: 1024 x 1152) and SAM ViT-B at 1024 px (neck, 2 x 2 space-to-depth:
1024 x 1024), concatenated dino | siglip | sam: ``[b, 1024, 3200]`` per image. Other combinations (two of the
three, SigLIP2, any timm ViT whose grid agrees) are built the same way::

    enc = MultiEncoder({"siglip2": timm_tower("vit_base_patch16_siglip_384.v2_webli", img_size=448, layer=-2),
                        "sam": timm_tower("samvit_base_patch16", img_size=896)})

Towers are frozen by default (VisualRWKV never trains them); ``frozen=False`` leaves gradients on.

Shape legend: b batch, t time (tokens, rows*cols row-major), c channels (sum of the towers' widths).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .encoders import ENCODERS
from .spatial import as_grid, pool_grid
from .towers import DINOV2_L14_REG4, SAM_B16, SIGLIP_SO400M_14, timm_tower

__all__ = ["MultiEncoder", "visualrwkv7_encoder", "tiny_visualrwkv7_encoder", "V7_TOWERS"]

#: The tower names of VisualRWKV v7.00, in concatenation order (the keys of its pixel_values dict).
V7_TOWERS: tuple[str, ...] = ("dino", "siglip", "sam")


class MultiEncoder(nn.Module):
    """Vision towers whose per-patch features are concatenated, optionally pooled to a smaller grid.

    Args:
        towers: name -> tower, in concatenation order. A tower is any module with ``grid`` (rows, cols),
            ``width`` (c_i), ``image_size`` (H_i, W_i) and ``forward([b, 3, H_i, W_i]) -> [b, rows*cols, c_i]``
            (:class:`~rwkv_vision.vision.towers.ViTTower`, :class:`~rwkv_vision.vision.towers.SamTower`).
        pool: ``None`` (keep the grid) or the output grid, an int (square) or ``(rows, cols)``: adaptive
            average pooling, the mean of each block when it divides the grid (VisualRWKV's
            ``num_token_per_image``, e.g. 16 tokens = ``pool=4``).
        frozen: turn off the towers' gradients (default True).

    ``forward(pixel_values) -> [b, t, c]`` where ``pixel_values`` maps every tower name to ``[b, 3, H_i, W_i]``
    (a sequence in tower order is accepted too), ``t = rows * cols`` of the (pooled) grid and
    ``c = sum(c_i)``. The result is in the towers' dtype.
    """

    def __init__(self, towers: Mapping[str, nn.Module], *, pool: int | tuple[int, int] | None = None, frozen=True):
        super().__init__()
        if not isinstance(towers, Mapping) or not towers:
            raise ValueError(f"towers must be a non-empty mapping name -> tower, got {type(towers).__name__}")
        grids = {}
        for name, tower in towers.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"towers: tower names must be identifiers, got {name!r}")
            if not isinstance(tower, nn.Module):
                raise TypeError(f"towers[{name!r}] must be an nn.Module, got {type(tower).__name__}")
            for attr in ("grid", "width", "image_size"):
                if not hasattr(tower, attr):
                    raise TypeError(f"towers[{name!r}] ({type(tower).__name__}) has no {attr!r}")
            grids[name] = tuple(tower.grid)
        if len(set(grids.values())) != 1:
            raise ValueError(f"towers must all give the same token grid, got {grids}")
        if not isinstance(frozen, bool):
            raise TypeError(f"frozen must be a bool, got {type(frozen).__name__}")
        self.towers = nn.ModuleDict(dict(towers))
        self.input_grid: tuple[int, int] = next(iter(grids.values()))
        self.pool = None if pool is None else as_grid(pool, "pool")
        if self.pool is not None and (self.pool[0] > self.input_grid[0] or self.pool[1] > self.input_grid[1]):
            raise ValueError(f"pool {self.pool} must not exceed the towers' grid {self.input_grid}")
        if frozen:
            self.requires_grad_(False)

    @property
    def names(self) -> list[str]:
        """The tower names, in concatenation order."""
        return list(self.towers.keys())

    @property
    def widths(self) -> dict[str, int]:
        return {name: int(tower.width) for name, tower in self.towers.items()}

    @property
    def width(self) -> int:
        """c: the concatenated feature width."""
        return sum(self.widths.values())

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of the output tokens (after pooling)."""
        return self.pool if self.pool is not None else self.input_grid

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def cls(self) -> None:
        """No CLS token among the output tokens (for prompt layouts)."""
        return None

    @property
    def image_sizes(self) -> dict[str, tuple[int, int]]:
        """(H, W) of each tower's input."""
        return {name: tuple(tower.image_size) for name, tower in self.towers.items()}

    def _inputs(self, pixel_values: Any) -> list[torch.Tensor]:
        if isinstance(pixel_values, Mapping):
            missing = [n for n in self.names if n not in pixel_values]
            if missing:
                raise ValueError(
                    f"pixel_values must have a tensor for every tower {self.names}; missing {missing}, "
                    f"got keys {sorted(map(str, pixel_values))}"
                )
            inputs = [pixel_values[n] for n in self.names]
        elif isinstance(pixel_values, Sequence) and not isinstance(pixel_values, (str, bytes)):
            if len(pixel_values) != len(self.names):
                raise ValueError(f"pixel_values: {len(pixel_values)} tensors for {len(self.names)} towers {self.names}")
            inputs = list(pixel_values)
        else:
            raise TypeError(
                f"pixel_values must be a dict tower name -> [b, 3, H, W] (towers {self.names}), got "
                f"{type(pixel_values).__name__}"
            )
        batch = {n: getattr(x, "shape", (None,))[0] for n, x in zip(self.names, inputs)}
        if len(set(batch.values())) != 1:
            raise ValueError(f"pixel_values: every tower needs the same batch size, got {batch}")
        return inputs

    def forward(self, pixel_values: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> torch.Tensor:
        inputs = self._inputs(pixel_values)
        feats = []
        for (name, tower), x in zip(self.towers.items(), inputs):
            try:
                feats.append(tower(x))
            except ValueError as e:
                raise ValueError(f"pixel_values[{name!r}]: {e}") from None
        dtype = feats[0].dtype
        out = torch.cat([f.to(dtype) for f in feats], dim=-1)
        return out if self.pool is None else pool_grid(out, self.input_grid, self.pool)

    def extra_repr(self) -> str:
        return f"grid={self.grid}, width={self.width}, pool={self.pool}"


@ENCODERS.register("visualrwkv7-sam-dino-siglip")
def visualrwkv7_encoder(
    *,
    pool: int | tuple[int, int] | None = None,
    frozen: bool = True,
    device=None,
    dtype=None,
) -> MultiEncoder:
    """VisualRWKV v7.00's vision stack (random weights; load a checkpoint with
    :func:`~rwkv_vision.vision.convert_v7.load_v7_vision_state_dict`).

    Towers ``dino`` (DINOv2 ViT-L/14 reg4, 448 px), ``siglip`` (SigLIP so400m/14, 448 px, exact GELU as in
    timm) and ``sam`` (SAM ViT-B, 1024 px, neck + 2 x 2 space-to-depth): ``[b, 1024, 3200]``, or
    ``[b, r*s, 3200]`` with ``pool=(r, s)``.
    """
    # exact (erf) GELU pinned: what timm built when the weights were trained (the original SigLIP used the
    # tanh approximation), whatever a later timm's default becomes
    kw = dict(device=device, dtype=dtype, act_layer=nn.GELU)
    towers = {
        "dino": timm_tower(DINOV2_L14_REG4, img_size=448, layer=-2, **kw),
        "siglip": timm_tower(SIGLIP_SO400M_14, img_size=448, layer=-2, **kw),
        "sam": timm_tower(SAM_B16, img_size=1024, factor=2, device=device, dtype=dtype),
    }
    return MultiEncoder(towers, pool=pool, frozen=frozen)


@ENCODERS.register("tiny-sam-dino-siglip")
def tiny_visualrwkv7_encoder(
    *,
    pool: int | tuple[int, int] | None = None,
    frozen: bool = True,
    device=None,
    dtype=None,
) -> MultiEncoder:
    """The v7.00 stack's structure at test size: the same three timm architectures (registers, no-CLS MAP
    head, SAM windows + global blocks + rel-pos + neck), 4 x 4 tokens, widths 32 + 48 + 4*16 = 144.

    ``dino``: 56 px, patch 14, 3 blocks; ``siglip``: 56 px, patch 14, 3 blocks; ``sam``: 128 px, patch 16,
    3 blocks (window 3 with padding, block 1 global), neck 16 channels, 8 x 8 -> 4 x 4.
    """
    kw = dict(device=device, dtype=dtype)
    vit = dict(kw, act_layer=nn.GELU)
    towers = {
        "dino": timm_tower(DINOV2_L14_REG4, img_size=56, depth=3, embed_dim=32, num_heads=2, layer=-2, **vit),
        "siglip": timm_tower(SIGLIP_SO400M_14, img_size=56, depth=3, embed_dim=48, num_heads=2, layer=-2, **vit),
        "sam": timm_tower(
            SAM_B16,
            img_size=128,
            depth=3,
            embed_dim=32,
            num_heads=2,
            window_size=3,
            global_attn_indexes=(1,),
            neck_chans=16,
            factor=2,
            **kw,
        ),
    }
    return MultiEncoder(towers, pool=pool, frozen=frozen)
