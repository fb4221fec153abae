import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rwkv_vision.layers import Block

torch.manual_seed(0)
BLOCK0 = Block.rwkv6(layer_id=0, n_layer=2, n_embd=32, head_size=8, d_mix=4, d_decay=4, embed_norm=True)
BLOCK1 = Block.rwkv6(layer_id=1, n_layer=2, n_embd=32, head_size=8, d_mix=4, d_decay=4, embed_norm=False)


def test_ln0_only_in_block_zero():
    assert any(k.startswith("ln0.") for k in BLOCK0.state_dict())
    assert not any(k.startswith("ln0.") for k in BLOCK1.state_dict())


def test_block_math():
    x = torch.randn(2, 5, 32)
    y, state = BLOCK1(x, return_state=True)
    dx = BLOCK1.att(BLOCK1.ln1(x))
    h = x + dx
    dh = BLOCK1.ffn(BLOCK1.ln2(h))
    torch.testing.assert_close(y, h + dh)
    assert state.att_shift.shape == (2, 32) and state.wkv.shape == (2, 4, 8, 8) and state.ffn_shift.shape == (2, 32)


@settings(max_examples=8, deadline=None)
@given(split=st.integers(1, 10))
def test_split_anywhere_with_state_equals_one_pass(split):
    x = torch.randn(1, 11, 32, generator=torch.Generator().manual_seed(split))
    whole, whole_state = BLOCK0(x, return_state=True)
    a, state = BLOCK0(x[:, :split], return_state=True)
    b, state = BLOCK0(x[:, split:], state, return_state=True)
    torch.testing.assert_close(torch.cat([a, b], 1), whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state.wkv, whole_state.wkv, rtol=1e-5, atol=1e-5)


def test_block_drops_into_another_model():
    class Tagger(nn.Module):  # e.g. a sequence labeller built from two RWKV-6 blocks
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(3, 32)
            self.blocks = nn.ModuleList(
                Block.rwkv6(layer_id=i, n_layer=2, n_embd=32, head_size=8, embed_norm=i == 0) for i in range(2)
            )
            self.out = nn.Linear(32, 4)

        def forward(self, x):
            x = self.inp(x)
            for block in self.blocks:
                x = block(x)
            return self.out(x)

    model = Tagger()
    y = model(torch.randn(2, 6, 3))
    y.sum().backward()
    assert y.shape == (2, 6, 4)
    assert all(p.grad is not None for p in model.parameters())


def test_step_equals_forward_and_updates_the_state_in_place():
    from rwkv_vision.state import LayerState

    x = torch.randn(2, 6, 32)
    whole, whole_state = BLOCK0(x, return_state=True)
    state = LayerState(att_shift=torch.zeros(2, 32), wkv=torch.zeros(2, 4, 8, 8), ffn_shift=torch.zeros(2, 32))
    steps = torch.stack([BLOCK0.step(x[:, i], state) for i in range(6)], 1)
    torch.testing.assert_close(steps, whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state.wkv, whole_state.wkv, rtol=1e-5, atol=1e-5)


def test_block_takes_any_mixer_and_mlp():
    class Causal(nn.Module):  # a stand-in mixer: a running mean, with the mixer's interface
        def __init__(self, dim, device=None, dtype=None):
            super().__init__()
            self.proj = nn.Linear(dim, dim, device=device, dtype=dtype)

        def forward(self, x, state=None, *, return_state=False):
            y = self.proj(x.cumsum(1) / torch.arange(1, x.shape[1] + 1).view(1, -1, 1))
            return (y, (x[:, -1], None)) if return_state else y

    block = Block(32, Causal, _Plain)
    assert block.ln0 is None and isinstance(block.att, Causal)
    assert block(torch.randn(2, 5, 32)).shape == (2, 5, 32)
    y, state = block(torch.randn(2, 5, 32), return_state=True)
    assert y.shape == (2, 5, 32) and state.ffn_shift.shape == (2, 32)


class _Plain(nn.Module):
    def __init__(self, dim, device=None, dtype=None):
        super().__init__()
        self.fc = nn.Linear(dim, dim, device=device, dtype=dtype)

    def forward(self, x, state=None, *, return_state=False):
        y = self.fc(x)
        return (y, x[:, -1]) if return_state else y


def test_embed_norm_is_explicit():
    a = Block.rwkv6(n_embd=32, head_size=8, layer_id=3, n_layer=4, embed_norm=True)
    b = Block.rwkv6(n_embd=32, head_size=8, layer_id=0, n_layer=4, embed_norm=False)
    assert a.ln0 is not None and b.ln0 is None
