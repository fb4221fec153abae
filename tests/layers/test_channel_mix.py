import torch

from rwkv_vision.layers import ChannelMix, default_dim_ffn


def test_default_dim_ffn_is_official():
    assert default_dim_ffn(2048) == 7168 and default_dim_ffn(2560) == 8960 and default_dim_ffn(4096) == 14336


def test_matches_formula_and_official_shapes():
    torch.manual_seed(0)
    ffn = ChannelMix(n_embd=16, dim_ffn=40, layer_id=0, n_layer=1)
    shapes = {k: tuple(v.shape) for k, v in ffn.state_dict().items()}
    assert shapes == {
        "time_maa_k": (1, 1, 16),
        "time_maa_r": (1, 1, 16),
        "key.weight": (40, 16),
        "receptance.weight": (16, 16),
        "value.weight": (16, 40),
    }
    x = torch.randn(2, 5, 16)
    state = torch.randn(2, 16)
    out, new_state = ffn(x, state, return_state=True)
    x_prev = torch.cat([state[:, None], x[:, :-1]], 1)
    xk = x + (x_prev - x) * ffn.time_maa_k
    xr = x + (x_prev - x) * ffn.time_maa_r
    hidden = torch.relu(xk @ ffn.key.weight.T) ** 2
    expected = torch.sigmoid(xr @ ffn.receptance.weight.T) * (hidden @ ffn.value.weight.T)
    torch.testing.assert_close(out, expected)
    assert torch.equal(new_state, x[:, -1])


def test_step_equals_forward_one_token_at_a_time():
    torch.manual_seed(0)
    ffn = ChannelMix(n_embd=16, dim_ffn=40, layer_id=1, n_layer=2)
    x = torch.randn(2, 4, 16)
    whole, shift = ffn(x, return_state=True)
    s = torch.zeros(2, 16)
    steps = torch.stack([ffn.step(x[:, i], s) for i in range(4)], 1)
    torch.testing.assert_close(steps, whole)
    assert torch.equal(s, shift)
