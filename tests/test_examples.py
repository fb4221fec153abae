"""The multimodal examples run and do what they say (in-process, to skip a second interpreter start)."""

from __future__ import annotations

import runpy
from pathlib import Path

from reference.fixtures import one_cpu_thread  # noqa: F401

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_assemble_vlm(capsys):
    result = runpy.run_path(str(EXAMPLES / "assemble_vlm.py"), run_name="assemble_vlm")["main"](verbose=True)
    assert result["logits_shape"] == (1, 5 + 16, 256)  # 5 ids, the placeholder becomes 17 image tokens
    assert len(result["tokens"]) == 8 and isinstance(result["answer"], str)
    assert result["reloaded_equal"]
    assert "MultiDir()" in capsys.readouterr().out


def test_swap_scan(capsys):
    runpy.run_path(str(EXAMPLES / "swap_scan.py"), run_name="__main__")
    out = capsys.readouterr().out
    for name in ("BiDir()", "MultiDir()", "Snake(", "Zigzag(", "Custom("):
        assert name in out
    assert "layer 1 reads patches [15, 14, 13" in out  # BiDir's odd layer: the grid reversed
