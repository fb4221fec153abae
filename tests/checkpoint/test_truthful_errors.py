"""Errors that tell the truth, and containment (issue 13, items 3 and 4)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from rwkv_vision import cli
from rwkv_vision.errors import CheckpointError, DeviceError, UnsafeCheckpointError
from rwkv_vision.models.visualrwkv import VisualRWKV

from .conftest import SHIPPED


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/rwkv_vision_pwned",))


def test_malicious_pickle_is_refused_for_safety_not_called_corrupt(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"rwkv.emb.weight": torch.zeros(2, 2), "x": _Evil()}, path)
    with pytest.raises(UnsafeCheckpointError, match="refused for safety") as info:
        VisualRWKV.from_pretrained(path)
    assert "corrupt" not in str(info.value).split("not corrupt")[0]
    assert not os.path.exists("/tmp/rwkv_vision_pwned")


def test_raw_pickle_with_reduce_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(_Evil(), protocol=2))
    with pytest.raises(CheckpointError) as info:
        VisualRWKV.from_pretrained(path)
    assert "arbitrary code" in str(info.value) or "cannot be read" in str(info.value)
    assert not os.path.exists("/tmp/rwkv_vision_pwned")


def test_unavailable_device_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="'cuda'.*CUDA is not available") as info:
        VisualRWKV.from_pretrained(SHIPPED, device="cuda")
    assert "corrupt" not in str(info.value)
    with pytest.raises(DeviceError, match="not a device"):
        VisualRWKV.from_pretrained(SHIPPED, device="gpu0")


def test_cli_device_error_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = cli.main(["chat", "--model", str(SHIPPED), "--device", "cuda", "hi"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and err.startswith("rwkv-vision chat: error: device 'cuda'")


@pytest.mark.parametrize("filename", ["../x.pth", "/etc/passwd", "a/../../x.pth", "..\\x.pth", "C:\\x.pth"])
def test_filename_outside_the_directory_is_refused(tmp_path, filename):
    (tmp_path / "x.pth").write_bytes(b"")
    inner = tmp_path / "inner"
    inner.mkdir()
    with pytest.raises(CheckpointError, match="refused"):
        VisualRWKV.from_pretrained(inner, filename)


@pytest.mark.parametrize("file", ["../tokenizer.json", "/etc/passwd", "sub/../../t.json", "link.json", "", 5, None])
def test_tokenizer_file_outside_the_directory_is_refused(ckpt, file):
    (ckpt.parent / "tokenizer.json").write_text((ckpt / "tokenizer.json").read_text())
    (ckpt / "link.json").symlink_to(ckpt.parent / "tokenizer.json")
    config = json.loads((ckpt / "config.json").read_text())
    config["tokenizer"]["file"] = file
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="tokenizer.file") as info:
        VisualRWKV.from_pretrained(ckpt)
    assert "config.json" in str(info.value)


@pytest.mark.parametrize(
    "klass",
    [
        "os:system",
        "subprocess:Popen",
        "rwkv_vision.cli:main",
        "rwkv_vision.tokenizers.word:WordTokenizer.from_file.__globals__",
        "builtins:eval",
        "rwkv_vision:__loader__",
    ],
)
def test_tokenizer_class_must_be_registered(ckpt, klass, monkeypatch):
    imported = []
    import importlib

    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: imported.append(name) or real(name, *a))
    config = json.loads((ckpt / "config.json").read_text())
    config["tokenizer"] = {"type": "class", "class": klass, "file": "tokenizer.json"}
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="not a registered tokenizer"):
        VisualRWKV.from_pretrained(ckpt)
    assert imported == []


def test_registered_tokenizer_class_loads(ckpt):
    from rwkv_vision.tokenizers.word import WordTokenizer

    config = json.loads((ckpt / "config.json").read_text())
    config["tokenizer"] = {
        "type": "class",
        "class": f"{WordTokenizer.__module__}:WordTokenizer",
        "file": "tokenizer.json",
    }
    (ckpt / "config.json").write_text(json.dumps(config))
    assert isinstance(VisualRWKV.from_pretrained(ckpt).tokenizer, WordTokenizer)


def test_oversized_tokenizer_file_is_refused(ckpt):
    with open(ckpt / "tokenizer.json", "wb") as f:
        f.truncate(65 * 2**20)
    with pytest.raises(CheckpointError, match="more than a tokenizer file may hold"):
        VisualRWKV.from_pretrained(ckpt)


@pytest.mark.parametrize("content", ["", "[]", "{" * 10000, '{"type": "word", "vocab": 5}', "\x00\x01", "null"])
def test_bad_tokenizer_file_names_the_file(ckpt, content):
    (ckpt / "tokenizer.json").write_text(content)
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        VisualRWKV.from_pretrained(ckpt)


# --- the command line -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["info", "/nonexistent/x.pth"],
        ["info", "{ckpt}", "--filename", "../x.pth"],
        ["info", "{bad}"],
        ["convert", "{bad}", "{tmp}/o"],
        ["convert", "{ckpt}", "{tmp}/x.pth"],
        ["chat", "--model", "{ckpt}", "{tmp}/no-image.png", "q"],
        ["chat", "--model", "{ckpt}", "--max-new-tokens", "0", "q"],
        ["chat", "--model", "{evil}", "q"],
    ],
)
def test_cli_failures_are_one_line(argv, ckpt, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"format": "rwkv_vision.VisualRWKV", "format_version": 1, "rwkv": 5}')
    torch.save({"x": _Evil()}, tmp_path / "evil.pth")
    subs = {"ckpt": str(ckpt), "bad": str(bad), "tmp": str(tmp_path), "evil": str(tmp_path / "evil.pth")}
    code = cli.main([a.format(**subs) for a in argv])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.count("\n") == 1 and err.startswith(f"rwkv-vision {argv[0]}: error: "), err
    assert "Traceback" not in err


def test_cli_debug_shows_the_traceback():
    with pytest.raises(ValueError, match="is not a file"):
        cli.main(["info", f"{SHIPPED}/nonexistent.pth", "--debug"])


def test_cli_survives_a_closed_pipe():
    """``rwkv-vision info X | head -c 1``: no traceback, no "Exception ignored" message."""
    cmd = f"{sys.executable} -m rwkv_vision.cli info {SHIPPED} | head -c 1"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert result.stdout == "{"
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
