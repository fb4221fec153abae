"""A batch of prompts of different lengths and image counts generates what each prompt gives alone."""

from __future__ import annotations

import pytest
import torch

from rwkv_vision import VisualRWKV
from rwkv_vision.data import ShapesVQA
from rwkv_vision.image_tokens import IMAGE_TOKEN_INDEX as IMG

from reference.fixtures import one_cpu_thread  # noqa: F401


@pytest.fixture(scope="module")
def toy():
    return VisualRWKV.from_pretrained("shapes-vqa-tiny")


def _prompts(toy):
    data = ShapesVQA(split="test", size=3, seed=5)
    tok, pre = toy.get_tokenizer(), toy.get_preprocessor()
    rows, pixels = [], []
    for i, n_images in enumerate((1, 0, 2)):
        sample = data[i]
        question = sample.question if i != 1 else "How many shapes are there?"
        rows.append(toy.layout.tokenize(question, tok, num_images=n_images).to_tensor()[0])
        pixels.append(pre([data[j].image for j in range(n_images)]) if n_images else None)
    return rows, pixels


@pytest.mark.parametrize("stop", [{}, {"stop_tokens": ()}, {"stop_tokens": (52,)}])
def test_ragged_batch_equals_one_by_one(toy, stop):
    # default: every row stops at "\n\n"; (): all run 6 steps together; (52,): row 0 stops first
    rows, pixels = _prompts(toy)
    assert len({len(r) for r in rows}) == 3 and [int((r == IMG).sum()) for r in rows] == [1, 0, 2]
    batch = toy.generate(rows, pixels, max_new_tokens=6, **stop)
    assert len({tuple(t) for t in batch.tokens}) == 3
    for i, (row, pix) in enumerate(zip(rows, pixels)):
        alone = toy.generate(row[None], pix, max_new_tokens=6, **stop)
        assert batch.tokens[i] == alone.tokens[0]
        assert batch.finish_reasons[i] == alone.finish_reasons[0]
    # one tensor of all images, taken in row order, is the same request
    flat = torch.cat([p for p in pixels if p is not None])
    assert toy.generate([r.tolist() for r in rows], flat, max_new_tokens=6, **stop).tokens == batch.tokens


def test_ragged_batch_errors_name_the_argument(toy):
    rows, pixels = _prompts(toy)
    with pytest.raises(ValueError, match="3 image groups for 2 prompts"):
        toy.generate(rows[:2], pixels, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"holds 1 images but the prompts hold 3 placeholders \[1, 0, 2\]"):
        toy.generate(rows, pixels[0], max_new_tokens=2)
    with pytest.raises(ValueError, match=r"input_ids\[1\] must be a non-empty"):
        toy.generate([rows[0], []], [pixels[0], None], max_new_tokens=2)


def test_left_padded_tensor_with_attention_mask_equals_one_by_one(toy):
    rows, pixels = _prompts(toy)
    width = max(len(r) for r in rows)
    ids = torch.stack([torch.cat([torch.zeros(width - len(r), dtype=torch.long), r]) for r in rows])
    mask = torch.stack([torch.arange(width) >= width - len(r) for r in rows]).long()
    flat = torch.cat([p for p in pixels if p is not None])
    batch = toy.generate(ids, flat, attention_mask=mask, max_new_tokens=5, stop_tokens=())
    for i, (row, pix) in enumerate(zip(rows, pixels)):
        assert batch.tokens[i] == toy.generate(row[None], pix, max_new_tokens=5, stop_tokens=()).tokens[0]
    with pytest.raises(ValueError, match="padding between its tokens"):
        toy.generate(ids, flat, attention_mask=mask * torch.tensor([1, 0] * (width // 2) + [1] * (width % 2)))
