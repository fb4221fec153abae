"""RWKV-7 with several sequences of different lengths in one call: packed (cu_seqlens) or padded
(attention_mask, left or right), through TimeMix7, ChannelMix7, Block, RWKV7 and an RWKV-7 VisualRWKV (with the
official v7.00 left pads on). Each sequence's outputs, state, loss and gradients equal those of the sequence run
alone; generation from a padded batch or a list of prompts gives the tokens of one-by-one generation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rwkv_vision import RWKV7, VisualRWKV
from rwkv_vision.collate import ConversationCollator
from rwkv_vision.image_tokens import IMAGE_TOKEN_INDEX as IMG
from rwkv_vision.layers import ChannelMix7, TimeMix7
from rwkv_vision.ops import pack_offsets
from rwkv_vision.state import RWKVState, TimeMixState

from reference.fixtures import one_cpu_thread  # noqa: F401  (autouse: tiny models run faster on one thread)

TOL = dict(atol=2e-5, rtol=2e-5)


def _perturb(module, scale=0.2, seed=0):
    """Move every parameter off the initialisation (zero LoRAs and output projections hide terms)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return module


@pytest.fixture(scope="module")
def lm():
    return _perturb(RWKV7(n_layer=3, n_embd=32, head_size=8, d_w=8, d_a=8, d_v=8, d_g=8, vocab_size=64)).eval()


def _ids(t, seed, vocab=64):
    return torch.randint(1, vocab, (1, t), generator=torch.Generator().manual_seed(seed))


def _assert_states_close(a, b):
    for la, lb in zip(a, b):
        for name in ("att_shift", "wkv", "ffn_shift"):
            torch.testing.assert_close(getattr(la, name), getattr(lb, name), **TOL)


def _padded(seqs, side, pad_id=0):
    """Rows of different lengths as one [b, t] batch padded on ``side`` ("left", "right" or "both"), + mask."""
    t = max(s.shape[1] for s in seqs) + (2 if side == "both" else 0)
    rows, masks = [], []
    for s in seqs:
        n = t - s.shape[1]
        before = {"left": n, "right": 0, "both": n // 2}[side]
        ids = torch.full((1, t), pad_id, dtype=torch.long)
        ids[:, before : before + s.shape[1]] = s
        mask = torch.zeros(1, t, dtype=torch.long)
        mask[:, before : before + s.shape[1]] = 1
        rows.append(ids)
        masks.append(mask)
    return torch.cat(rows), torch.cat(masks)


# --- the layers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["kernel", "chunked"])
def test_time_mix7_packed_equals_each_sequence_alone_with_gradients(backend):
    """Layer 1 (it takes v_first): outputs, states and the gradients of x, v_first and the initial states."""
    torch.manual_seed(1)
    att = _perturb(TimeMix7(32, head_size=8, d_w=4, d_a=4, d_v=4, d_g=4, layer_id=1, n_layer=2, backend=backend))
    lengths = [5, 1, 0, 8]
    xs = [torch.randn(1, t, 32) for t in lengths]
    vs = [torch.randn(1, t, 32) for t in lengths]
    starts = [TimeMixState(torch.randn(1, 32), torch.randn(1, 4, 8, 8) * 0.3) for _ in lengths]
    x = torch.cat(xs, 1).requires_grad_(True)
    v = torch.cat(vs, 1).requires_grad_(True)
    shift0 = torch.cat([s.shift for s in starts]).requires_grad_(True)
    wkv0 = torch.cat([s.wkv for s in starts]).requires_grad_(True)
    y, state = att(x, TimeMixState(shift0, wkv0), return_state=True, v_first=v, cu_seqlens=pack_offsets(lengths))
    assert state.wkv.shape == (4, 4, 8, 8)
    g, gs = torch.randn_like(y), torch.randn_like(state.wkv)
    ((y * g).sum() + (state.wkv * gs).sum()).backward()
    at = 0
    for i, t in enumerate(lengths):
        xi, vi = xs[i].clone().requires_grad_(True), vs[i].clone().requires_grad_(True)
        s0 = TimeMixState(starts[i].shift.clone().requires_grad_(True), starts[i].wkv.clone().requires_grad_(True))
        if t == 0:  # an empty sequence passes its state through
            torch.testing.assert_close(state.wkv[i : i + 1], s0.wkv, **TOL)
            torch.testing.assert_close(state.shift[i : i + 1], s0.shift, **TOL)
            continue
        yi, si = att(xi, s0, return_state=True, v_first=vi)
        torch.testing.assert_close(y[:, at : at + t], yi, **TOL)
        torch.testing.assert_close(state.wkv[i : i + 1], si.wkv, **TOL)
        torch.testing.assert_close(state.shift[i : i + 1], si.shift, **TOL)
        ((yi * g[:, at : at + t]).sum() + (si.wkv * gs[i : i + 1]).sum()).backward()
        torch.testing.assert_close(x.grad[:, at : at + t], xi.grad, **TOL)
        torch.testing.assert_close(v.grad[:, at : at + t], vi.grad, **TOL)
        torch.testing.assert_close(wkv0.grad[i : i + 1], s0.wkv.grad, **TOL)
        torch.testing.assert_close(shift0.grad[i : i + 1], s0.shift.grad, **TOL)
        at += t


@pytest.mark.parametrize("backend", ["kernel", "chunked", "reference"])
@pytest.mark.parametrize("side", ["left", "right", "both"])
def test_time_mix7_padded_rows_equal_each_row_alone(backend, side):
    """Whatever the padded positions hold (large random values here), a row's outputs at its tokens, its
    state, and the gradients of its tokens and of v_first equal the row alone; the pads get no gradient
    from the tokens' outputs."""
    torch.manual_seed(2)
    att = _perturb(TimeMix7(32, head_size=8, d_w=4, d_a=4, d_v=4, d_g=4, layer_id=1, n_layer=2, backend=backend))
    lengths = [6, 2, 4]
    seqs = [torch.randn(1, t, 32) for t in lengths]
    vals = [torch.randn(1, t, 32) for t in lengths]
    _, mask = _padded([torch.zeros(1, t, dtype=torch.long) for t in lengths], side)
    b, t = mask.shape
    x = torch.randn(b, t, 32) * 5
    v = torch.randn(b, t, 32) * 5
    keep = mask.bool()
    for i in range(b):
        x[i, keep[i]] = seqs[i][0]
        v[i, keep[i]] = vals[i][0]
    start = TimeMixState(torch.randn(b, 32), torch.randn(b, 4, 8, 8) * 0.3)
    x.requires_grad_(True)
    v.requires_grad_(True)
    y, state = att(x, start, return_state=True, v_first=v, attention_mask=mask)
    g = torch.randn_like(y) * keep.unsqueeze(-1)  # only the tokens' outputs are read
    (y * g).sum().backward()
    for i in range(b):
        xi, vi = seqs[i].clone().requires_grad_(True), vals[i].clone().requires_grad_(True)
        yi, si = att(xi, TimeMixState(start.shift[i : i + 1], start.wkv[i : i + 1]), return_state=True, v_first=vi)
        torch.testing.assert_close(y[i, keep[i]], yi[0], **TOL)
        torch.testing.assert_close(state.wkv[i : i + 1], si.wkv, **TOL)
        torch.testing.assert_close(state.shift[i : i + 1], si.shift, **TOL)
        (yi * g[i : i + 1, keep[i]]).sum().backward()
        torch.testing.assert_close(x.grad[i, keep[i]], xi.grad[0], **TOL)
        torch.testing.assert_close(v.grad[i, keep[i]], vi.grad[0], **TOL)
        assert float(x.grad[i][~keep[i]].abs().sum()) == 0.0


def test_channel_mix7_token_shift_skips_padding_and_sequence_boundaries():
    torch.manual_seed(3)
    ffn = _perturb(ChannelMix7(16, dim_ffn=32, layer_id=0, n_layer=2))
    a, b = torch.randn(1, 3, 16), torch.randn(1, 4, 16)
    y, shift = ffn(torch.cat([a, b], 1), return_state=True, cu_seqlens=pack_offsets([3, 4]))
    torch.testing.assert_close(y[:, :3], ffn(a), **TOL)
    torch.testing.assert_close(y[:, 3:], ffn(b), **TOL)
    torch.testing.assert_close(shift, torch.cat([a[:, -1], b[:, -1]]), **TOL)
    x = torch.cat([torch.randn(1, 2, 16) * 9, a], 1)  # left padding, then a
    y, shift = ffn(x, return_state=True, attention_mask=torch.tensor([[0, 0, 1, 1, 1]]))
    torch.testing.assert_close(y[:, 2:], ffn(a), **TOL)
    torch.testing.assert_close(shift, a[:, -1], **TOL)


# --- RWKV7 ------------------------------------------------------------------------------------------------------


@settings(max_examples=6, deadline=None)
@given(lengths=st.lists(st.integers(1, 9), min_size=1, max_size=4), seed=st.integers(0, 50))
def test_rwkv7_packed_logits_and_states_equal_each_sequence_alone(lm, lengths, seed):
    seqs = [_ids(t, seed + i) for i, t in enumerate(lengths)]
    with torch.no_grad():
        out = lm(torch.cat(seqs, 1), cu_seqlens=pack_offsets(lengths))
        assert out.state[0].wkv.shape[0] == len(lengths)
        at = 0
        for i, ids in enumerate(seqs):
            alone = lm(ids)
            torch.testing.assert_close(out.logits[:, at : at + ids.shape[1]], alone.logits, **TOL)
            _assert_states_close(out.state.select(i), alone.state)
            at += ids.shape[1]


def test_rwkv7_packed_training_loss_and_gradients_equal_unpacked(lm):
    """The loss of a packed row (no target across a boundary) and every parameter's gradient equal those of
    the sequences one by one, their scored positions pooled."""
    lengths = (4, 7, 3)
    seqs = [_ids(t, 10 + t) for t in lengths]
    ids = torch.cat(seqs, 1)
    lm.zero_grad()
    loss = lm(ids, labels=ids, cu_seqlens=pack_offsets(lengths)).loss
    loss.backward()
    # (block 0's value-residual LoRA exists, as in the official model, but is never used: no gradient)
    packed = {n: p.grad.clone() for n, p in lm.named_parameters() if p.grad is not None}
    assert len(packed) > 0.9 * len(list(lm.parameters()))
    lm.zero_grad()
    total = sum(lm(s, labels=s).loss * (s.shape[1] - 1) for s in seqs) / sum(t - 1 for t in lengths)
    total.backward()
    torch.testing.assert_close(loss, total, **TOL)
    for name, p in lm.named_parameters():
        assert (p.grad is None) == (name not in packed), name
        if p.grad is not None:
            torch.testing.assert_close(packed[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)
    lm.zero_grad()


def test_rwkv7_packed_continues_from_per_sequence_states(lm):
    firsts, seconds = [_ids(3, 1), _ids(5, 2)], [_ids(2, 3), _ids(4, 4)]
    with torch.no_grad():
        states = [lm(s).state for s in firsts]
        out = lm(torch.cat(seconds, 1), state=RWKVState.cat(states), cu_seqlens=pack_offsets([2, 4]))
        torch.testing.assert_close(out.logits[:, :2], lm(seconds[0], state=states[0]).logits, **TOL)
        torch.testing.assert_close(out.logits[:, 2:], lm(seconds[1], state=states[1]).logits, **TOL)


def test_rwkv7_packed_refuses_what_it_cannot_do(lm):
    ids = _ids(6, 0)
    with pytest.raises(ValueError, match="not both"):
        lm(ids, cu_seqlens=pack_offsets([2, 4]), attention_mask=torch.ones(1, 6))
    with pytest.raises(ValueError, match="chunk_size"):
        lm(ids, cu_seqlens=pack_offsets([2, 4]), chunk_size=2)
    with pytest.raises(ValueError, match="from 0 to t = 6"):
        lm(ids, cu_seqlens=pack_offsets([2, 3]))
    with pytest.raises(ValueError, match="state"):
        lm(ids, cu_seqlens=pack_offsets([2, 4]), state=lm.init_state(1))
    with pytest.raises(ValueError, match="contiguous"):
        lm(_ids(4, 0).repeat(2, 1), attention_mask=torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1]]))


@pytest.mark.parametrize("side", ["left", "right", "both"])
def test_rwkv7_padded_rows_equal_each_row_alone(lm, side):
    seqs = [_ids(t, 20 + t) for t in (7, 3, 5)]
    ids, mask = _padded(seqs, side, pad_id=9)
    with torch.no_grad():
        out = lm(ids, attention_mask=mask, labels=ids)
        assert out.state is not None
        logits, targets = [], []
        for i, s in enumerate(seqs):
            alone = lm(s)
            torch.testing.assert_close(out.logits[i, mask[i].bool()], alone.logits[0], **TOL)
            _assert_states_close(out.state.select(i), alone.state)
            logits.append(alone.logits[0, :-1])
            targets.append(s[0, 1:])
    want = torch.nn.functional.cross_entropy(torch.cat(logits), torch.cat(targets))
    torch.testing.assert_close(out.loss, want, **TOL)


def test_rwkv7_left_padded_continuation_from_a_state_in_chunks(lm):
    a, b = _ids(4, 1), _ids(2, 2)
    with torch.no_grad():
        state = RWKVState.cat([lm(_ids(3, 3)).state, lm(_ids(5, 4)).state])
        ids = torch.cat([a, torch.cat([torch.zeros(1, 2, dtype=torch.long), b], 1)])
        out = lm(ids, state=state, attention_mask=torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]]), chunk_size=3)
        alone = lm(b, state=state.select(1))
        torch.testing.assert_close(out.logits[1, 2:], alone.logits[0], **TOL)
        _assert_states_close(out.state.select(1), alone.state)
        torch.testing.assert_close(out.logits[0], lm(a, state=state.select(0)).logits[0], **TOL)


def test_rwkv7_generate_from_a_padded_batch_or_a_list_equals_one_by_one(lm):
    seqs = [_ids(t, 30 + t) for t in (6, 2, 4)]
    one = [lm.generate(s, max_new_tokens=6).tokens[0] for s in seqs]
    ids, mask = _padded(seqs, "left")
    assert lm.generate(ids, attention_mask=mask, max_new_tokens=6).tokens == one
    assert lm.generate([s[0].tolist() for s in seqs], max_new_tokens=6).tokens == one
    sampled = [
        lm.generate(s, max_new_tokens=4, do_sample=True, generator=torch.Generator().manual_seed(5)).tokens[0]
        for s in seqs[:1]
    ]
    got = lm.generate(
        ids[:1], attention_mask=mask[:1], max_new_tokens=4, do_sample=True, generator=torch.Generator().manual_seed(5)
    )
    assert got.tokens == sampled


# --- an RWKV-7 VisualRWKV, the official v7.00 pads on ----------------------------------------------------------


@pytest.fixture(scope="module")
def toy():
    return VisualRWKV.from_pretrained("shapes-vqa-tiny")


@pytest.fixture(scope="module")
def vlm(toy):
    """The toy's encoder, tokenizer and layout around an RWKV-7 LM, left-padded to multiples of 16 with id 3."""
    torch.manual_seed(0)
    rwkv = _perturb(
        RWKV7(n_layer=3, n_embd=32, head_size=8, d_w=8, d_a=8, d_v=8, d_g=8, vocab_size=toy.rwkv.vocab_size)
    )
    model = VisualRWKV(
        rwkv=rwkv,
        encoder=toy.encoder,
        tokenizer=toy.tokenizer,
        preprocessor=toy.preprocessor,
        layout=toy.layout,
        pad_to_multiple=16,
        pad_token_id=3,
    )
    _perturb(model.proj, seed=1)
    return model.eval()


@pytest.fixture(scope="module")
def pixels(toy):
    return torch.randn(3, 3, *toy.encoder.image_size, generator=torch.Generator().manual_seed(3))


ROWS = [[1, IMG, 2, 3], [4, 5, 6, 7, 8, 9, IMG, 10, 11, 12, 13], [14, 15, 16]]


@pytest.mark.parametrize("side", ["left", "right"])
def test_visualrwkv7_padded_batch_rows_equal_each_row_alone(vlm, pixels, side):
    """Each row gets exactly the official pads it gets alone ((-length) mod 16, its image expanded), right
    before its first token, whatever padding the batch adds; logits at its positions and state equal."""
    k = vlm.image_tokens
    rows = ROWS[:2]
    ids, mask = _padded([torch.tensor([r]) for r in rows], side)
    with torch.no_grad():
        out = vlm(ids, pixels[:2], attention_mask=mask)
        for i, r in enumerate(rows):
            alone = vlm(torch.tensor([r]), pixels[i : i + 1])
            n_pad = int((mask[i] == 0).sum())
            first = n_pad if side == "left" else 0
            got = out.logits[i, first : first + alone.logits.shape[1]]
            torch.testing.assert_close(got, alone.logits[0], **TOL)
            _assert_states_close(out.state.select(i), alone.state)
            assert vlm.pad_count(len(r) + k - 1) > 0
    # The pads are no detail: without them the rows read differently.
    vlm.pad_to_multiple = None
    try:
        with torch.no_grad():
            unpadded = vlm(torch.tensor([ROWS[0]]), pixels[:1]).logits
    finally:
        vlm.pad_to_multiple = 16
    assert (unpadded[0] - vlm(torch.tensor([ROWS[0]]), pixels[:1]).logits[0]).abs().max() > 1e-3


def test_visualrwkv7_generate_lists_and_padded_batches_equal_one_by_one(vlm, pixels):
    counts = [vlm.count_images(torch.tensor([r])) for r in ROWS]
    per_row = [pixels[:1], pixels[1:2], None]
    kw = dict(max_new_tokens=5, stop_tokens=(), official_padding=False)
    one = [vlm.generate(torch.tensor([r]), p, **kw).tokens[0] for r, p in zip(ROWS, per_row)]
    assert vlm.generate(ROWS, per_row, **kw).tokens == one
    assert vlm.generate(ROWS, pixels[: sum(counts)], **kw).tokens == one
    ids, mask = _padded([torch.tensor([r]) for r in ROWS], "left")
    assert vlm.generate(ids, pixels[:2], attention_mask=mask, **kw).tokens == one
    # The default on a padded model, the official per-step re-padding, reads the padded batch's rows too.
    official = [
        vlm.generate(torch.tensor([r]), p, max_new_tokens=5, stop_tokens=()).tokens[0] for r, p in zip(ROWS, per_row)
    ]
    assert vlm.generate(ids, pixels[:2], attention_mask=mask, max_new_tokens=5, stop_tokens=()).tokens == official
    # The ragged prefill itself: the last logits and each row's state.
    with torch.no_grad():
        logits, state = vlm._prefill_ragged(ROWS, per_row, None)
        for i, (r, p) in enumerate(zip(ROWS, per_row)):
            alone = vlm(torch.tensor([r]), p, logits_to_keep=1)
            torch.testing.assert_close(logits[i], alone.logits[0, -1], **TOL)
            _assert_states_close(state.select(i), alone.state)


def test_visualrwkv7_packed_conversations_train_to_the_unpacked_loss(vlm):
    """ConversationCollator(pack=True): each sample gets its own official pads and state, no target crosses a
    boundary, and the loss and gradients equal those of the samples one by one."""
    from rwkv_vision.data import ShapesVQA

    data = ShapesVQA(split="test", size=3, seed=4)
    samples = [
        ([("user", data[0].question), ("assistant", data[0].answer)], data[0].image),
        ([("user", "How many shapes are there?"), ("assistant", "two")], None),
        ([("user", data[2].question), ("assistant", data[2].answer)], data[2].image),
    ]
    packed = ConversationCollator(vlm.processor, pack=True)(samples)
    vlm.zero_grad()
    loss = vlm(**packed).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in vlm.named_parameters() if p.grad is not None}
    assert "rwkv.blocks.0.att.v2" in grads or "rwkv.blocks.1.att.v2" in grads
    vlm.zero_grad()
    total, count = 0.0, 0
    for sample in samples:
        one = ConversationCollator(vlm.processor)([sample])
        n = int((one["labels"][0, 1:] != -100).sum())
        total = total + vlm(**one).loss * n
        count += n
    (total / count).backward()
    torch.testing.assert_close(loss, total / count, **TOL)
    for name, g in grads.items():
        torch.testing.assert_close(g, dict(vlm.named_parameters())[name].grad, atol=1e-5, rtol=1e-4, msg=name)
    vlm.zero_grad()


def test_v700_official_ids_padded_batch_equals_the_official_forward_per_row():
    """A v7.00 model (image runs of 16 ids, three towers) on a left-padded batch of two official prompts of
    different lengths: each row's logits equal the float64 official forward of that prompt alone (its own
    (-length) mod 16 pads of id 261), and a packed row gives the same."""
    from rwkv_vision.checkpoint.families import visualrwkv7_from_official_state_dict
    from rwkv_vision.vision import encoder_to_v7_state_dict, tiny_visualrwkv7_encoder

    from reference.visualrwkv7_ref import IMAGE_TOKEN, official_logits, random_v700_checkpoint, relative_rms_error

    g = torch.Generator().manual_seed(0)
    towers = {}
    for key, spec in encoder_to_v7_state_dict(tiny_visualrwkv7_encoder(device="meta")).items():
        fan_in = spec.shape[1:].numel() if spec.dim() > 1 else 1
        towers[key] = torch.randn(spec.shape, generator=g) * (fan_in**-0.5 if spec.dim() > 1 else 0.1)
        if key.endswith(("norm1.weight", "norm2.weight", "norm.weight", ".1.weight", ".3.weight", "gamma")):
            towers[key] = towers[key] + 1.0
    checkpoint = random_v700_checkpoint(
        tower_sd=towers, vision_width=144, n_layer=2, n_embd=32, head_size=8, vocab_size=300, seed=1
    )
    model = visualrwkv7_from_official_state_dict(checkpoint, dtype=torch.float64).eval()
    k = 16
    prompts = [
        [24, 59, 33] + [IMAGE_TOKEN] * k + [11, 42, 261, 100, 7, 59],  # 25 ids: 7 pads alone
        [24, 59, 33] + [IMAGE_TOKEN] * k + [5, 59],  # 21 ids: 11 pads alone
    ]
    sizes = model.encoder.image_sizes
    pixels = {n: torch.randn(2, 3, *s, generator=g, dtype=torch.float64) for n, s in sizes.items()}
    with torch.no_grad():
        features = model.encoder(pixels)
        ids, mask = _padded([torch.tensor([p]) for p in prompts], "left")
        out = model(ids, pixels, attention_mask=mask)
        packed = model(torch.tensor([prompts[0] + prompts[1]]), pixels, cu_seqlens=pack_offsets([25, 21]))
    for i, prompt in enumerate(prompts):
        ref = official_logits(checkpoint, prompt, features[i : i + 1])
        assert relative_rms_error(out.logits[i, mask[i].bool()], ref) < 1e-10
        at = 0 if i == 0 else len(prompts[0])
        assert relative_rms_error(packed.logits[0, at : at + len(prompt)], ref) < 1e-10
