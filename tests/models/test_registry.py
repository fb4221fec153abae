import pytest

from rwkv_vision import create_model
from rwkv_vision.models import get_config, list_models, register_model


def test_tiny_config_and_overrides():
    model = create_model("rwkv6-test-tiny", n_layer=3)
    assert model.n_layer == 3 and model.n_embd == 64 and model.head_size == 32


@pytest.mark.parametrize(
    "name, layers, channels, ffn, billions",
    [("rwkv6-1b6", 24, 2048, 7168, 1.6), ("rwkv6-3b", 32, 2560, 8960, 3.1), ("rwkv6-7b", 32, 4096, 14336, 7.6)],
)
def test_official_sizes(name, layers, channels, ffn, billions):
    model = create_model(name, device="meta")
    sizes = (model.n_layer, model.n_embd, model.config.dim_ffn, model.n_head)
    assert sizes == (layers, channels, ffn, channels // 64)
    params = sum(p.numel() for p in model.parameters()) / 1e9
    assert abs(params - billions) < 0.1


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="rwkv6-test-tiny"):
        get_config("nope")


def test_register_model():
    register_model("rwkv6-test-register", dict(n_layer=1, n_embd=32, head_size=16, vocab_size=10))
    assert "rwkv6-test-register" in list_models()
    assert create_model("rwkv6-test-register").n_head == 2
    with pytest.raises(ValueError, match="already registered"):
        register_model("rwkv6-test-register", {})
