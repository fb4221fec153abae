import torch

from rwkv_vision.layers import DataDependentDecay


def test_log_decay_matches_formula_in_float32():
    torch.manual_seed(0)
    decay = DataDependentDecay(n_embd=16, d_decay=5, layer_id=0, n_layer=1)
    with torch.no_grad():
        decay.time_decay_w1.normal_()
        decay.time_decay_w2.normal_()
    x_w = torch.randn(2, 7, 16)
    w = decay(x_w)
    expected = -torch.exp(decay.time_decay + torch.tanh(x_w @ decay.time_decay_w1) @ decay.time_decay_w2)
    assert w.dtype == torch.float32 and w.shape == (2, 7, 16)
    torch.testing.assert_close(w, expected)
    assert (w < 0).all()
    assert not torch.allclose(w[:, 0], w[:, 1])  # the decay depends on the token


def test_bfloat16_input_gives_float32_log_decay():
    decay = DataDependentDecay(n_embd=16, d_decay=5, layer_id=0, n_layer=1, dtype=torch.bfloat16)
    assert decay(torch.randn(1, 3, 16, dtype=torch.bfloat16)).dtype == torch.float32


def test_static_variant_ignores_the_token():
    decay = DataDependentDecay(n_embd=16, data_dependent=False, layer_id=0, n_layer=1)
    assert set(decay.state_dict()) == {"time_decay"}
    w = decay(torch.randn(2, 4, 16))
    assert w.shape == (2, 4, 16)
    torch.testing.assert_close(w, (-torch.exp(decay.time_decay)).expand(2, 4, 16))


def test_official_shapes_and_spread_init():
    decay = DataDependentDecay(n_embd=32, d_decay=6, layer_id=2, n_layer=4)
    shapes = {k: tuple(v.shape) for k, v in decay.state_dict().items()}
    assert shapes == {"time_decay": (1, 1, 32), "time_decay_w1": (32, 6), "time_decay_w2": (6, 32)}
    assert decay.time_decay.max() - decay.time_decay.min() > 3  # a spread of time scales
