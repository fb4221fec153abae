"""A global image and its tiles through the same towers, the tiles' features pooled into one mosaic.

:class:`TiledEncoder` is a :class:`~rwkv_vision.vision.multi_encoder.MultiEncoder` whose input per image is the
whole image followed by ``n x n`` tiles of it (cut row-major: left top, right top, left bottom, right bottom for
``n = 2``; :class:`~rwkv_vision.vision.tile_preprocess.TilePreprocessor` cuts and resizes them). Every picture
goes through the towers on its own; then, as VisualRWKV-UHD's ``fuse_image_features`` (``src/vision.py`` of
``VisualRWKV-v6/VisualRWKV-UHD``):

* the global picture's features ``[b, t, c]`` are kept as they are (``t = rows * cols``);
* each tile's ``rows x cols`` grid is average-pooled to ``(rows / n) x (cols / n)`` (the official
  ``adaptive_avg_pool2d`` to half the side, the mean of each 2 x 2 block), and the pooled tiles are laid out
  where they were cut, a ``rows x cols`` mosaic again, read row-major;
* the two are concatenated along channels: ``[b, t, 2c]``, global first (VisualRWKV-UHD: 1024 tokens of
  2 x 3200 = 6400 per image).

The towers' keys are those of the plain MultiEncoder (``towers.{name}.*``), so the released tower weights
load and save with :mod:`rwkv_vision.vision.convert_v7` unchanged.

Shape legend: b batch (images), t time (tokens, rows*cols row-major), c channels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .encoders import ENCODERS
from .multi_encoder import MultiEncoder, tiny_visualrwkv7_encoder, visualrwkv7_encoder
from .spatial import pool_grid
from .tile_preprocess import MAX_TILES, TilePreprocessor

__all__ = ["TiledEncoder", "visualrwkv_uhd_encoder", "tiny_visualrwkv_uhd_encoder", "MAX_TILES"]


class TiledEncoder(MultiEncoder):
    """Towers over a global image and its ``tiles x tiles`` tiles; global and pooled-tile features side by side.

    Args:
        towers: name -> tower, as :class:`MultiEncoder` (every tower gives the same ``rows x cols`` grid).
        tiles: tiles per side, ``n`` (VisualRWKV-UHD: 2); it must divide the towers' grid.
        frozen: turn off the towers' gradients (default True).

    ``forward(pixel_values) -> [b, rows*cols, 2c]`` where ``pixel_values`` maps every tower name to
    ``[b, 1 + n*n, 3, H_i, W_i]`` (the whole image, then the tiles row-major) and ``c`` is the towers' summed
    width. ``width`` is ``2c`` and ``grid`` the towers' grid.
    """

    def __init__(self, towers: Mapping[str, nn.Module], *, tiles: int = 2, frozen: bool = True):
        super().__init__(towers, pool=None, frozen=frozen)
        if not isinstance(tiles, int) or isinstance(tiles, bool) or not 1 <= tiles <= MAX_TILES:
            raise ValueError(f"tiles must be an int in 1..{MAX_TILES} (tiles per side), got {tiles!r}")
        rows, cols = self.input_grid
        if rows % tiles or cols % tiles:
            raise ValueError(f"tiles ({tiles} per side) must divide the towers' grid {self.input_grid}")
        self.tiles = tiles

    #: Dimensions of each tower's pixel values: [b, pictures, 3, H, W].
    pixel_dims = 5

    #: The preprocessing that cuts the tiles.
    preprocessor_class = TilePreprocessor

    @property
    def pictures(self) -> int:
        """Pictures per image through the towers: the whole image and its tiles."""
        return 1 + self.tiles * self.tiles

    @property
    def width(self) -> int:
        """2c: the global features' width plus the mosaic's."""
        return 2 * sum(self.widths.values())

    def _inputs(self, pixel_values: Any) -> list[torch.Tensor]:
        inputs = super()._inputs(pixel_values)
        for name, x in zip(self.names, inputs):
            shape = tuple(getattr(x, "shape", ()))
            if len(shape) != 5 or shape[1] != self.pictures:
                raise ValueError(
                    f"pixel_values[{name!r}] must be [b, {self.pictures}, 3, H, W] (the whole image, then "
                    f"{self.tiles}x{self.tiles} tiles; TilePreprocessor makes them), got {shape}"
                )
        return inputs

    def forward(self, pixel_values: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> torch.Tensor:
        inputs = self._inputs(pixel_values)
        b, p = inputs[0].shape[:2]
        per_tower = []
        for (name, tower), x in zip(self.towers.items(), inputs):
            try:
                per_tower.append(tower(x.reshape(b * p, *x.shape[2:])))  # [b*p, t, c_i]
            except ValueError as e:
                raise ValueError(f"pixel_values[{name!r}]: {e}") from None
        feats = torch.cat([f.to(per_tower[0].dtype) for f in per_tower], dim=-1)
        rows, cols = self.input_grid
        n = self.tiles
        feats = feats.view(b, p, rows * cols, feats.shape[-1])
        whole = feats[:, 0]
        r, s = rows // n, cols // n
        pooled = pool_grid(feats[:, 1:].reshape(b * n * n, rows * cols, -1), self.input_grid, (r, s))
        # [b, tile row, tile col, r, s, c] -> [b, tile row, r, tile col, s, c]: each tile where it was cut
        mosaic = pooled.view(b, n, n, r, s, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, rows * cols, -1)
        return torch.cat([whole, mosaic], dim=-1)

    def extra_repr(self) -> str:
        return f"grid={self.grid}, width={self.width}, tiles={self.tiles}"


@ENCODERS.register("visualrwkv-uhd-sam-dino-siglip")
def visualrwkv_uhd_encoder(*, tiles: int = 2, frozen: bool = True, device=None, dtype=None) -> TiledEncoder:
    """VisualRWKV-UHD's vision stack: the v7.00 / HD towers (DINOv2-L, SigLIP so400m, SAM-B) over the whole
    image and 2 x 2 tiles, ``[b, 1024, 6400]`` (random weights)."""
    towers = visualrwkv7_encoder(frozen=frozen, device=device, dtype=dtype).towers
    return TiledEncoder(dict(towers), tiles=tiles, frozen=frozen)


@ENCODERS.register("tiny-uhd-sam-dino-siglip")
def tiny_visualrwkv_uhd_encoder(*, tiles: int = 2, frozen: bool = True, device=None, dtype=None) -> TiledEncoder:
    """The UHD stack at test size: the tiny v7.00 towers (4 x 4 tokens, 144 wide) over the whole image and
    2 x 2 tiles, ``[b, 16, 288]``."""
    towers = tiny_visualrwkv7_encoder(frozen=frozen, device=device, dtype=dtype).towers
    return TiledEncoder(dict(towers), tiles=tiles, frozen=frozen)
