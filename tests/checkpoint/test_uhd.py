"""VisualRWKV-UHD (v0613) files: strict loading, the official forward and generate, the tiling, saving back.

Tiny random files in the released key layout (tiny towers of the released architectures, an x060 RWKV-6,
``proj.proj`` [c, 2w], ``proj.gate`` [c, c], ``proj.o_proj`` [c, c]) against the float64 restatement of the
official UHD code in :mod:`reference.visualrwkv_uhd_ref`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from rwkv_vision.checkpoint.families import detect_family, visualrwkv_uhd_from_official_state_dict
from rwkv_vision.errors import CheckpointError, ImageError, StateDictError
from rwkv_vision.image_tokens import IMAGE_TOKEN_INDEX
from rwkv_vision.scan import BiDir
from rwkv_vision.vision.convert_v7 import encoder_to_v7_state_dict
from rwkv_vision.vision.multi_preprocess import visualrwkv7_preprocessor
from rwkv_vision.vision.relu_projector import ReLUProjector
from rwkv_vision.vision.tile_preprocess import TilePreprocessor
from rwkv_vision.vision.tiles import TiledEncoder, tiny_visualrwkv_uhd_encoder

from reference.rwkv6_ref import random_official_state_dict
from reference.visualrwkv7_ref import relative_rms_error
from reference.visualrwkv_uhd_ref import fuse_features, official_tiles, uhd_generate, uhd_logits

PROMPT = [24, 59, 33, IMAGE_TOKEN_INDEX, 11, 42, 261, 100, 7, 59]


@pytest.fixture(scope="module")
def checkpoint():
    g = torch.Generator().manual_seed(0)
    sd = {}
    for key, spec in encoder_to_v7_state_dict(tiny_visualrwkv_uhd_encoder(device="meta")).items():
        fan_in = spec.shape[1:].numel() if spec.dim() > 1 else 1
        sd[key] = torch.randn(spec.shape, generator=g) * (fan_in**-0.5 if spec.dim() > 1 else 0.1)
        if key.endswith(("norm1.weight", "norm2.weight", "norm.weight", ".1.weight", ".3.weight", "gamma")):
            sd[key] = sd[key] + 1.0
    lm = random_official_state_dict(n_layer=3, n_embd=32, head_size=8, dim_ffn=64, vocab_size=300, seed=2)
    sd |= {"rwkv." + k: v for k, v in lm.items()}
    sd["proj.proj.weight"] = torch.randn(32, 288, generator=g) / 288**0.5
    sd["proj.gate.weight"] = torch.randn(32, 32, generator=g) / 32**0.5
    sd["proj.o_proj.weight"] = torch.randn(32, 32, generator=g) / 32**0.5
    return sd


@pytest.fixture(scope="module")
def model(checkpoint):
    return visualrwkv_uhd_from_official_state_dict(checkpoint, dtype=torch.float64).eval()


@pytest.fixture(scope="module")
def pixels(model):
    g = torch.Generator().manual_seed(7)
    sizes = model.encoder.image_sizes
    return {n: torch.randn(1, 5, 3, *size, generator=g, dtype=torch.float64) for n, size in sizes.items()}


def _picture(width=37, height=29, seed=1):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_uhd_file_matches_the_official_uhd_forward_and_generate(checkpoint, model, pixels):
    """Global + 2 x 2 tiles through the towers, fused as fuse_image_features, o_proj(relu(proj(x))), BiDir,
    image first, no padding: logits and the official re-run generate against the float64 restatement."""
    assert detect_family(checkpoint).name == "uhd"
    assert isinstance(model.encoder, TiledEncoder) and isinstance(model.proj, ReLUProjector)
    assert isinstance(model.scan, BiDir) and model.pad_to_multiple is None and model.image_tokens == 16
    with torch.no_grad():
        per_tower = {n: model.encoder.towers[n](pixels[n][0]) for n in model.encoder.names}  # [5, 16, w_i]
        fused = fuse_features(per_tower["dino"], per_tower["siglip"], per_tower["sam"])
        assert relative_rms_error(model.encoder(pixels)[0], fused) < 1e-12
        got = model(torch.tensor([PROMPT]), pixels).logits[0]
    assert relative_rms_error(got, uhd_logits(checkpoint, PROMPT, fused)) < 1e-6  # RWKV-6 decays in float32
    out = model.generate(torch.tensor([PROMPT]), pixels, official_rerun=True, max_new_tokens=5, stop_tokens=(261,))
    assert out.tokens == [uhd_generate(checkpoint, PROMPT, fused, max_new_tokens=5)]


def test_the_gate_is_held_but_never_read(checkpoint, model, pixels):
    """The official UHD MLPWithContextGating builds ``gate`` and comments out its use: changing it changes
    nothing, while the tiles' features do change the answer (the mosaic is read)."""
    other = dict(checkpoint)
    other["proj.gate.weight"] = torch.randn(32, 32)
    changed = visualrwkv_uhd_from_official_state_dict(other, dtype=torch.float64).eval()
    tiles_moved = {k: v.clone() for k, v in pixels.items()}
    for v in tiles_moved.values():
        v[:, 1:] = v[:, [2, 1, 4, 3]]  # swap left and right tiles
    with torch.no_grad():
        a = model(torch.tensor([PROMPT]), pixels).logits
        assert torch.equal(a, changed(torch.tensor([PROMPT]), pixels).logits)
        assert relative_rms_error(model(torch.tensor([PROMPT]), tiles_moved).logits, a) > 1e-6


def test_tiles_are_cut_resized_and_stacked_as_the_official_code():
    """The whole image, then W//2 x H//2 tiles row-major (an odd last pixel column / row in no tile), each
    resized to every tower's square: exactly the official stack, at odd sizes."""
    pre = TilePreprocessor(visualrwkv7_preprocessor(dino=56, siglip=42, sam=64).transforms)
    plain = visualrwkv7_preprocessor(dino=56, siglip=42, sam=64)
    for width, height in ((37, 29), (64, 7), (2, 2)):
        image = _picture(width, height)
        got = pre([image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
        for j, im in enumerate([image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]):
            for name in plain.names:
                want = np.stack([plain.process_one(p)[name] for p in [im, *official_tiles(im)]])
                assert got[name].shape == (2, 5, 3, *plain.transforms[name].size)
                np.testing.assert_array_equal(got[name][j].numpy(), want)


def test_tile_preprocessor_bounds_and_errors(monkeypatch):
    pre = TilePreprocessor(visualrwkv7_preprocessor(dino=28, siglip=28, sam=32).transforms)
    with pytest.raises(ValueError, match="too small to cut into 2x2 tiles"):
        pre(_picture(1, 5))
    with pytest.raises(TypeError, match="PIL.Image.Image"):
        pre("picture.png")
    with pytest.raises(ValueError, match="must not be empty"):
        pre([])
    with pytest.raises(ValueError, match="tiles must be an int in 1..8"):
        TilePreprocessor(pre.transforms, tiles=0)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageError, match="more than the limit"):
        pre(_picture(20, 20))


def test_tiled_encoder_input_errors(model, pixels):
    with pytest.raises(ValueError, match=r"must be \[b, 5, 3, H, W\]"):
        model.encoder({k: v[:, 0] for k, v in pixels.items()})
    with pytest.raises(ValueError, match="same token grid|must divide"):
        TiledEncoder(dict(model.encoder.towers), tiles=3)
    with pytest.raises(ValueError, match=r"\[n, 3, H, W\]"):
        model(torch.tensor([PROMPT]), {k: v[:, :4].flatten(1, 2) for k, v in pixels.items()})


def test_uhd_saves_back_to_the_released_layout_and_through_save_pretrained(tmp_path, checkpoint, model, pixels):
    from rwkv_vision import VisualRWKV
    from rwkv_vision.checkpoint.pretrained import describe_checkpoint

    flat = model.official_state_dict()
    assert set(flat) == set(checkpoint) and all(torch.equal(flat[k], checkpoint[k].double()) for k in checkpoint)
    model.save_pretrained(tmp_path / "uhd")
    config = json.loads((tmp_path / "uhd" / "config.json").read_text())
    assert config["encoder"]["kind"] == "tiled" and config["encoder"]["tiles"] == 2
    assert config["projector"]["type"] == "relu_mlp" and config["preprocessor"]["tiles"] == 2
    assert describe_checkpoint(tmp_path / "uhd")["family"] == "uhd"
    back = VisualRWKV.from_pretrained(tmp_path / "uhd")
    assert isinstance(back.encoder, TiledEncoder) and isinstance(back.proj, ReLUProjector)
    assert back.image_preprocessor == model.image_preprocessor and isinstance(back.scan, BiDir)
    with torch.no_grad():
        assert torch.equal(back(torch.tensor([PROMPT]), pixels).logits, model(torch.tensor([PROMPT]), pixels).logits)
    # a released .pth loads through from_pretrained, and chat tiles a PIL image itself
    torch.save(checkpoint, tmp_path / "uhd.pth")
    loaded = VisualRWKV.from_pretrained(tmp_path / "uhd.pth", dtype=torch.float64)
    assert isinstance(loaded.encoder, TiledEncoder)
    px = loaded.image_preprocessor(_picture(), dtype=torch.float64)
    assert {k: tuple(v.shape[:2]) for k, v in px.items()} == {"dino": (1, 5), "siglip": (1, 5), "sam": (1, 5)}
    with torch.no_grad():
        assert loaded(torch.tensor([PROMPT]), px).logits.shape == (1, len(PROMPT) - 1 + 16, 300)


def test_uhd_strictness(checkpoint, model):
    """Every key is checked: a missing or extra key, a projector of HD width, a foreign encoder."""
    bad = {k: v for k, v in checkpoint.items() if k != "proj.gate.weight"}
    with pytest.raises(StateDictError, match="proj.gate.weight"):
        visualrwkv_uhd_from_official_state_dict(bad)
    bad = dict(checkpoint) | {"proj.extra": torch.zeros(1)}
    with pytest.raises(StateDictError, match="proj.extra"):
        visualrwkv_uhd_from_official_state_dict(bad)
    bad = dict(checkpoint) | {"proj.proj.weight": torch.zeros(32, 144)}  # an HD-width projector
    with pytest.raises(StateDictError, match=r"proj.proj.weight"):
        visualrwkv_uhd_from_official_state_dict(bad)
    key = next(k for k in checkpoint if k.startswith("vit.dino_featurizer.blocks.1."))
    bad = {k: v for k, v in checkpoint.items() if k != key}
    with pytest.raises(StateDictError, match=key.replace(".", r"\.")):
        visualrwkv_uhd_from_official_state_dict(bad)
    with pytest.raises(TypeError, match="TiledEncoder"):
        visualrwkv_uhd_from_official_state_dict(checkpoint, encoder=torch.nn.Linear(1, 1))


def test_tiled_config_sections_are_checked():
    from rwkv_vision.sections import encoder_from_config, encoder_to_config, preprocessor_from_config

    data = encoder_to_config(tiny_visualrwkv_uhd_encoder(device="meta"))
    assert isinstance(encoder_from_config(data, device="meta"), TiledEncoder)
    with pytest.raises(CheckpointError, match="encoder.tiles must be an int in 1..8"):
        encoder_from_config(data | {"tiles": 10**9}, device="meta")
    with pytest.raises(CheckpointError, match="tiles"):
        encoder_from_config({k: v for k, v in data.items() if k != "tiles"}, device="meta")
    pre = {"towers": {"dino": {"size": [28, 28], "mean": [0.5] * 3, "std": [0.5] * 3, "resample": "bicubic"}}}
    assert preprocessor_from_config(pre | {"tiles": 2, "alpha": "drop"}).tiles == 2
    with pytest.raises(CheckpointError, match="preprocessor.tiles must be an int"):
        preprocessor_from_config(pre | {"tiles": "2", "alpha": "drop"})


def test_a_released_size_uhd_file_is_recognised_and_sized_from_shapes():
    """The shapes of a VisualRWKV-v0613 file (RWKV-6 L24 C2048, the three towers at 448 / 448 / 1024 px, on
    the whole image and 4 tiles), on the meta device: family, encoder, projector widths and preprocessing."""
    from rwkv_vision import RWKV6, VisualRWKV
    from rwkv_vision.checkpoint.pretrained import load_released_state_dict
    from rwkv_vision.vision.tiles import visualrwkv_uhd_encoder

    enc = visualrwkv_uhd_encoder(device="meta")
    lm = RWKV6(n_layer=24, n_embd=2048, head_size=64, vocab_size=65536, device="meta")
    proj = ReLUProjector(enc.width, 2048, device="meta")
    sd = VisualRWKV(rwkv=lm, encoder=enc, proj=proj, scan="bidir", layout="image_first").official_state_dict()
    assert detect_family(sd).name == "uhd" and tuple(sd["proj.proj.weight"].shape) == (2048, 6400)
    loaded = load_released_state_dict(sd)  # meta tensors: sizes only
    assert isinstance(loaded.encoder, TiledEncoder) and loaded.image_tokens == 1024 and loaded.encoder.width == 6400
    assert loaded.rwkv.config == lm.config and isinstance(loaded.proj, ReLUProjector)
    # the official preprocessing per picture (HD's / v7.00's transforms), with the tiles cut
    assert loaded.image_preprocessor == TilePreprocessor(visualrwkv7_preprocessor().transforms, tiles=2)


def test_info_and_official_safetensors_name_the_uhd_family(tmp_path, checkpoint, model, pixels, capsys):
    from rwkv_vision import VisualRWKV
    from rwkv_vision.cli import main

    torch.save(checkpoint, tmp_path / "uhd.pth")
    assert main(["info", str(tmp_path / "uhd.pth")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "uhd" and info["files"] == "VisualRWKV-v0613-*"
    assert info["encoder"]["kind"] == "tiled" and info["projector"]["type"] == "relu_mlp"
    assert info["scan"]["name"] == "bidir"
    model.save_pretrained(tmp_path / "uhd.safetensors")  # the released names, in one file
    back = VisualRWKV.from_pretrained(tmp_path / "uhd.safetensors", dtype=torch.float64)
    assert isinstance(back.encoder, TiledEncoder)
    with torch.no_grad():
        assert torch.equal(back(torch.tensor([PROMPT]), pixels).logits, model(torch.tensor([PROMPT]), pixels).logits)


def test_projector_gradients_match_the_restatement(checkpoint, pixels):
    """Gradients of a random projection of the logits with respect to the projector's weights and the fused
    image features, against autograd through the float64 restatement; the unused gate gets none."""
    model = visualrwkv_uhd_from_official_state_dict(checkpoint, dtype=torch.float64).eval()
    with torch.no_grad():
        per_tower = {n: model.encoder.towers[n](pixels[n][0]) for n in model.encoder.names}
    fused = fuse_features(per_tower["dino"], per_tower["siglip"], per_tower["sam"]).requires_grad_(True)
    weights = torch.randn(len(PROMPT) - 1 + 16, 300, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    ref_sd = {k: (v.double().requires_grad_(True) if k.startswith("proj.") else v) for k, v in checkpoint.items()}
    (uhd_logits(ref_sd, PROMPT, fused) * weights).sum().backward()
    feats = fused.detach().clone().unsqueeze(0).requires_grad_(True)
    (model(torch.tensor([PROMPT]), image_embeds=model.proj(feats)).logits[0] * weights).sum().backward()
    assert relative_rms_error(feats.grad[0], fused.grad) < 1e-6
    for name in ("proj", "o_proj"):
        got = getattr(model.proj, name).weight.grad
        assert relative_rms_error(got, ref_sd[f"proj.{name}.weight"].grad) < 1e-6
    assert model.proj.gate.weight.grad is None and ref_sd["proj.gate.weight"].grad is None


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "PA", "I", "I;16", "F", "CMYK", "YCbCr", "RGBA"])
def test_every_pil_mode_is_converted_once_then_tiled(mode):
    """The official code converts to RGB, then cuts: the tiles of any mode are those of its RGB image."""
    from rwkv_vision.vision.preprocess import to_rgb

    if mode == "I;16":
        image = Image.fromarray(np.arange(23 * 17, dtype=np.uint16).reshape(17, 23) * 97)
    else:
        image = _picture(23, 17).convert("P" if mode == "PA" else mode)
        image = image.convert("PA") if mode == "PA" else image
    assert image.mode == mode
    pre = TilePreprocessor(visualrwkv7_preprocessor(dino=28, siglip=28, sam=32).transforms)
    got = pre(image)
    rgb = to_rgb(image)
    for name, t in pre.transforms.items():
        want = np.stack([t.process_one(p) for p in [rgb, *official_tiles(rgb)]])
        np.testing.assert_array_equal(got[name][0].numpy(), want)
