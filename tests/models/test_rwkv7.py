"""RWKV7 (x070): agreement with the float64 re-statement of the official RNN demo, loading official state
dicts (sizes from shapes, strict keys, variants refused), chunked prefill, step decoding, training."""

import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rwkv_vision import RWKV7, create_model
from rwkv_vision.checkpoint.official import (
    config_from_official_x070_state_dict,
    official_architecture,
    rwkv7_from_official_state_dict,
)
from rwkv_vision.errors import StateDictError
from rwkv_vision.models import RWKV7Config, get_config
from rwkv_vision.state import RWKVState

from reference.rwkv7_ref import random_official_x070_state_dict, relative_rms_error, rwkv7_reference_logits


@pytest.fixture(scope="module")
def official():
    return random_official_x070_state_dict(n_layer=3, n_embd=32, head_size=8, seed=1)


@pytest.fixture(scope="module")
def model(official):
    return RWKV7.from_official_state_dict(official)


def _ids(b, t, seed=0, vocab=50):
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("t", [1, 7, 13])
def test_logits_match_the_float64_restatement_of_the_official_rnn(official, model, t):
    ids = _ids(2, t, seed=t)
    ref = rwkv7_reference_logits(official, ids)
    assert relative_rms_error(model(ids).logits, ref) < 2e-6
    m64 = RWKV7.from_official_state_dict(official, dtype=torch.float64)
    assert relative_rms_error(m64(ids).logits, ref) < 1e-12


@pytest.mark.parametrize(
    "sizes",
    [
        dict(n_layer=2, n_embd=48, head_size=16, dim_ffn=80, d_w=3, d_a=9, d_v=2, d_g=5, vocab_size=30),
        dict(n_layer=4, n_embd=24, head_size=4, d_w=8, d_a=4, d_v=6, d_g=3, vocab_size=70),
        dict(n_layer=1, n_embd=16, head_size=16, vocab_size=20),
    ],
)
def test_reference_agreement_and_sizes_from_shapes_at_other_sizes(sizes):
    sd = random_official_x070_state_dict(**sizes, seed=3)
    model = RWKV7.from_official_state_dict(sd)
    want = {k: v for k, v in sizes.items() if v is not None}
    want.setdefault("dim_ffn", 4 * sizes["n_embd"])
    assert {k: getattr(model.config, k) for k in want} == want
    ids = _ids(1, 9, vocab=sizes["vocab_size"])
    assert relative_rms_error(model(ids).logits, rwkv7_reference_logits(sd, ids)) < 2e-6


def test_state_dict_keys_are_the_official_keys(official, model):
    assert set(model.state_dict()) == set(official)
    assert {k: tuple(v.shape) for k, v in model.official_state_dict().items()} == {
        k: tuple(v.shape) for k, v in official.items()
    }
    assert official_architecture(official) == "rwkv7"
    assert model.architecture == "rwkv7" and model.config.official_version == "x070"


def test_block0_value_lora_may_be_absent(official):
    sd = random_official_x070_state_dict(n_layer=3, n_embd=32, head_size=8, seed=1, block0_value_lora=False)
    model = RWKV7.from_official_state_dict(sd)
    ids = _ids(1, 6)
    assert relative_rms_error(model(ids).logits, rwkv7_reference_logits(sd, ids)) < 2e-6
    assert model.config.d_v == 4  # read from block 1


def test_missing_unexpected_and_misshaped_keys_are_all_listed(official):
    sd = dict(official)
    del sd["blocks.1.att.k_a"]
    del sd["blocks.2.ffn.x_k"]
    sd["blocks.0.att.extra"] = torch.zeros(3)
    sd["blocks.1.att.g2"] = torch.zeros(7, 33)
    with pytest.raises(StateDictError) as e:
        RWKV7.from_official_state_dict(sd)
    assert set(e.value.missing) == {"blocks.1.att.k_a", "blocks.2.ffn.x_k"}
    assert e.value.unexpected == ["blocks.0.att.extra"]
    assert [m[0] for m in e.value.mismatched] == ["blocks.1.att.g2"]


@pytest.mark.parametrize(
    "extra, name",
    [
        ({"blocks.0.ffn.s_emb.weight": torch.zeros(50, 1024), "blocks.0.ffn.s1": torch.zeros(32, 32)}, "x070a"),
        ({"blocks.0.qkv.qq.weight": torch.zeros(32, 32)}, "x070b"),
    ],
)
def test_variants_are_refused_by_name(official, extra, name):
    with pytest.raises(StateDictError, match=name):
        RWKV7.from_official_state_dict({**official, **extra})
    with pytest.raises(StateDictError, match=name):
        official_architecture({**official, **extra})


def test_inconsistent_head_shape_and_prefixed_keys_are_explained(official):
    sd = dict(official)
    sd["blocks.0.att.r_k"] = torch.zeros(3, 8)
    with pytest.raises(StateDictError, match="heads"):
        config_from_official_x070_state_dict(sd)
    with pytest.raises(StateDictError, match="rwkv."):
        rwkv7_from_official_state_dict({"rwkv." + k: v for k, v in official.items()})
    with pytest.raises(StateDictError, match="layer"):
        rwkv7_from_official_state_dict({**official, "blocks.99.ln1.weight": torch.zeros(32)})


def test_loading_with_dtype_and_memory_sharing(official):
    m = RWKV7.from_official_state_dict(official)
    assert m.emb.weight.data_ptr() == official["emb.weight"].data_ptr()
    bf = RWKV7.from_official_state_dict(official, dtype=torch.bfloat16)
    assert bf.emb.weight.dtype == torch.bfloat16
    ids = _ids(1, 5)
    assert relative_rms_error(bf(ids).logits.float(), rwkv7_reference_logits(official, ids)) < 0.1


@pytest.mark.parametrize("splits", [(1,), (4,), (3, 7), (1, 2, 3, 4)])
def test_chunks_with_state_carried_equal_one_pass(model, splits):
    ids = _ids(2, 11)
    full = model(ids)
    bounds = [0, *splits, 11]
    state, parts = None, []
    for a, b in zip(bounds[:-1], bounds[1:]):
        out = model(ids[:, a:b], state=state)
        parts.append(out.logits)
        state = out.state
    assert relative_rms_error(torch.cat(parts, 1), full.logits) < 1e-5
    for x, y in zip(state, full.state):
        assert relative_rms_error(x.wkv, y.wkv) < 1e-5
    assert relative_rms_error(model(ids, chunk_size=3).logits, full.logits) < 1e-5


def test_prefill_then_step_decode_equals_one_pass(model):
    ids = _ids(2, 10)
    full = model(ids).logits
    out = model(ids[:, :4], logits_to_keep=1)
    assert out.logits.shape == (2, 1, 50)
    assert relative_rms_error(out.logits[:, 0], full[:, 3]) < 1e-5
    state = out.state.clone()
    steps = [model.step(ids[:, i], state) for i in range(4, 10)]
    assert relative_rms_error(torch.stack(steps, 1), full[:, 4:]) < 1e-5
    fresh = model.init_state(2)
    steps = [model.step(ids[:, i], fresh) for i in range(10)]
    assert relative_rms_error(torch.stack(steps, 1), full) < 1e-5


def test_generate_uses_the_shared_decode_loop(model):
    prompt = [3, 1, 4, 1, 5]
    out = model.generate(prompt, max_new_tokens=6, stop_tokens=())
    # greedy by hand: forward over the whole sequence each time
    ids = list(prompt)
    for _ in range(6):
        ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    assert out.tokens[0] == ids[len(prompt) :]


def test_gradients_reach_every_parameter_and_training_reduces_loss():
    torch.manual_seed(0)
    model = create_model("rwkv7-tiny")
    ids = torch.randint(0, 256, (2, 17))
    out = model(ids, labels=ids)
    out.loss.backward()
    unused = {"blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"}
    # official init: zero output projections and zero first LoRA matrices, so some gradients start at zero;
    # every parameter must at least be reached by autograd
    for name, p in model.named_parameters():
        assert p.grad is not None or name in unused, name
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(4):
        opt.zero_grad()
        loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05
    # after a few steps the zero-initialised tensors have moved too
    assert model.blocks[1].att.output.weight.abs().sum() > 0 and model.blocks[1].att.w1.abs().sum() > 0


def test_gradient_flows_through_a_carried_state(model):
    ids = _ids(1, 6)
    state = model(ids[:, :3]).state
    state = RWKVState([s.map(lambda name, t: t.detach().requires_grad_()) for s in state])
    model(ids[:, 3:], state=state).logits.square().sum().backward()
    assert all(s.wkv.grad is not None and s.wkv.grad.abs().sum() > 0 for s in state)


def test_embedding_and_head_init_follow_the_official_trainer():
    model = RWKV7(n_layer=2, n_embd=32, head_size=8, vocab_size=200)
    assert model.emb.weight.abs().max() <= 1e-4 and model.emb.weight.abs().max() > 0
    head = model.head.weight  # orthogonal, gain 0.5 * sqrt(v / c) = 1.25
    assert torch.allclose(head.T @ head, 1.25**2 * torch.eye(32), atol=1e-4)


def test_registry_sizes_and_the_tiny_model_is_fast():
    assert isinstance(get_config("rwkv7-0.1b"), RWKV7Config)
    c = get_config("rwkv7-0.1b")
    assert (c.n_layer, c.n_embd, c.head_size, c.vocab_size, c.dim_ffn) == (12, 768, 64, 65536, 3072)
    assert (c.d_w, c.d_a, c.d_v, c.d_g) == (64, 64, 32, 128)
    big = create_model("rwkv7-1.5b", device="meta")
    assert isinstance(big, RWKV7) and big.blocks[0].att.g1.shape == (2048, 256)
    start = time.perf_counter()
    model = create_model("rwkv7-tiny")
    model(torch.randint(0, 256, (1, 16)))
    assert time.perf_counter() - start < 1.0


def test_bad_inputs_name_the_argument(model):
    with pytest.raises(ValueError, match="input_ids must be in"):
        model(torch.tensor([[0, 50]]))
    with pytest.raises(ValueError, match="exactly one"):
        model()
    with pytest.raises(ValueError, match=r"state\[0\].wkv"):
        bad = model.init_state(2)
        bad.layers[0].wkv = torch.zeros(2, 4, 8, 7)
        model(_ids(2, 3), state=bad)
    with pytest.raises(TypeError, match="config"):
        RWKV7(RWKV7Config(n_layer=1, n_embd=16, head_size=16), n_layer=2)


@settings(max_examples=12, deadline=None)
@given(
    t=st.integers(1, 13),
    cuts=st.lists(st.integers(1, 12), max_size=3),
    b=st.integers(1, 2),
)
def test_any_split_of_any_length_equals_one_pass(model, t, cuts, b):
    ids = _ids(b, t, seed=t)
    full = model(ids)
    bounds = sorted({0, t, *[c for c in cuts if c < t]})
    state, parts = None, []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        out = model(ids[:, lo:hi], state=state)
        parts.append(out.logits)
        state = out.state
    assert relative_rms_error(torch.cat(parts, 1), full.logits) < 1e-5


def test_inputs_embeds_and_a_manual_block_loop_equal_input_ids(model):
    ids = _ids(2, 7)
    want = model(ids).logits
    assert relative_rms_error(model(inputs_embeds=model.embed(ids)).logits, want) < 1e-6
    x, v_first = model.embed(ids), None
    for block in model.blocks:
        x, _, v_first = block(x, return_state=True, v_first=v_first, return_v_first=True)
    assert relative_rms_error(model.unembed(x), want) < 1e-6


def test_half_precision_keeps_a_float32_state(official, model):
    half = RWKV7.from_official_state_dict(official, dtype=torch.bfloat16)
    ids = _ids(1, 8)
    out = half(ids)
    assert out.logits.dtype == torch.bfloat16 and out.state[0].wkv.dtype == torch.float32
    assert out.state[0].att_shift.dtype == torch.bfloat16
    assert relative_rms_error(out.logits, model(ids).logits) < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    sd = random_official_x070_state_dict(n_layer=2, n_embd=128, head_size=64, vocab_size=50, seed=2)
    cpu = RWKV7.from_official_state_dict(sd)
    gpu = RWKV7.from_official_state_dict(sd, device="cuda", dtype=dtype)
    ids = _ids(2, 12)
    out = gpu(ids.cuda(), chunk_size=5)
    tolerance = 1e-5 if dtype == torch.float32 else 0.05
    assert relative_rms_error(out.logits.cpu(), cpu(ids).logits) < tolerance
    state = gpu.init_state(2)
    steps = torch.stack([gpu.step(ids[:, i].cuda(), state) for i in range(12)], 1)
    assert relative_rms_error(steps.cpu(), cpu(ids).logits) < tolerance
