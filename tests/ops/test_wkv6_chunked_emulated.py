"""The chunked CUDA kernels' own source, run on the CPU by tests/cuda_emu against the float64 reference.

csrc/cuda/wkv6_chunked_kernels.cuh is compiled with g++ next to a small CUDA-on-CPU runtime (threads
as fibers, each running alone to its next barrier in a shuffled order; WMMA tiles with TF32 rounding)
and run by tests/cuda_emu/chunked_harness.cpp with the launch sequence of wkv6_chunked_cuda.cu. This is
what exercises the kernels' indexing, shared-memory layout, barriers and tile layouts where no GPU is
lent; `pytest -m cuda` runs them for real. What it cannot see: races with no barrier at all, timing,
and the host code that picks the segment count and allocates the scratch tensors.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from .wkv6_cases import make_inputs, reference_float64, rel_rms

ROOT = Path(__file__).resolve().parents[2]
EMU = ROOT / "tests" / "cuda_emu"

#: TF32 products, as on the GPU (tests/ops/test_wkv6_cuda.py holds the real kernels to the same bar).
TOL = 2e-3


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    assert compiler, "a C++ compiler is needed (the extension's build needs one too)"
    exe = tmp_path_factory.mktemp("cuda_emu") / "chunked_harness"
    cmd = [compiler, "-std=c++17", "-O2", "-Wall", "-Wno-unknown-pragmas", "-I", str(EMU / "include"),
           "-I", str(ROOT / "csrc"), str(EMU / "chunked_harness.cpp"), "-o", str(exe)]
    build = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-4000:]
    return exe


def test_the_emulator_catches_a_missing_barrier_and_a_bad_one(harness):
    run = subprocess.run([str(harness), "--selftest"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "synced 1, race seen 1, bad barrier seen 1" in run.stdout


def run_emulated(harness, tmp_path, inputs, dy, dsT, segments, seed=1):
    b, t, h, n = inputs["r"].shape
    files = {"r": inputs["r"], "k": inputs["k"], "v": inputs["v"], "w": inputs["w"], "u": inputs["u"],
             "s0": inputs["initial_state"], "dy": dy, "dsT": dsT}
    for name, x in files.items():
        x.detach().to(torch.float32).contiguous().numpy().tofile(tmp_path / f"{name}.bin")
    env = dict(os.environ, EMU_SEED=str(seed))
    run = subprocess.run([str(harness), str(tmp_path), str(b), str(t), str(h), str(n), str(segments)],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    shapes = {"y": (b, t, h, n), "sT": (b, h, n, n), "dr": (b, t, h, n), "dk": (b, t, h, n), "dv": (b, t, h, n),
              "dw": (b, t, h, n), "du": (h, n), "ds0": (b, h, n, n)}
    out = {name: torch.from_numpy(np.fromfile(tmp_path / f"{name}.bin", dtype=np.float32).reshape(shape))
           for name, shape in shapes.items()}
    return out, run.stdout


@pytest.mark.parametrize(
    "b,t,h,n,segments",
    [
        (2, 1, 2, 32, 1),    # one step: a chunk that is almost all padding
        (1, 16, 1, 32, 1),   # exactly one chunk
        (2, 37, 2, 32, 1),   # a ragged last chunk
        (1, 70, 2, 32, 3),   # segments: phases A, B, C both ways, the last one short
        (1, 33, 1, 64, 2),   # n = 64
        (1, 20, 1, 128, 2),  # n = 128: two column groups in the forward
    ],
)
def test_chunked_kernels_match_float64_reference(harness, tmp_path, b, t, h, n, segments):
    inputs = make_inputs(b, t, h, n, seed=t + n + segments)
    g = torch.Generator().manual_seed(7)
    dy = torch.randn(b, t, h, n, generator=g, dtype=torch.float64)
    dsT = torch.randn(b, h, n, n, generator=g, dtype=torch.float64)
    out, stdout = run_emulated(harness, tmp_path, inputs, dy, dsT, segments)
    assert f"ok: {segments} segments" in stdout

    as64 = {k: x.double().requires_grad_(True) for k, x in inputs.items()}
    from rwkv_vision.ops import wkv6_ref

    y, s = wkv6_ref(*as64.values(), output_final_state=True)
    grads = torch.autograd.grad((y * dy).sum() + (s * dsT).sum(), list(as64.values()))
    expected = {"y": y, "sT": s, **dict(zip(["dr", "dk", "dv", "dw", "du", "ds0"], grads))}
    errors = {name: rel_rms(out[name], expected[name].detach()) for name in expected}
    assert all(e < TOL for e in errors.values()), errors


def test_chunked_kernels_with_extreme_decays_and_another_schedule(harness, tmp_path):
    # Decays of exactly 1 and of e^-60 per step mixed in; threads interleaved in a different order.
    inputs = make_inputs(1, 45, 2, 32, seed=3)
    w = inputs["w"]
    choice = torch.randint(0, 3, w.shape, generator=torch.Generator().manual_seed(3))
    inputs["w"] = torch.where(choice == 0, torch.zeros_like(w), torch.where(choice == 1, w, torch.full_like(w, -60.0)))
    g = torch.Generator().manual_seed(8)
    dy = torch.randn(1, 45, 2, 32, generator=g, dtype=torch.float64)
    dsT = torch.randn(1, 2, 32, 32, generator=g, dtype=torch.float64)
    out, _ = run_emulated(harness, tmp_path, inputs, dy, dsT, segments=2, seed=12345)
    y_ref, s_ref, _ = reference_float64(inputs)
    assert rel_rms(out["y"], y_ref) < TOL and rel_rms(out["sT"], s_ref) < TOL
