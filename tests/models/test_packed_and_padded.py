"""Several sequences of different lengths in one call: packed (cu_seqlens) or padded (attention_mask, left or
right), through token shift, TimeMix, ChannelMix, Block and RWKV6. Each sequence's outputs, state and
gradients equal those of the sequence run alone."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rwkv_vision import create_model
from rwkv_vision.layers import Block
from rwkv_vision.layers.token_shift import token_shift
from rwkv_vision.ops import pack_offsets
from rwkv_vision.state import LayerState, RWKVState

TOL = dict(atol=2e-5, rtol=2e-5)


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return create_model("rwkv6-test-tiny").eval()


def _ids(t, seed):
    return torch.randint(1, 256, (1, t), generator=torch.Generator().manual_seed(seed))


def assert_states_close(a, b):
    for la, lb in zip(a, b):
        for name in ("att_shift", "wkv", "ffn_shift"):
            torch.testing.assert_close(getattr(la, name), getattr(lb, name), **TOL)


# --- token shift -------------------------------------------------------------------------------------------


def test_packed_token_shift_never_reads_the_previous_sequence():
    x = torch.arange(1.0, 8.0).view(1, 7, 1)  # sequences [1, 2], [], [3, 4, 5], [6, 7]
    cu = pack_offsets([2, 0, 3, 2])
    state = torch.tensor([[-1.0], [-2.0], [-3.0], [-4.0]])
    prev, new = token_shift(x, state, cu_seqlens=cu)
    assert prev.flatten().tolist() == [-1, 1, -3, 3, 4, -4, 6]
    assert new.flatten().tolist() == [2, -2, 5, 7]  # the empty sequence keeps its state
    prev, new = token_shift(x, None, cu_seqlens=cu)
    assert prev.flatten().tolist() == [0, 1, 0, 3, 4, 0, 6] and new.flatten().tolist() == [2, 0, 5, 7]


def test_masked_token_shift_skips_left_and_right_padding():
    x = torch.arange(1.0, 6.0).view(1, 5, 1).repeat(3, 1, 1)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    state = torch.tensor([[-1.0], [-2.0], [-3.0]])
    prev, new = token_shift(x, state, mask=mask)
    assert prev[0, 2:].flatten().tolist() == [-1, 3, 4]  # the first real token starts from the state
    assert prev[1, :3].flatten().tolist() == [-2, 1, 2]
    assert new.flatten().tolist() == [5, 3, -3]  # each row's last token; a row of padding keeps its state


# --- layers and models: packed --------------------------------------------------------------------------------


def test_block_packed_equals_each_sequence_alone_with_gradients():
    torch.manual_seed(1)
    block = Block.rwkv6(n_embd=32, head_size=8, layer_id=0, n_layer=2, embed_norm=True)
    lengths = [5, 1, 8]
    xs = [torch.randn(1, t, 32) for t in lengths]
    packed = torch.cat(xs, dim=1).requires_grad_(True)
    y, state = block(packed, return_state=True, cu_seqlens=pack_offsets(lengths))
    assert state.wkv.shape[0] == 3
    g = torch.randn_like(y)
    (y * g).sum().backward()
    start = 0
    for i, (x, t) in enumerate(zip(xs, lengths)):
        x = x.clone().requires_grad_(True)
        y_alone, s_alone = block(x, return_state=True)
        torch.testing.assert_close(y[:, start : start + t], y_alone, **TOL)
        for name in ("att_shift", "wkv", "ffn_shift"):
            torch.testing.assert_close(getattr(state, name)[i : i + 1], getattr(s_alone, name), **TOL)
        (y_alone * g[:, start : start + t]).sum().backward()
        torch.testing.assert_close(packed.grad[:, start : start + t], x.grad, **TOL)
        start += t


def test_block_packed_continues_from_per_sequence_states():
    torch.manual_seed(2)
    block = Block.rwkv6(n_embd=32, head_size=8, layer_id=1, n_layer=2, embed_norm=False)
    first = [torch.randn(1, t, 32) for t in (3, 4)]
    second = [torch.randn(1, t, 32) for t in (2, 5)]
    states = [block(x, return_state=True)[1] for x in first]
    stacked = LayerState(*(torch.cat([getattr(s, f) for s in states]) for f in ("att_shift", "wkv", "ffn_shift")))
    y, _ = block(torch.cat(second, 1), stacked, return_state=True, cu_seqlens=pack_offsets([2, 5]))
    torch.testing.assert_close(y[:, :2], block(second[0], states[0]), **TOL)
    torch.testing.assert_close(y[:, 2:], block(second[1], states[1]), **TOL)


@settings(max_examples=8, deadline=None)
@given(lengths=st.lists(st.integers(1, 9), min_size=1, max_size=4), seed=st.integers(0, 50))
def test_rwkv6_packed_logits_and_states_equal_each_sequence_alone(lm, lengths, seed):
    seqs = [_ids(t, seed + i) for i, t in enumerate(lengths)]
    out = lm(torch.cat(seqs, 1), cu_seqlens=pack_offsets(lengths))
    assert out.state[0].wkv.shape[0] == len(lengths)
    start = 0
    for i, ids in enumerate(seqs):
        alone = lm(ids)
        torch.testing.assert_close(out.logits[:, start : start + ids.shape[1]], alone.logits, **TOL)
        assert_states_close(out.state.select(i), alone.state)
        start += ids.shape[1]


def test_rwkv6_packed_loss_never_crosses_a_boundary(lm):
    seqs = [_ids(t, 10 + t) for t in (4, 6, 3)]
    ids = torch.cat(seqs, 1)
    out = lm(ids, labels=ids, cu_seqlens=pack_offsets([4, 6, 3]))
    logits = torch.cat([lm(s).logits[0, :-1] for s in seqs])
    targets = torch.cat([s[0, 1:] for s in seqs])
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(logits, targets), **TOL)


def test_rwkv6_packed_refuses_what_it_cannot_do(lm):
    ids = _ids(6, 0)
    with pytest.raises(ValueError, match="not both"):
        lm(ids, cu_seqlens=pack_offsets([2, 4]), attention_mask=torch.ones(1, 6))
    with pytest.raises(ValueError, match="chunk_size"):
        lm(ids, cu_seqlens=pack_offsets([2, 4]), chunk_size=2)
    with pytest.raises(ValueError, match="from 0 to t = 6"):
        lm(ids, cu_seqlens=pack_offsets([2, 3]))
    with pytest.raises(ValueError, match="state"):
        lm(ids, cu_seqlens=pack_offsets([2, 4]), state=lm.init_state(1))


# --- padded: left and right -------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["left", "right"])
def test_rwkv6_padded_rows_equal_each_row_alone(lm, side):
    seqs = [_ids(t, 20 + t) for t in (7, 3, 5)]
    t = 7
    rows, masks = [], []
    for s in seqs:
        pad = torch.zeros(1, t - s.shape[1], dtype=torch.long)
        ones, zeros = torch.ones_like(s), torch.zeros_like(pad)
        rows.append(torch.cat([pad, s] if side == "left" else [s, pad], 1))
        masks.append(torch.cat([zeros, ones] if side == "left" else [ones, zeros], 1))
    ids, mask = torch.cat(rows), torch.cat(masks)
    out = lm(ids, attention_mask=mask, labels=ids)
    logits, targets = [], []
    for i, s in enumerate(seqs):
        alone = lm(s)
        real = mask[i].bool()
        torch.testing.assert_close(out.logits[i, real], alone.logits[0], **TOL)
        assert_states_close(out.state.select(i), alone.state)
        logits.append(alone.logits[0, :-1])
        targets.append(s[0, 1:])
    want = torch.nn.functional.cross_entropy(torch.cat(logits), torch.cat(targets))
    torch.testing.assert_close(out.loss, want, **TOL)


def test_rwkv6_left_padded_continuation_from_a_state(lm):
    # A batch continuing from states, its new tokens left-padded: each row as if read alone.
    a, b = _ids(4, 1), _ids(2, 2)
    state = RWKVState.cat([lm(_ids(3, 3)).state, lm(_ids(5, 4)).state])
    ids = torch.cat([a, torch.cat([torch.zeros(1, 2, dtype=torch.long), b], 1)])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    out = lm(ids, state=state, attention_mask=mask, chunk_size=3)
    alone = lm(b, state=state.select(1))
    torch.testing.assert_close(out.logits[1, 2:], alone.logits[0], **TOL)
    assert_states_close(out.state.select(1), alone.state)
    torch.testing.assert_close(out.logits[0], lm(a, state=state.select(0)).logits[0], **TOL)
