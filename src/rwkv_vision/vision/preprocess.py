"""Image preprocessing identical to the original VisualRWKV pipeline (transformers 4.x PIL ``CLIPImageProcessor``).

Steps: convert to RGB; resize so the shortest side is ``size`` (PIL bicubic; the long side is
``int(size * long / short)``, truncated, as transformers 4.x computes it; an image whose short side already
equals ``size`` is not resampled); centre-crop ``crop_size`` (offsets ``(dim - crop) // 2``); scale to
[0, 1]; normalise with the CLIP mean and std. No pad-to-square.

RGB conversion handles every PIL mode. The original opens images with ``Image.convert("RGB")``, which
drops alpha; that is the default (``alpha="drop"``). ``alpha="white"`` composites onto white instead (what
transformers >= 4.4x does). PIL's own conversion of 16/32-bit integer and float images clips to 0..255,
which turns most of them white or black, so those modes are rescaled to 8 bits first (``I;16*``: /257;
``I``: as 16-bit when any value exceeds 255; ``F``: values in [0, 1] are scaled by 255).

Bounded work: an image (or a file) of more than :func:`max_image_pixels` pixels is refused (PIL's
decompression-bomb limit, ``Image.MAX_IMAGE_PIXELS``, which the library never disables), as is a resize
whose aspect ratio exceeds ``MAX_ASPECT_RATIO`` or whose result would exceed ``MAX_RESIZE_PIXELS``: a
103-byte 1x5000 PNG gives a quick ``ImageError``, not a 336 x 1.7M resize. Files are opened with
:func:`open_image`, which checks the size in the header before decoding.

Shape legend: b batch; images come out as ``pixel_values [b, 3, crop, crop]``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from PIL import Image

from ..errors import ImageError

__all__ = [
    "ImagePreprocessor",
    "to_rgb",
    "open_image",
    "max_image_pixels",
    "CLIP_MEAN",
    "CLIP_STD",
    "MAX_ASPECT_RATIO",
    "MAX_RESIZE_PIXELS",
    "MAX_SIZE",
]

#: The widest aspect ratio (long side / short side) an image may have to be resized.
MAX_ASPECT_RATIO = 64.0
#: The most pixels a resize may produce (8192 x 8192).
MAX_RESIZE_PIXELS = 1 << 26
#: The largest ``size`` an ImagePreprocessor takes.
MAX_SIZE = 8192
#: PIL's default decompression-bomb limit, used should ``Image.MAX_IMAGE_PIXELS`` have been set to None.
_PIL_DEFAULT_MAX_PIXELS = int(1024 * 1024 * 1024 // 4 // 3)


def max_image_pixels() -> int:
    """The most pixels an image may have: PIL's ``Image.MAX_IMAGE_PIXELS`` (its decompression-bomb guard),
    or PIL's default where that was disabled."""
    limit = Image.MAX_IMAGE_PIXELS
    return int(limit) if limit else _PIL_DEFAULT_MAX_PIXELS


def _check_pixels(width: int, height: int, what: str) -> None:
    if width * height > max_image_pixels():
        raise ImageError(
            f"{what} is {width}x{height} = {width * height} pixels, more than the limit of {max_image_pixels()} "
            "(PIL.Image.MAX_IMAGE_PIXELS, the decompression-bomb guard)"
        )


def open_image(path: str | os.PathLike) -> Image.Image:
    """An image file, fully decoded, after its size (from the header, before decoding) was checked against
    :func:`max_image_pixels`; every failure is an :class:`ImageError` naming the file."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                _check_pixels(image.width, image.height, f"{str(path)!r}")
                image.load()
                return image
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds (OSError, SyntaxError, struct.error, ...)
        raise ImageError(
            f"{str(path)!r} cannot be opened as an image ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
        ) from None


CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


def _wide_to_8bit(image: Image.Image) -> Image.Image:
    a = np.asarray(image)
    if image.mode == "F":
        a = a.astype(np.float64)
        finite = a[np.isfinite(a)]
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        a = np.nan_to_num(a * scale, nan=0.0, posinf=255.0, neginf=0.0)
    elif image.mode.startswith("I;16") or (image.mode == "I" and a.size and a.max() > 255):
        a = a.astype(np.float64) / 257.0
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image, *, alpha: Literal["drop", "white"] = "drop") -> Image.Image:
    """Any PIL image as an RGB image (see the module notes for alpha and wide integer/float modes)."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL.Image.Image, got {type(image).__name__}")
    if alpha not in ("drop", "white"):
        raise ValueError(f"alpha must be 'drop' or 'white', got {alpha!r}")
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _wide_to_8bit(image)
    if image.mode == "La":  # premultiplied: PIL converts it only to LA
        image = image.convert("LA")
    has_alpha = "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info
    if alpha == "white" and has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


class ImagePreprocessor:
    """PIL image(s) -> ``pixel_values [b, 3, crop_size, crop_size]`` as VisualRWKV's CLIP expects.

    Args:
        size: target shortest side (336 for CLIP ViT-L/14-336).
        crop_size: centre-crop side; defaults to ``size``.
        mean, std: per-channel normalisation (CLIP's by default).
        resample: ``"bicubic"`` (original), ``"bilinear"``, ``"nearest"`` or ``"lanczos"``.
        alpha: ``"drop"`` (original ``convert("RGB")``) or ``"white"`` (composite transparency onto white).

    ``__call__(images, *, device=None, dtype=None)``: one PIL image or a list of them -> float tensor
    ``[b, 3, crop, crop]`` (float32 unless ``dtype``).
    """

    def __init__(
        self,
        size: int = 336,
        *,
        crop_size: int | None = None,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        resample: str = "bicubic",
        alpha: Literal["drop", "white"] = "drop",
    ):
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_SIZE:
            raise ValueError(f"size must be an int in 1..{MAX_SIZE}, got {size!r}")
        crop_size = size if crop_size is None else crop_size
        if not isinstance(crop_size, int) or isinstance(crop_size, bool) or crop_size < 1 or crop_size > size:
            raise ValueError(f"crop_size must be a positive int <= size={size}, got {crop_size!r}")
        for name, values in (("mean", mean), ("std", std)):
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != 3:
                raise ValueError(f"{name} must be a sequence of 3 numbers, got {values!r}")
            if not all(
                isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) and math.isfinite(v)
                for v in values
            ):
                raise ValueError(f"{name} must hold 3 finite numbers, got {list(values)!r}")
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if min(std) <= 0:
            raise ValueError(f"std must be > 0, got std={std}")
        if resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {resample!r}")
        if alpha not in ("drop", "white"):
            raise ValueError(f"alpha must be 'drop' or 'white', got {alpha!r}")
        self.size, self.crop_size, self.mean, self.std = size, crop_size, mean, std
        self.resample, self.alpha = resample, alpha

    def __repr__(self) -> str:
        return (
            f"ImagePreprocessor(size={self.size}, crop_size={self.crop_size}, mean={self.mean}, std={self.std}, "
            f"resample={self.resample!r}, alpha={self.alpha!r})"
        )

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the shortest-side resize, truncating the long side like transformers 4.x."""
        short, long = (width, height) if width <= height else (height, width)
        if short < 1:
            raise ImageError(f"an image of {width}x{height} pixels cannot be resized")
        if long / short > MAX_ASPECT_RATIO:
            raise ImageError(
                f"an image of {width}x{height} pixels has an aspect ratio of {long / short:.4g}, more than "
                f"{MAX_ASPECT_RATIO:g}: resizing its short side to {self.size} would make it {long * self.size // short} "
                "pixels long; crop it first"
            )
        if short == self.size:
            return width, height
        new_long = int(self.size * long / short)
        if new_long * self.size > MAX_RESIZE_PIXELS:
            raise ImageError(
                f"resizing a {width}x{height} image to short side {self.size} gives {new_long * self.size} pixels, "
                f"more than the limit of {MAX_RESIZE_PIXELS}"
            )
        return (self.size, new_long) if width <= height else (new_long, self.size)

    def process_one(self, image: Image.Image) -> np.ndarray:
        """One PIL image -> float32 array ``[3, crop, crop]``."""
        _check_pixels(image.width, image.height, "the image")
        self.resized_size(image.width, image.height)  # the resize limits, before any conversion
        image = to_rgb(image, alpha=self.alpha)
        w, h = self.resized_size(*image.size)
        if (w, h) != image.size:
            # reducing_gap=None: the exact (slow) filter, as the original processor calls PIL
            image = image.resize((w, h), resample=_RESAMPLE[self.resample], reducing_gap=None)
        c = self.crop_size
        top, left = (h - c) // 2, (w - c) // 2
        a = np.asarray(image, dtype=np.uint8)[top : top + c, left : left + c]
        a = a.astype(np.float32) * np.float32(1.0 / 255.0)
        a = (a - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(a.transpose(2, 0, 1))

    def __call__(
        self, images: Image.Image | Sequence[Image.Image], *, device=None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        if isinstance(images, Image.Image):
            images = [images]
        elif isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
            raise TypeError(
                f"images must be a PIL.Image.Image or a list of them, got {type(images).__name__}"
                + (" (open files with PIL.Image.open first)" if isinstance(images, (str, bytes)) else "")
            )
        if len(images) == 0:
            raise ValueError("images must not be empty")
        for j, im in enumerate(images):
            if not isinstance(im, Image.Image):
                raise TypeError(f"images[{j}] must be a PIL.Image.Image, got {type(im).__name__}")
            if im.width < 1 or im.height < 1:
                raise ValueError(f"images[{j}] is empty ({im.width}x{im.height})")
        out = torch.from_numpy(np.stack([self.process_one(im) for im in images]))
        return out.to(device=device, dtype=dtype if dtype is not None else torch.float32)
