"""TimeMix7 / ChannelMix7 / Block.rwkv7 on their own: official names and init, state carry, step, gradients,
the value residual and its errors, and scan policies moving v_first with the stream."""

import math

import pytest
import torch
from torch import nn

from rwkv_vision.layers import Block, ChannelMix7, TimeMix7, default_lora_sizes7
from rwkv_vision.scan import BiDir, Custom, ScannedBlock
from rwkv_vision.state import LayerState, TimeMixState

C, N = 32, 8


def _randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter random and non-zero (the official init zeroes several: a test on it would be weak)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = p.shape[-1] ** -0.5 if p.dim() == 2 else 0.3
            offset = 1.0 if name.endswith(("ln_x.weight", "ln1.weight", "ln2.weight", "ln0.weight")) else 0.0
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * scale + offset)
    return module


def _rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


def test_official_names_and_shapes():
    att = TimeMix7(C, head_size=N, d_w=3, d_a=4, d_v=5, d_g=6, layer_id=0, n_layer=2)
    shapes = {k: tuple(v.shape) for k, v in att.state_dict().items()}
    expected = {f"x_{z}": (1, 1, C) for z in "rwkvag"}
    expected.update({f"{z}0": (1, 1, C) for z in "wav"})
    expected.update({"w1": (C, 3), "w2": (3, C), "a1": (C, 4), "a2": (4, C), "v1": (C, 5), "v2": (5, C)})
    expected.update({"g1": (C, 6), "g2": (6, C), "k_k": (1, 1, C), "k_a": (1, 1, C), "r_k": (4, N)})
    expected.update({f"{z}.weight": (C, C) for z in ("receptance", "key", "value", "output")})
    expected.update({"ln_x.weight": (C,), "ln_x.bias": (C,)})
    assert shapes == expected
    ffn = ChannelMix7(C, layer_id=0, n_layer=2)
    assert {k: tuple(v.shape) for k, v in ffn.state_dict().items()} == {
        "x_k": (1, 1, C),
        "key.weight": (4 * C, C),
        "value.weight": (C, 4 * C),
    }


def test_default_lora_sizes_are_the_official_suggestions():
    assert default_lora_sizes7(768) == dict(d_w=64, d_a=64, d_v=32, d_g=128)
    # the released 1.5B file has 96/96/64/256: released models differ from the suggestion
    assert default_lora_sizes7(2048) == dict(d_w=128, d_a=128, d_v=64, d_g=224)


def test_init_follows_the_official_training_code():
    c, n, layer, n_layer = 64, 16, 1, 4
    att = TimeMix7(c, head_size=n, layer_id=layer, n_layer=n_layer)
    ratio_0_to_1, ratio_1_to_0 = layer / (n_layer - 1), 1 - layer / n_layer
    i = 5
    assert att.x_r[0, 0, i].item() == pytest.approx(1 - (i / c) ** (0.2 * ratio_1_to_0))
    assert att.x_w[0, 0, i].item() == pytest.approx(1 - (i / c) ** (0.9 * ratio_1_to_0))
    zig = ((i % n) - (n - 1) / 2) / ((n - 1) / 2)
    zig *= abs(zig)
    www = -6 + 6 * (i / (c - 1)) ** (1 + ratio_0_to_1**0.3)
    assert att.w0[0, 0, i].item() == pytest.approx(www + 0.5 + zig * 2.5, rel=1e-6)
    assert att.a0[0, 0, i].item() == pytest.approx(-0.19 + zig * 0.3 + (i / (c - 1) - 0.5) * 0.4, rel=1e-6)
    assert att.v0[0, 0, i].item() == pytest.approx(0.73 - (i / (c - 1) - 0.5) * 0.4, rel=1e-6)
    assert torch.all(att.r_k == -0.04) and torch.all(att.k_a == 1.02)
    for first, second in (("w1", "w2"), ("a1", "a2"), ("v1", "v2"), ("g1", "g2")):
        assert torch.all(getattr(att, first) == 0)
        w2 = getattr(att, second)  # orthogonal rows with gain 0.1
        assert torch.allclose(w2 @ w2.T, 0.01 * torch.eye(w2.shape[0]), atol=1e-5)
    assert torch.all(att.output.weight == 0)
    r = att.receptance.weight
    assert torch.allclose(r @ r.T, torch.eye(c), atol=1e-5)
    assert att.ln_x.weight[0].item() == pytest.approx(((1 + layer) / n_layer) ** 0.7)
    assert att.ln_x.eps == 64e-5
    ffn = ChannelMix7(c, layer_id=layer, n_layer=n_layer)
    assert ffn.x_k[0, 0, i].item() == pytest.approx(1 - (i / c) ** (ratio_1_to_0**4), rel=1e-6)
    assert torch.all(ffn.value.weight == 0)
    k = ffn.key.weight  # [4c, c]: orthonormal columns, gain 1 (generate_init_weight's plain gain)
    assert torch.allclose(k.T @ k, torch.eye(c), atol=1e-5)


def test_decay_is_in_the_official_range():
    att = _randomise(TimeMix7(C, head_size=N, layer_id=0, n_layer=1))
    from rwkv_vision.layers import log_decay7

    w = log_decay7(torch.randn(3, C) * 10, att.w0, att.w1, att.w2)
    assert w.dtype == torch.float32
    assert torch.all(w < 0) and torch.all(w > -math.exp(-0.5))


def _stack(n_layer=3, dtype=torch.float32, seed=0):
    blocks = [Block.rwkv7(n_embd=C, head_size=N, layer_id=i, n_layer=n_layer, dtype=dtype) for i in range(n_layer)]
    for i, b in enumerate(blocks):
        _randomise(b, seed + i)
    return blocks


def _run(blocks, x, states=None):
    v_first, out_states = None, []
    for i, b in enumerate(blocks):
        x, st, v_first = b(
            x, None if states is None else states[i], return_state=True, v_first=v_first, return_v_first=True
        )
        out_states.append(st)
    return x, out_states


@pytest.mark.parametrize("split", [1, 4, 6])
def test_state_carry_and_step_equal_one_pass(split):
    torch.manual_seed(0)
    blocks = _stack()
    x = torch.randn(2, 7, C)
    full, full_states = _run(blocks, x)
    first, states = _run(blocks, x[:, :split])
    second, states = _run(blocks, x[:, split:], states)
    assert _rel(torch.cat([first, second], 1), full) < 1e-5
    for a, b in zip(states, full_states):
        assert _rel(a.wkv, b.wkv) < 1e-5 and _rel(a.att_shift, b.att_shift) < 1e-5
    # step: token by token from the state after the first part
    _, states = _run(blocks, x[:, :split])
    states = [LayerState(*(t.clone() for t in (s.att_shift, s.wkv, s.ffn_shift))) for s in states]
    outs = []
    for ti in range(split, 7):
        h, v_first = x[:, ti], None
        for b, s in zip(blocks, states):
            h, v_first = b.step(h, s, v_first=v_first, return_v_first=True)
        outs.append(h)
    assert _rel(torch.stack(outs, 1), full[:, split:]) < 1e-5


def test_gradients_match_float64_and_reach_every_parameter_and_the_state():
    blocks32 = _stack(dtype=torch.float32)
    blocks64 = _stack(dtype=torch.float64)
    x = torch.randn(2, 5, C, dtype=torch.float64)
    s0 = [LayerState(torch.randn(2, C), torch.randn(2, C // N, N, N) * 0.3, torch.randn(2, C)) for _ in range(3)]
    results = []
    for blocks, dtype in ((blocks32, torch.float32), (blocks64, torch.float64)):
        xin = x.to(dtype).requires_grad_()
        wkv_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        states = [
            LayerState(
                s.att_shift.detach().to(dtype).requires_grad_(),
                s.wkv.detach().to(wkv_dtype).requires_grad_(),
                s.ffn_shift.detach().to(dtype).requires_grad_(),
            )
            for s in s0
        ]
        y, _ = _run(blocks, xin, states)
        (y * torch.linspace(-1, 1, C, dtype=dtype)).square().sum().backward()
        grads = {f"{i}.{n}": p.grad for i, b in enumerate(blocks) for n, p in b.named_parameters()}
        grads["x"] = xin.grad
        grads.update({f"state{i}.wkv": s.wkv.grad for i, s in enumerate(states)})
        grads.update({f"state{i}.att_shift": s.att_shift.grad for i, s in enumerate(states)})
        results.append(grads)
    g32, g64 = results
    unused = {"0.att.v0", "0.att.v1", "0.att.v2"}  # block 0 is the value-residual source
    for name, g in g64.items():
        if name in unused:
            assert g is None or torch.all(g == 0), name
            continue
        assert g is not None and g.abs().sum() > 0, f"no gradient for {name}"
        assert _rel(g32[name], g) < 1e-4, name


def test_value_residual_arguments_are_checked():
    first, later = _stack(n_layer=2)
    x = torch.randn(1, 4, C)
    with pytest.raises(ValueError, match="v_first"):
        later(x)  # a later layer needs layer 0's value
    y, v_first = first(x, return_v_first=True)
    with pytest.raises(ValueError, match="first layer"):
        first(x, v_first=v_first)
    with pytest.raises(ValueError, match="v_first must be"):
        later(x, v_first=v_first[:, :2])
    rwkv6 = Block.rwkv6(n_embd=C, head_size=N, layer_id=0, n_layer=1, embed_norm=True)
    with pytest.raises(TypeError, match="value-residual"):
        rwkv6(x, return_v_first=True)
    assert isinstance(first(x), torch.Tensor)  # a first block alone works like any block
    att = first.att
    out, st = att(torch.randn(1, 3, C), return_state=True)
    assert isinstance(st, TimeMixState) and st.wkv.shape == (1, C // N, N, N) and st.wkv.dtype == torch.float32


def _manual_layer(block, x, v_first, perm):
    """One layer reading the image span in the order ``perm`` (None: as is), by hand."""
    inv = None if perm is None else torch.argsort(perm)
    if perm is not None:
        x = x[:, perm]
        v_first = None if v_first is None else v_first[:, perm]
    y, v_out = block(x, v_first=v_first, return_v_first=True)
    if perm is not None:
        y, v_out = y[:, inv], v_out[:, inv]
    return y, v_out


@pytest.mark.parametrize("first_reversed", [False, True])
def test_scan_policies_move_v_first_with_the_stream(first_reversed):
    from rwkv_vision.image_tokens import ImageSpan

    blocks = _stack(n_layer=3)
    t = 9
    span = ImageSpan(start=0, rows=3, cols=3, cls=None)
    rev = list(range(8, -1, -1))
    policy = Custom([rev, None]) if first_reversed else BiDir()
    x = torch.randn(2, t, C)
    # by hand: the permutation of each layer, v_first moved along
    h, v_first = x, None
    for i, b in enumerate(blocks):
        order = policy.order(i, 3, 3)
        h, v_first = _manual_layer(b, h, v_first, None if order is None else torch.tensor(order))
    # through ScannedBlock, as a VLM runs its blocks
    y, v = x, None
    for i, b in enumerate(blocks):
        y, v = ScannedBlock(b, policy, i)(y, spans=[span], v_first=v, return_v_first=True)
    assert _rel(y, h) < 1e-6 and _rel(v, v_first) < 1e-6
    # and it differs from not scanning at all (the test has teeth)
    plain, _ = _run(blocks, x)
    assert _rel(plain, h) > 1e-3
