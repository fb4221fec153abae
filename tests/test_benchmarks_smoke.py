"""The model benchmarks run end to end in their --tiny mode (CPU, seconds each) and print their table.

They are scripts for a GPU (docs/gpu_benchmarks.md); this only guards against them rotting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize(
    "script,header",
    [
        ("decode.py", "| system | context | decode ms/token"),
        ("prefill.py", "| system | tokens | prefill s"),
        ("batched_decode.py", "| system | batch | context | step ms"),
        ("vlm_e2e.py", "| ours vs LLaVA |"),
    ],
)
def test_benchmark_runs_in_tiny_mode(script, header):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--tiny", "--device", "cpu", "--warmup", "1", "--repeat", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=BENCH.parent,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert header in out
    assert "| error |" not in out, out
    # A peer that is not installed is reported, never silently dropped.
    if script != "vlm_e2e.py":
        assert "fla 0.6.0 RWKV6ForCausalLM" in out


def test_decode_plot_from_a_tiny_run(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, str(BENCH / "decode.py"), "--tiny", "--device", "cpu", "--warmup", "1", "--repeat", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=BENCH.parent,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    (tmp_path / "decode.md").write_text(run.stdout)
    proc = subprocess.run(
        [sys.executable, str(BENCH / "plot_decode.py"), str(tmp_path / "decode.md"), "-o", str(tmp_path / "d.png")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "rows not drawn" in proc.stdout and (tmp_path / "d.png").stat().st_size > 10_000
    # The uninstalled peer is reported, not drawn.
    assert "1 rows not drawn" in proc.stdout
    bad = subprocess.run(
        [sys.executable, str(BENCH / "plot_decode.py"), str(tmp_path / "nope.md")], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "error" in bad.stderr


def test_wkv6_benchmark_quick_cpu_table():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, str(BENCH / "wkv6.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=BENCH.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| device | system | b, t, h, n |" in proc.stdout
    for system in ("rwkv_vision C++ kernel", "wkv6_chunked (PyTorch, chunks of 16)", "wkv6_ref (PyTorch loop)"):
        assert f"| cpu | {system} | 2, 256, 8, 64 |" in proc.stdout


def test_wkv6_benchmark_rows_choose_their_kernel_by_argument(monkeypatch):
    # Each GPU row names the kernel variant it runs (forward and backward alike) through wkv6's backend
    # argument; a variant the build lacks is listed as such rather than silently replaced.
    monkeypatch.syspath_prepend(str(BENCH))
    import wkv6 as bench

    from rwkv_vision.ops import backend_info

    assert bench.CUDA_ROWS == {
        "rwkv_vision CUDA, recurrent": "cuda_recurrent",
        "rwkv_vision CUDA, split forward": "cuda_split",
        "rwkv_vision CUDA, chunked": "cuda_chunked",
    }
    systems, built = bench.gpu_systems(), backend_info()["cuda_variants"]
    for name, backend in bench.CUDA_ROWS.items():
        assert (name in systems) == (backend in built)
        assert (f"{name} (not built)" in systems) == (backend not in built)
    assert "fla (not installed)" in systems or "fla chunk_rwkv6" in systems


def test_rwkv7_benchmark_runs_in_tiny_mode_against_the_rwkv_package():
    # benchmarks/rwkv7.py: ours and the PyPI rwkv package on one random x070 model; their logits agree.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, str(BENCH / "rwkv7.py"), "--tiny", "--threads", "1", "--warmup", "0", "--repeat", "1"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=BENCH.parent,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| rwkv")]
    assert rows[0].startswith("| rwkv_vision RWKV7 |") and rows[1].startswith("| rwkv 0.8"), proc.stdout
    assert float(rows[1].split("|")[-2]) < 1e-4  # the package's logits equal ours


def test_wkv7_benchmark_quick_cpu_table():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, str(BENCH / "wkv7.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=BENCH.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| device | system | b, t, h, n |" in proc.stdout
    for system in ("rwkv_vision C++ kernel", "wkv7_chunked (PyTorch)", "wkv7_ref (PyTorch loop)"):
        assert f"| cpu | {system} | 1, 128, 4, 64 | float32 |" in proc.stdout
        assert f"| cpu | {system} | 1, 64, 4, 64 | float64 |" in proc.stdout
    assert "CPU kernel speed-up over wkv7_ref at (1, 128, 4, 64), float32" in proc.stdout
