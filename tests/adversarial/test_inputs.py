"""Hostile arguments to the models and to generation: a quick error naming the argument, never an opaque
index error, a silently reinterpreted value or a NaN that surfaces layers later."""

from __future__ import annotations

import pytest
import torch

from rwkv_vision import VisualRWKV, create_model, generate
from rwkv_vision.generation import GenerationConfig
from rwkv_vision.image_tokens import IMAGE_TOKEN_INDEX as IMG


@pytest.fixture(scope="module")
def toy():
    return VisualRWKV.from_pretrained("shapes-vqa-tiny")


@pytest.fixture(scope="module")
def lm():
    return create_model("rwkv6-test-tiny").eval()


@pytest.mark.parametrize("ids", [[[5000, 3]], [[-7, 3]], [[1, IMG, 131]]])
def test_visualrwkv_rejects_text_ids_outside_the_vocabulary(toy, ids):
    pixels = torch.zeros(1, 3, *toy.encoder.image_size) if IMG in ids[0] else None
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, vocab_size = 131\)"):
        toy(torch.tensor(ids), pixels)


def test_visualrwkv_rejects_float_ids_and_non_finite_pixels(toy):
    with pytest.raises(TypeError, match="input_ids must be an integer tensor"):
        toy(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="pixel_values must be finite"):
        toy(torch.tensor([[1, IMG, 3]]), torch.full((1, 3, *toy.encoder.image_size), float("nan")))


@pytest.mark.parametrize(
    "field, value, error, match",
    [
        ("stop_tokens", "261", TypeError, "stop_tokens must be an int or a list of ints"),
        ("stop_tokens", [1.5], ValueError, "stop_tokens must hold token ids"),
        ("stop_tokens", [-1], ValueError, "stop_tokens must hold token ids"),
        ("max_new_tokens", "5", ValueError, "max_new_tokens must be an int >= 0"),
        ("max_new_tokens", True, ValueError, "max_new_tokens must be an int >= 0"),
        ("do_sample", "yes", TypeError, "do_sample must be True or False"),
        ("temperature", float("nan"), ValueError, "temperature must be a finite number"),
        ("temperature", float("inf"), ValueError, "temperature must be a finite number"),
        ("top_k", 2.5, ValueError, "top_k must be an int"),
        ("top_p", float("nan"), ValueError, r"top_p must be a number in \(0, 1\]"),
        ("prefill_chunk_size", 0, ValueError, "prefill_chunk_size must be a positive int"),
        ("pad_token_id", -3, ValueError, "pad_token_id must be a token id"),
    ],
)
def test_generation_options_are_checked_up_front(lm, field, value, error, match):
    with pytest.raises(error, match=match):
        GenerationConfig(**{field: value})
    with pytest.raises(error, match=match):
        generate(lm, [1, 2, 3], **{"max_new_tokens": 2, field: value})


def test_valid_stop_tokens_forms_are_kept(lm):
    assert GenerationConfig(stop_tokens=261).stop_tokens == (261,)
    assert GenerationConfig(stop_tokens=range(2)).stop_tokens == (0, 1)
    assert generate(lm, [1, 2, 3], max_new_tokens=2, eos_token_id=5).tokens


# --- packed and padded sequences, RWKV-7 ------------------------------------------------------------------


def _wkv_inputs(b=1, t=6, h=2, n=8):
    g = torch.Generator().manual_seed(0)
    r, k, v = (torch.randn(b, t, h, n, generator=g) for _ in range(3))
    kk = torch.nn.functional.normalize(torch.randn(b, t, h, n, generator=g), dim=-1)
    return r, k, v, -torch.rand(b, t, h, n, generator=g), kk


@pytest.mark.parametrize(
    "cu, error, match",
    [
        (torch.tensor([0.0, 3.0, 6.0]), TypeError, "cu_seqlens must be"),
        (torch.tensor([0, -3, 6]), ValueError, "non-decreasing"),
        (torch.tensor([0, 4, 3, 6]), ValueError, "non-decreasing"),
        (torch.tensor([0, 2**40, 6]), ValueError, "non-decreasing"),
        (torch.tensor([0, 3, 7]), ValueError, "t = 6"),
        (torch.tensor([[0, 3, 6]]), ValueError, "1-D"),
        ([0, 3, 6], TypeError, "torch.Tensor"),
        (torch.tensor([0, 3, 6], device="meta"), ValueError, "cu_seqlens is on meta"),
    ],
)
def test_wkv6_and_wkv7_reject_hostile_cu_seqlens(cu, error, match):
    from rwkv_vision.ops import wkv6, wkv7

    r, k, v, w, kk = _wkv_inputs()
    with pytest.raises(error, match=match):
        wkv6(r, k, v, w, torch.randn(2, 8), cu_seqlens=cu)
    with pytest.raises(error, match=match):
        wkv7(r, w, k, v, -kk, kk * 0.5, cu_seqlens=cu)


def test_packed_initial_state_must_have_one_state_per_sequence():
    from rwkv_vision.ops import wkv6, wkv7

    r, k, v, w, kk = _wkv_inputs()
    cu, state = torch.tensor([0, 3, 6]), torch.zeros(3, 2, 8, 8)
    with pytest.raises(ValueError, match=r"initial_state must be \[N, h, n, n\] = \[2, 2, 8, 8\]"):
        wkv6(r, k, v, w, torch.randn(2, 8), initial_state=state, cu_seqlens=cu)
    with pytest.raises(ValueError, match=r"initial_state must be \[N, h, n, n\] = \[2, 2, 8, 8\]"):
        wkv7(r, w, k, v, -kk, kk * 0.5, initial_state=state, cu_seqlens=cu)


@pytest.mark.parametrize("name", ["rwkv6-test-tiny", "rwkv7-tiny"])
@pytest.mark.parametrize(
    "mask, match",
    [
        ([[1, 0, 1, 1]], "padding between its tokens"),
        ([[2, 1, 1, 1]], "must hold 1 \\(token\\) and 0 \\(padding\\)"),
        ([[0.5, 1.0, 1.0, 1.0]], "must hold 1 \\(token\\) and 0 \\(padding\\)"),
        ([[1, 1, 1]], r"attention_mask must be \[b, t\] = \[1, 4\]"),
    ],
)
def test_language_models_reject_hostile_attention_masks(name, mask, match):
    model = create_model(name).eval()
    with pytest.raises(ValueError, match=match):
        model(torch.tensor([[1, 2, 3, 4]]), attention_mask=torch.tensor(mask))
    # a float or bool mask of 0s and 1s is a padding mask
    out = model(torch.tensor([[1, 2, 3, 4]]), attention_mask=torch.tensor([[0.0, 1.0, 1.0, 1.0]]))
    assert torch.isfinite(out.logits).all()


# --- per-tower preprocessing and the packing collator -------------------------------------------------------


@pytest.mark.parametrize("mode", ["P", "PA", "L", "LA", "La", "1", "I", "I;16", "I;16B", "F", "CMYK", "YCbCr", "RGBA"])
def test_multi_image_preprocessor_takes_every_image_mode(mode):
    from PIL import Image

    from rwkv_vision.vision.multi_preprocess import MultiImagePreprocessor, SquareResize

    pre = MultiImagePreprocessor({"a": SquareResize(28), "b": SquareResize(16)}, alpha="white")
    out = pre(Image.new(mode, (20, 30)))
    assert out["a"].shape == (1, 3, 28, 28) and out["b"].shape == (1, 3, 16, 16)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_multi_image_preprocessor_refuses_empty_enormous_and_non_pil_images():
    from PIL import Image

    from rwkv_vision.errors import ImageError
    from rwkv_vision.vision.multi_preprocess import MultiImagePreprocessor, SquareResize

    pre = MultiImagePreprocessor({"a": SquareResize(28)})
    for empty in (Image.new("RGB", (0, 5)), [Image.new("RGB", (4, 4)), Image.new("L", (3, 0))]):
        with pytest.raises(ValueError, match=r"images\[\d\] is empty"):
            pre(empty)
    with pytest.raises(ImageError, match="decompression-bomb guard"):
        pre(Image.new("1", (20000, 20000)))
    for bad in (torch.zeros(3, 8, 8), "x.png", None, [Image.new("RGB", (4, 4)), None]):
        with pytest.raises(TypeError, match="PIL.Image.Image"):
            pre(bad)


def test_packing_collator_refuses_hostile_samples(toy):
    from PIL import Image

    from rwkv_vision.collate import ConversationCollator

    collate = ConversationCollator(toy.processor, pack=True)
    turns = [("user", "How many shapes are there?"), ("assistant", "two")]
    cases = [
        (5, TypeError, "samples must be a list"),
        ("abc", TypeError, "samples must be a list"),
        ([], ValueError, "none was given"),
        ([None], TypeError, r"samples\[0\] must be"),
        ([(turns, ["x.png"])], TypeError, r"images\[0\] must be a PIL.Image.Image"),
        ([(turns, [Image.new("RGB", (0, 3))])], ValueError, "is empty"),
        ([(turns[:1], [])], ValueError, "no assistant turn"),
        ([([("user", None), ("assistant", "two")], [])], TypeError, "text must be a str"),
    ]
    for samples, error, match in cases:
        with pytest.raises(error, match=match):
            collate(samples)
    batch = collate([(turns, [Image.new("LA", (9, 7))]), (turns, [])])  # image counts may differ when packed
    assert batch["cu_seqlens"].tolist()[-1] == batch["input_ids"].shape[1] and batch["pixel_values"].shape[0] == 1
