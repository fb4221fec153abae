import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rwkv_vision import RWKV6, RWKVState, create_model
from rwkv_vision.checkpoint.official import config_from_official_state_dict
from rwkv_vision.errors import StateDictError

from reference.rwkv6_ref import random_official_state_dict, relative_rms_error, rwkv6_reference_logits

SIZES = dict(n_layer=3, n_embd=32, head_size=8, dim_ffn=64, d_mix=4, d_decay=6, vocab_size=50)


@pytest.fixture(scope="module")
def official():
    return random_official_state_dict(**SIZES, seed=0)


@pytest.fixture(scope="module")
def model(official):
    return RWKV6.from_official_state_dict(official)


def _ids(b, t, seed=0, vocab=50):
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


# --- faithfulness ---------------------------------------------------------------------------------------


def test_logits_match_the_independent_float64_reference(official, model):
    ids = _ids(2, 16)
    logits, _ = model(input_ids=ids)
    reference = rwkv6_reference_logits(official, ids)
    assert logits.dtype == torch.float32
    assert relative_rms_error(logits, reference) < 1e-5


def test_reference_agreement_with_other_sizes():
    sizes = dict(n_layer=2, n_embd=48, head_size=16, dim_ffn=96, d_mix=2, d_decay=3, vocab_size=30)
    sd = random_official_state_dict(**sizes, seed=5)
    ids = _ids(1, 10, vocab=30)
    logits, _ = RWKV6.from_official_state_dict(sd)(input_ids=ids)
    assert relative_rms_error(logits, rwkv6_reference_logits(sd, ids)) < 1e-5


def test_every_size_is_inferred_from_shapes(official, model):
    assert config_from_official_state_dict(official).to_dict() == dict(
        **SIZES, data_dependent_lerp=True, data_dependent_decay=True
    )
    assert model.n_head == 4 and model.config.dim_ffn == 64


def test_state_dict_keys_are_the_official_keys(official, model):
    assert set(model.state_dict()) == set(official)
    assert set(model.official_state_dict()) == set(official)
    fresh = RWKV6(**SIZES)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in official.items()}


# --- strict loading ---------------------------------------------------------------------------------------


def test_missing_unexpected_and_misshaped_keys_are_all_listed(official):
    sd = dict(official)
    del sd["blocks.1.att.time_faaaa"], sd["blocks.2.ffn.time_maa_r"]
    sd["blocks.0.att.extra"] = torch.zeros(1)
    sd["blocks.1.ln0.weight"] = torch.ones(32)
    sd["blocks.2.att.key.weight"] = torch.zeros(32, 31)
    sd["head.weight"] = torch.zeros(50, 33)
    with pytest.raises(StateDictError) as info:
        RWKV6.from_official_state_dict(sd)
    err = info.value
    assert err.missing == ["blocks.1.att.time_faaaa", "blocks.2.ffn.time_maa_r"]
    assert err.unexpected == ["blocks.0.att.extra", "blocks.1.ln0.weight"]
    assert [k for k, _, _ in err.mismatched] == ["blocks.2.att.key.weight", "head.weight"]
    message = str(err)
    for key in err.missing + err.unexpected + [k for k, _, _ in err.mismatched]:
        assert key in message


def test_prefixed_keys_get_a_hint(official):
    with pytest.raises(StateDictError, match="rwkv."):
        RWKV6.from_official_state_dict({"rwkv." + k: v for k, v in official.items()})


def test_static_variant_round_trips_through_its_state_dict():
    model = RWKV6(**SIZES, data_dependent_lerp=False, data_dependent_decay=False)
    loaded = RWKV6.from_official_state_dict(model.state_dict())
    assert not hasattr(loaded.blocks[0].att, "time_maa_w1") and not hasattr(loaded.blocks[0].att, "time_decay_w1")
    ids = _ids(1, 5)
    torch.testing.assert_close(loaded(input_ids=ids)[0], model(input_ids=ids)[0])


def test_loading_with_dtype():
    sd = random_official_state_dict(**SIZES, dtype=torch.bfloat16)
    model = RWKV6.from_official_state_dict(sd, dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert RWKV6.from_official_state_dict(sd).emb.weight.dtype == torch.bfloat16


# --- state equivalences -----------------------------------------------------------------------------------


def _close(a, b):
    return relative_rms_error(a, b) < 1e-5


@settings(max_examples=10, deadline=None)
@given(splits=st.lists(st.integers(1, 19), max_size=4, unique=True))
def test_chunks_with_state_carried_equal_one_pass(model, splits):
    ids = _ids(2, 20, seed=len(splits))
    whole, whole_state = model(input_ids=ids)
    bounds = [0, *sorted(splits), 20]
    state, pieces = None, []
    for start, end in zip(bounds, bounds[1:]):
        logits, state = model(input_ids=ids[:, start:end], state=state)
        pieces.append(logits)
    assert _close(torch.cat(pieces, 1), whole)
    for mine, ref in zip(state, whole_state):
        assert _close(mine.wkv, ref.wkv) and _close(mine.att_shift, ref.att_shift)


@settings(max_examples=6, deadline=None)
@given(chunk_size=st.integers(1, 21))
def test_chunk_size_argument_equals_one_pass(model, chunk_size):
    ids = _ids(2, 17)
    whole, whole_state = model(input_ids=ids)
    chunked, state = model(input_ids=ids, chunk_size=chunk_size)
    assert _close(chunked, whole)
    assert _close(state[-1].wkv, whole_state[-1].wkv)


def test_chunked_prefill_never_feeds_a_block_more_than_a_chunk(model):
    seen = []
    hooks = [b.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[1])) for b in model.blocks]
    try:
        with torch.no_grad():
            logits, _ = model(input_ids=_ids(1, 50), chunk_size=8, logits_to_keep=1)
    finally:
        for h in hooks:
            h.remove()
    assert max(seen) == 8 and logits.shape == (1, 1, 50)


def test_prefill_then_token_by_token_decode_equals_one_pass(model):
    ids = _ids(2, 14)
    whole, _ = model(input_ids=ids)
    logits, state = model(input_ids=ids[:, :6])
    steps = [logits]
    for t in range(6, 14):
        logits, state = model(input_ids=ids[:, t : t + 1], state=state)
        steps.append(logits)
    assert _close(torch.cat(steps, 1), whole)


def test_logits_to_keep(model):
    ids = _ids(1, 9)
    whole, _ = model(input_ids=ids)
    last, _ = model(input_ids=ids, logits_to_keep=1, chunk_size=4)
    assert last.shape == (1, 1, 50)
    assert _close(last, whole[:, -1:])
    three, _ = model(input_ids=ids, logits_to_keep=3, chunk_size=4)
    assert _close(three, whole[:, -3:])


def test_inputs_embeds_and_manual_block_loop_equal_input_ids(model):
    ids = _ids(2, 7)
    logits, _ = model(input_ids=ids)
    assert _close(model(inputs_embeds=model.embed(ids))[0], logits)
    x = model.embed(ids)
    for i, block in enumerate(model.blocks):
        x = block(x, None)
    assert _close(model.unembed(x), logits)
    hidden, state = model.forward_blocks(model.embed(ids))
    assert _close(model.unembed(hidden), logits) and isinstance(state, RWKVState)


def test_zero_state_equals_no_state(model):
    ids = _ids(3, 5)
    assert _close(model(input_ids=ids, state=model.init_state(3))[0], model(input_ids=ids)[0])


# --- training ---------------------------------------------------------------------------------------------


def test_gradients_reach_every_parameter_and_training_reduces_loss():
    torch.manual_seed(0)
    model = create_model("rwkv6-test-tiny", vocab_size=40)
    ids = _ids(2, 12, vocab=40)
    loss_fn = torch.nn.CrossEntropyLoss()

    def loss():
        logits, _ = model(input_ids=ids[:, :-1])
        return loss_fn(logits.reshape(-1, 40), ids[:, 1:].reshape(-1))

    first = loss()
    first.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(5):
        optimizer.step()
        optimizer.zero_grad()
        loss().backward()
    assert loss().item() < first.item() - 0.1


def test_gradient_flows_through_a_carried_state():
    torch.manual_seed(0)
    model = create_model("rwkv6-test-tiny", vocab_size=40)
    _, state = model(input_ids=_ids(1, 5, vocab=40))
    logits, _ = model(input_ids=_ids(1, 3, seed=1, vocab=40), state=state)
    logits.sum().backward()
    assert model.blocks[1].att.time_decay.grad.abs().sum() > 0


# --- initialisation ---------------------------------------------------------------------------------------


def test_init_is_deterministic_not_zero_and_decays_spread():
    torch.manual_seed(7)
    a = create_model("rwkv6-test-tiny")
    torch.manual_seed(7)
    b = create_model("rwkv6-test-tiny")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert all(p.abs().sum() > 0 for n, p in a.named_parameters() if not n.endswith(".bias")), "a zero weight"
    decay = a.blocks[0].att.time_decay
    assert decay.max() - decay.min() > 3
    assert not torch.equal(a.blocks[0].att.time_decay, a.blocks[1].att.time_decay)


# --- dtypes and devices -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_close_to_float32(official, model, dtype):
    half = RWKV6.from_official_state_dict(official, dtype=dtype)
    ids = _ids(1, 8)
    logits, state = half(input_ids=ids)
    assert logits.dtype == dtype and state[0].wkv.dtype == torch.float32 and state[0].att_shift.dtype == dtype
    assert relative_rms_error(logits, model(input_ids=ids)[0]) < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    sd = random_official_state_dict(n_layer=2, n_embd=64, head_size=32, dim_ffn=96, d_mix=4, d_decay=6, vocab_size=50)
    cpu = RWKV6.from_official_state_dict(sd)
    gpu = RWKV6.from_official_state_dict(sd, device="cuda", dtype=dtype)
    ids = _ids(2, 12)
    logits, state = gpu(input_ids=ids.cuda(), chunk_size=5)
    tolerance = 1e-5 if dtype == torch.float32 else 0.05
    assert relative_rms_error(logits.cpu(), cpu(input_ids=ids)[0]) < tolerance
    assert state.device.type == "cuda"


# --- errors ---------------------------------------------------------------------------------------------


def test_bad_inputs_name_the_argument(model):
    ids = _ids(2, 4)
    with pytest.raises(ValueError, match="exactly one of input_ids .* inputs_embeds.*both"):
        model(input_ids=ids, inputs_embeds=model.embed(ids))
    with pytest.raises(ValueError, match="exactly one of input_ids .* inputs_embeds.*neither"):
        model()
    with pytest.raises(ValueError, match="input_ids must be a \\[b, t\\]"):
        model(input_ids=ids[0])
    with pytest.raises(TypeError, match="input_ids must be an integer"):
        model(input_ids=ids.float())
    with pytest.raises(ValueError, match="input_ids must be in \\[0, vocab_size = 50\\)"):
        model(input_ids=ids + 50)
    with pytest.raises(ValueError, match="inputs_embeds must be \\[b, t, c = 32\\]"):
        model(inputs_embeds=torch.zeros(2, 4, 31))
    with pytest.raises(ValueError, match="chunk_size"):
        model(input_ids=ids, chunk_size=0)
    with pytest.raises(ValueError, match="empty"):
        model(input_ids=ids[:, :0])


def test_bad_state_names_the_problem(model):
    ids = _ids(2, 4)
    _, state = model(input_ids=ids)
    with pytest.raises(ValueError, match="state\\[0\\].att_shift must be .* batch of 3"):
        model(input_ids=_ids(3, 4), state=state)
    with pytest.raises(ValueError, match="state has 2 layers but the model has 3"):
        model(input_ids=ids, state=RWKVState(state.layers[:2]))
    with pytest.raises(TypeError, match="state must be an RWKVState"):
        model(input_ids=ids, state=state.state_dict())
