"""Preprocessing for :class:`~rwkv_vision.vision.tiles.TiledEncoder`: the whole image, then its tiles.

As VisualRWKV-UHD's ``split_image_into_tiles(image, 2)`` (``src/utils.py`` of ``VisualRWKV-v6/VisualRWKV-UHD``,
used by its ``evaluate.py`` and ``dataset.py``): on the RGB image of ``W x H`` pixels, each tile is
``W // n`` wide and ``H // n`` high, cut at ``(j * (W // n), i * (H // n))`` for rows ``i`` and columns ``j``,
row-major (left top, right top, left bottom, right bottom); an odd last column or row of pixels is in no tile,
as there. The whole image and every tile then go through the same per-tower transforms
(:class:`~rwkv_vision.vision.multi_preprocess.SquareResize`: resize to the tower's square, no crop) and are
stacked whole image first.

Bounds and errors are those of :class:`~rwkv_vision.vision.multi_preprocess.MultiImagePreprocessor`, plus a
``ValueError`` for an image too small to cut (fewer than ``n`` pixels a side).

Shape legend: b batch (images); each tower's input is ``[b, 1 + n*n, 3, H_i, W_i]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from PIL import Image

from .multi_preprocess import MultiImagePreprocessor, SquareResize
from .preprocess import _check_pixels, to_rgb

__all__ = ["TilePreprocessor", "split_into_tiles", "MAX_TILES"]

#: Tiles per side at most (n x n tiles + 1 global picture go through the towers per image).
MAX_TILES = 8


def split_into_tiles(image: Image.Image, tiles: int) -> list[Image.Image]:
    """The ``tiles x tiles`` tiles of ``image``, row-major, each ``W // tiles`` by ``H // tiles`` pixels."""
    width, height = image.size
    tw, th = width // tiles, height // tiles
    if tw < 1 or th < 1:
        raise ValueError(f"the image ({width}x{height}) is too small to cut into {tiles}x{tiles} tiles")
    return [image.crop((j * tw, i * th, j * tw + tw, i * th + th)) for i in range(tiles) for j in range(tiles)]


class TilePreprocessor(MultiImagePreprocessor):
    """PIL image(s) -> ``{tower: [b, 1 + n*n, 3, H_i, W_i]}``: the whole image, then its ``n x n`` tiles.

    Args:
        transforms: tower name -> :class:`SquareResize`, in the encoder's tower order.
        tiles: tiles per side, ``n`` (VisualRWKV-UHD: 2).
        alpha: ``"drop"`` (official ``convert("RGB")``) or ``"white"``.
    """

    def __init__(
        self, transforms: Mapping[str, SquareResize], *, tiles: int = 2, alpha: Literal["drop", "white"] = "drop"
    ):
        super().__init__(transforms, alpha=alpha)
        if not isinstance(tiles, int) or isinstance(tiles, bool) or not 1 <= tiles <= MAX_TILES:
            raise ValueError(f"tiles must be an int in 1..{MAX_TILES} (tiles per side), got {tiles!r}")
        self.tiles = tiles

    def __repr__(self) -> str:
        return f"TilePreprocessor({self.transforms!r}, tiles={self.tiles}, alpha={self.alpha!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TilePreprocessor) and repr(self) == repr(other)

    def process_one(self, image: Image.Image) -> dict[str, np.ndarray]:
        """One PIL image -> ``{tower: float32 [1 + n*n, 3, H_i, W_i]}``."""
        _check_pixels(image.width, image.height, "the image")
        rgb = to_rgb(image, alpha=self.alpha)
        pictures = [rgb, *split_into_tiles(rgb, self.tiles)]
        return {name: np.stack([t.process_one(p) for p in pictures]) for name, t in self.transforms.items()}

    @classmethod
    def for_encoder(cls, encoder: Any, *, alpha: Literal["drop", "white"] = "drop") -> TilePreprocessor:
        """The towers' transforms as :meth:`MultiImagePreprocessor.for_encoder`, with the encoder's ``tiles``."""
        plain = MultiImagePreprocessor.for_encoder(encoder, alpha=alpha)
        return cls(plain.transforms, tiles=getattr(encoder, "tiles", 2), alpha=alpha)
