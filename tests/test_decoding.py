"""The static-state decoder (rwkv_vision.decoding) against the models' forward and generation.generate, on the
CPU, for RWKV6 and RWKV7 (the ``model`` fixture runs every test on both).

Its step is the block rewritten for one token, so every test compares it with the general path: logits
token by token, the state, and generated tokens."""

from __future__ import annotations

import pytest
import torch

from rwkv_vision import RWKV6, RWKV7, RWKVState
from rwkv_vision.decoding import Decoder
from rwkv_vision.generation import GenerationConfig, generate

from reference.fixtures import one_cpu_thread  # noqa: F401  (autouse: tiny models run faster on one thread)
from reference.rwkv6_ref import random_official_state_dict, relative_rms_error
from reference.rwkv7_ref import random_official_x070_state_dict

SIZES = dict(n_layer=3, n_embd=32, head_size=8, dim_ffn=64, d_mix=4, d_decay=6, vocab_size=50)
SIZES7 = dict(n_layer=3, n_embd=32, head_size=8, dim_ffn=64, vocab_size=50)


def _model(arch, seed=3):
    if arch == "rwkv7":
        return RWKV7.from_official_state_dict(random_official_x070_state_dict(**SIZES7, seed=seed)).eval()
    return RWKV6.from_official_state_dict(random_official_state_dict(**SIZES, seed=seed)).eval()


@pytest.fixture(scope="module", params=["rwkv6", "rwkv7"])
def model(request):
    return _model(request.param)


def _ids(b, t, seed=0, vocab=50):
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


def _assert_states_close(a: RWKVState, b: RWKVState, tol=1e-5):
    for la, lb in zip(a, b):
        for name in ("att_shift", "wkv", "ffn_shift"):
            assert relative_rms_error(getattr(la, name), getattr(lb, name)) < tol, name


@pytest.mark.parametrize("batch", [1, 3])
def test_step_logits_equal_forward_token_by_token(model, batch):
    ids = _ids(batch, 9, seed=batch)
    with torch.no_grad():
        want, want_state = model(input_ids=ids)
    dec = Decoder(model, batch_size=batch)
    got = torch.stack([dec.step(ids[:, s]).clone() for s in range(ids.shape[1])], dim=1)
    assert got.shape == want.shape
    assert relative_rms_error(got, want) < 1e-5
    _assert_states_close(dec.state, want_state)


@pytest.mark.parametrize("chunk_size", [None, 1, 4])
def test_chunked_prefill_then_steps_equal_one_pass(model, chunk_size):
    ids = _ids(2, 11, seed=5)
    with torch.no_grad():
        want, _ = model(input_ids=ids)
    dec = Decoder(model, batch_size=2)
    last = dec.prefill(ids[:, :7], chunk_size=chunk_size)
    assert last.shape == (2, SIZES["vocab_size"])
    assert relative_rms_error(last, want[:, 6]) < 1e-5
    steps = torch.stack([dec.step(ids[:, s : s + 1]).clone() for s in range(7, 11)], dim=1)
    assert relative_rms_error(steps, want[:, 7:]) < 1e-5


@pytest.mark.parametrize("lerp,decay", [(False, False), (True, False), (False, True)])
def test_static_lerp_and_decay_variants(lerp, decay):
    torch.manual_seed(1)
    m = RWKV6(
        n_layer=2,
        n_embd=32,
        head_size=8,
        dim_ffn=64,
        d_mix=4,
        d_decay=6,
        vocab_size=40,
        data_dependent_lerp=lerp,
        data_dependent_decay=decay,
    ).eval()
    with torch.no_grad():
        for p in m.parameters():  # move off the near-identity init so every term shows in the logits
            p.add_(torch.randn_like(p) * 0.1)
    ids = _ids(2, 6, seed=9, vocab=40)
    with torch.no_grad():
        want, _ = m(input_ids=ids)
    dec = Decoder(m, batch_size=2)
    got = torch.stack([dec.step(ids[:, s]).clone() for s in range(6)], dim=1)
    assert relative_rms_error(got, want) < 1e-5


def test_greedy_generation_equals_generation_generate(model):
    prompt = _ids(2, 6, seed=11)
    cfg = GenerationConfig(max_new_tokens=12)
    want = generate(model, prompt, cfg)
    got = Decoder(model, batch_size=2).generate(prompt, cfg, chunk_size=4)
    assert got.tokens == want.tokens and got.finish_reasons == want.finish_reasons
    _assert_states_close(got.state, want.state)


def test_stop_tokens_freeze_the_row_state_like_generate(model):
    prompt = _ids(2, 5, seed=2)
    free = generate(model, prompt, max_new_tokens=10)
    stop = free.tokens[0][2]  # row 0 stops at its third token; row 1 maybe elsewhere
    cfg = GenerationConfig(max_new_tokens=10, stop_tokens=(stop,))
    want = generate(model, prompt, cfg)
    got = Decoder(model, batch_size=2).generate(prompt, cfg)
    assert "stop" in want.finish_reasons
    assert got.tokens == want.tokens and got.finish_reasons == want.finish_reasons
    _assert_states_close(got.state, want.state)


def test_sampled_generation_equals_generate_with_the_same_seed(model):
    prompt = _ids(1, 4, seed=4)
    cfg = GenerationConfig(max_new_tokens=10, do_sample=True, temperature=0.8, top_k=20, top_p=0.9)
    want = generate(model, prompt, cfg, generator=torch.Generator().manual_seed(7))
    got = Decoder(model).generate(prompt, cfg, generator=torch.Generator().manual_seed(7))
    assert got.tokens == want.tokens


def test_ragged_prompts_and_decoding_from_next_logits(model):
    rows = [[1, 2, 3, 4, 5], [6, 7]]
    want = generate(model, rows, max_new_tokens=6)
    got = Decoder(model, batch_size=2).generate(rows, max_new_tokens=6)
    assert got.tokens == want.tokens
    # The caller prefills; the decoder continues from its buffers.
    dec = Decoder(model, batch_size=2)
    logits = dec.prefill(rows, chunk_size=2)
    assert dec.generate(next_logits=logits, max_new_tokens=6).tokens == want.tokens


def test_state_round_trip_and_reset(model):
    ids = _ids(2, 5)
    with torch.no_grad():
        _, state = model(input_ids=ids)
    dec = Decoder(model, batch_size=2)
    dec.load_state(state)
    _assert_states_close(dec.state, state, tol=0.0 + 1e-12)
    nxt = _ids(2, 1, seed=8)
    with torch.no_grad():
        want, _ = model(input_ids=nxt, state=state)
    assert relative_rms_error(dec.step(nxt), want[:, 0]) < 1e-5
    dec.reset()
    assert all(float(t.abs().sum()) == 0 for layer in dec.state for t in (layer.att_shift, layer.wkv, layer.ffn_shift))


def test_inputs_embeds_prefill(model):
    ids = _ids(1, 6, seed=6)
    with torch.no_grad():
        want, _ = model(input_ids=ids)
    dec = Decoder(model)
    got = dec.prefill(inputs_embeds=model.embed(ids), chunk_size=4)
    assert relative_rms_error(got, want[:, -1]) < 1e-5


def test_bad_arguments_name_themselves(model):
    with pytest.raises(TypeError, match="model"):
        Decoder(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="batch_size"):
        Decoder(model, batch_size=0)
    with pytest.raises(ValueError, match="use_cuda_graph"):
        Decoder(model, use_cuda_graph=True)
    with pytest.raises(ValueError, match="dtype"):
        Decoder(model, dtype=torch.float16)
    dec = Decoder(model, batch_size=2)
    with pytest.raises(ValueError, match="input_ids"):
        dec.step(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="input_ids"):
        dec.step(torch.tensor([1, 99]))
    with pytest.raises(TypeError, match="input_ids"):
        dec.step(torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="input_ids"):
        dec.prefill(_ids(3, 4))
    with pytest.raises(ValueError, match="chunk_size"):
        dec.prefill(_ids(2, 4), chunk_size=0)
    with pytest.raises(ValueError, match="pixel_values"):
        dec.prefill(_ids(2, 4), torch.zeros(1, 3, 28, 28))
    with pytest.raises(ValueError, match="next_logits"):
        dec.generate(next_logits=torch.zeros(3, 50))
    with pytest.raises(RuntimeError, match="use_cuda_graph"):
        dec.capture()


def test_visualrwkv_chunked_prefill_equals_one_pass():
    from rwkv_vision.image_tokens import IMAGE_TOKEN_INDEX as IMG
    from rwkv_vision.models.visualrwkv import VisualRWKV

    from reference.visualrwkv_ref import random_visualrwkv_checkpoint

    sizes = dict(n_layer=2, n_embd=32, head_size=8, dim_ffn=64, d_mix=4, d_decay=6, vocab_size=50)
    vision = dict(width=64, layers=1, patch=14, image=28, mlp=96)  # 2 x 2 grid + CLS = 5 tokens
    vlm = VisualRWKV.from_official_state_dict(random_visualrwkv_checkpoint(rwkv_sizes=sizes, vision_sizes=vision))
    vlm.eval()
    ids = torch.tensor([[1, IMG, 2, 3, IMG, 4, 5, 6], [IMG, 7, 8, 9, 10, IMG, 11, 12]])
    pixels = torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want, want_state = vlm(ids, pixels, logits_to_keep=1)
        nxt = torch.tensor([[13], [14]])
        want_next, _ = vlm.rwkv(input_ids=nxt, state=want_state)
    dec = Decoder(vlm, batch_size=2)
    got = dec.prefill(ids, pixels, chunk_size=3)  # chunks cut between and around the images
    assert relative_rms_error(got, want[:, -1]) < 1e-5
    _assert_states_close(dec.state, want_state)
    assert relative_rms_error(dec.step(nxt), want_next[:, 0]) < 1e-5
    with pytest.raises(ValueError, match="pixel_values"):
        dec.prefill(ids)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_step_equals_forward(model, backend):
    """Decoder(compile=...) traces the whole step (fullgraph) including the in-place wkv6_step and shift
    updates; "inductor" generates fused C++ kernels for the element-wise work here as it would on a GPU."""
    ids = _ids(2, 6, seed=11)
    with torch.no_grad():
        want, want_state = model(input_ids=ids)
    dec = Decoder(model, batch_size=2, compile={"backend": backend})
    got = torch.stack([dec.step(ids[:, s]).clone() for s in range(ids.shape[1])], dim=1)
    assert relative_rms_error(got, want) < 1e-5
    _assert_states_close(dec.state, want_state)


def test_compile_argument_is_checked(model):
    with pytest.raises(TypeError, match="compile must be a bool or a dict"):
        Decoder(model, compile="yes")


@pytest.mark.parametrize("arch", ["rwkv6", "rwkv7"])
def test_compiled_decoders_of_different_weights_do_not_share_weights(arch):
    """Decoders of same-shaped models reuse one compiled graph; each must still read its own weights."""
    ids = _ids(1, 4, seed=2)
    for seed in (21, 22, 23):
        m = _model(arch, seed)
        with torch.no_grad():
            want, _ = m(input_ids=ids)
        dec = Decoder(m, compile={"backend": "aot_eager"})
        got = torch.stack([dec.step(ids[:, s]).clone() for s in range(4)], dim=1)
        assert relative_rms_error(got, want) < 1e-5, seed


def test_old_import_path_warns_and_gives_the_same_decoder():
    import importlib
    import sys

    import rwkv_vision.decoding

    sys.modules.pop("rwkv_vision.inference", None)
    with pytest.warns(DeprecationWarning, match="rwkv_vision.decoding"):
        old = importlib.import_module("rwkv_vision.inference")
    assert old.Decoder is rwkv_vision.decoding.Decoder


@pytest.mark.parametrize("pad_to_multiple", [None, 16])
def test_visualrwkv7_chunked_prefill_equals_one_pass(pad_to_multiple):
    """An RWKV-7 VisualRWKV (block 0's value carried through the scanned blocks); with pad_to_multiple (v7.00)
    a fresh prefill reads the prompt's official pads first, as the model's forward and generate do."""
    from rwkv_vision.image_tokens import IMAGE_TOKEN_INDEX as IMG
    from rwkv_vision.models.visualrwkv import VisualRWKV
    from rwkv_vision.vision import tiny_clip

    torch.manual_seed(0)
    lm = _model("rwkv7", seed=5)
    vlm = VisualRWKV(rwkv=lm, encoder=tiny_clip(depth=1), pad_to_multiple=pad_to_multiple, pad_token_id=3).eval()
    ids = torch.tensor([[1, IMG, 2, 3, 4, 5, 6], [IMG, 7, 8, 9, 10, 11, 12]])
    pixels = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want, want_state = vlm(ids, pixels, logits_to_keep=1)
        nxt = torch.tensor([[13], [14]])
        want_next, _ = vlm.rwkv(input_ids=nxt, state=want_state)
    dec = Decoder(vlm, batch_size=2)
    got = dec.prefill(ids, pixels, chunk_size=3)
    assert relative_rms_error(got, want[:, -1]) < 1e-5
    _assert_states_close(dec.state, want_state)
    assert relative_rms_error(dec.step(nxt), want_next[:, 0]) < 1e-5
    out = Decoder(vlm, batch_size=2).generate(ids, pixel_values=pixels, max_new_tokens=5, chunk_size=4)
    assert out.tokens == vlm.generate(ids, pixels, max_new_tokens=5, stop_tokens=(), official_padding=False).tokens
