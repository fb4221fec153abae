"""Multi-tower preprocessing against the official v7.00 recipe, rebuilt here the way the official code builds
it: timm's eval transform for each tower's pretrained config, its Resize swapped for a square Resize, then
its ToTensor and Normalize (torchvision)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rwkv_vision.errors import ImageError
from rwkv_vision.vision import (
    MultiImagePreprocessor,
    SquareResize,
    tiny_visualrwkv7_encoder,
    to_rgb,
    visualrwkv7_preprocessor,
)


@pytest.fixture(scope="module")
def official():
    """The official SamDinoSigLIPViTBackbone transforms (its __init__, re-run on meta-device models)."""
    import timm
    from torchvision.transforms import Compose, Resize

    with torch.device("meta"):
        dino = timm.create_model("vit_large_patch14_reg4_dinov2.lvd142m", pretrained=False, num_classes=0, img_size=448)
        siglip = timm.create_model("vit_so400m_patch14_siglip_384", pretrained=False, num_classes=0, img_size=448)
    out = {}
    cfgs = {}
    for name, model in (("dino", dino), ("siglip", siglip)):
        cfg = timm.data.resolve_model_data_config(model)
        cfg["input_size"] = (3, 448, 448)
        cfgs[name] = timm.data.create_transform(**cfg, is_training=False)
    for name, size, base in (("dino", 448, "dino"), ("siglip", 448, "siglip"), ("sam", 1024, "dino")):
        t = cfgs[base]
        out[name] = Compose([Resize((size, size), interpolation=t.transforms[0].interpolation), *t.transforms[2:]])
    return out


def images():
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8), "RGB")
    big = Image.fromarray(rng.integers(0, 256, (1100, 600, 3), dtype=np.uint8), "RGB")
    square = Image.fromarray(rng.integers(0, 256, (448, 448, 3), dtype=np.uint8), "RGB")
    gray = Image.fromarray(rng.integers(0, 256, (20, 31), dtype=np.uint8), "L")
    rgba = Image.fromarray(rng.integers(0, 256, (25, 19, 4), dtype=np.uint8), "RGBA")
    return [rgb, big, square, gray, rgba]


def test_matches_the_official_transforms_exactly(official):
    pre = visualrwkv7_preprocessor()
    ims = images()
    out = pre(ims)
    assert set(out) == {"dino", "siglip", "sam"}
    assert out["dino"].shape == (5, 3, 448, 448) and out["sam"].shape == (5, 3, 1024, 1024)
    for j, im in enumerate(ims):
        rgb = im.convert("RGB")  # the official Image.open(...).convert("RGB")
        for name in ("dino", "siglip", "sam"):
            want = official[name](rgb)
            assert want.dtype == torch.float32
            assert torch.allclose(out[name][j], want, rtol=0, atol=1e-6), (j, name)


def test_statistics_and_sizes():
    pre = visualrwkv7_preprocessor()
    assert pre.names == ["dino", "siglip", "sam"]
    assert pre.transforms["dino"].mean == (0.485, 0.456, 0.406)
    assert pre.transforms["siglip"].mean == (0.5, 0.5, 0.5) and pre.transforms["siglip"].std == (0.5, 0.5, 0.5)
    assert pre.transforms["sam"].mean == pre.transforms["dino"].mean and pre.transforms["sam"].size == (1024, 1024)
    white = Image.new("RGB", (5, 7), (255, 255, 255))
    out = pre(white)
    assert torch.allclose(out["siglip"], torch.ones_like(out["siglip"]))
    assert torch.allclose(out["dino"][0, 0], torch.full((448, 448), (1 - 0.485) / 0.229))


def test_for_encoder_feeds_the_encoder():
    enc = tiny_visualrwkv7_encoder()
    pre = MultiImagePreprocessor.for_encoder(enc)
    assert pre.transforms["dino"].size == (56, 56) and pre.transforms["sam"].size == (128, 128)
    assert pre.transforms["siglip"].mean == (0.5, 0.5, 0.5) and pre.transforms["dino"].mean == (0.485, 0.456, 0.406)
    assert pre.transforms["sam"].mean == (0.485, 0.456, 0.406)
    px = pre(images()[:2], dtype=torch.float64)
    assert px["dino"].dtype == torch.float64
    assert enc(px).shape == (2, 16, 144)


def test_odd_modes_convert_like_to_rgb(official):
    pre = visualrwkv7_preprocessor(dino=32, siglip=32, sam=64)
    a16 = (np.arange(12 * 9, dtype=np.uint16).reshape(12, 9) * 600).astype(np.uint16)
    odd = [
        Image.fromarray(a16),
        Image.fromarray(np.linspace(0, 1, 80, dtype=np.float32).reshape(8, 10)),
        Image.new("P", (9, 4), 3),
        Image.new("LA", (6, 5), (100, 20)),
        Image.new("CMYK", (4, 6), (10, 20, 30, 40)),
        Image.new("1", (7, 7), 1),
    ]
    assert [im.mode for im in odd][:2] == ["I;16", "F"]
    out = pre(odd)
    for j, im in enumerate(odd):
        want = pre.transforms["dino"].process_one(to_rgb(im))
        assert np.array_equal(out["dino"][j].numpy(), want)
        assert torch.isfinite(out["sam"][j]).all()


def test_bad_inputs():
    pre = visualrwkv7_preprocessor(dino=32, siglip=32, sam=64)
    with pytest.raises(TypeError, match="open_image"):
        pre("photo.jpg")
    with pytest.raises(TypeError, match=r"images\[1\]"):
        pre([Image.new("RGB", (4, 4)), np.zeros((4, 4, 3))])
    with pytest.raises(ValueError, match="must not be empty"):
        pre([])
    with pytest.raises(ValueError, match="empty"):
        pre([Image.new("RGB", (0, 4))])
    with pytest.raises(ValueError, match="size"):
        SquareResize(0)
    with pytest.raises(ValueError, match="at most"):
        SquareResize(100_000)
    with pytest.raises(ValueError, match="std must be > 0"):
        SquareResize(8, std=(1, 0, 1))
    with pytest.raises(ValueError, match="mean"):
        SquareResize(8, mean=(1, 2))
    with pytest.raises(ValueError, match="resample"):
        SquareResize(8, resample="cubic")
    with pytest.raises(TypeError, match="SquareResize"):
        MultiImagePreprocessor({"dino": "resize"})
    with pytest.raises(ValueError, match="alpha"):
        MultiImagePreprocessor({"dino": SquareResize(8)}, alpha="black")


def test_huge_image_is_refused(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    pre = visualrwkv7_preprocessor(dino=32, siglip=32, sam=64)
    with pytest.raises(ImageError, match="more than the limit"):
        pre(Image.new("RGB", (40, 40)))
