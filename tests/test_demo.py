"""The offline demo (examples/demo.py, rwkv_vision.demo): it streams answers, times them, writes PNGs."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from rwkv_vision import demo as demo_module
from rwkv_vision.data import ShapesVQA

from reference.fixtures import one_cpu_thread  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


def test_demo_script_streams_answers_and_writes_pngs(tmp_path):
    out_dir = tmp_path / "pngs"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), "--num-images", "2", "--output-dir", str(out_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pngs = sorted(out_dir.glob("*.png"))
    assert len(pngs) == 2
    assert Image.open(pngs[0]).size == (48 * demo_module.PNG_SCALE,) * 2
    data = ShapesVQA("test", size=2, seed=0, image_size=48, grid=3)
    for i in range(2):
        assert f"question: {data[i].question}" in proc.stdout
        assert f"truth:    {data[i].answer}" in proc.stdout
    assert proc.stdout.count("answer:   ") == 2 and proc.stdout.count("time to first token") == 2
    assert str(out_dir.resolve()) in proc.stdout


def test_own_image_and_question(tmp_path):
    sample = ShapesVQA("test", size=1, seed=0, image_size=48, grid=3)[0]
    image = tmp_path / "mine.png"
    # A bigger image than the model's input: the preprocessor resizes it back to 48 px.
    sample.image.resize((144, 144), Image.Resampling.NEAREST).save(image)
    out = io.StringIO()
    records = demo_module.run_demo(image=str(image), question=sample.question, output_dir=tmp_path / "o", out=out)
    assert len(records) == 1 and records[0]["answer"] and records[0]["truth"] is None
    text = out.getvalue()
    assert f"question: {sample.question}" in text and f"answer:   {records[0]['answer']}" in text
    assert (tmp_path / "o" / "your_image_model_view.png").is_file()
    assert records[0]["time_to_first_token"] > 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--image", "x.png"], "needs --question"),
        (["--image", "missing.png", "--question", "How many shapes are there?"], "cannot read"),
        (["--num-images", "1", "--question", "how many dogs?"], "unknown piece"),
    ],
)
def test_bad_input_is_reported(argv, message, tmp_path, capsys):
    code = demo_module.main([*argv, "--output-dir", str(tmp_path)])
    assert code == 2
    assert message in capsys.readouterr().err


def test_readme_own_image_command(tmp_path, capsys):
    """The README's `rwkv-vision demo --image PATH --question "..."` line, run as written on a test image."""
    import re
    import shlex

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    line = re.search(r"`(rwkv-vision demo --image PATH [^`]*)`", readme)
    assert line, "the README no longer shows the own-image demo command"
    argv = shlex.split(line.group(1))[2:]
    sample = ShapesVQA("test", size=1, seed=0, image_size=48, grid=3)[0]
    sample.image.save(tmp_path / "mine.png")
    argv[argv.index("PATH")] = str(tmp_path / "mine.png")
    assert demo_module.main([*argv, "--output-dir", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "question: What color is the shape in the top left?" in out and "answer:   " in out


def test_threads_must_be_positive(tmp_path, capsys):
    assert demo_module.main(["--num-images", "1", "--threads", "0", "--output-dir", str(tmp_path)]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err
