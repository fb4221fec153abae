import pytest
import torch

from rwkv_vision.layers import TokenShift, token_shift


def test_shift_starts_from_zeros_and_returns_last_token():
    x = torch.randn(2, 5, 3)
    x_prev, state = TokenShift()(x)
    assert torch.equal(x_prev[:, 0], torch.zeros(2, 3))
    assert torch.equal(x_prev[:, 1:], x[:, :-1])
    assert torch.equal(state, x[:, -1])


def test_carried_state_makes_chunks_equal_one_pass():
    x = torch.randn(2, 7, 4)
    whole, _ = token_shift(x)
    first, state = token_shift(x[:, :3])
    second, _ = token_shift(x[:, 3:], state)
    assert torch.equal(torch.cat([first, second], 1), whole)


def test_state_of_wrong_shape_is_named():
    with pytest.raises(ValueError, match="state must be"):
        token_shift(torch.randn(2, 3, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="x must be"):
        token_shift(torch.randn(3, 4))
