"""The shipped toy VisualRWKV (rwkv_vision.pretrained): it loads like any saved model and answers held-out
ShapesVQA questions about images it has never seen."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import torch

from rwkv_vision import VisualRWKV
from rwkv_vision.data import ShapesVQA, WordTokenizer, exact_match
from rwkv_vision.pretrained import TOY_MODEL, list_pretrained, load_toy_model, path

from reference.fixtures import one_cpu_thread  # noqa: F401

N_QUESTIONS = 20  # test-split samples 0..19 of seed 0: scenes that never occur in training


@pytest.fixture(scope="module")
def model():
    return load_toy_model()


@pytest.fixture(scope="module")
def samples(model):
    size, grid = model.encoder.image_size[0], model.encoder.grid[0]
    data = ShapesVQA("test", size=N_QUESTIONS, seed=0, image_size=size, grid=grid)
    return [data[i] for i in range(N_QUESTIONS)]


def test_shipped_files_are_small_and_say_how_they_were_made():
    directory = path(TOY_MODEL)
    assert TOY_MODEL in list_pretrained()
    files = {p.name for p in directory.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= files
    assert sum(p.stat().st_size for p in directory.iterdir()) <= 10 * 2**20
    metadata = json.loads((directory / "config.json").read_text())["metadata"]
    assert "examples/train_toy.py" in metadata["command"]
    # The held-out accuracy measured at the end of training (96.9 % on 1000 test-split samples).
    assert metadata["eval"]["accuracy"] >= 0.9 and metadata["eval"]["total"] >= 1000
    assert metadata["command"] in (directory / "README.md").read_text()


def test_loads_through_the_same_path_as_any_saved_model(model):
    again = VisualRWKV.from_pretrained(path())
    assert not model.training
    assert (
        isinstance(model.get_tokenizer(), WordTokenizer)
        and model.image_preprocessor.size == model.encoder.image_size[0]
    )
    assert repr(model.scan) == "BiDir()" and type(model.layout).__name__ == "Sandwich"
    for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_unknown_name_is_named():
    with pytest.raises(ValueError, match="no shipped model 'nope'"):
        path("nope")


def test_answers_held_out_questions(model, samples):
    answers = [model.chat(s.image, s.question, max_new_tokens=4) for s in samples]
    right = [exact_match(a, s.answer) for a, s in zip(answers, samples)]
    report = [f"{s.question!r}: {a!r} (true {s.answer!r})" for a, s in zip(answers, samples)]
    assert sum(right) >= N_QUESTIONS - 2, "\n".join(report)


def test_batched_evaluation_equals_one_by_one_chat(model, samples):
    evaluate = runpy.run_path(
        str(Path(__file__).resolve().parents[1] / "examples" / "train_toy.py"), run_name="train_toy"
    )["evaluate"]
    result = evaluate(model, samples, batch_size=8)
    chat = [model.chat(s.image, s.question, max_new_tokens=4) for s in samples]
    assert [p for _, p, _, _ in result["predictions"]] == chat
    assert result["total"] == N_QUESTIONS
