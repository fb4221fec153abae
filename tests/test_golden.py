"""Logits, states and generated tokens stay bit-identical to those of the library before the architecture
refactor (stored in tests/golden/golden.safetensors by tests/golden/make_golden.py at commit 95180d5): the
shipped toy model, an official-format checkpoint read as .pth and after conversion, and a text RWKV-6,
through forward, chunked forward, generation and the static-buffer decoder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from golden.cases import golden_outputs

GOLDEN = Path(__file__).resolve().parent / "golden" / "golden.safetensors"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as when the golden file was written: CPU reductions depend on the split
    try:
        return golden_outputs(tmp_path_factory.mktemp("golden"))
    finally:
        torch.set_num_threads(threads)


def test_every_output_is_bit_identical_to_before_the_refactor(outputs):
    expected = load_file(str(GOLDEN))
    assert sorted(outputs) == sorted(expected)
    different = [
        k for k in expected if outputs[k].dtype != expected[k].dtype or not torch.equal(outputs[k], expected[k])
    ]
    assert not different, f"outputs changed: {different}"
