"""Named outputs, labels and loss, transformers' keyword names, named shipped models and scan warnings."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from rwkv_vision import BiDir, MultiDir, UniDir, VisualRWKV, create_model, generate
from rwkv_vision.generation import GenerationConfig, GenerationOutput
from rwkv_vision.image_tokens import IMAGE_TOKEN_INDEX as IMG
from rwkv_vision.models.output import ModelOutput
from rwkv_vision.vision import timm_vit


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return create_model("rwkv6-test-tiny").eval()


@pytest.fixture(scope="module")
def vlm():
    torch.manual_seed(0)
    encoder = timm_vit("vit_tiny_patch16_224", img_size=64, depth=1, layer=-1, cls="last")  # 4 x 4 grid + CLS
    return VisualRWKV(rwkv=create_model("rwkv6-test-tiny", n_layer=3), encoder=encoder).eval()


def _ids(b=2, t=7, seed=1):
    return torch.randint(1, 256, (b, t), generator=torch.Generator().manual_seed(seed))


# --- named outputs -----------------------------------------------------------------------------------------


def test_forward_output_has_names_and_unpacks_as_before(lm):
    ids = _ids()
    out = lm(ids)
    assert isinstance(out, ModelOutput) and out.loss is None
    logits, state = out  # the old tuple form
    assert logits is out.logits and state is out.state and out[0] is out.logits and out[1] is out.state
    assert len(out) == 2 and out.to_tuple() == (out.logits, out.state)
    assert out.logits.shape == (2, 7, 256)


def test_rwkv6_labels_give_the_next_token_cross_entropy(lm):
    ids = _ids()
    labels = ids.clone()
    labels[:, :3] = -100
    out = lm(input_ids=ids, labels=labels)
    want = F.cross_entropy(out.logits[:, :-1].reshape(-1, 256), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, want)
    assert out.loss.dim() == 0 and out.loss.dtype == torch.float32
    torch.testing.assert_close(out.logits, lm(ids).logits)


def test_loss_trains(lm):
    model = create_model("rwkv6-test-tiny")
    ids = _ids(seed=3)
    out = model(ids, labels=ids)
    out.loss.backward()
    assert model.head.weight.grad is not None and model.emb.weight.grad.abs().sum() > 0


def test_labels_with_logits_to_keep_are_refused(lm):
    with pytest.raises(ValueError, match="logits_to_keep=0"):
        lm(_ids(), labels=_ids(), logits_to_keep=1)


def test_unknown_forward_keywords_are_named_with_the_accepted_ones(lm, vlm):
    with pytest.raises(TypeError, match=r"'use_cache'.*accepted: input_ids, inputs_embeds, state"):
        lm(_ids(), use_cache=True)
    with pytest.raises(TypeError, match=r"'return_dict'.*accepted: input_ids, pixel_values"):
        vlm(_ids(), return_dict=True)


def test_right_padding_mask_gives_each_row_its_own_logits(lm):
    a, b = _ids(1, 7, seed=4), _ids(1, 4, seed=5)
    batch = torch.cat([a, torch.cat([b, torch.zeros(1, 3, dtype=torch.long)], 1)])
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    out = lm(batch, attention_mask=mask, labels=batch)
    torch.testing.assert_close(out.logits[1, :4], lm(b).logits[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logits[0], lm(a).logits[0], atol=1e-5, rtol=1e-5)
    # Padded steps leave the state alone: row 1's state is that of b read alone.
    _, state_b = lm(b)
    for mine, alone in zip(out.state.select([1]), state_b):
        for name in ("att_shift", "wkv", "ffn_shift"):
            torch.testing.assert_close(getattr(mine, name), getattr(alone, name), atol=1e-5, rtol=1e-5)
    # Padded positions are never scored: the loss is that of the two rows' real tokens.
    both = torch.cat([lm(a).logits[0, :-1], lm(b).logits[0, :-1]])
    want = F.cross_entropy(both, torch.cat([a[0, 1:], b[0, 1:]]))
    torch.testing.assert_close(out.loss, want, atol=1e-5, rtol=1e-5)
    # An all-ones mask changes nothing and keeps the state.
    full = lm(batch, attention_mask=torch.ones_like(batch))
    assert full.state is not None


def test_a_gap_inside_a_row_is_refused_by_name(lm):
    mask = torch.tensor([[1, 1, 0, 1, 1, 1, 1], [1] * 7])
    with pytest.raises(ValueError, match="attention_mask row 0 has padding between its tokens"):
        lm(_ids(), attention_mask=mask)


# --- VisualRWKV labels: aligned with the expanded image tokens -----------------------------------------------


def test_visualrwkv_labels_expand_with_the_image_and_never_target_it(vlm):
    k = vlm.image_tokens  # 17: 4 x 4 patches + CLS
    ids = torch.tensor([[5, 6, IMG, 7, 8, 9], [10, IMG, 11, 12, 13, 14]])
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    labels = ids.clone()  # the placeholder's own label (-200) is replaced, whatever it is
    out = vlm(ids, pixels, labels=labels)
    assert out.logits.shape == (2, 6 + k - 1, 256)
    # Expanded by hand: the placeholder becomes k positions of -100.
    want_labels = torch.tensor(
        [[5, 6] + [-100] * k + [7, 8, 9], [10] + [-100] * k + [11, 12, 13, 14]], dtype=torch.long
    )
    _, spans = vlm.embed(ids, pixels)
    assert torch.equal(vlm.expand_labels(ids, labels, spans), want_labels)
    v = out.logits.shape[-1]
    want = F.cross_entropy(out.logits[:, :-1].reshape(-1, v), want_labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, want)
    # Labels already over the expanded sequence are accepted too; image positions are masked all the same.
    expanded = torch.randint(0, 256, want_labels.shape, generator=torch.Generator().manual_seed(1))
    expanded[want_labels != -100] = want_labels[want_labels != -100]
    torch.testing.assert_close(vlm(ids, pixels, labels=expanded).loss, want)


def test_visualrwkv_logits_before_right_padding_equal_the_row_alone(vlm):
    ids = torch.tensor([[5, IMG, 7, 8, 9], [10, IMG, 11, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    out = vlm(ids, pixels, attention_mask=mask, labels=ids)
    alone = vlm(ids[1:, :3], pixels[1:])
    torch.testing.assert_close(out.logits[1, : alone.logits.shape[1]], alone.logits[0], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out.loss)
    # The padding leaves the state alone: row 1's state is that of the row read alone.
    for mine, own in zip(out.state.select(1), alone.state):
        torch.testing.assert_close(mine.wkv, own.wkv, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mine.ffn_shift, own.ffn_shift, atol=1e-5, rtol=1e-5)


def test_visualrwkv_left_padding_gives_each_row_its_own_logits(vlm):
    ids = torch.tensor([[5, IMG, 7, 8, 9], [0, 0, 10, IMG, 11]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    out = vlm(ids, pixels, attention_mask=mask)
    alone = vlm(ids[1:, 2:], pixels[1:])
    torch.testing.assert_close(out.logits[1, 2:], alone.logits[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logits[0], vlm(ids[:1], pixels[:1]).logits[0], atol=1e-5, rtol=1e-5)


# --- generation: sequences, stop reasons, transformers' keywords -------------------------------------------


def test_generation_output_has_sequences_and_stop_reasons(lm):
    prompt = _ids(2, 5)
    free = generate(lm, prompt, max_new_tokens=6)
    stop = free.tokens[0][2]
    out = generate(lm, prompt, max_new_tokens=6, eos_token_id=stop)
    assert out.tokens[0] == free.tokens[0][:3] and out.finish_reasons[0] == "stop"
    assert out.stop_reasons is out.finish_reasons
    seq = out.sequences
    assert seq.dtype == torch.long and seq.shape == (2, max(len(r) for r in out.tokens))
    for row, tokens in enumerate(out.tokens):
        assert seq[row, : len(tokens)].tolist() == tokens
        assert (seq[row, len(tokens) :] == tokens[-1]).all()  # padded with the row's stop token
    padded = generate(lm, prompt, max_new_tokens=6, eos_token_id=[stop], pad_token_id=0)
    assert padded.tokens == out.tokens and (padded.sequences[0, 3:] == 0).all()


def test_eos_token_id_is_an_alias_of_stop_tokens(lm):
    prompt = _ids(1, 5)
    a = generate(lm, prompt, max_new_tokens=8, eos_token_id=[3, 4])
    b = generate(lm, prompt, max_new_tokens=8, stop_tokens=(3, 4))
    assert a.tokens == b.tokens
    assert GenerationConfig(stop_tokens=7).stop_tokens == (7,)
    with pytest.raises(ValueError, match="not both"):
        generate(lm, prompt, eos_token_id=3, stop_tokens=(4,))


def test_do_sample_and_max_new_tokens_keep_their_transformers_meaning(lm):
    prompt = _ids(1, 5)
    g = torch.Generator().manual_seed(0)
    out = generate(lm, prompt, max_new_tokens=4, do_sample=True, top_k=5, generator=g)
    assert isinstance(out, GenerationOutput) and len(out.tokens[0]) == 4


def test_unknown_generation_keywords_are_named_with_the_accepted_ones(lm, vlm):
    with pytest.raises(TypeError, match=r"'num_beams'.*accepted:.*max_new_tokens.*eos_token_id"):
        generate(lm, _ids(1, 3), num_beams=4)
    with pytest.raises(TypeError, match=r"VisualRWKV.generate.*'num_beams'"):
        vlm.generate(_ids(1, 3), num_beams=4)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_generation_equals_one_by_one(lm, side):
    rows = [_ids(1, t, seed=30 + t)[0].tolist() for t in (5, 2, 4)]
    t = 5
    pad = lambda r: [0] * (t - len(r)) + r if side == "left" else r + [0] * (t - len(r))  # noqa: E731
    ones = lambda r: [0] * (t - len(r)) + [1] * len(r) if side == "left" else [1] * len(r) + [0] * (t - len(r))  # noqa: E731
    ids = torch.tensor([pad(r) for r in rows])
    mask = torch.tensor([ones(r) for r in rows])
    out = generate(lm, ids, attention_mask=mask, max_new_tokens=6, stop_tokens=())
    for i, r in enumerate(rows):
        assert out.tokens[i] == generate(lm, [r], max_new_tokens=6, stop_tokens=()).tokens[0]
    # A ragged list takes the same one-call path.
    assert generate(lm, rows, max_new_tokens=6, stop_tokens=()).tokens == out.tokens
    # A mask without padding is harmless.
    assert generate(lm, _ids(1, 3), attention_mask=torch.ones(1, 3), max_new_tokens=2).tokens


def test_padded_generation_needs_a_model_that_takes_the_mask(lm):
    def plain(input_ids, state=None):
        return lm(input_ids, state=state)

    with pytest.raises(NotImplementedError, match="list of lists"):
        generate(plain, _ids(1, 3), attention_mask=torch.tensor([[0, 1, 1]]))


def test_visualrwkv_generate_can_stop_at_its_tokenizers_stop_tokens():
    model = VisualRWKV.from_pretrained("shapes-vqa-tiny")
    tok = model.get_tokenizer()
    assert model.default_stop_tokens() == tuple(tok.stop_token_ids)
    ids = model.layout.tokenize("How many shapes are there?", tok, num_images=1).to_tensor()
    pixels = torch.zeros(1, 3, *model.encoder.image_size)
    free = model.generate(ids, pixels, max_new_tokens=8, stop_tokens=())
    stopping = VisualRWKV.from_pretrained("shapes-vqa-tiny")
    stopping.stop_at_tokenizer_stops = True
    out = stopping.generate(ids, pixels, max_new_tokens=8)
    assert out.tokens == model.generate(ids, pixels, max_new_tokens=8, eos_token_id=tok.stop_token_ids).tokens
    assert out.finish_reasons == ["stop"] and out.tokens[0][-1] in tok.stop_token_ids
    assert free.tokens[0][: len(out.tokens[0])] == out.tokens[0]


# --- named models ----------------------------------------------------------------------------------------------


def test_shipped_model_by_name():
    model = VisualRWKV.from_pretrained("shapes-vqa-tiny")
    same = create_model("shapes-vqa-tiny", pretrained=True)
    assert isinstance(same, VisualRWKV) and not same.training
    for (name, p), (_, q) in zip(model.state_dict().items(), same.state_dict().items()):
        assert torch.equal(p, q), name
    fresh = create_model("shapes-vqa-tiny")
    assert isinstance(fresh, VisualRWKV) and fresh.config == model.config
    assert not torch.equal(fresh.rwkv.head.weight, model.rwkv.head.weight)
    assert type(fresh.tokenizer) is type(model.tokenizer)


def test_create_model_names_what_exists():
    with pytest.raises(ValueError, match="no weights ship.*shapes-vqa-tiny"):
        create_model("rwkv6-test-tiny", pretrained=True)
    with pytest.raises(ValueError, match="unknown model name 'nope'.*shapes-vqa-tiny"):
        create_model("nope")


# --- scan policy warnings --------------------------------------------------------------------------------------


def test_a_scan_policy_that_changes_nothing_on_this_model_warns(vlm):
    two = VisualRWKV(rwkv=create_model("rwkv6-test-tiny"), encoder=vlm.encoder)  # 2 layers
    with pytest.warns(UserWarning, match=r"MultiDir\(\).*4 per-layer orders.*2 layers.*BiDir\(\)"):
        two.scan = MultiDir()
    with pytest.warns(UserWarning, match=r"4 per-layer orders but the model has 3 layers"):
        vlm.scan = MultiDir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vlm.scan = UniDir()
        vlm.scan = BiDir()  # period 2 <= 3 layers, and no simpler policy reads the same orders
        deep = VisualRWKV(rwkv=create_model("rwkv6-test-tiny", n_layer=4), encoder=vlm.encoder)
        deep.scan = MultiDir()
        two.scan = BiDir()  # equal to MultiDir here, but MultiDir is the one that is not what it says
        small = VisualRWKV(
            rwkv=vlm.rwkv, encoder=timm_vit("vit_tiny_patch16_224", img_size=32, depth=1, layer=-1, cls="last")
        )
        small.scan = UniDir()  # equal to Zigzag on a 2 x 2 grid, but the simpler one
    with pytest.warns(UserWarning, match=r"Zigzag.*2 x 2 patch grid.*UniDir\(\)"):
        small.scan = "zigzag"


def test_generate_with_a_prefill_chunk_size_on_a_model_without_chunks(vlm):
    # VisualRWKV.forward has no chunk_size; generate must not pass it (its **kwargs reject unknown names).
    ids = torch.tensor([[5, 6, 7]])
    out = generate(vlm, ids, max_new_tokens=3, prefill_chunk_size=2)
    assert out.tokens == generate(vlm, ids, max_new_tokens=3).tokens
