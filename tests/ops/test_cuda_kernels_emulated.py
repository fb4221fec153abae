"""The CUDA kernels' own source, run on the CPU by tests/cuda_emu against the float64 reference.

The device code of every CUDA kernel (csrc/cuda/*_kernel(s).cuh) is compiled with the host C++ compiler
next to a small CUDA-on-CPU runtime, tests/cuda_emu/emu.h: threads are fibers, one warp at a time runs
to its next block barrier, in a random order; WMMA works on whole tiles with TF32 rounding.
tests/cuda_emu/harness.cpp runs the kernels with the launch sequences of the .cu files.

This exercises the kernels' indexing, shared-memory layout, barriers and tile layouts where no GPU is
lent; `pytest -m cuda` runs them for real. What it cannot see: races with no barrier at all, timing,
and the host code that checks inputs, picks the segment count and allocates scratch tensors.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from rwkv_vision.ops import wkv6_ref

from .wkv6_cases import make_inputs, rel_rms

ROOT = Path(__file__).resolve().parents[2]
EMU = ROOT / "tests" / "cuda_emu"

#: TF32 products, as on the GPU (tests/ops/test_wkv6_cuda.py holds the real kernels to the same bar).
TOL = 2e-3


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    assert compiler, "a C++ compiler is needed (the extension's build needs one too)"
    exe = tmp_path_factory.mktemp("cuda_emu") / "harness"
    cmd = [
        compiler,
        "-std=c++17",
        "-O2",
        "-Wall",
        "-Wno-unknown-pragmas",
        "-I",
        str(EMU / "include"),
        "-I",
        str(ROOT / "csrc"),
        str(EMU / "harness.cpp"),
        "-o",
        str(exe),
    ]
    build = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-4000:]
    return exe


def test_the_emulator_catches_a_missing_barrier_and_a_bad_one(harness):
    run = subprocess.run([str(harness), "--selftest"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "synced 1, race seen 1, bad barrier seen 1" in run.stdout


def run_emulated(harness, tmp_path, inputs, dy, dsT, segments=None, *, mode="chunked", seed=1):
    b, t, h, n = inputs["r"].shape
    files = {
        "r": inputs["r"],
        "k": inputs["k"],
        "v": inputs["v"],
        "w": inputs["w"],
        "u": inputs["u"],
        "s0": inputs["initial_state"],
        "dy": dy,
        "dsT": dsT,
    }
    for name, x in files.items():
        x.detach().to(torch.float32).contiguous().numpy().tofile(tmp_path / f"{name}.bin")
    env = dict(os.environ, EMU_SEED=str(seed))
    args = [str(harness), mode, str(tmp_path), str(b), str(t), str(h), str(n)]
    if mode == "chunked":
        args.append(str(segments))
    run = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    shapes = {"y": (b, t, h, n), "sT": (b, h, n, n)}
    if mode != "split":
        shapes.update(dr=(b, t, h, n), dk=(b, t, h, n), dv=(b, t, h, n), dw=(b, t, h, n), du=(h, n), ds0=(b, h, n, n))
    out = {
        name: torch.from_numpy(np.fromfile(tmp_path / f"{name}.bin", dtype=np.float32).reshape(shape))
        for name, shape in shapes.items()
    }
    return out, run.stdout


CHUNKED_CASES = pytest.mark.parametrize(
    "b,t,h,n,segments",
    [
        (2, 1, 2, 32, 1),  # one step: a chunk that is almost all padding
        (1, 16, 1, 32, 1),  # exactly one chunk
        (2, 37, 2, 32, 1),  # a ragged last chunk
        (1, 70, 2, 32, 3),  # segments: phases A, B, C both ways, the last one short
        (1, 33, 1, 64, 2),  # n = 64
        (1, 20, 1, 128, 2),  # n = 128: two column groups in the forward
        (1, 300, 1, 32, 0),  # 0: segments as the host picks them (here 2: 19 chunks, at least 8 each)
    ],
)


def random_cotangents(b, t, h, n, seed=7):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, t, h, n, generator=g, dtype=torch.float64),
        torch.randn(b, h, n, n, generator=g, dtype=torch.float64),
    )


def float64_expected(inputs, dy, dsT):
    """y, sT and the gradients of <y, dy> + <sT, dsT> by autograd through wkv6_ref in float64."""
    as64 = {k: x.double().requires_grad_(True) for k, x in inputs.items()}
    y, s = wkv6_ref(*as64.values(), output_final_state=True)
    grads = torch.autograd.grad((y * dy).sum() + (s * dsT).sum(), list(as64.values()))
    return {"y": y.detach(), "sT": s.detach(), **dict(zip(["dr", "dk", "dv", "dw", "du", "ds0"], grads))}


def assert_close(out, expected, tol):
    errors = {name: rel_rms(out[name], expected[name]) for name in out}
    assert all(e < tol for e in errors.values()), errors


@CHUNKED_CASES
def test_chunked_kernels_match_float64_reference(harness, tmp_path, b, t, h, n, segments):
    inputs = make_inputs(b, t, h, n, seed=t + n + segments)
    dy, dsT = random_cotangents(b, t, h, n)
    out, stdout = run_emulated(harness, tmp_path, inputs, dy, dsT, segments)
    assert f"ok: {segments or 2} segments" in stdout
    assert_close(out, float64_expected(inputs, dy, dsT), TOL)


# The recurrent kernels (the default) and the split forward: float32 arithmetic, so held to 1e-5 like
# the C++ CPU kernel. Lengths around the backward's checkpoint spacing (ceil(sqrt(t))).
@pytest.mark.parametrize("b,t,h,n", [(2, 1, 2, 32), (1, 9, 2, 32), (2, 23, 1, 64), (1, 12, 1, 128)])
@pytest.mark.parametrize("mode", ["recurrent", "split"])
def test_recurrent_kernels_match_float64_reference(harness, tmp_path, mode, b, t, h, n):
    inputs = make_inputs(b, t, h, n, seed=t + n)
    dy, dsT = random_cotangents(b, t, h, n)
    out, _ = run_emulated(harness, tmp_path, inputs, dy, dsT, mode=mode)
    assert_close(out, float64_expected(inputs, dy, dsT), 1e-5)


@pytest.mark.parametrize("b,h,n", [(1, 1, 32), (2, 3, 64), (1, 2, 128)])
def test_step_kernel_matches_float64_reference(harness, tmp_path, b, h, n):
    g = torch.Generator().manual_seed(n)
    r, k, v = (torch.randn(b, h, n, generator=g, dtype=torch.float64) for _ in range(3))
    w = -torch.exp(torch.empty(b, h, n, dtype=torch.float64).uniform_(-8, 3, generator=g))
    u = torch.randn(h, n, generator=g, dtype=torch.float64)
    state = torch.randn(b, h, n, n, generator=g, dtype=torch.float64)
    for name, x in {"r": r, "k": k, "v": v, "w": w, "u": u, "s0": state}.items():
        x.float().numpy().tofile(tmp_path / f"{name}.bin")
    run = subprocess.run(
        [str(harness), "step", str(tmp_path), str(b), str(h), str(n)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr
    y = torch.from_numpy(np.fromfile(tmp_path / "y.bin", dtype=np.float32).reshape(b, h, n))
    new_state = torch.from_numpy(np.fromfile(tmp_path / "state.bin", dtype=np.float32).reshape(b, h, n, n))
    y_ref, s_ref = wkv6_ref(r[:, None], k[:, None], v[:, None], w[:, None], u, state, output_final_state=True)
    assert rel_rms(y, y_ref[:, 0]) < 1e-5 and rel_rms(new_state, s_ref) < 1e-5


def test_chunked_kernels_with_extreme_decays_and_another_schedule(harness, tmp_path):
    # Decays of exactly 1 and of e^-60 per step mixed in; threads interleaved in a different order.
    inputs = make_inputs(1, 45, 2, 32, seed=3)
    w = inputs["w"]
    choice = torch.randint(0, 3, w.shape, generator=torch.Generator().manual_seed(3))
    inputs["w"] = torch.where(choice == 0, torch.zeros_like(w), torch.where(choice == 1, w, torch.full_like(w, -60.0)))
    dy, dsT = random_cotangents(1, 45, 2, 32, seed=8)
    out, _ = run_emulated(harness, tmp_path, inputs, dy, dsT, 2, seed=12345)
    assert_close(out, float64_expected(inputs, dy, dsT), TOL)


@pytest.mark.parametrize("lengths,h,n", [([5, 0, 11, 1], 2, 32), ([23, 9], 1, 64), ([0, 12], 1, 128)])
def test_recurrent_kernels_with_cu_seqlens_match_each_sequence_alone(harness, tmp_path, lengths, h, n):
    # One block per (sequence, head), each walking only its own steps from its own state; empty
    # sequences hand their state straight back. The oracle runs every sequence by itself in float64.
    t, count = sum(lengths), len(lengths)
    inputs = make_inputs(1, t, h, n, seed=t + n, with_state=False)
    g = torch.Generator().manual_seed(n)
    inputs["initial_state"] = torch.randn(count, h, n, n, generator=g, dtype=torch.float64).float()
    dy = torch.randn(1, t, h, n, generator=g, dtype=torch.float64)
    dsT = torch.randn(count, h, n, n, generator=g, dtype=torch.float64)
    files = {**{k: x for k, x in inputs.items() if k != "initial_state"}, "s0": inputs["initial_state"], "dy": dy}
    files["dsT"] = dsT
    for name, x in files.items():
        x.detach().to(torch.float32).contiguous().numpy().tofile(tmp_path / f"{name}.bin")
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int64)
    cu.numpy().tofile(tmp_path / "cu.bin")
    args = [str(harness), "recurrent_packed", str(tmp_path), str(t), str(h), str(n), str(count)]
    run = subprocess.run(args, capture_output=True, text=True, timeout=600, env=dict(os.environ, EMU_SEED="3"))
    assert run.returncode == 0, run.stdout + run.stderr
    seq, state = (1, t, h, n), (count, h, n, n)
    shapes = {"y": seq, "sT": state, "dr": seq, "dk": seq, "dv": seq, "dw": seq, "du": (h, n), "ds0": state}
    out = {
        name: torch.from_numpy(np.fromfile(tmp_path / f"{name}.bin", dtype=np.float32).reshape(shape))
        for name, shape in shapes.items()
    }
    as64 = {k: x.double().requires_grad_(True) for k, x in inputs.items()}
    y, s = wkv6_ref(*as64.values(), output_final_state=True, cu_seqlens=cu)
    grads = torch.autograd.grad((y * dy).sum() + (s * dsT).sum(), list(as64.values()))
    expected = {"y": y.detach(), "sT": s.detach(), **dict(zip(["dr", "dk", "dv", "dw", "du", "ds0"], grads))}
    assert_close(out, expected, 1e-5)
