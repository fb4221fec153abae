"""Fixtures of the checkpoint tests: the shipped toy checkpoint, copied so that a test can damage it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import rwkv_vision

SHIPPED = Path(rwkv_vision.__file__).parent / "pretrained" / "shapes-vqa-tiny"


@pytest.fixture
def ckpt(tmp_path) -> Path:
    """A writable copy of the shipped checkpoint directory (config.json, model.safetensors, tokenizer.json)."""
    out = tmp_path / "ckpt"
    shutil.copytree(SHIPPED, out)
    return out


@pytest.fixture(scope="module")
def shipped_model():
    from rwkv_vision.models.visualrwkv import VisualRWKV

    return VisualRWKV.from_pretrained(SHIPPED)
