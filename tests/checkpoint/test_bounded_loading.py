"""Every loader checks sizes before it allocates, and every bad config.json value is a library error
naming the file and the field (issue 13, items 1 and 4)."""

from __future__ import annotations

import copy
import json
import math
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from rwkv_vision.errors import CheckpointError, ConfigError, RWKVVisionError, StateDictError
from rwkv_vision.models.visualrwkv import VisualRWKV
from rwkv_vision.state import RWKVState

from .conftest import SHIPPED


def _write_config(directory, config) -> None:
    (directory / "config.json").write_text(json.dumps(config, allow_nan=True), encoding="utf-8")


def _config() -> dict:
    return json.loads((SHIPPED / "config.json").read_text())


def _load_fails_quickly(directory, *, within: float = 5.0, match: str | None = None) -> RWKVVisionError:
    start = time.perf_counter()
    with pytest.raises(RWKVVisionError, match=match) as info:
        VisualRWKV.from_pretrained(directory)
    assert time.perf_counter() - start < within
    assert len(str(info.value)) < 4000, "an error message must stay short"
    return info.value


def test_statedicterror_lists_a_few_keys_and_a_count():
    e = StateDictError([f"blocks.{i}.x" for i in range(20000)], ["u"] * 3, [("k", (1,), (2,))])
    text = str(e)
    assert "... and 19992 more" in text and len(text.splitlines()) < 20
    assert len(e.missing) == 20000  # the attributes stay complete


def test_checkpoint_with_a_key_of_layer_20000_fails_before_building(ckpt):
    sd = load_file(ckpt / "model.safetensors")
    sd["rwkv.blocks.20000.ln1.weight"] = torch.ones(128)
    save_file(sd, ckpt / "model.safetensors")
    e = _load_fails_quickly(ckpt, within=3.0, match="n_layer")
    assert "config.json" in str(e) and "model.safetensors" in str(e)


def test_released_layout_with_a_key_of_layer_20000_fails_before_building(shipped_model, tmp_path):
    path = shipped_model.save_pretrained(tmp_path / "official.safetensors")
    sd = load_file(path)
    sd["rwkv.blocks.20000.ln1.weight"] = torch.ones(128)
    save_file(sd, path)
    start = time.perf_counter()
    with pytest.raises(StateDictError, match="layer") as info:
        VisualRWKV.from_pretrained(path)
    assert time.perf_counter() - start < 3.0 and len(str(info.value).splitlines()) < 20
    assert "rwkv.blocks.20000.ln1.weight" in info.value.unexpected


def test_released_layout_with_a_deep_vision_tower_fails_before_building(shipped_model, tmp_path):
    path = shipped_model.save_pretrained(tmp_path / "official.safetensors")
    sd = load_file(path)
    sd["vit.vision_model.encoder.layers.5000.mlp.fc1.weight"] = torch.ones(1, 1)
    save_file(sd, path)
    start = time.perf_counter()
    with pytest.raises(StateDictError, match="vision tower"):
        VisualRWKV.from_pretrained(path)
    assert time.perf_counter() - start < 3.0


@pytest.mark.parametrize(
    "where, value",
    [
        (("rwkv", "n_layer"), 10**9),
        (("rwkv", "n_layer"), 1000),
        (("rwkv", "n_embd"), 2**40),
        (("rwkv", "vocab_size"), 10**12),
        (("encoder", "timm_kwargs", "depth"), 10**9),
        (("encoder", "timm_kwargs", "depth"), 200),
        (("encoder", "timm_kwargs", "embed_dim"), 10**7),
        (("encoder", "timm_kwargs", "img_size"), [10**6, 10**6]),
        (("encoder", "timm_kwargs", "img_size"), [48, 10**7]),
        (("encoder", "timm_kwargs", "patch_size"), [1, 1]),
        (("encoder", "timm_kwargs", "num_heads"), 0),
        (("encoder", "timm_kwargs", "num_heads"), 3),
        (("encoder", "layer"), 10**9),
        (("projector", "in_features"), 10**12),
        (("preprocessor", "size"), 10**9),
    ],
)
def test_huge_sizes_in_config_json_fail_quickly(ckpt, where, value):
    config = _config()
    node = config
    for k in where[:-1]:
        node = node[k]
    node[where[-1]] = value
    _write_config(ckpt, config)
    e = _load_fails_quickly(ckpt, within=3.0)
    assert isinstance(e, (CheckpointError, ConfigError, StateDictError))
    assert "config.json" in str(e)
    assert where[-1] in str(e) or "layer" in str(e) or "mis-shaped" in str(e)


# --- fuzzing every field of the shipped config.json -------------------------------------------------------


def _leaves(node, path=()):
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            if path == () and k == "metadata":
                yield ("metadata",)
                continue
            yield from _leaves(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, (*path, i))


def _nested(depth: int):
    out: list = []
    for _ in range(depth):
        out = [out]
    return out


_BAD_VALUES = [None, "x", -1, 10**9, -(10**30), math.nan, 0.5, True, [], {"a": [1]}]


def _fuzz_cases():
    config = _config()
    # the second and third entries of a list are attacked like the first (mean, std, img_size)
    paths = sorted({p for p in _leaves(config) if p and not (isinstance(p[-1], int) and p[-1] > 0)}, key=str)
    return [(p, v) for p in paths for v in _BAD_VALUES]


def _set(config, path, value):
    node = config
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value


@pytest.mark.slow
def test_fuzz_every_config_field(ckpt):
    """Every field of the shipped config.json, replaced by a wrong type, a negative, huge, NaN or nested
    value: loading either works or raises a library error naming the file; never a RecursionError,
    ZeroDivisionError, AssertionError or a torch-internal error, and never slowly."""
    base = _config()
    cases = _fuzz_cases()
    assert len(cases) > 500
    failures = []
    for path, value in cases:
        config = copy.deepcopy(base)
        _set(config, path, value)
        _write_config(ckpt, config)
        start = time.perf_counter()
        try:
            VisualRWKV.from_pretrained(ckpt)
        except RWKVVisionError as e:
            if "config.json" not in str(e) and "model.safetensors" not in str(e):
                failures.append((path, value, f"does not name the file: {e}"))
            elif len(str(e)) > 4000:
                failures.append((path, value, "message too long"))
        except Exception as e:  # noqa: BLE001 - what this test looks for
            failures.append((path, value, f"{type(e).__name__}: {str(e)[:200]}"))
        if time.perf_counter() - start > 5.0:
            failures.append((path, value, "slow"))
    assert not failures, failures[:20]


@pytest.mark.parametrize("text", ["[" * 100000, '{"a": ' * 50000, "NaN", '{"format": 1e999999}', "\udcff"])
def test_hostile_json_text(ckpt, text):
    (ckpt / "config.json").write_text(text, encoding="utf-8", errors="surrogateescape")
    _load_fails_quickly(ckpt)


def test_oversized_config_json_is_refused_before_parsing(ckpt):
    with open(ckpt / "config.json", "w") as f:
        f.write(" " * (17 * 2**20) + "{}")
    _load_fails_quickly(ckpt, match="more than a config.json may hold")


def test_deep_nesting_in_metadata_does_not_recurse(ckpt):
    config = _config()
    config["metadata"] = _nested(100000)
    text = json.dumps({k: v for k, v in config.items() if k != "metadata"})[:-1] + ', "metadata": ' + "[" * 100000
    text += "]" * 100000 + "}"
    (ckpt / "config.json").write_text(text)
    _load_fails_quickly(ckpt, match="nested too deeply")


# --- state files ------------------------------------------------------------------------------------------


def _state(n_layer=2, b=1, h=2, n=4):
    from rwkv_vision.state import LayerState

    return RWKVState(
        [LayerState(torch.randn(b, h * n), torch.randn(b, h, n, n), torch.randn(b, h * n)) for _ in range(n_layer)]
    )


def test_state_file_with_an_absurd_layer_index(tmp_path):
    sd = _state().state_dict()
    sd["blocks.20000.wkv"] = torch.zeros(1, 2, 4, 4)
    sd["blocks.99999999999999999999.wkv"] = torch.zeros(1)
    save_file(sd, tmp_path / "s.safetensors")
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="unexpected keys") as info:
        RWKVState.load(tmp_path / "s.safetensors")
    assert time.perf_counter() - start < 1.0 and str(tmp_path / "s.safetensors") in str(info.value)
    assert len(str(info.value)) < 2000


def test_state_file_with_many_keys_gives_a_short_error(tmp_path):
    sd = {f"junk.{i}": torch.zeros(1) for i in range(5000)}
    save_file(sd, tmp_path / "s.safetensors")
    with pytest.raises(CheckpointError, match="and 4992 more"):
        RWKVState.load(tmp_path / "s.safetensors")


@pytest.mark.parametrize(
    "change",
    [
        lambda sd: sd.update({"blocks.1.wkv": torch.zeros(1, 2, 4, 5)}),
        lambda sd: sd.update({"blocks.1.att_shift": torch.zeros(3, 8)}),
        lambda sd: sd.update({"blocks.0.ffn_shift": torch.zeros(1, 8, dtype=torch.int64)}),
        lambda sd: sd.update({"blocks.0.wkv": torch.zeros(8)}),
    ],
)
def test_state_file_with_inconsistent_shapes(tmp_path, change):
    sd = _state().state_dict()
    change(sd)
    save_file(sd, tmp_path / "s.safetensors")
    with pytest.raises(CheckpointError, match="s.safetensors"):
        RWKVState.load(tmp_path / "s.safetensors")


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, b"\xff" * 8 + b"{}", (10**9).to_bytes(8, "little") + b"{"])
def test_state_file_that_is_not_safetensors(tmp_path, content):
    (tmp_path / "s.safetensors").write_bytes(content)
    with pytest.raises(CheckpointError, match="s.safetensors"):
        RWKVState.load(tmp_path / "s.safetensors")


def test_state_save_is_atomic_and_round_trips(tmp_path, monkeypatch):
    state = _state()
    state.save(tmp_path / "s.safetensors")
    import safetensors.torch

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        _state(n_layer=3).save(tmp_path / "s.safetensors")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors"]
    loaded = RWKVState.load(tmp_path / "s.safetensors")
    assert len(loaded) == 2 and torch.equal(loaded[0].wkv, state[0].wkv)
