"""examples/train_toy.py: the batch layout, one process (train, evaluate, save, reload) and two DDP processes."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rwkv_vision import VisualRWKV
from rwkv_vision.image_tokens import IMAGE_TOKEN_INDEX

from reference.fixtures import one_cpu_thread  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_toy.py"
# A model of a few thousand parameters: these tests check the plumbing, not learning.
TINY = [
    "--image-size",
    "32",
    "--grid",
    "2",
    "--vit-width",
    "64",
    "--vit-depth",
    "1",
    "--n-layer",
    "2",
    "--n-embd",
    "64",
    "--head-size",
    "32",
]


@pytest.fixture(scope="module")
def toy():
    return runpy.run_path(str(SCRIPT), run_name="train_toy")


@pytest.mark.parametrize("layout", ["first", "last", "sandwich"])
def test_labels_score_exactly_the_answer_and_stop_token(toy, layout):
    torch.manual_seed(0)
    config = toy["ToyConfig"](image_size=32, grid=2, vit_width=64, vit_depth=1, n_layer=1, n_embd=64)
    model = toy["build_model"](config, layout=layout)
    collate = toy["ToyCollator"](model)
    samples = [config.dataset("train", size=4, seed=1)[i] for i in range(4)]
    batch = collate(samples)
    k = model.image_tokens
    ids, labels = batch["input_ids"], batch["labels"]
    assert labels.shape == (4, ids.shape[1] + k - 1) and batch["pixel_values"].shape == (4, 3, 32, 32)
    tok = model.get_tokenizer()
    for row, s in enumerate(samples):
        # prompt + answer is exactly the whole conversation tokenised turn by turn (the training format)
        full = model.layout.tokenize(
            [("user", s.question), ("assistant", s.answer)], tok, num_images=1, add_generation_prompt=False
        ).input_ids
        scored = labels[row][labels[row] != -100].tolist()
        assert scored == tok.encode(" " + s.answer) + [tok.stop_token_ids[0]]
        n_text = len(full) - 1  # the input stops before the stop token; padding follows
        assert ids[row, :n_text].tolist() == full[:-1] and (ids[row, n_text:] == 0).all()
        assert (ids[row] == IMAGE_TOKEN_INDEX).sum() == 1
        # The first scored position is the expanded position of ":" of "Assistant:" (the last prompt token).
        first = int((labels[row] != -100).nonzero()[0])
        prompt_len = len(full) - len(scored)
        assert first == prompt_len - 1 + k - 1


def test_one_process_trains_evaluates_saves_and_reloads(toy, tmp_path, capsys):
    out = tmp_path / "model"
    result = toy["main"](
        [
            *TINY,
            "--steps",
            "3",
            "--batch-size",
            "4",
            "--eval-size",
            "6",
            "--log-every",
            "1",
            "--out",
            str(out),
            "--scan",
            "multidir",
            "--layout",
            "first",
            "--decay",
            "static",
        ]
    )
    assert result["eval"]["total"] == 6 and 0.0 <= result["eval"]["accuracy"] <= 1.0
    assert len(result["history"]) == 3
    text = capsys.readouterr().out
    assert "held-out exact match on 6 test-split samples" in text and "saved to" in text
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    model = VisualRWKV.from_pretrained(out)
    assert repr(model.scan) == "MultiDir()" and type(model.layout).__name__ == "ImageFirst"
    assert not hasattr(model.rwkv.blocks[0].att, "time_decay_w1")  # the static decay was kept
    metadata = json.loads((out / "config.json").read_text())["metadata"]
    assert metadata["toy_config"]["grid"] == 2 and metadata["eval"]["total"] == 6
    assert metadata["command"].startswith("python examples/train_toy.py --image-size 32")
    assert metadata["arguments"]["steps"] == 3 and metadata["arguments"]["scan"] == "multidir"

    # A second run can continue from the saved weights; a model of other sizes is refused by name.
    again = toy["main"](
        [
            *TINY,
            "--steps",
            "1",
            "--batch-size",
            "4",
            "--eval-size",
            "0",
            "--quiet",
            "--scan",
            "multidir",
            "--layout",
            "first",
            "--decay",
            "static",
            "--init-from",
            str(out),
        ]
    )
    assert again["history"][0]["loss"] < result["history"][0]["loss"]
    with pytest.raises(ValueError, match="--init-from"):
        toy["main"](
            [
                *TINY[:-6],
                "--n-layer",
                "1",
                "--n-embd",
                "64",
                "--head-size",
                "32",
                "--steps",
                "1",
                "--batch-size",
                "4",
                "--eval-size",
                "0",
                "--quiet",
                "--decay",
                "static",
                "--init-from",
                str(out),
            ]
        )


def test_bad_arguments_are_named():
    with pytest.raises(SystemExit):
        runpy.run_path(str(SCRIPT), run_name="train_toy")["parse_args"](["--steps", "0"])
    toy = runpy.run_path(str(SCRIPT), run_name="train_toy")
    with pytest.raises(ValueError, match="--question-types"):
        toy["config_from_args"](toy["parse_args"](["--question-types", "colour"]))


def test_two_ddp_processes_end_with_identical_updated_weights(tmp_path):
    """torchrun, 2 processes, gloo on CPU: after 3 steps both ranks hold the same weights, which moved."""
    dump = tmp_path / "weights"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(SCRIPT),
        *TINY,
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--eval-size",
        "4",
        "--device",
        "cpu",
        "--dump-rank-weights",
        str(dump),
        "--log-every",
        "1",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "processes=2" in proc.stdout and proc.stdout.count("held-out exact match") == 1  # rank 0 only
    init, r0, r1 = (load_file(str(dump / f)) for f in ("init.safetensors", "rank0.safetensors", "rank1.safetensors"))
    assert r0.keys() == r1.keys() == init.keys()
    for key in r0:
        torch.testing.assert_close(r0[key], r1[key], rtol=0, atol=0, msg=key)
    moved = [k for k in r0 if not torch.equal(r0[k], init[k])]
    assert len(moved) > len(r0) // 2, f"only {len(moved)} of {len(r0)} tensors changed"
