import pytest
import torch

from rwkv_vision import RWKVState, create_model
from rwkv_vision.state import LayerState

from reference.fixtures import one_cpu_thread  # noqa: F401


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("rwkv6-test-tiny")


def _prompt(b=3, t=6, seed=0):
    return torch.randint(0, 256, (b, t), generator=torch.Generator().manual_seed(seed))


def _equal(a: RWKVState, b: RWKVState):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_layout(model):
    _, state = model(input_ids=_prompt())
    assert len(state) == 2 and state.batch_size == 3
    assert isinstance(state[0], LayerState)
    assert state[1].att_shift.shape == (3, 64) and state[1].ffn_shift.shape == (3, 64)
    assert state[1].wkv.shape == (3, 2, 32, 32) and state[1].wkv.dtype == torch.float32
    assert "n_layer=2" in repr(state)


def test_zeros_matches_init_state(model):
    zeros = RWKVState.zeros(n_layer=2, batch_size=2, n_embd=64, n_head=2, head_size=32)
    assert _equal(zeros, model.init_state(2))
    assert all(t.abs().sum() == 0 for t in zeros.state_dict().values())


def test_clone_is_independent(model):
    _, state = model(input_ids=_prompt())
    copy = state.clone()
    state[0].wkv.add_(1.0)
    assert not torch.equal(copy[0].wkv, state[0].wkv)


def test_resuming_from_a_clone_twice_gives_the_same_logits(model):
    _, state = model(input_ids=_prompt())
    saved = state.clone()
    a, _ = model(input_ids=_prompt(seed=1), state=state)
    b, _ = model(input_ids=_prompt(seed=1), state=saved)
    torch.testing.assert_close(a, b)


def test_state_dict_round_trip_and_safetensors(model, tmp_path):
    _, state = model(input_ids=_prompt())
    flat = state.state_dict()
    assert set(flat) == {f"blocks.{i}.{n}" for i in range(2) for n in ("att_shift", "wkv", "ffn_shift")}
    assert _equal(RWKVState.from_state_dict(flat), state)
    state.save(tmp_path / "state.safetensors")
    loaded = RWKVState.load(tmp_path / "state.safetensors")
    assert _equal(loaded, state.detach())
    broken = {k: v for k, v in flat.items() if k != "blocks.1.wkv"} | {"blocks.1.wkv2": flat["blocks.1.wkv"]}
    with pytest.raises(ValueError, match="missing keys \\['blocks.1.wkv'\\], unexpected keys \\['blocks.1.wkv2'\\]"):
        RWKVState.from_state_dict(broken)


def test_to_keeps_wkv_in_float32(model):
    _, state = model(input_ids=_prompt())
    half = state.to(dtype=torch.bfloat16)
    assert half[0].att_shift.dtype == torch.bfloat16 and half[0].wkv.dtype == torch.float32
    assert state.to("cpu").device.type == "cpu"


def test_batch_select_cat_where(model):
    ids = _prompt()
    _, state = model(input_ids=ids)
    _, row1 = model(input_ids=ids[1:2])
    picked = state.select(1)
    assert picked.batch_size == 1
    torch.testing.assert_close(picked[0].wkv, row1[0].wkv, rtol=1e-5, atol=1e-6)
    assert state.select(-1).batch_size == 1 and state.select([0, 2]).batch_size == 2
    joined = RWKVState.cat([state.select(0), state.select(slice(1, 3))])
    assert _equal(joined, state)
    zeros = model.init_state(3)
    mixed = state.where(torch.tensor([True, False, True]), zeros)
    assert torch.equal(mixed[0].wkv[0], state[0].wkv[0]) and mixed[0].wkv[1].abs().sum() == 0


def test_layers_must_be_layer_states():
    with pytest.raises(TypeError, match="LayerState"):
        RWKVState([torch.zeros(1)])
