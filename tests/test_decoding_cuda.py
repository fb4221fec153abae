"""The decoder on a GPU: CUDA-graph replay against eager steps and against the model's forward, RWKV6 and
RWKV7 (``pytest -m cuda``).

Skipped without a CUDA device (tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch

from rwkv_vision import RWKV6, RWKV7
from rwkv_vision.decoding import Decoder
from rwkv_vision.generation import GenerationConfig, generate

from reference.rwkv6_ref import random_official_state_dict, relative_rms_error
from reference.rwkv7_ref import random_official_x070_state_dict

pytestmark = pytest.mark.cuda

SIZES = dict(n_layer=3, n_embd=128, head_size=64, dim_ffn=256, d_mix=8, d_decay=16, vocab_size=300)


SIZES7 = dict(n_layer=3, n_embd=128, head_size=64, dim_ffn=256, d_w=16, d_a=16, d_v=8, d_g=32, vocab_size=300)


@pytest.fixture(params=["rwkv6", "rwkv7"])
def arch(request):
    return request.param


def _model(dtype, arch="rwkv6"):
    if arch == "rwkv7":
        sd = random_official_x070_state_dict(**SIZES7, seed=2)
        return RWKV7.from_official_state_dict(sd, device="cuda", dtype=dtype).eval()
    sd = random_official_state_dict(**SIZES, seed=2)
    return RWKV6.from_official_state_dict(sd, device="cuda", dtype=dtype).eval()


def _ids(b, t, seed=0):
    return torch.randint(0, SIZES["vocab_size"], (b, t), generator=torch.Generator().manual_seed(seed)).cuda()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 4])
def test_graph_replay_equals_eager_steps(dtype, batch, arch):
    model = _model(dtype, arch)
    ids = _ids(batch, 12, seed=batch)
    prompt = ids[:, :4]
    eager, graph = Decoder(model, batch_size=batch, use_cuda_graph=False), Decoder(model, batch_size=batch)
    assert graph.use_cuda_graph
    first_e, first_g = eager.prefill(prompt, chunk_size=3), graph.prefill(prompt, chunk_size=3)
    assert relative_rms_error(first_g, first_e) < 1e-6
    for s in range(4, 12):
        le = eager.step(ids[:, s]).clone()
        lg = graph.step(ids[:, s]).clone()
        assert graph.graph_captured
        # Same kernels in the same order: replay should be bit-identical; allow rounding noise anyway.
        assert relative_rms_error(lg, le) < 1e-6
    for a, b in zip(eager.state, graph.state):
        assert relative_rms_error(b.wkv, a.wkv) < 1e-6


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
def test_graph_steps_equal_forward(dtype, tol, arch):
    # float32 tolerance allows the CUDA wkv kernel's own summation order; bf16 rounds r, k, v, y to bf16
    # at slightly different places in the two paths (the decoder fuses x + xx * m into one addcmul).
    model = _model(dtype, arch)
    ids = _ids(2, 10, seed=5)
    with torch.no_grad():
        want, _ = model(input_ids=ids)
    dec = Decoder(model, batch_size=2)
    got = torch.stack([dec.step(ids[:, s]).clone() for s in range(10)], dim=1)
    assert torch.isfinite(got).all()
    assert relative_rms_error(got.float(), want.float()) < tol


def test_capture_leaves_the_state_unchanged(arch):
    model = _model(torch.float32, arch)
    dec = Decoder(model, batch_size=2)
    dec.prefill(_ids(2, 5), chunk_size=2)
    before = dec.state
    dec.capture()
    for a, b in zip(before, dec.state):
        assert torch.equal(a.wkv, b.wkv) and torch.equal(a.att_shift, b.att_shift)


def test_graph_generation_equals_generate(arch):
    model = _model(torch.float32, arch)
    prompt = _ids(2, 6, seed=3)
    cfg = GenerationConfig(max_new_tokens=16)
    want = generate(model, prompt, cfg)
    got = Decoder(model, batch_size=2).generate(prompt, cfg)
    assert got.tokens == want.tokens


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
def test_compiled_graph_steps_equal_forward(dtype, tol, arch):
    """torch.compile (Inductor, Triton kernels) inside the captured CUDA graph."""
    model = _model(dtype, arch)
    ids = _ids(2, 10, seed=6)
    with torch.no_grad():
        want, want_state = model(input_ids=ids)
    dec = Decoder(model, batch_size=2, compile=True)
    got = torch.stack([dec.step(ids[:, s]).clone() for s in range(10)], dim=1)
    assert dec.graph_captured and torch.isfinite(got).all()
    assert relative_rms_error(got.float(), want.float()) < tol
    for a, b in zip(want_state, dec.state):
        assert relative_rms_error(b.wkv, a.wkv) < max(tol, 1e-4)
