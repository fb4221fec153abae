"""Checkpoints: save_pretrained directories, released .pth / .safetensors files, a hand-built offline Hub
cache, strict key checks, and clear errors for corrupt files."""

from __future__ import annotations

import json
import os
import shutil
import socket

import pytest
import torch
from safetensors.torch import load_file, save_file

from rwkv_vision import GatedMLPProjector, ImageLast, MultiDir, Sandwich, VisualRWKV
from rwkv_vision.checkpoint import (
    OFFICIAL_PREFIXES,
    CheckpointError,
    from_pretrained,
    load_checkpoint,
    resolve_checkpoint,
    save_pretrained,
)
from rwkv_vision.checkpoint import official as official_layouts
from rwkv_vision.checkpoint.config_json import (
    FORMAT_VERSION,
    encoder_from_config,
    encoder_to_config,
    scan_from_config,
    scan_to_config,
)
from rwkv_vision.errors import StateDictError
from rwkv_vision.image_tokens import IMAGE_TOKEN_INDEX as IMG
from rwkv_vision.models import RWKV6
from rwkv_vision.scan import BiDir, Custom, ScanPolicy, Snake, UniDir, Zigzag
from rwkv_vision.tokenizers import WordTokenizer
from rwkv_vision.vision import ImagePreprocessor, timm_vit

from reference.fixtures import one_cpu_thread  # noqa: F401
from reference.visualrwkv_ref import random_visualrwkv_checkpoint

RWKV_SIZES = dict(n_layer=2, n_embd=32, head_size=8, dim_ffn=64, d_mix=4, d_decay=6, vocab_size=50)
VISION_SIZES = dict(width=64, layers=2, patch=14, image=28, mlp=96)
IDS = torch.tensor([[1, IMG, 2, 3]])


@pytest.fixture(scope="module")
def pth(tmp_path_factory):
    sd = random_visualrwkv_checkpoint(rwkv_sizes=RWKV_SIZES, vision_sizes=VISION_SIZES)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in sd.items()}, path)
    return path


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def saved_dir(pth, tmp_path_factory):
    return VisualRWKV.from_pretrained(pth).save_pretrained(tmp_path_factory.mktemp("dir") / "tiny")


def logits_of(model, pixels):
    with torch.no_grad():
        return model(IDS, pixels)[0]


def word_model() -> VisualRWKV:
    """A model that is not the released layout: timm ViT-Tiny, gated MLP, Custom scan, ImageLast, words."""
    tok = WordTokenizer()
    encoder = timm_vit("vit_tiny_patch16_224", img_size=32, depth=2, layer=-2, cls="first")
    rwkv = RWKV6(n_layer=3, n_embd=32, head_size=16, d_mix=4, d_decay=8, vocab_size=tok.vocab_size)
    perms = [torch.randperm(4, generator=torch.Generator().manual_seed(i)).tolist() for i in range(2)] + [None]
    return VisualRWKV(
        rwkv=rwkv,
        encoder=encoder,
        proj=GatedMLPProjector(192, 32, hidden_features=48),
        scan=Custom(perms),
        layout=ImageLast(user_role="Q", assistant_role="A"),
        tokenizer=tok,
        preprocessor=ImagePreprocessor(40, crop_size=32, resample="bilinear", alpha="white"),
    ).eval()


# --- the released formats -----------------------------------------------------------------------------------


def test_pth_and_safetensors_round_trip(pth, pixels, tmp_path):
    model = from_pretrained(pth, dtype=torch.float32)
    a = logits_of(model, pixels)
    out = save_pretrained(model, tmp_path / "tiny.safetensors")
    sd = load_checkpoint(out)
    assert "proj.weight" in sd and "vit.vision_model.encoder.layers.1.self_attn.k_proj.weight" in sd
    assert torch.equal(a, logits_of(VisualRWKV.from_pretrained(out), pixels))
    released = VisualRWKV.from_pretrained(pth)
    assert released.rwkv.emb.weight.dtype == torch.bfloat16  # the file's dtype by default
    assert not released.training
    assert released.tokenizer is None  # a 50-token vocabulary is not World's (65536 would get WorldTokenizer)
    assert released.image_preprocessor.size == 28 and released.scan == BiDir()


def test_official_prefixes_live_in_one_place():
    assert OFFICIAL_PREFIXES is official_layouts.OFFICIAL_PREFIXES
    assert OFFICIAL_PREFIXES == {"rwkv": "rwkv.", "vit": "vit.vision_model.", "proj": "proj.weight"}


def test_released_file_strictness(pth, tmp_path):
    sd = load_checkpoint(pth)
    lean = {k: v for k, v in sd.items() if "post_layernorm" not in k and "position_ids" not in k}
    torch.save(lean, tmp_path / "lean.pth")
    VisualRWKV.from_pretrained(tmp_path / "lean.pth")  # both optional in released files
    bad = dict(sd)
    del bad["rwkv.blocks.0.att.time_faaaa"]
    bad["proj.weight"] = torch.zeros(32, 65)
    bad["extra.weight"] = torch.zeros(1)
    save_file({k: v.contiguous() for k, v in bad.items()}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(StateDictError) as info:
        VisualRWKV.from_pretrained(tmp_path / "bad.safetensors")
    e = info.value
    assert e.missing == ["rwkv.blocks.0.att.time_faaaa"] and e.unexpected == ["extra.weight"]
    assert e.mismatched == [("proj.weight", (32, 65), (32, 64))]


# --- save_pretrained directories -----------------------------------------------------------------------------


def test_directory_round_trip_of_a_released_model(pth, saved_dir, pixels):
    assert sorted(p.name for p in saved_dir.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((saved_dir / "config.json").read_text())
    assert config["format_version"] == FORMAT_VERSION and config["dtype"] == "bfloat16"
    assert config["rwkv"] == {**RWKV_SIZES, "data_dependent_lerp": True, "data_dependent_decay": True}
    assert config["encoder"]["timm_kwargs"]["act_layer"] == "quick_gelu" and config["encoder"]["cls"] == "last"
    assert config["projector"] == {"type": "linear", "in_features": 64, "out_features": 32, "bias": False}
    assert config["scan"] == {"name": "bidir"} and config["layout"]["name"] == "sandwich"
    assert config["tokenizer"] == {"type": None}  # vocab 50 is not World's 65536
    assert config["preprocessor"]["size"] == 28
    original = VisualRWKV.from_pretrained(pth)
    loaded = VisualRWKV.from_pretrained(saved_dir)
    assert loaded.rwkv.emb.weight.dtype == torch.bfloat16
    assert torch.equal(logits_of(original, pixels), logits_of(loaded, pixels))
    assert loaded.image_preprocessor.size == 28 and isinstance(loaded.layout, Sandwich)
    as_float = VisualRWKV.from_pretrained(saved_dir, dtype="float32", scan="multidir")
    assert as_float.proj.weight.dtype == torch.float32 and as_float.scan == MultiDir()


def test_directory_round_trip_of_an_assembled_model(tmp_path):
    model = word_model()
    model.save_pretrained(tmp_path / "m", metadata={"trained_steps": 7})
    assert (tmp_path / "m" / "tokenizer.json").is_file()
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["metadata"] == {"trained_steps": 7}
    assert config["encoder"]["timm_model"] == "vit_tiny_patch16_224" and config["encoder"]["layer"] == 0
    assert config["scan"]["name"] == "custom" and config["scan"]["permutations"][2] is None
    loaded = VisualRWKV.from_pretrained(tmp_path / "m")
    pixels = torch.randn(1, 3, 32, 32)
    ids = torch.tensor([[5, IMG, 6]])
    with torch.no_grad():
        assert torch.equal(model(ids, pixels)[0], loaded(ids, pixels)[0])
    assert loaded.scan == model.scan and loaded.tokenizer == model.tokenizer
    assert loaded.layout == model.layout and loaded.encoder.cls == "first"
    assert repr(loaded.image_preprocessor) == repr(model.image_preprocessor)
    assert loaded.to_config() == model.to_config()
    fresh = VisualRWKV.from_config(model.to_config(), tokenizer=model.tokenizer)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "policy",
    [UniDir(), BiDir(), MultiDir(), Snake(bidirectional=True), Zigzag(transpose=True), Custom([[1, 0, 3, 2], None])],
)
def test_every_scan_policy_round_trips(policy):
    data = json.loads(json.dumps(scan_to_config(policy)))
    assert scan_from_config(data) == policy


def test_clip_l14_336_is_described_by_config():
    from rwkv_vision.vision import clip_vit_l14_336

    data = encoder_to_config(clip_vit_l14_336(device="meta"))
    assert data["timm_model"] == "vit_large_patch14_clip_336" and data["layer"] == 23
    assert data["timm_kwargs"]["act_layer"] == "quick_gelu" and data["timm_kwargs"]["embed_dim"] == 1024
    assert encoder_from_config(data, device="meta").num_tokens == 577


def test_undescribable_parts_are_refused(tmp_path, pth):
    class MyScan(ScanPolicy):
        def order(self, layer_index, rows, cols):
            return None

    model = VisualRWKV.from_pretrained(pth)
    model.scan = MyScan()
    with pytest.raises(ValueError, match="scan: a MyScan policy has no config.json form"):
        model.save_pretrained(tmp_path / "a")
    model.scan = BiDir()
    model.proj = torch.nn.Linear(64, 32)
    with pytest.raises(ValueError, match="proj: a Linear has no config.json form"):
        model.save_pretrained(tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="path must be a directory or end in .safetensors"):
        save_pretrained(VisualRWKV.from_pretrained(pth), tmp_path / "x.bin")
    with pytest.raises(TypeError, match="model must be a VisualRWKV"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path / "x")


def test_directory_keys_are_checked_all_at_once(saved_dir, tmp_path):
    d = tmp_path / "edited"
    shutil.copytree(saved_dir, d)
    sd = load_file(str(d / "model.safetensors"))
    del sd["rwkv.ln_out.bias"]
    sd["rwkv.head.weight"] = torch.zeros(51, 32)
    sd["surprise"] = torch.zeros(2)
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(StateDictError) as info:
        VisualRWKV.from_pretrained(d)
    assert info.value.missing == ["rwkv.ln_out.bias"] and info.value.unexpected == ["surprise"]
    assert info.value.mismatched == [("rwkv.head.weight", (51, 32), (50, 32))]
    assert str(d / "model.safetensors") in str(info.value)


def test_progress_bar_on_request(saved_dir, capsys):
    VisualRWKV.from_pretrained(saved_dir, progress=True)
    assert "loading model.safetensors" in capsys.readouterr().err
    VisualRWKV.from_pretrained(saved_dir)  # tiny file: silent
    assert capsys.readouterr().err == ""


# --- the Hugging Face Hub, offline, through a hand-built cache ---------------------------------------------


def _cache_repo(cache, repo_id, files, commit="0123456789abcdef0123456789abcdef01234567"):
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
    return commit


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


def test_hub_released_file_from_the_cache(offline_hub, pth, pixels):
    commit = _cache_repo(offline_hub, "org/visualrwkv-tiny", [pth])
    model = VisualRWKV.from_pretrained("org/visualrwkv-tiny", filename="tiny.pth")
    assert torch.equal(logits_of(model, pixels), logits_of(VisualRWKV.from_pretrained(pth), pixels))
    by_commit = resolve_checkpoint("org/visualrwkv-tiny", filename="tiny.pth", revision=commit)
    assert by_commit.name == "tiny.pth" and commit in str(by_commit)
    assert resolve_checkpoint("org/visualrwkv-tiny/tiny.pth").samefile(by_commit)
    with pytest.raises(FileNotFoundError, match=r"org/visualrwkv-tiny/other.pth.*offline"):
        VisualRWKV.from_pretrained("org/visualrwkv-tiny", filename="other.pth")


def test_hub_directory_from_the_cache(offline_hub, tmp_path, pixels):
    model = word_model()
    src = model.save_pretrained(tmp_path / "src")
    _cache_repo(offline_hub, "org/word-vlm", sorted(src.iterdir()))
    loaded = VisualRWKV.from_pretrained("org/word-vlm")
    assert loaded.tokenizer == model.tokenizer
    ids, px = torch.tensor([[5, IMG, 6]]), torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(ids, px)[0], loaded(ids, px)[0])
    with pytest.raises(FileNotFoundError, match="org/missing/config.json"):
        VisualRWKV.from_pretrained("org/missing")


def test_hub_cache_dir_argument(tmp_path, pth, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: (_ for _ in ()).throw(AssertionError("network")))
    _cache_repo(tmp_path / "elsewhere", "org/m", [pth])
    model = VisualRWKV.from_pretrained("org/m", "tiny.pth", cache_dir=tmp_path / "elsewhere", dtype=torch.float32)
    assert model.proj.weight.dtype == torch.float32


# --- corrupt, truncated and unsafe files ------------------------------------------------------------------------


class NotATensor:
    pass


def _corrupt(kind, pth, saved_dir, tmp_path):
    if kind == "truncated pth":
        data = pth.read_bytes()
        (tmp_path / "x.pth").write_bytes(data[: len(data) // 2])
        return tmp_path / "x.pth", r"truncated or corrupt zip archive"
    if kind == "random pth":
        (tmp_path / "x.pth").write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
        return tmp_path / "x.pth", r"cannot be read as a PyTorch checkpoint.*corrupt, truncated or of another format"
    if kind == "empty pth":
        (tmp_path / "x.pth").write_bytes(b"")
        return tmp_path / "x.pth", "the file is empty"
    if kind == "unsafe pickle":
        torch.save({"a": torch.zeros(1), "b": NotATensor()}, tmp_path / "x.pth")
        return tmp_path / "x.pth", r"refusing to unpickle untrusted data.*NotATensor"
    if kind == "truncated safetensors":
        data = (saved_dir / "model.safetensors").read_bytes()
        (tmp_path / "x.safetensors").write_bytes(data[: len(data) // 2])
        return tmp_path / "x.safetensors", r"cannot be read as a safetensors file.*corrupt or truncated"
    if kind == "bad header":
        (tmp_path / "x.safetensors").write_bytes((16).to_bytes(8, "little") + b"{this is not js}" + bytes(8))
        return tmp_path / "x.safetensors", r"cannot be read as a safetensors file.*JSON"
    d = tmp_path / "d"
    shutil.copytree(saved_dir, d)
    config = json.loads((d / "config.json").read_text())
    if kind == "no config":
        (d / "config.json").unlink()
        return d, r"config.json: missing; a save_pretrained directory holds config.json and model.safetensors"
    if kind == "no weights":
        (d / "model.safetensors").unlink()
        return d, r"model.safetensors: missing"
    if kind == "unknown field":
        config["rwkv"]["n_expert"] = 8
        config["colour"] = "red"
    elif kind == "future version":
        config["format_version"] = FORMAT_VERSION + 1
    elif kind == "bad json":
        (d / "config.json").write_text("{")
        return d, r"config.json: not valid JSON"
    (d / "config.json").write_text(json.dumps(config))
    return d, {
        "unknown field": r"config has unknown field\(s\) \['colour'\].*rwkv has unknown field\(s\) \['n_expert'\]",
        "future version": r"format_version 2 is not supported.*upgrade rwkv_vision",
    }[kind]


@pytest.mark.parametrize(
    "kind",
    [
        "truncated pth",
        "random pth",
        "empty pth",
        "unsafe pickle",
        "truncated safetensors",
        "bad header",
        "no config",
        "no weights",
        "unknown field",
        "future version",
        "bad json",
    ],
)
def test_corrupt_files_give_clear_errors(kind, pth, saved_dir, tmp_path):
    path, message = _corrupt(kind, pth, saved_dir, tmp_path)
    with pytest.raises(CheckpointError, match=message) as info:
        VisualRWKV.from_pretrained(path)
    assert str(path) in str(info.value)  # the error names the file


def test_bad_arguments(pth, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "missing.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="not a flat dict of tensors"):
        load_checkpoint(tmp_path / "list.pth")
    with pytest.raises(ValueError, match="name_or_path: 'tiny' is not a file, a directory, a known name"):
        resolve_checkpoint("tiny")
    with pytest.raises(ValueError, match="dtype must be a torch.dtype or one of"):
        VisualRWKV.from_pretrained(pth, dtype="float8")
    with pytest.raises(ValueError, match="filename: .* is already a file"):
        VisualRWKV.from_pretrained(pth, filename="x.pth")
    with pytest.raises(FileNotFoundError, match="filename: no file 'x.pth' in the directory"):
        VisualRWKV.from_pretrained(tmp_path, filename="x.pth")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown checkpoint type '.npz'"):
        VisualRWKV.from_pretrained(tmp_path / "w.npz")
