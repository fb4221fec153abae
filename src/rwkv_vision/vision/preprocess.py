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

Shape legend: b batch; images come out as ``pixel_values [b, 3, crop, crop]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from PIL import Image

__all__ = ["ImagePreprocessor", "to_rgb", "CLIP_MEAN", "CLIP_STD"]

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
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        crop_size = size if crop_size is None else crop_size
        if not isinstance(crop_size, int) or crop_size < 1 or crop_size > size:
            raise ValueError(f"crop_size must be a positive int <= size={size}, got {crop_size!r}")
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std must have 3 entries (std > 0), got mean={mean}, std={std}")
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
        if short == self.size:
            return width, height
        new_long = int(self.size * long / short)
        return (self.size, new_long) if width <= height else (new_long, self.size)

    def process_one(self, image: Image.Image) -> np.ndarray:
        """One PIL image -> float32 array ``[3, crop, crop]``."""
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
