"""RWKV7.from_pretrained by name: local files and directories, a hand-built offline Hugging Face cache (a
save_pretrained directory on the Hub, a released file by ``filename=`` or ``owner/repo/file``, a revision), and
create_model's RWKV-7 sizes without weights."""

from __future__ import annotations

import os
import shutil
import socket

import pytest
import torch

from rwkv_vision import RWKV7, create_model
from rwkv_vision.checkpoint.lm import resolve_language_model
from rwkv_vision.models import RWKV7Config, get_config

from reference.rwkv7_ref import random_official_x070_state_dict

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache_repo(cache, repo_id, files, commit=COMMIT):
    """The Hub cache layout: models--org--name/{refs/main, snapshots/<commit>/<file>, blobs/<hash>}."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for i, src in enumerate(files):
        blob = repo / "blobs" / f"{i:040x}"
        shutil.copyfile(src, blob)
        os.symlink(os.path.relpath(blob, snap), snap / src.name)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    return cache


@pytest.fixture(scope="module")
def official():
    return random_official_x070_state_dict(n_layer=2, n_embd=32, head_size=8, vocab_size=50, seed=4)


IDS = torch.tensor([[1, 5, 9, 2, 7]])


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


def test_released_file_and_directory_from_the_offline_cache(offline_hub, official, tmp_path):
    pth = tmp_path / "rwkv7-tiny.pth"
    torch.save(official, pth)
    want = _logits(RWKV7.from_official_state_dict(official))
    _cache_repo(offline_hub, "org/rwkv7-file", [pth])
    for model in (
        RWKV7.from_pretrained("org/rwkv7-file", filename="rwkv7-tiny.pth"),
        RWKV7.from_pretrained("org/rwkv7-file/rwkv7-tiny.pth"),
        RWKV7.from_pretrained("org/rwkv7-file", "rwkv7-tiny.pth", revision=COMMIT),
        RWKV7.from_pretrained(pth),
    ):
        assert not model.training
        assert torch.equal(_logits(model), want)
    # A save_pretrained directory on the Hub: config.json and model.safetensors, fetched together.
    src = RWKV7.from_official_state_dict(official).save_pretrained(tmp_path / "src")
    _cache_repo(offline_hub, "org/rwkv7-dir", sorted(src.iterdir()))
    path = resolve_language_model("org/rwkv7-dir")
    assert path.is_dir() and COMMIT in str(path)
    model = RWKV7.from_pretrained("org/rwkv7-dir", dtype=torch.float64)
    assert model.emb.weight.dtype == torch.float64
    torch.testing.assert_close(_logits(model).float(), want, atol=1e-5, rtol=1e-5)
    # Not in the cache while offline: the error names what was asked for.
    with pytest.raises(FileNotFoundError, match=r"org/rwkv7-file/other.pth.*offline"):
        RWKV7.from_pretrained("org/rwkv7-file", filename="other.pth")
    with pytest.raises(FileNotFoundError, match="org/missing/config.json"):
        RWKV7.from_pretrained("org/missing")
    with pytest.raises(TypeError, match="name_or_path"):
        RWKV7.from_pretrained(3)


def test_cache_dir_argument(tmp_path, official, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: (_ for _ in ()).throw(AssertionError("network")))
    pth = tmp_path / "m.pth"
    torch.save(official, pth)
    _cache_repo(tmp_path / "elsewhere", "org/m", [pth])
    model = RWKV7.from_pretrained("org/m", "m.pth", cache_dir=tmp_path / "elsewhere")
    assert torch.equal(_logits(model), _logits(RWKV7.from_official_state_dict(official)))


@pytest.mark.parametrize("name", ["rwkv7-tiny", "rwkv7-0.1b"])
def test_create_model_rwkv7_sizes_without_weights(name):
    model = create_model(name, device="meta") if name != "rwkv7-tiny" else create_model(name)
    assert isinstance(model, RWKV7) and isinstance(model.config, RWKV7Config)
    assert model.config == get_config(name)
    if name == "rwkv7-tiny":
        assert _logits(model).shape == (1, 5, 256)
        assert create_model(name, pretrained=False, n_layer=3).n_layer == 3
    with pytest.raises(ValueError, match="no weights ship"):
        create_model(name, pretrained=True)
