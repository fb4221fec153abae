"""Preprocessing for multi-tower encoders: one PIL image -> one input per tower.

VisualRWKV v7.00 builds each tower's transform from timm's eval transform with the resize swapped:
``Compose([Resize((S, S), interpolation), ToTensor(), Normalize(mean, std)])`` — a **resize to a square without
crop** (the aspect ratio is not kept), PIL's filter (bicubic for all three), ``/ 255``, then
``(x - mean) / std`` in float32. Sizes and statistics (:func:`visualrwkv7_preprocessor`):

======  ======  ================================================  ======================================
tower   size    mean                                              std
======  ======  ================================================  ======================================
dino    448     ImageNet (0.485, 0.456, 0.406)                    (0.229, 0.224, 0.225)
siglip  448     (0.5, 0.5, 0.5)                                   (0.5, 0.5, 0.5)
sam     1024    DINOv2's (ImageNet) and DINOv2's interpolation,   the same
                as the official code wires it
======  ======  ================================================  ======================================

Images are converted to RGB once (:func:`~rwkv_vision.vision.preprocess.to_rgb`, alpha dropped as the
official ``Image.convert("RGB")``), with the bounds and errors of
:class:`~rwkv_vision.vision.preprocess.ImagePreprocessor`: an image over :func:`max_image_pixels` pixels is an
``ImageError``, a non-image a ``TypeError``, an empty list or a 0-pixel image a ``ValueError``.

Shape legend: b batch; each tower's input is ``[b, 3, H_i, W_i]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from .preprocess import _RESAMPLE, MAX_SIZE, _check_pixels, to_rgb
from .spatial import as_grid

__all__ = [
    "SquareResize",
    "MultiImagePreprocessor",
    "visualrwkv7_preprocessor",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SIGLIP_MEAN",
    "SIGLIP_STD",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
SIGLIP_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
SIGLIP_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)


def _stats(name: str, values: Any) -> tuple[float, float, float]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != 3:
        raise ValueError(f"{name} must be a sequence of 3 numbers, got {values!r}")
    if not all(
        isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) and math.isfinite(v)
        for v in values
    ):
        raise ValueError(f"{name} must hold 3 finite numbers, got {list(values)!r}")
    return tuple(float(v) for v in values)


def _check_images(images: Any) -> list[Image.Image]:
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
        raise TypeError(
            f"images must be a PIL.Image.Image or a list of them, got {type(images).__name__}"
            + (
                " (open files with rwkv_vision.vision.preprocess.open_image first)"
                if isinstance(images, (str, bytes))
                else ""
            )
        )
    if len(images) == 0:
        raise ValueError("images must not be empty")
    for j, im in enumerate(images):
        if not isinstance(im, Image.Image):
            raise TypeError(f"images[{j}] must be a PIL.Image.Image, got {type(im).__name__}")
        if im.width < 1 or im.height < 1:
            raise ValueError(f"images[{j}] is empty ({im.width}x{im.height})")
    return list(images)


class SquareResize:
    """One tower's transform: resize to ``size`` without crop, scale to [0, 1], normalise.

    Args:
        size: output ``(H, W)`` or an int for a square (448, 1024, ...), at most ``MAX_SIZE``.
        mean, std: per-channel statistics.
        resample: PIL filter, ``"bicubic"`` (official), ``"bilinear"``, ``"nearest"`` or ``"lanczos"``.

    ``process_one(rgb_image) -> float32 array [3, H, W]``.
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        *,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        resample: str = "bicubic",
    ):
        h, w = as_grid(size, "size")
        if max(h, w) > MAX_SIZE:
            raise ValueError(f"size must be at most {MAX_SIZE} per side, got {size!r}")
        self.size = (h, w)
        self.mean, self.std = _stats("mean", mean), _stats("std", std)
        if min(self.std) <= 0:
            raise ValueError(f"std must be > 0, got std={self.std}")
        if resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {resample!r}")
        self.resample = resample

    def __repr__(self) -> str:
        return f"SquareResize(size={self.size}, mean={self.mean}, std={self.std}, resample={self.resample!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SquareResize) and repr(self) == repr(other)

    def process_one(self, image: Image.Image) -> np.ndarray:
        """An RGB PIL image -> float32 ``[3, H, W]``."""
        h, w = self.size
        if image.size != (w, h):
            # torchvision's Resize on a PIL image is PIL's resize with the default (exact) reducing_gap
            image = image.resize((w, h), resample=_RESAMPLE[self.resample])
        a = np.asarray(image, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
        a = (a - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(a.transpose(2, 0, 1))


class MultiImagePreprocessor:
    """PIL image(s) -> ``{tower: pixel_values [b, 3, H_i, W_i]}``, one :class:`SquareResize` per tower.

    Args:
        transforms: tower name -> :class:`SquareResize`, in the encoder's tower order.
        alpha: ``"drop"`` (official ``convert("RGB")``) or ``"white"`` (composite transparency onto white).

    ``__call__(images, *, device=None, dtype=None)``: one image or a list -> a dict of float tensors (float32
    unless ``dtype``), the keys :class:`~rwkv_vision.vision.multi_encoder.MultiEncoder` takes.
    """

    def __init__(self, transforms: Mapping[str, SquareResize], *, alpha: Literal["drop", "white"] = "drop"):
        if not isinstance(transforms, Mapping) or not transforms:
            raise ValueError(f"transforms must be a non-empty mapping tower name -> SquareResize, got {transforms!r}")
        for name, t in transforms.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"transforms: tower names must be identifiers, got {name!r}")
            if not isinstance(t, SquareResize):
                raise TypeError(f"transforms[{name!r}] must be a SquareResize, got {type(t).__name__}")
        if alpha not in ("drop", "white"):
            raise ValueError(f"alpha must be 'drop' or 'white', got {alpha!r}")
        self.transforms = dict(transforms)
        self.alpha = alpha

    def __repr__(self) -> str:
        return f"MultiImagePreprocessor({self.transforms!r}, alpha={self.alpha!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MultiImagePreprocessor) and repr(self) == repr(other)

    @property
    def names(self) -> list[str]:
        return list(self.transforms)

    def process_one(self, image: Image.Image) -> dict[str, np.ndarray]:
        """One PIL image -> ``{tower: float32 [3, H_i, W_i]}``."""
        _check_pixels(image.width, image.height, "the image")
        rgb = to_rgb(image, alpha=self.alpha)
        return {name: t.process_one(rgb) for name, t in self.transforms.items()}

    def __call__(
        self, images: Image.Image | Sequence[Image.Image], *, device=None, dtype: torch.dtype | None = None
    ) -> dict[str, torch.Tensor]:
        per_image = [self.process_one(im) for im in _check_images(images)]
        dtype = dtype if dtype is not None else torch.float32
        return {
            name: torch.from_numpy(np.stack([p[name] for p in per_image])).to(device=device, dtype=dtype)
            for name in self.transforms
        }

    @classmethod
    def for_encoder(cls, encoder: Any, *, alpha: Literal["drop", "white"] = "drop") -> MultiImagePreprocessor:
        """A preprocessor for a :class:`~rwkv_vision.vision.multi_encoder.MultiEncoder`: each tower's input size,
        and the mean, std and interpolation of its timm model's pretrained config (ImageNet / bicubic where
        timm has none)."""
        towers = getattr(encoder, "towers", None)
        if not isinstance(towers, Mapping) and not hasattr(towers, "items"):
            raise TypeError(f"encoder must be a MultiEncoder, got {type(encoder).__name__}")
        out = {}
        for name, tower in towers.items():
            cfg = getattr(getattr(tower, "model", None), "pretrained_cfg", None) or {}
            resample = cfg.get("interpolation", "bicubic")
            out[name] = SquareResize(
                tuple(tower.image_size),
                mean=cfg.get("mean", IMAGENET_MEAN),
                std=cfg.get("std", IMAGENET_STD),
                resample=resample if resample in _RESAMPLE else "bicubic",
            )
        return cls(out, alpha=alpha)


def visualrwkv7_preprocessor(
    *, dino: int = 448, siglip: int = 448, sam: int = 1024, alpha: Literal["drop", "white"] = "drop"
) -> MultiImagePreprocessor:
    """VisualRWKV v7.00's preprocessing: ``dino`` 448 (ImageNet statistics), ``siglip`` 448 (0.5 / 0.5),
    ``sam`` 1024 (DINOv2's statistics, as the official code wires it); bicubic, no crop. Sizes can be changed
    for smaller test towers."""
    return MultiImagePreprocessor(
        {
            "dino": SquareResize(dino, mean=IMAGENET_MEAN, std=IMAGENET_STD),
            "siglip": SquareResize(siglip, mean=SIGLIP_MEAN, std=SIGLIP_STD),
            "sam": SquareResize(sam, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        },
        alpha=alpha,
    )
