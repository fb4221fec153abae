"""examples/ablations.py: the report (table, differences, plot, kept notes) from results, and one real run."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "ablations.py"


@pytest.fixture(scope="module")
def ab():
    return runpy.run_path(str(SCRIPT), run_name="ablations")


def _fake_results(ab, directory: Path, accuracy_of, steps="600"):
    directory.mkdir(parents=True, exist_ok=True)
    for _, label, changes in ab["CONFIGS"]:
        for seed in (0, 1):
            acc = accuracy_of(label, seed)
            correct = round(acc * 100)
            result = {
                "eval": {
                    "accuracy": acc,
                    "correct": correct,
                    "total": 100,
                    "per_type": {"color_at": [correct // 2, 50], "count_color": [correct - correct // 2, 50]},
                },
                "history": [{"loss": 0.5}],
                "train_seconds": 60.0,
                "argv": [
                    "--steps",
                    steps,
                    "--batch-size",
                    "64",
                    "--lr",
                    "0.0006",
                    "--eval-size",
                    "100",
                    "--seed",
                    str(seed),
                ],
            }
            (directory / f"{ab['run_name'](changes, seed)}.json").write_text(json.dumps(result))


def test_report_table_differences_plot_and_kept_notes(ab, tmp_path):

    def accuracy_of(label, seed):  # image first clearly worse, everything else at the base's level
        return (0.50 if label == "image first" else 0.90) + 0.01 * seed

    _fake_results(ab, tmp_path / "results", accuracy_of)
    md = tmp_path / "ablations.md"
    argv = ["--report-only", "--seeds", "0", "1", "--results", str(tmp_path / "results"), "--markdown", str(md)]
    ab["main"](argv)
    text = md.read_text()
    assert "runs finished: 16 of 16 planned" in text
    assert "| prompt layout (BiDir, data-dependent) | image first | 2 | **50.5 ± 0.7** | 50.0, 51.0 |" in text
    assert "* image first: -40.0 points against the base (beyond two standard errors" in text
    assert "* UniDir: +0.0 points against the base (within two standard errors" in text
    assert "--steps 600 --batch-size 64 --lr 0.0006 --eval-size 100" in text  # read back from the runs
    assert "| prompt | sandwich | 69.71 | 65.20 | 50.25 | 50.50 |" in text  # the paper's numbers
    assert md.with_suffix(".png").stat().st_size > 10_000
    # A hand-written note survives a rebuild.
    md.write_text(text.replace(ab["NOTES_END"], "What we make of it.\n" + ab["NOTES_END"]))
    ab["main"](argv)
    assert "What we make of it." in md.read_text()


def test_runs_with_different_budgets_are_refused(ab, tmp_path):
    _fake_results(ab, tmp_path / "r", lambda label, seed: 0.9)
    any_file = next((tmp_path / "r").glob("*seed1.json"))
    data = json.loads(any_file.read_text())
    data["argv"][1] = "300"
    any_file.write_text(json.dumps(data))
    with pytest.raises(SystemExit, match="differ in --steps"):
        ab["main"](["--report-only", "--results", str(tmp_path / "r"), "--markdown", str(tmp_path / "a.md")])


def test_one_real_run_end_to_end(tmp_path):
    """The sweep launches train_toy.py with the setting's options and reads its result back."""
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--only",
            "UniDir",
            "--seeds",
            "0",
            "--steps",
            "2",
            "--eval-size",
            "4",
            "--jobs",
            "1",
            "--results",
            str(tmp_path / "r"),
            "--markdown",
            str(tmp_path / "a.md"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    files = sorted(p.name for p in (tmp_path / "r").glob("*.json"))
    assert files == ["unidir-sandwich-shift_data-decay_data-seed0.json"]
    result = json.loads((tmp_path / "r" / files[0]).read_text())
    assert result["eval"]["total"] == 4 and "--scan" in result["argv"]
    assert "runs finished: 1 of 8 planned" in (tmp_path / "a.md").read_text()
    assert "done   UniDir seed 0: exit 0" in proc.stdout
