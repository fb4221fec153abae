"""Config dataclasses: one frozen source of every hyperparameter, with errors that name the field."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from rwkv_vision import RWKV6, VisualRWKV
from rwkv_vision.errors import ConfigError
from rwkv_vision.models import RWKV6Config, create_model, get_config
from rwkv_vision.models.config import VisualRWKVConfig
from rwkv_vision.pretrained import load_toy_model


def test_rwkv6_config_is_frozen_and_resolves_dim_ffn():
    config = RWKV6Config(n_layer=2, n_embd=64, head_size=32)
    assert config.dim_ffn == 224 and config.n_head == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.n_layer = 3


def test_model_is_built_from_its_config_and_returns_it():
    config = RWKV6Config(n_layer=2, n_embd=32, head_size=8, d_mix=4, d_decay=4, vocab_size=20)
    model = RWKV6(config, device="meta")
    assert model.config is config
    assert RWKV6(n_layer=2, n_embd=32, head_size=8, d_mix=4, d_decay=4, vocab_size=20, device="meta").config == config
    with pytest.raises(TypeError, match="not both"):
        RWKV6(config, n_layer=3)


def test_registry_holds_configs():
    assert isinstance(get_config("rwkv6-7b"), RWKV6Config)
    assert create_model("rwkv6-test-tiny", n_layer=1, device="meta").config == get_config("rwkv6-test-tiny").replace(
        n_layer=1
    )


@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(n_layer=0, n_embd=64), "n_layer must be >= 1"),
        (dict(n_layer=10**9, n_embd=64), r"n_layer must be >= 1 and <= 1024"),
        (dict(n_layer=2, n_embd=30, head_size=8), "multiple of head_size"),
        (dict(n_layer=2, n_embd=64, vocab_size=2.5), "vocab_size must be an int"),
        (dict(n_layer=2, n_embd=64, data_dependent_lerp=1), "data_dependent_lerp must be True or False"),
    ],
)
def test_invalid_values_name_the_field(fields, match):
    with pytest.raises(ConfigError, match=match):
        RWKV6Config(**fields)


def test_dict_round_trip_and_unknown_fields():
    config = get_config("rwkv6-1b6")
    data = json.loads(json.dumps(config.to_dict()))
    assert RWKV6Config.from_dict(data) == config
    with pytest.raises(ConfigError, match=r"config.json has unknown field\(s\) \['n_layers'\]"):
        RWKV6Config.from_dict({**data, "n_layers": 3}, source="config.json")
    with pytest.raises(ConfigError, match=r"rwkv.vocab_size is missing"):
        RWKV6Config.from_dict({k: v for k, v in data.items() if k != "vocab_size"})


def test_visualrwkv_config_round_trip_rebuilds_the_same_architecture():
    model = load_toy_model()
    config = model.config
    assert isinstance(config, VisualRWKVConfig) and config.rwkv == model.rwkv.config
    assert VisualRWKVConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    rebuilt = VisualRWKV.from_config(config)
    assert rebuilt.config == config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    with pytest.raises(TypeError):
        config.scan["name"] = "unidir"  # the sections are read-only
    assert isinstance(next(rebuilt.parameters()), torch.Tensor)
