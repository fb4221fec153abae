"""Checkpoint files: .pth (weights_only) and safetensors round trips, names, and the CLI on them."""

from __future__ import annotations

import json

import pytest
import torch

from reference.visualrwkv_ref import random_visualrwkv_checkpoint
from rwkv_vision.cli import main
from rwkv_vision.hub import from_pretrained, load_checkpoint, resolve_checkpoint, save_pretrained
from rwkv_vision.prompt import IMAGE_TOKEN_INDEX as IMG

RWKV_SIZES = dict(n_layer=2, n_embd=32, head_size=8, dim_ffn=64, d_mix=4, d_decay=6, vocab_size=50)
VISION_SIZES = dict(width=64, layers=2, patch=14, image=28, mlp=96)


@pytest.fixture(scope="module")
def pth(tmp_path_factory):
    sd = random_visualrwkv_checkpoint(rwkv_sizes=RWKV_SIZES, vision_sizes=VISION_SIZES)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in sd.items()}, path)
    return path


def test_pth_and_safetensors_round_trip(pth, tmp_path):
    model = from_pretrained(pth, dtype=torch.float32).eval()
    ids, pixels = torch.tensor([[1, IMG, 2, 3]]), torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        a, _ = model(ids, pixels)
    out = save_pretrained(model, tmp_path / "tiny.safetensors")
    sd = load_checkpoint(out)
    assert "proj.weight" in sd and "vit.vision_model.encoder.layers.1.self_attn.k_proj.weight" in sd
    with torch.no_grad():
        b, _ = from_pretrained(out).eval()(ids, pixels)
    assert torch.equal(a, b)
    assert from_pretrained(pth).rwkv.emb.weight.dtype == torch.bfloat16  # the file's dtype by default


def test_bad_inputs(pth, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "missing.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="not a flat dict of tensors"):
        load_checkpoint(tmp_path / "list.pth")
    with pytest.raises(ValueError, match="name_or_path: 'tiny' is not a file, a known name"):
        resolve_checkpoint("tiny")
    with pytest.raises(ValueError, match="must end in .safetensors"):
        save_pretrained(from_pretrained(pth), tmp_path / "x.bin")
    with pytest.raises(TypeError, match="model must be a VisualRWKV"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")


def test_cli_info_and_convert(pth, tmp_path, capsys):
    assert main(["info", str(pth)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rwkv"]["n_layer"] == 2 and info["vision"]["embed_dim"] == 64 and info["proj"] == [32, 64]
    out = tmp_path / "c.safetensors"
    assert main(["convert", str(pth), str(out), "--dtype", "float32"]) == 0
    assert load_checkpoint(out)["proj.weight"].dtype == torch.float32
