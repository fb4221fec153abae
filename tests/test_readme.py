"""The README's code runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_the_two_setup_commands():
    text = README.read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text


def test_readme_python_examples_run(capsys):
    blocks = python_blocks()
    assert blocks, "the README shows no Python example"
    for code in blocks:
        exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
    assert capsys.readouterr().out.strip()


def test_readme_scan_swap_changes_the_logits_and_says_so(capsys):
    first = python_blocks()[0]
    assert "model.scan = MultiDir()" in first
    exec(compile(first, str(README), "exec"), {"__name__": "__readme__"})
    assert "the scan swap changes the logits: True" in capsys.readouterr().out


def test_readme_says_how_to_pip_install():
    text = README.read_text(encoding="utf-8")
    section = text.split("## Installing with pip", 1)[1].split("\n## ", 1)[0]
    for needed in ("RWKV_VISION_WITH_CUDA=OFF", "--no-build-isolation", "build/", "minutes", "--version"):
        assert needed in section, needed
