import pytest
import torch

from rwkv_vision.layers import TimeMix


def test_official_names_and_shapes():
    att = TimeMix(n_embd=32, head_size=8, d_mix=3, d_decay=5, layer_id=0, n_layer=1)
    shapes = {k: tuple(v.shape) for k, v in att.state_dict().items()}
    expected = {f"time_maa_{n}": (1, 1, 32) for n in "xwkvrg"}
    expected.update(
        {
            "time_maa_w1": (32, 15),
            "time_maa_w2": (5, 3, 32),
            "time_decay": (1, 1, 32),
            "time_decay_w1": (32, 5),
            "time_decay_w2": (5, 32),
            "time_faaaa": (4, 8),
            "ln_x.weight": (32,),
            "ln_x.bias": (32,),
        }
    )
    expected.update({f"{n}.weight": (32, 32) for n in ("receptance", "key", "value", "gate", "output")})
    assert shapes == expected


def test_static_variants_drop_the_lora_parameters():
    names = set(
        TimeMix(
            n_embd=32, head_size=8, data_dependent_lerp=False, data_dependent_decay=False, layer_id=0, n_layer=1
        ).state_dict()
    )
    assert not names & {"time_maa_x", "time_maa_w1", "time_maa_w2", "time_decay_w1", "time_decay_w2"}
    assert {"time_maa_w", "time_decay", "time_faaaa"} <= names


@pytest.mark.parametrize("static", [False, True])
def test_state_carry_equals_one_pass(static):
    torch.manual_seed(0)
    att = TimeMix(
        n_embd=32, head_size=8, data_dependent_lerp=not static, data_dependent_decay=not static, layer_id=0, n_layer=1
    )
    x = torch.randn(2, 9, 32)
    whole, (shift, wkv) = att(x, return_state=True)
    a, (s1, w1) = att(x[:, :4], return_state=True)
    b, (s2, w2) = att(x[:, 4:], (s1, w1), return_state=True)
    torch.testing.assert_close(torch.cat([a, b], 1), whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w2, wkv, rtol=1e-5, atol=1e-6)
    assert wkv.shape == (2, 4, 8, 8) and wkv.dtype == torch.float32
    assert torch.equal(s2, shift)


def test_head_size_must_divide_channels():
    with pytest.raises(ValueError, match="head_size"):
        TimeMix(n_embd=30, head_size=8, layer_id=0, n_layer=1)


def test_backend_is_chosen_by_argument_and_checked():
    torch.manual_seed(0)
    att = TimeMix(n_embd=32, head_size=8, layer_id=0, n_layer=1, backend="reference")
    x = torch.randn(2, 7, 32)
    reference = att(x)
    att.backend = "chunked"
    torch.testing.assert_close(att(x), reference, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="backend must be None or one of"):
        TimeMix(n_embd=32, head_size=8, layer_id=0, n_layer=1, backend="fast")


def test_step_equals_forward_one_token_at_a_time():
    torch.manual_seed(0)
    att = TimeMix(n_embd=32, head_size=8, d_mix=3, d_decay=5, layer_id=1, n_layer=3)
    x = torch.randn(2, 5, 32)
    whole, (shift, wkv) = att(x, return_state=True)
    s, w = torch.zeros(2, 32), torch.zeros(2, 4, 8, 8)
    steps = torch.stack([att.step(x[:, i], s, w) for i in range(5)], 1)
    torch.testing.assert_close(steps, whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w, wkv, rtol=1e-5, atol=1e-6)
    assert torch.equal(s, shift)
