"""examples/train_visualrwkv7.py: a two-tower RWKV-7 VisualRWKV trains, saves and reloads."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import torch

from reference.fixtures import one_cpu_thread  # noqa: F401

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_visualrwkv7.py"


@pytest.fixture(scope="module")
def example():
    return runpy.run_path(str(SCRIPT), run_name="train_visualrwkv7")


def test_the_model_has_the_v7_parts(example):
    torch.manual_seed(0)
    model = example["build_model"](example["V7ToyConfig"]())
    assert type(model.rwkv).__name__ == "RWKV7" and model.encoder.names == ["dino", "siglip"]
    assert model.encoder.width == 32 + 48 and model.image_tokens == 9 and model.pad_to_multiple == 16
    assert type(model.proj).__name__ == "ContextGatingProjector"
    assert not any(p.requires_grad for p in model.encoder.parameters())


def test_labels_score_exactly_the_answer_and_stop_token(example):
    torch.manual_seed(0)
    config = example["V7ToyConfig"]()
    model = example["build_model"](config)
    samples = [config.dataset("train", size=2, seed=0)[i] for i in range(2)]
    batch = example["collate"](model, samples)
    tok = model.get_tokenizer()
    for row, (ids, labels) in enumerate(zip(batch["input_ids"].tolist(), batch["labels"].tolist())):
        scored = [(i, y) for i, y in enumerate(labels) if y != -100]
        answer = tok.encode(" " + samples[row].answer) + [tok.stop_token_ids[0]]
        assert [y for _, y in scored] == answer
        # each scored label is the id that follows its position (the last one, the stop token, is not fed)
        assert all(ids[i + 1] == y for i, y in scored[:-1])
        assert ids.count(65535) == 9  # one run of k placeholder ids for the image
    assert set(batch["pixel_values"]) == {"dino", "siglip"}
    assert batch["pixel_values"]["dino"].shape == (2, 3, 42, 42)


def test_training_lowers_the_loss_and_the_save_reloads(example, tmp_path, capsys):
    _, losses = example["train"](example["V7ToyConfig"](), steps=4, batch_size=4, lr=5e-3, log_every=0)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert example["main"](["--steps", "2", "--batch-size", "2", "--eval", "2", "--out", str(tmp_path / "m")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["out"] == str(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["architecture"] == "rwkv7" and config["padding"] == {"multiple": 16, "token": 1}
    assert [t["name"] for t in config["encoder"]["towers"]] == ["dino", "siglip"]
