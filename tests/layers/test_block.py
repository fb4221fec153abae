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
            self.blocks = nn.ModuleList(Block.rwkv6(layer_id=i, n_layer=2, n_embd=32, head_size=8, embed_norm=i == 0) for i in range(2))
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
