"""The command line knows the package's version and the names of the models shipped in it."""

from __future__ import annotations

import json
from importlib.metadata import version

import pytest
from PIL import Image

import rwkv_vision
from rwkv_vision.cli import main


def test_version_flag_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"rwkv-vision {version('rwkv_vision')}"
    assert rwkv_vision.__version__ == version("rwkv_vision")


def test_shipped_model_names_are_accepted(capsys, tmp_path):
    assert main(["info", "shapes-vqa-tiny"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rwkv"]["n_layer"] == 4
    image = tmp_path / "red.png"
    Image.new("RGB", (64, 64), (255, 0, 0)).save(image)
    question = "What color is the shape in the top left?"
    assert main(["chat", str(image), question, "--model", "shapes-vqa-tiny", "--no-stream"]) == 0
    assert capsys.readouterr().out.strip()
