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
