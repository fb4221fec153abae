"""Hostile RWKV-7 files, in process and fast: expanded (stride-0) tensors that claim more than the file
holds, integer tensors for float parameters, config.json fields of the wrong kind, junk keys found before
anything is built. (The same attacks under a memory limit and an alarm: tests/adversarial/attacks.py.)"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from rwkv_vision.checkpoint.files import load_checkpoint
from rwkv_vision.checkpoint.lm import load_language_model
from rwkv_vision.errors import CheckpointError, StateDictError
from rwkv_vision.models.visualrwkv import VisualRWKV

from reference.visualrwkv7_ref import random_x070_state_dict


@pytest.fixture(scope="module")
def x070():
    return random_x070_state_dict(n_layer=2)


def test_an_expanded_tensor_is_refused_before_any_cast(tmp_path, x070):
    sd = dict(x070)
    sd["emb.weight"] = torch.zeros(1).expand(2**24, 32)  # 2 GB as float32, 4 bytes stored
    torch.save(sd, tmp_path / "e.pth")
    for dtype in (None, torch.float32):
        with pytest.raises(CheckpointError, match=r"'emb.weight' of shape \[16777216, 32\] needs 2147483648 bytes"):
            load_language_model(tmp_path / "e.pth", dtype=dtype)


def test_dense_views_and_size_one_broadcasts_still_load(tmp_path):
    base = torch.arange(12.0)
    sd = {"a": base[2:8].view(2, 3), "b": torch.ones(5).expand(1, 5), "c": torch.zeros(0, 4)}
    torch.save(sd, tmp_path / "ok.pth")
    out = load_checkpoint(tmp_path / "ok.pth", dtype=torch.float64)
    assert all(torch.equal(out[k], sd[k].double()) for k in sd)


def test_integer_tensors_for_float_parameters(tmp_path, x070):
    sd = dict(x070)
    sd["blocks.1.att.k_k"] = sd["blocks.1.att.k_k"].to(torch.int32)
    torch.save(sd, tmp_path / "i.pth")
    with pytest.raises(StateDictError, match=r"blocks.1.att.k_k \(torch.int32\).* must be floating point"):
        load_language_model(tmp_path / "i.pth")


@pytest.mark.parametrize("value", [["rwkv7"], {"a": 1}, 7])
def test_architecture_of_the_wrong_kind(tmp_path, ckpt, value):
    config = json.loads((ckpt / "config.json").read_text())
    config["architecture"] = value
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="architecture must be one of"):
        VisualRWKV.from_pretrained(ckpt)


def test_padding_token_outside_the_vocabulary(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    config["padding"] = {"multiple": 16, "token": config["rwkv"]["vocab_size"]}
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="padding.token must be an id below rwkv.vocab_size"):
        VisualRWKV.from_pretrained(ckpt)


def test_language_model_directory_architecture_of_the_wrong_kind(tmp_path, x070):
    from rwkv_vision.checkpoint.lm import save_language_model
    from rwkv_vision.checkpoint.official import rwkv7_from_official_state_dict

    out = save_language_model(rwkv7_from_official_state_dict(x070), tmp_path / "lm")
    config = json.loads((out / "config.json").read_text())
    config["architecture"] = ["rwkv7"]
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="architecture must be one of"):
        load_language_model(out)
    shutil.rmtree(out)


@pytest.mark.parametrize("value", [0, -4, 15, 4.0, True, "16", float("nan")])
def test_num_token_per_image_must_be_a_positive_square_int(value):
    from rwkv_vision.checkpoint.families import visualrwkv7_from_official_state_dict
    from rwkv_vision.vision import encoder_to_v7_state_dict, tiny_visualrwkv7_encoder

    from reference.visualrwkv7_ref import random_v700_checkpoint

    towers = {
        k: torch.ones(v.shape) for k, v in encoder_to_v7_state_dict(tiny_visualrwkv7_encoder(device="meta")).items()
    }
    sd = random_v700_checkpoint(tower_sd=towers, vision_width=144, n_layer=1, n_embd=32, head_size=8)
    with pytest.raises(ValueError, match="num_token_per_image must be a square number of tokens"):
        visualrwkv7_from_official_state_dict(sd, num_token_per_image=value)


def test_assign_state_dict_is_load_state_dict_child_by_child(x070):
    from rwkv_vision.checkpoint.diff import assign_state_dict
    from rwkv_vision.checkpoint.official import config_from_official_x070_state_dict
    from rwkv_vision.models.rwkv7 import RWKV7

    sd = {k: v for k, v in x070.items()}
    sd.update({f"blocks.0.att.{n}": torch.zeros(s) for n, s in (("v0", (1, 1, 32)), ("v1", (32, 4)), ("v2", (4, 32)))})
    model = RWKV7(config_from_official_x070_state_dict(sd), device="meta")
    assign_state_dict(model, sd)
    got = model.state_dict()
    assert got.keys() == sd.keys() and all(got[k] is sd[k] or got[k].data_ptr() == sd[k].data_ptr() for k in sd)
    for broken in (
        {k: v for k, v in sd.items() if k != "blocks.1.ffn.key.weight"},
        {**sd, "blocks.1.junk": torch.ones(1)},
    ):
        with pytest.raises(RuntimeError, match="Missing key|Unexpected key"):
            assign_state_dict(RWKV7(model.config, device="meta"), broken)
