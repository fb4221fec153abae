"""The WKV7 CUDA kernels' own source, run on the CPU by tests/cuda_emu against the float64 loop.

Letter legend: b batch, t time, h heads, n head size.

csrc/cuda/wkv7_kernels.cuh (forward, the two backward kernels, the decoding step) is compiled with the host
C++ compiler next to tests/cuda_emu/emu.h (threads are fibers, one warp at a time runs to its next block
barrier, in a random order) by tests/cuda_emu/harness_wkv7.cpp, which launches them as wkv7_cuda.cu and
wkv7_step_cuda.cu do, with every output and scratch buffer NaN until written. This checks the kernels'
indexing, shared-memory double buffering, barriers, checkpoint slots and cu_seqlens handling where no GPU
is lent; ``pytest -m cuda tests/ops/test_wkv7_cuda.py`` runs them for real. What it cannot see: races with
no barrier at all, timing, the bf16/fp16 conversions, and the host code that checks inputs and allocates.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from rwkv_vision.ops.wkv7_ref import wkv7_ref

ROOT = Path(__file__).resolve().parents[2]
EMU = ROOT / "tests" / "cuda_emu"
NAMES = ("r", "w", "k", "v", "a", "b")
W_MIN = -math.exp(-0.5)


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    assert compiler, "a C++ compiler is needed (the extension's build needs one too)"
    exe = tmp_path_factory.mktemp("cuda_emu7") / "harness_wkv7"
    cmd = [compiler, "-std=c++17", "-O2", "-Wall", "-Wno-unknown-pragmas", "-I", str(EMU / "include")]
    cmd += ["-I", str(ROOT / "csrc"), str(EMU / "harness_wkv7.cpp"), "-o", str(exe)]
    build = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-4000:]
    return exe


def make_inputs(b, t, h, n, *, states, seed):
    """float64 inputs shaped as an RWKV-7 layer makes them (a = -kk, b = kk * iclr), and random cotangents."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape, scale=1.0: torch.randn(*shape, generator=g, dtype=torch.float64) * scale  # noqa: E731
    kk = torch.nn.functional.normalize(rnd(b, t, h, n), dim=-1)
    x = {
        "r": rnd(b, t, h, n),
        "w": W_MIN * (torch.rand(b, t, h, n, generator=g, dtype=torch.float64) * 0.999 + 0.001),
        "k": rnd(b, t, h, n, scale=0.5),
        "v": rnd(b, t, h, n),
        "a": -kk,
        "b": kk * (torch.rand(b, t, h, n, generator=g, dtype=torch.float64) * 0.98 + 0.01),
        "s0": rnd(states, h, n, n),
        "dy": rnd(b, t, h, n),
        "dsT": rnd(states, h, n, n),
    }
    # Rounded to float32 once, so that the kernel and the float64 loop see the same numbers.
    return {k: v.float().double() for k, v in x.items()}


def float64_expected(x, cu_seqlens=None):
    """y, sT and the gradients of <y, dy> + <sT, dsT> by autograd through wkv7_ref in float64."""
    leaves = [x[k].clone().requires_grad_(True) for k in (*NAMES, "s0")]
    y, s = wkv7_ref(*leaves, True, cu_seqlens)
    grads = torch.autograd.grad((y * x["dy"]).sum() + (s * x["dsT"]).sum(), leaves)
    return {"y": y.detach(), "sT": s.detach(), **dict(zip(["dr", "dw", "dk", "dv", "da", "db", "ds0"], grads))}


def run_emulated(harness, tmp_path, x, cu_seqlens=None, seed=1):
    b, t, h, n = x["r"].shape
    for name, value in x.items():
        value.to(torch.float32).contiguous().numpy().tofile(tmp_path / f"{name}.bin")
    packed = 0
    if cu_seqlens is not None:
        cu_seqlens.to(torch.int64).numpy().tofile(tmp_path / "cu.bin")
        packed = len(cu_seqlens) - 1
    env = dict(os.environ, EMU_SEED=str(seed))
    args = [str(harness), "seq", str(tmp_path), str(b), str(t), str(h), str(n), str(packed)]
    run = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    states = x["s0"].shape[0]
    shapes = {"y": (b, t, h, n), "sT": (states, h, n, n), "ds0": (states, h, n, n)}
    shapes.update({name: (b, t, h, n) for name in ("dr", "dw", "dk", "dv", "da", "db")})
    out = {
        name: torch.from_numpy(np.fromfile(tmp_path / f"{name}.bin", dtype=np.float32).reshape(shape))
        for name, shape in shapes.items()
    }
    return out, run.stdout


def rel_rms(actual, expected):
    actual, expected = actual.double(), expected.double()
    assert torch.isfinite(actual).all(), "non-finite values (an unwritten output is NaN)"
    return ((actual - expected).pow(2).mean().sqrt() / expected.pow(2).mean().sqrt().clamp_min(1e-30)).item()


def assert_close(out, expected, tol=1e-5):
    errors = {name: rel_rms(out[name], expected[name]) for name in out}
    assert all(e < tol for e in errors.values()), errors


# Lengths around the checkpoint spacing ceil(sqrt(t)): one step, a perfect square, a ragged last chunk.
@pytest.mark.parametrize("b,t,h,n", [(2, 1, 2, 32), (1, 9, 2, 32), (2, 23, 1, 64), (1, 12, 1, 128)])
def test_forward_and_backward_match_float64(harness, tmp_path, b, t, h, n):
    x = make_inputs(b, t, h, n, states=b, seed=t + n)
    out, stdout = run_emulated(harness, tmp_path, x)
    assert f"checkpoints every {math.ceil(math.sqrt(t))} steps" in stdout
    assert_close(out, float64_expected(x))


def test_packed_sequences_match_float64(harness, tmp_path):
    # An empty sequence, a one-step one, and sequences crossing the spacing (ceil(sqrt(40 / 5)) = 3).
    cu = torch.tensor([0, 3, 3, 20, 21, 40])
    x = make_inputs(1, 40, 2, 32, states=5, seed=3)
    out, stdout = run_emulated(harness, tmp_path, x, cu, seed=7)
    assert "checkpoints every 3 steps" in stdout
    assert_close(out, float64_expected(x, cu))


def test_extreme_decays_and_another_schedule(harness, tmp_path):
    # Decays ~1, e^-50 and exactly 0 (w = -inf) mixed with the layer's range; threads in another order.
    x = make_inputs(1, 30, 2, 32, states=1, seed=4)
    choice = torch.randint(0, 4, x["w"].shape, generator=torch.Generator().manual_seed(4))
    extremes = torch.tensor([-1e-6, -50.0, -math.inf], dtype=torch.float64)
    x["w"] = torch.where(choice < 3, extremes[choice.clamp(max=2)], x["w"])
    out, _ = run_emulated(harness, tmp_path, x, seed=12345)
    assert_close(out, float64_expected(x))


@pytest.mark.parametrize("b,h,n", [(1, 1, 32), (2, 3, 64), (1, 2, 128)])
def test_step_matches_float64(harness, tmp_path, b, h, n):
    x = make_inputs(b, 1, h, n, states=b, seed=n)
    for name in NAMES:
        x[name][:, 0].float().contiguous().numpy().tofile(tmp_path / f"{name}.bin")
    x["s0"].float().numpy().tofile(tmp_path / "s0.bin")
    run = subprocess.run(
        [str(harness), "step", str(tmp_path), str(b), str(h), str(n)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr
    y = torch.from_numpy(np.fromfile(tmp_path / "y.bin", dtype=np.float32).reshape(b, h, n))
    state = torch.from_numpy(np.fromfile(tmp_path / "state.bin", dtype=np.float32).reshape(b, h, n, n))
    y_ref, s_ref = wkv7_ref(*[x[k] for k in NAMES], x["s0"], True)
    assert rel_rms(y, y_ref[:, 0]) < 1e-5 and rel_rms(state, s_ref) < 1e-5
