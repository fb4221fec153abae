"""ImagePreprocessor: the original CLIP pipeline, every PIL mode, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rwkv_vision.vision import CLIP_MEAN, CLIP_STD, ImagePreprocessor, to_rgb

MEAN = np.array(CLIP_MEAN).reshape(3, 1, 1)
STD = np.array(CLIP_STD).reshape(3, 1, 1)


def random_rgb(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def reference(image: Image.Image, size: int) -> np.ndarray:
    """float64 pipeline written from the description: shortest side -> size (long side truncated),
    PIL bicubic, centre crop, /255, normalise."""
    w, h = image.size
    if min(w, h) != size:
        if w <= h:
            w, h = size, int(size * h / w)
        else:
            w, h = int(size * w / h), size
        image = image.resize((w, h), Image.Resampling.BICUBIC, reducing_gap=None)
    top, left = (h - size) // 2, (w - size) // 2
    a = np.asarray(image, dtype=np.float64)[top : top + size, left : left + size].transpose(2, 0, 1)
    return (a / 255.0 - MEAN) / STD


SIZES = [(336, 336), (500, 375), (375, 500), (337, 1000), (1000, 337), (100, 50), (640, 481), (400, 336)]


def test_matches_float64_reference_on_several_aspect_ratios():
    pre = ImagePreprocessor(336)
    images = [random_rgb(w, h, seed=j) for j, (w, h) in enumerate(SIZES)]
    out = pre(images)
    assert out.shape == (len(SIZES), 3, 336, 336) and out.dtype == torch.float32
    ref = np.stack([reference(im, 336) for im in images])
    assert np.abs(out.numpy() - ref).max() < 1e-5


def test_matches_transformers_pil_clip_processor():
    transformers = pytest.importorskip("transformers")
    # transformers 5: the PIL backend is CLIPImageProcessorPil (its default class uses torchvision and
    # differs); transformers 4.x: CLIPImageProcessor is PIL-based.
    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    hf = cls(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    pre = ImagePreprocessor(224)
    for j, (w, h) in enumerate([(224, 224), (500, 375), (225, 700), (90, 60), (300, 224)]):
        im = random_rgb(w, h, seed=10 + j)
        expected = hf(im, return_tensors="np")["pixel_values"]
        diff = np.abs(pre(im).numpy() - expected) * STD.reshape(1, 3, 1, 1)  # back in [0, 1] units
        assert diff.max() <= 1 / 255, (w, h)


def test_crop_offsets_and_no_resample_at_target_size():
    im = random_rgb(400, 336)
    out = ImagePreprocessor(336)(im)[0].numpy()
    a = np.asarray(im, dtype=np.float64)[:, 32:368].transpose(2, 0, 1)
    assert np.abs(out - (a / 255 - MEAN) / STD).max() < 1e-5
    assert ImagePreprocessor(336).resized_size(337, 1000) == (336, 997)  # int() truncation


@pytest.mark.parametrize(
    "mode",
    ["1", "L", "LA", "La", "P", "PA", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "HSV", "LAB", "I", "I;16", "I;16B", "F"],
)
def test_every_pil_mode_converts(mode):
    base = random_rgb(40, 30)
    try:
        im = base.convert(mode)
    except ValueError:
        im = Image.new(mode, (40, 30))
    out = ImagePreprocessor(28)(im)
    assert out.shape == (1, 3, 28, 28) and torch.isfinite(out).all()


def test_mode_specific_semantics():
    gray = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16))
    rgb = np.asarray(to_rgb(gray))
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == np.asarray(gray)).all()
    # 16-bit: full range maps to full range instead of PIL's clipping to 255
    wide = Image.fromarray(np.arange(256, dtype=np.uint16).reshape(16, 16) * 257)
    assert wide.mode.startswith("I;16")
    assert (np.asarray(to_rgb(wide))[..., 0] == np.asarray(gray)).all()
    floats = Image.fromarray(np.arange(256, dtype=np.float32).reshape(16, 16) / 255)
    assert (np.asarray(to_rgb(floats))[..., 0] == np.asarray(gray)).all()
    # alpha: dropped by default (the original convert("RGB")), or composited onto white
    rgba = Image.new("RGBA", (2, 2), (10, 20, 30, 0))
    assert np.asarray(to_rgb(rgba))[0, 0].tolist() == [10, 20, 30]
    assert np.asarray(to_rgb(rgba, alpha="white"))[0, 0].tolist() == [255, 255, 255]
    p = Image.new("P", (2, 2), 0)
    p.putpalette([0, 0, 0, 200, 100, 50])
    p.info["transparency"] = 0
    assert np.asarray(to_rgb(p, alpha="white"))[0, 0].tolist() == [255, 255, 255]
    assert np.asarray(to_rgb(p))[0, 0].tolist() == [0, 0, 0]


def test_device_dtype_and_errors():
    out = ImagePreprocessor(14)(random_rgb(20, 20), dtype=torch.float64, device="cpu")
    assert out.dtype == torch.float64
    pre = ImagePreprocessor(14)
    with pytest.raises(TypeError, match="images must be a PIL.Image.Image or a list of them, got str"):
        pre("cat.jpg")
    with pytest.raises(TypeError, match="images must be a PIL.Image.Image or a list of them, got ndarray"):
        pre(np.zeros((14, 14, 3)))
    with pytest.raises(TypeError, match=r"images\[1\] must be a PIL.Image.Image, got Tensor"):
        pre([random_rgb(14, 14), torch.zeros(3, 14, 14)])
    with pytest.raises(ValueError, match="images must not be empty"):
        pre([])
    with pytest.raises(ValueError, match="images\\[0\\] is empty"):
        pre(Image.new("RGB", (0, 5)))
    with pytest.raises(ValueError, match="crop_size must be a positive int <= size=14"):
        ImagePreprocessor(14, crop_size=20)
    with pytest.raises(ValueError, match="resample must be one of"):
        ImagePreprocessor(14, resample="area")
