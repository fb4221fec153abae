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
