"""ConversationCollator: only the assistant's answers are targets, aligned with the model's expansion."""

from __future__ import annotations

import pytest
import torch

from rwkv_vision import VisualRWKV
from rwkv_vision.collate import ConversationCollator
from rwkv_vision.data import ShapesVQA
from rwkv_vision.image_tokens import IMAGE_TOKEN_INDEX as IMG

from reference.fixtures import one_cpu_thread  # noqa: F401


@pytest.fixture(scope="module")
def toy():
    return VisualRWKV.from_pretrained("shapes-vqa-tiny")


def test_one_turn_is_the_generation_prompt_followed_by_the_answer(toy):
    collate = ConversationCollator(toy.processor)
    sample = ShapesVQA(split="test", size=1)[0]
    batch = collate([([("user", sample.question), ("assistant", sample.answer)], sample.image)])
    tok = toy.get_tokenizer()
    prompt = toy.layout.tokenize(sample.question, tok, num_images=1).input_ids
    answer = tok.encode(" " + sample.answer) + [tok.stop_token_ids[0]]
    assert batch["input_ids"][0].tolist() == prompt + answer  # what generate continues from, then the answer
    assert batch["labels"][0].tolist() == [-100] * len(prompt) + answer
    assert batch["pixel_values"].shape == (1, 3, *toy.encoder.image_size)
    out = toy(**batch)
    assert torch.isfinite(out.loss)


def test_multi_turn_ragged_batch_marks_every_answer_and_nothing_else(toy):
    data = ShapesVQA(split="test", size=2, seed=3)
    conv = [
        ("user", data[0].question),
        ("assistant", data[0].answer),
        ("user", "How many shapes are there?"),
        ("assistant", "two"),
    ]
    short = [("user", "How many shapes are there?"), ("assistant", "zero")]
    collate = ConversationCollator(toy.processor)
    batch = collate([(conv, [data[0].image]), {"messages": short, "images": data[1].image}, (conv, data[1].image)])
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    tok = toy.get_tokenizer()
    stop = tok.stop_token_ids[0]
    for row, answers in zip(range(3), ([data[0].answer, "two"], ["zero"], [data[0].answer, "two"])):
        targets = [i for i in labels[row].tolist() if i != -100]
        expected = sum((tok.encode(" " + a) + [stop] for a in answers), [])
        assert targets == expected
        n = int(mask[row].sum())
        assert (labels[row, n:] == -100).all() and (ids[row, n:] == 0).all()
        assert (labels[row][ids[row] == IMG] == -100).all()
    assert batch["pixel_values"].shape[0] == 3 and mask[1].sum() < mask[0].sum()
    assert torch.isfinite(toy(**batch).loss)


def test_bad_samples_are_refused_clearly(toy):
    collate = ConversationCollator(toy.processor, max_length=5)
    with pytest.raises(ValueError, match="no assistant turn"):
        collate([("What is this?", None)])
    with pytest.raises(ValueError, match="every sample was dropped"):
        collate([([("user", "How many shapes are there?"), ("assistant", "one")], None)])
    assert collate.dropped == 1
    with pytest.raises(ValueError, match=r"same number of images.*\[1, 0\]"):
        ConversationCollator(toy.processor)(
            [
                ([("user", "How many shapes are there?"), ("assistant", "one")], ShapesVQA(size=1)[0].image),
                ([("user", "How many shapes are there?"), ("assistant", "two")], None),
            ]
        )
    with pytest.raises(TypeError, match=r"samples\[0\] must be"):
        ConversationCollator(toy.processor)([42])
    with pytest.raises(TypeError, match="processor must be a VisualRWKVProcessor"):
        ConversationCollator(toy)


def test_packed_batch_trains_to_the_loss_of_the_padded_batch(toy):
    # Samples with different image counts packed into one row: no padding, no target across a boundary, and
    # the loss (and its gradient) equals that of the same samples as a padded batch (or one by one).
    data = ShapesVQA(split="test", size=3, seed=4)
    samples = [
        ([("user", data[0].question), ("assistant", data[0].answer)], data[0].image),
        ([("user", "How many shapes are there?"), ("assistant", "two")], None),
        ([("user", data[2].question), ("assistant", data[2].answer)], [data[2].image, data[1].image]),
    ]
    packed = ConversationCollator(toy.processor, pack=True)(samples)
    assert set(packed) == {"input_ids", "labels", "cu_seqlens", "pixel_values"}
    cu = packed["cu_seqlens"].tolist()
    assert packed["input_ids"].shape == (1, cu[-1]) and len(cu) == 4 and packed["pixel_values"].shape[0] == 3
    assert all(packed["labels"][0, start] == -100 for start in cu[:-1])
    toy.zero_grad()
    loss = toy(**packed).loss
    loss.backward()
    grad = toy.rwkv.head.weight.grad.clone()
    # The reference: each sample alone, its scored positions pooled (what a padded batch averages over).
    toy.zero_grad()
    total, count = 0.0, 0
    for sample in samples:
        one = ConversationCollator(toy.processor)([sample])
        n = int((one["labels"][0, 1:] != -100).sum())
        total = total + toy(**one).loss * n
        count += n
    (total / count).backward()
    torch.testing.assert_close(loss, total / count, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, toy.rwkv.head.weight.grad, atol=1e-5, rtol=1e-4)
    toy.zero_grad()
    # The text-only samples as a right-padded batch give the same loss as packed.
    text = [samples[1], ([("user", "Is there a circle?"), ("assistant", "yes")], None)]
    padded = ConversationCollator(toy.processor)(text)
    torch.testing.assert_close(
        toy(**ConversationCollator(toy.processor, pack=True)(text)).loss, toy(**padded).loss, atol=1e-5, rtol=1e-5
    )
