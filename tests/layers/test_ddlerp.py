import torch

from rwkv_vision.layers import DDLerp, token_shift


def _lerp(**kw):
    torch.manual_seed(0)
    lerp = DDLerp(n_embd=16, d_mix=4, layer_id=1, n_layer=3, **kw)
    with torch.no_grad():
        for p in lerp.parameters():  # larger than the init so the LoRA visibly matters
            p.normal_()
    return lerp


def test_official_names_and_shapes():
    shapes = {k: tuple(v.shape) for k, v in DDLerp(n_embd=16, d_mix=4, layer_id=0, n_layer=1).state_dict().items()}
    assert shapes == {
        **{f"time_maa_{n}": (1, 1, 16) for n in "xwkvrg"},
        "time_maa_w1": (16, 20),
        "time_maa_w2": (5, 4, 16),
    }


def test_matches_the_formula_in_order_w_k_v_r_g():
    lerp = _lerp()
    x = torch.randn(2, 6, 16)
    x_prev, _ = token_shift(x)
    xx = x_prev - x
    m = torch.tanh((x + xx * lerp.time_maa_x) @ lerp.time_maa_w1)
    for j, (name, out) in enumerate(zip("wkvrg", lerp(x, x_prev))):
        m_j = m[..., 4 * j : 4 * (j + 1)] @ lerp.time_maa_w2[j]
        expected = x + xx * (getattr(lerp, f"time_maa_{name}") + m_j)
        torch.testing.assert_close(out, expected)


def test_chunk_j_of_the_lora_only_moves_output_j():
    lerp = _lerp()
    x = torch.randn(1, 5, 16)
    x_prev, _ = token_shift(x)
    before = lerp(x, x_prev)
    with torch.no_grad():
        lerp.time_maa_w2[3] += 1.0  # chunk 3 is r
    after = lerp(x, x_prev)
    changed = [not torch.allclose(a, b) for a, b in zip(before, after)]
    assert changed == [False, False, False, True, False]


def test_static_variant_is_a_plain_lerp():
    lerp = _lerp(data_dependent=False)
    assert set(lerp.state_dict()) == {f"time_maa_{n}" for n in "wkvrg"}
    x = torch.randn(2, 4, 16)
    x_prev, _ = token_shift(x)
    for name, out in zip("wkvrg", lerp(x, x_prev)):
        torch.testing.assert_close(out, x + (x_prev - x) * getattr(lerp, f"time_maa_{name}"))


def test_init_is_deterministic_and_spread():
    torch.manual_seed(3)
    a = DDLerp(n_embd=32, d_mix=4, layer_id=0, n_layer=1)
    torch.manual_seed(3)
    b = DDLerp(n_embd=32, d_mix=4, layer_id=0, n_layer=1)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
        assert pa.abs().sum() > 0, name
    assert a.time_maa_k.min() < a.time_maa_k.max()
