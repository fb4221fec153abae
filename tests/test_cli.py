"""The ``rwkv-vision`` command line: chat (streamed), convert, info, on tiny checkpoints built here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from rwkv_vision import RWKV6, VisualRWKV, generation
from rwkv_vision.checkpoint import load_checkpoint
from rwkv_vision.cli import main
from rwkv_vision.image_tokens import IMAGE_TOKEN_INDEX as IMG
from rwkv_vision.tokenizers import WordTokenizer
from rwkv_vision.vision import tiny_clip

from reference.fixtures import one_cpu_thread  # noqa: F401
from reference.visualrwkv_ref import random_visualrwkv_checkpoint

RWKV_SIZES = dict(n_layer=2, n_embd=32, head_size=8, dim_ffn=64, d_mix=4, d_decay=6, vocab_size=50)
VISION_SIZES = dict(width=64, layers=2, patch=14, image=28, mlp=96)


@pytest.fixture(scope="module")
def pth(tmp_path_factory):
    sd = random_visualrwkv_checkpoint(rwkv_sizes=RWKV_SIZES, vision_sizes=VISION_SIZES)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in sd.items()}, path)
    return path


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """A random tiny model with a word tokenizer whose head always picks " red" (a random head may pick the
    stop token first and answer nothing)."""
    tok = WordTokenizer()
    rwkv = RWKV6(n_layer=2, n_embd=32, head_size=16, d_mix=4, d_decay=8, vocab_size=tok.vocab_size)
    with torch.no_grad():
        rwkv.ln_out.weight.zero_()
        rwkv.ln_out.bias.fill_(1.0)
        rwkv.head.weight.zero_()
        rwkv.head.weight[tok.token_to_id(" red")] = 1.0
    model = VisualRWKV(rwkv=rwkv, encoder=tiny_clip(image_size=28), tokenizer=tok)
    return model.save_pretrained(tmp_path_factory.mktemp("chat") / "word-vlm")


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(path)
    return path


def test_chat_streams_the_answer(chat_model, image_file, capsys, monkeypatch):
    streamed = []

    class Recording(generation.TextStreamer):
        def __call__(self, row, token):
            streamed.append(token)
            super().__call__(row, token)

    monkeypatch.setattr(generation, "TextStreamer", Recording)
    argv = [
        "chat",
        str(image_file),
        "What color is the circle?",
        "--model",
        str(chat_model),
        "--max-new-tokens",
        "4",
        "--scan",
        "multidir",
        "--layout",
        "image_first",
        "--dtype",
        "float32",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out == "red red red red\n"
    assert len(streamed) == 4  # one streamer call per generated token
    assert main(argv + ["--no-stream"]) == 0
    assert capsys.readouterr().out == out


def test_chat_errors_are_one_line(chat_model, tmp_path, capsys):
    (tmp_path / "not-an-image.png").write_bytes(b"hello")
    assert main(["chat", str(tmp_path / "not-an-image.png"), "hi", "--model", str(chat_model)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("rwkv-vision chat: error: IMAGE: cannot open") and err.count("\n") == 1
    assert main(["chat", "a question", "--model", str(tmp_path / "nowhere")]) == 1
    assert "name_or_path" in capsys.readouterr().err


def test_convert_info_from_pretrained_round_trip(pth, tmp_path, capsys):
    out = tmp_path / "converted"
    assert main(["convert", str(pth), str(out), "--scan", "multidir"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    infos = {}
    for name, source in [("pth", pth), ("dir", out)]:
        assert main(["info", str(source)]) == 0
        infos[name] = json.loads(capsys.readouterr().out)
    a, b = infos["pth"], infos["dir"]
    assert a["format"] == "official .pth" and b["format"] == "save_pretrained directory"
    assert a["rwkv"] == b["rwkv"] and a["rwkv"]["n_layer"] == 2 and a["rwkv"]["vocab_size"] == 50
    assert a["encoder"]["timm_kwargs"]["embed_dim"] == 64 and a["projector"]["in_features"] == 64
    assert a["scan"] == {"name": "bidir"} and b["scan"] == {"name": "multidir"}
    assert a["layout"]["name"] == b["layout"]["name"] == "sandwich"
    assert a["dtype"] == b["dtype"] == "bfloat16" and a["dtypes"] == ["bfloat16", "int64"]
    loaded = VisualRWKV.from_pretrained(out)
    n_params = sum(p.numel() for p in loaded.parameters())
    assert b["parameters"] == n_params
    # The released file's unused post_layernorm is counted as the encoder's (unused) final norm is.
    assert a["parameters"] == n_params
    ids, pixels = torch.tensor([[1, IMG, 2, 3]]), torch.randn(1, 3, 28, 28)
    original = VisualRWKV.from_pretrained(pth, scan="multidir")
    with torch.no_grad():
        assert torch.equal(original(ids, pixels)[0], loaded(ids, pixels)[0])


def test_convert_to_one_safetensors_file_and_info_on_it(pth, tmp_path, capsys):
    out = tmp_path / "c.safetensors"
    assert main(["convert", str(pth), str(out), "--dtype", "float32"]) == 0
    assert load_checkpoint(out)["proj.weight"].dtype == torch.float32
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "official .safetensors" and info["dtype"] == "float32"
    assert info["parameters_by_part"]["projector"] == 32 * 64


def test_console_script_is_installed():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "rwkv-vision"
    assert script.exists(), "pip install did not create the rwkv-vision command"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True).stdout
    assert "chat" in out and "convert" in out and "info" in out
