"""examples/train_vlm.py (docs/training.md): labels through forward, one process, DDP and FSDP2 on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rwkv_vision.data import ShapesVQA, WordTokenizer

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_vlm.py"
sys.path.insert(0, str(ROOT / "examples"))

import train_vlm  # noqa: E402


def test_collate_scores_only_the_answer():
    torch.manual_seed(0)
    model = train_vlm.build_model(WordTokenizer())
    samples = [ShapesVQA("train", size=2, seed=0, image_size=48)[i] for i in range(2)]
    batch = train_vlm.collate(model, samples)
    tok = model.get_tokenizer()
    for row, sample in enumerate(samples):
        labels = batch["labels"][row]
        answer = labels[labels != -100].tolist()
        assert tok.decode(answer[:-1]).strip() == sample.answer and answer[-1] in tok.stop_token_ids
        n = int(batch["attention_mask"][row].sum())
        assert batch["input_ids"][row, n - len(answer) : n].tolist() == answer  # labels aligned with the ids
    out = model(**batch)
    assert out.loss is not None and torch.isfinite(out.loss)


def test_one_process_trains(tmp_path):
    loss = train_vlm.main(["--steps", "3", "--batch-size", "4", "--out", str(tmp_path / "m")])
    assert loss < 5.0 and (tmp_path / "m" / "config.json").is_file()


def test_the_encoder_is_frozen_by_default_and_unfreezes():
    from rwkv_vision import VisualRWKV

    toy = VisualRWKV.from_pretrained("shapes-vqa-tiny")  # its config.json records a trained encoder
    assert all(p.requires_grad for p in toy.encoder.parameters())
    model = VisualRWKV(rwkv=toy.rwkv, encoder=toy.encoder)  # the constructor's default: freeze_encoder=True
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.rwkv.parameters())
    model.encoder.requires_grad_(True)  # docs/training.md: how to unfreeze
    assert all(p.requires_grad for p in model.encoder.parameters())
    frozen = VisualRWKV.from_pretrained("shapes-vqa-tiny", freeze_encoder=True)
    assert not any(p.requires_grad for p in frozen.encoder.parameters())


def _torchrun(parallel: str, out: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT)]
    cmd += ["--parallel", parallel, "--steps", "2", "--batch-size", "2", "--out", str(out)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.slow
def test_ddp_and_fsdp2_give_the_same_weights(tmp_path):
    """torchrun, 2 processes, gloo on CPU: DDP and FSDP2 (fully_shard) train to the same weights."""
    _torchrun("ddp", tmp_path / "ddp")
    _torchrun("fsdp2", tmp_path / "fsdp2")
    a, b = (
        load_file(str(tmp_path / "ddp" / "model.safetensors")),
        load_file(str(tmp_path / "fsdp2" / "model.safetensors")),
    )
    assert sorted(a) == sorted(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)
