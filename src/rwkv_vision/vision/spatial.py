"""Rearranging a grid of patch features: lossless space-to-depth and pooling to a smaller grid.

Shape legend: b batch, t time (tokens of a row-major grid, rows*cols), c channels.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["space_to_depth", "pool_grid", "as_grid"]


def as_grid(value: Any, name: str) -> tuple[int, int]:
    """``(rows, cols)`` from an int (a square) or a pair of positive ints."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value, value
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        return int(value[0]), int(value[1])
    raise ValueError(f"{name} must be a positive int or (rows, cols) of positive ints, got {value!r}")


def space_to_depth(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """``[b, c, H, W] -> [b, c * f * f, H / f, W / f]``: every ``f x f`` block of positions becomes one position.

    Output channel ``k * f*f + dy * f + dx`` holds input channel ``k`` at offset ``(dy, dx)`` of the block,
    VisualRWKV v7.00's ``LosslessDownSampler`` order (which hard-codes a 64 x 64 input; this takes any
    multiple of ``f``).
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a tensor [b, c, H, W], got {getattr(x, 'shape', type(x).__name__)}")
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
        raise ValueError(f"factor must be a positive int, got {factor!r}")
    b, c, h, w = x.shape
    if h % factor or w % factor:
        raise ValueError(f"x is {h}x{w}, not divisible by factor={factor}")
    x = x.reshape(b, c, h // factor, factor, w // factor, factor)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(b, c * factor * factor, h // factor, w // factor)


def pool_grid(x: torch.Tensor, grid: tuple[int, int], size: int | tuple[int, int]) -> torch.Tensor:
    """Average-pool the tokens of a row-major ``grid`` to a ``size`` grid, row-major again.

    ``x [b, rows*cols, c] -> [b, r*s, c]`` with ``(r, s) = size``: the mean of each block of the grid when
    ``size`` divides it, torch's adaptive average pooling otherwise (what VisualRWKV v7.00's
    ``nn.AdaptiveAvgPool2d`` does). A ``size`` equal to ``grid`` returns ``x`` unchanged.
    """
    rows, cols = as_grid(grid, "grid")
    out = as_grid(size, "size")
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[1] != rows * cols:
        raise ValueError(
            f"x must be a tensor [b, {rows * cols}, c] for a {rows}x{cols} grid, got "
            f"{getattr(x, 'shape', type(x).__name__)}"
        )
    if out[0] > rows or out[1] > cols:
        raise ValueError(f"size {out} must not exceed the grid {(rows, cols)}")
    if out == (rows, cols):
        return x
    b, _, c = x.shape
    image = x.transpose(1, 2).reshape(b, c, rows, cols)
    return F.adaptive_avg_pool2d(image, out).flatten(2).transpose(1, 2)
