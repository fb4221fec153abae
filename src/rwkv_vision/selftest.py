"""A self-test of the compiled kernels on this machine: ``rwkv-vision selftest`` or :func:`run_selftest`.

Letter legend: b batch, t time, h heads, n head size.

Each compiled kernel (the ``wkv6`` forward and backward of every variant in the build, the decoding step
``wkv6_step``, and the RWKV-7 ``wkv7`` forward and backward and ``wkv7_step``) runs on each device that has
kernels (the CPU, and every CUDA device present), for the dtypes and head sizes it supports, on random inputs
and a random initial state over a length (35) that crosses the kernels' checkpoints and the 16-step chunks:
for wkv6 with decays from 1e-9 to 0.9997 per step; for wkv7 with the inputs an RWKV-7 layer makes (a = -kk,
b = kk * iclr, decays in [e^-e^-0.5, 1)) as two packed sequences (``cu_seqlens`` [0, 17, 35]). Its output,
final state and every gradient are compared with the float64 loop (``wkv6_ref``, ``wkv7_ref``; each step
with a float64 step), as a relative RMS error against the tolerance the test suite holds the kernel to.

The CUDA kernels have so far run only under the CPU emulator (docs/ops.md, "Kernel status"): on a GPU,
run this before trusting them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from .ops import wkv6, wkv6_ref, wkv6_step, wkv7, wkv7_ref, wkv7_step
from .ops.extension import backend_info
from .ops.wkv6 import CUDA_HEAD_SIZES
from .ops.wkv6_kernel import CUDA_VARIANTS, KERNEL_DEVICES, kernel_ops
from .ops.wkv7_kernel import WKV7_CUDA_HEAD_SIZES, WKV7_KERNEL_DEVICES, kernel_ops7

__all__ = ["KernelCheck", "SelftestReport", "run_selftest", "TOLERANCES"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
CPU_DTYPES = ("float32", "bfloat16", "float16", "float64")
CUDA_DTYPES = ("float32", "bfloat16", "float16")
#: The CPU kernel takes any head size: 32, 64 and 128 are specialised, 40 runs the generic code.
CPU_HEAD_SIZES = (32, 64, 128, 40)
#: Relative RMS tolerance per dtype (the test suite's, docs/ops.md "Numerics").
TOLERANCES = {"float32": 1e-5, "bfloat16": 5e-3, "float16": 5e-3, "float64": 1e-10}
#: The chunked CUDA kernels multiply on TF32 tensor cores: 2e-3 even in float32.
_TF32_TOLERANCE = 2e-3
_B, _T, _H = 1, 35, 2
#: The report's name of each check that is not a wkv6 variant.
_KERNEL_NAMES = {"step": "wkv6_step", "wkv7": "wkv7 kernel", "wkv7_step": "wkv7_step"}


@dataclass(frozen=True)
class KernelCheck:
    """One kernel on one device, dtype and head size against the float64 reference."""

    kernel: str  # "wkv6 kernel", "wkv6 cuda_recurrent", ..., "wkv6_step", "wkv7 kernel", "wkv7_step"
    device: str
    dtype: str
    head_size: int
    passed: bool
    error: float  # the largest relative RMS error over the outputs and gradients (inf if it raised)
    tolerance: float
    worst: str  # which output or gradient had it ("y", "final_state", "dw", ...), or the exception
    seconds: float


@dataclass
class SelftestReport:
    """The checks run and the kernels not checked (with why)."""

    checks: list[KernelCheck] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when no check failed (also when there was no compiled kernel to check: see ``skipped``)."""
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[KernelCheck]:
        return [c for c in self.checks if not c.passed]

    def table(self) -> str:
        """The checks as a text table, then the kernels not checked, then a one-line verdict."""
        header = ("kernel", "device", "dtype", "n", "rel. RMS error", "tolerance", "worst", "result")
        rows = [
            (
                c.kernel,
                c.device,
                c.dtype,
                str(c.head_size),
                f"{c.error:.2e}",
                f"{c.tolerance:.0e}",
                c.worst if len(c.worst) <= 60 else c.worst[:57] + "...",
                "pass" if c.passed else "FAIL",
            )
            for c in self.checks
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(x.ljust(wd) for x, wd in zip(r, widths)).rstrip() for r in [header, *rows]]
        lines.insert(1, "  ".join("-" * wd for wd in widths))
        lines += [f"not checked: {s}" for s in self.skipped]
        failed = len(self.failures)
        if not self.checks:
            lines.append("no compiled kernel was checked")
        elif failed:
            lines.append(f"FAILED: {failed} of {len(self.checks)} kernel checks exceed their tolerance")
        else:
            lines.append(f"all {len(self.checks)} kernel checks pass")
        return "\n".join(lines)


def _rel_rms(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    if not torch.isfinite(actual).all():
        return float("inf")
    scale = expected.pow(2).mean().sqrt().clamp_min(1e-30)
    return ((actual - expected).pow(2).mean().sqrt() / scale).item()


def _inputs(n: int, dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    """Random inputs on the CPU: r, k, v in ``dtype``; w, u, the state in float32 (float64 for float64)."""
    g = torch.Generator().manual_seed(seed)
    acc = torch.float64 if dtype == torch.float64 else torch.float32

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    log_neg_w = torch.empty(_B, _T, _H, n, dtype=torch.float64).uniform_(-8.0, 3.0, generator=g)
    return {
        "r": rnd(_B, _T, _H, n).to(dtype),
        "k": rnd(_B, _T, _H, n, scale=0.5).to(dtype),
        "v": rnd(_B, _T, _H, n).to(dtype),
        "w": (-torch.exp(log_neg_w)).to(acc),
        "u": rnd(_H, n, scale=0.5).to(acc),
        "initial_state": rnd(_B, _H, n, n).to(acc),
    }


_NAMES = ("r", "k", "v", "w", "u", "initial_state")


def _wkv6_with_grads(fn, inputs, seed: int):
    leaves = {k: x.detach().clone().requires_grad_(True) for k, x in inputs.items()}
    y, s = fn(*[leaves[k] for k in _NAMES])
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.device, y.dtype)
    gs = torch.randn(s.shape, generator=g, dtype=torch.float64).to(s.device, s.dtype)
    loss = (y * gy).sum(dtype=torch.float64) + (s * gs).sum(dtype=torch.float64)
    grads = torch.autograd.grad(loss, [leaves[k] for k in _NAMES])
    out = {"y": y, "final_state": s}
    out.update({f"d{k}": gr for k, gr in zip(_NAMES, grads)})
    return out


def _compare(got: dict, expected: dict) -> tuple[float, str]:
    errors = {k: _rel_rms(got[k], expected[k]) for k in expected}
    worst = max(errors, key=lambda k: errors[k])
    return errors[worst], worst


def _check_wkv6(backend: str, device: str, dtype: str, n: int, seed: int) -> tuple[float, str]:
    inputs = _inputs(n, _DTYPES[dtype], seed)
    on_device = {k: x.to(device) for k, x in inputs.items()}
    got = _wkv6_with_grads(lambda *a: wkv6(*a, output_final_state=True, backend=backend), on_device, seed)
    as64 = {k: x.double() for k, x in inputs.items()}
    expected = _wkv6_with_grads(lambda *a: wkv6_ref(*a, output_final_state=True), as64, seed)
    return _compare(got, expected)


def _step_ref64(r, k, v, w, u, state):
    r, k, v, w, u = (x.double() for x in (r, k, v, w, u))
    kv = k.unsqueeze(-1) * v.unsqueeze(-2)
    y = torch.einsum("bhj,bhji->bhi", r, u.unsqueeze(-1) * kv + state)
    return y, torch.exp(w).unsqueeze(-1) * state + kv


def _check_step(device: str, dtype: str, n: int, seed: int) -> tuple[float, str]:
    inputs = _inputs(n, _DTYPES[dtype], seed)
    r, k, v, w = (inputs[x][:, 0] for x in ("r", "k", "v", "w"))
    u, state = inputs["u"], inputs["initial_state"]
    dev_state = state.to(device, copy=True).contiguous()  # updated in place: never the reference's state
    with torch.no_grad():
        y = wkv6_step(*(x.to(device) for x in (r, k, v, w, u)), dev_state, backend="kernel")
    y_ref, state_ref = _step_ref64(r, k, v, w, u, state.double())
    return _compare({"y": y, "state": dev_state}, {"y": y_ref, "state": state_ref})


_NAMES7 = ("r", "w", "k", "v", "a", "b", "initial_state")
#: Two packed sequences (a boundary inside the 35 steps), each with its own initial and final state.
_CU_SEQLENS7 = (0, 17, 35)


def _inputs7(n: int, dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    """RWKV-7 layer-shaped inputs on the CPU: r, k, v, a, b in ``dtype``; w, the states float32 (float64)."""
    g = torch.Generator().manual_seed(seed)
    acc = torch.float64 if dtype == torch.float64 else torch.float32

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    kk = torch.nn.functional.normalize(rnd(1, _T, _H, n), dim=-1)
    iclr = torch.rand(1, _T, _H, n, generator=g, dtype=torch.float64) * 0.98 + 0.01
    w = -math.exp(-0.5) * (torch.rand(1, _T, _H, n, generator=g, dtype=torch.float64) * 0.999 + 0.001)
    inputs = {
        "r": rnd(1, _T, _H, n),
        "w": w,
        "k": rnd(1, _T, _H, n, scale=0.5),
        "v": rnd(1, _T, _H, n),
        "a": -kk,
        "b": kk * iclr,
        "initial_state": rnd(len(_CU_SEQLENS7) - 1, _H, n, n),
    }
    return {k: x.to(acc if k in ("w", "initial_state") else dtype) for k, x in inputs.items()}


def _wkv7_with_grads(fn, inputs, cu_seqlens, seed: int):
    leaves = {k: x.detach().clone().requires_grad_(True) for k, x in inputs.items()}
    y, s = fn(*[leaves[k] for k in _NAMES7], cu_seqlens)
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.device, y.dtype)
    gs = torch.randn(s.shape, generator=g, dtype=torch.float64).to(s.device, s.dtype)
    loss = (y * gy).sum(dtype=torch.float64) + (s * gs).sum(dtype=torch.float64)
    grads = torch.autograd.grad(loss, [leaves[k] for k in _NAMES7])
    out = {"y": y, "final_state": s}
    out.update({f"d{k}": gr for k, gr in zip(_NAMES7, grads)})
    return out


def _check_wkv7(device: str, dtype: str, n: int, seed: int) -> tuple[float, str]:
    inputs = _inputs7(n, _DTYPES[dtype], seed)
    on_device = {k: x.to(device) for k, x in inputs.items()}
    cu = torch.tensor(_CU_SEQLENS7)

    def kernel(*args):
        *xs, cu_seqlens = args
        return wkv7(*xs, output_final_state=True, cu_seqlens=cu_seqlens, backend="kernel")

    got = _wkv7_with_grads(kernel, on_device, cu.to(device), seed)
    as64 = {k: x.double() for k, x in inputs.items()}
    expected = _wkv7_with_grads(lambda *a: wkv7_ref(*a[:-1], True, a[-1]), as64, cu, seed)
    return _compare(got, expected)


def _check_step7(device: str, dtype: str, n: int, seed: int) -> tuple[float, str]:
    inputs = _inputs7(n, _DTYPES[dtype], seed)
    xs = [inputs[k][:, 0] for k in _NAMES7[:-1]]
    state = inputs["initial_state"][:1]
    dev_state = state.to(device, copy=True).contiguous()  # updated in place: never the reference's state
    with torch.no_grad():
        y = wkv7_step(*(x.to(device) for x in xs), dev_state, backend="kernel")
    y_ref, state_ref = wkv7_ref(*(x[:, None].double() for x in xs), state.double(), True)
    return _compare({"y": y, "state": dev_state}, {"y": y_ref[:, 0], "state": state_ref})


def _cuda_devices() -> list[str]:
    if not torch.cuda.is_available():
        return []
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def _normalise(devices, dtypes, head_sizes):
    if devices is None:
        devices = ["cpu", *_cuda_devices()]
    devices = [str(torch.device(d)) if str(d) != "cuda" else "cuda:0" for d in devices]
    if dtypes is not None:
        dtypes = [str(d).removeprefix("torch.") for d in dtypes]
        unknown = [d for d in dtypes if d not in _DTYPES]
        if unknown:
            raise ValueError(f"selftest: unknown dtype(s) {unknown}; choose from {list(_DTYPES)}")
    if head_sizes is not None:
        bad = [n for n in head_sizes if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1024]
        if bad:
            raise ValueError(f"selftest: head sizes must be ints from 1 to 1024, got {bad}")
    return devices, dtypes, head_sizes


def run_selftest(devices=None, dtypes=None, head_sizes=None) -> SelftestReport:
    """Check every compiled kernel against the float64 reference on this machine.

    Args:
        devices: e.g. ``["cpu", "cuda:0"]`` (None: the CPU and every CUDA device present).
        dtypes: names or torch dtypes among float32, bfloat16, float16, float64 (None: every dtype each
            kernel supports; float64 is CPU only).
        head_sizes: head sizes n (None: 32, 64, 128 and 40 on the CPU, whose kernel takes any; 32, 64,
            128 on CUDA, the only ones its kernels are built for).

    Returns:
        a :class:`SelftestReport`: one :class:`KernelCheck` per kernel, device, dtype and head size, with
        the largest relative RMS error over the output, the final state and every gradient, its tolerance
        and pass/fail; and the kernels that could not be checked here, with why. ``report.passed`` is
        False when any check failed; ``report.table()`` formats it. Takes a few seconds on a CPU.
    """
    devices, dtypes, head_sizes = _normalise(devices, dtypes, head_sizes)
    report = SelftestReport()
    if kernel_ops() is None:
        report.skipped.append(f"every kernel: the compiled extension is not loaded ({backend_info()['reason']})")
        return report
    seed = 0
    for device in devices:
        kind = torch.device(device).type
        if kind not in ("cpu", "cuda"):
            report.skipped.append(f"{device}: there are no compiled kernels for device type {kind!r}")
            continue
        if kind not in KERNEL_DEVICES:
            report.skipped.append(f"{device}: this build has no {kind.upper()} kernels")
            continue
        if kind == "cuda" and (
            not torch.cuda.is_available() or torch.device(device).index >= torch.cuda.device_count()
        ):
            report.skipped.append(f"{device}: no such CUDA device here")
            continue
        supported_dtypes = CPU_DTYPES if kind == "cpu" else CUDA_DTYPES
        device_dtypes = list(supported_dtypes) if dtypes is None else [d for d in dtypes if d in supported_dtypes]
        report.skipped += [
            f"{device} {d}: the {kind.upper()} kernels do not take it"
            for d in dtypes or ()
            if d not in supported_dtypes
        ]
        if kind == "cpu":
            sizes = list(CPU_HEAD_SIZES if head_sizes is None else head_sizes)
            variants = ["kernel"]
        else:
            sizes = list(CUDA_HEAD_SIZES) if head_sizes is None else [x for x in head_sizes if x in CUDA_HEAD_SIZES]
            report.skipped += [
                f"{device} n={x}: the CUDA kernels are built for head sizes {CUDA_HEAD_SIZES} only"
                for x in head_sizes or ()
                if x not in CUDA_HEAD_SIZES
            ]
            variants = list(CUDA_VARIANTS)
            if "cuda_chunked" in variants and torch.cuda.get_device_capability(device)[0] < 8:
                variants.remove("cuda_chunked")
                report.skipped.append(f"{device} cuda_chunked: needs compute capability 8.0 or newer")
        runs = [(variant, sizes) for variant in [*variants, "step"]]
        if kind in WKV7_KERNEL_DEVICES and kernel_ops7() is not None:
            sizes7 = sizes if kind == "cpu" else [x for x in sizes if x in WKV7_CUDA_HEAD_SIZES]
            runs += [("wkv7", sizes7), ("wkv7_step", sizes7)]
        else:
            report.skipped.append(f"{device} wkv7: this build has no {kind.upper()} wkv7 kernel")
        for variant, variant_sizes in runs:
            for dtype in device_dtypes:
                for n in variant_sizes:
                    seed += 1
                    tolerance = TOLERANCES[dtype]
                    if variant == "cuda_chunked":
                        tolerance = max(tolerance, _TF32_TOLERANCE)
                    start = time.perf_counter()
                    try:
                        if variant == "step":
                            error, worst = _check_step(device, dtype, n, seed)
                        elif variant == "wkv7":
                            error, worst = _check_wkv7(device, dtype, n, seed)
                        elif variant == "wkv7_step":
                            error, worst = _check_step7(device, dtype, n, seed)
                        else:
                            error, worst = _check_wkv6(variant, device, dtype, n, seed)
                    except Exception as e:  # noqa: BLE001 - a kernel that raises is a failed check, reported
                        error, worst = float("inf"), f"raised {type(e).__name__}: {e}".splitlines()[0]
                    report.checks.append(
                        KernelCheck(
                            kernel=_KERNEL_NAMES.get(variant, f"wkv6 {variant}"),
                            device=device,
                            dtype=dtype,
                            head_size=n,
                            passed=error <= tolerance,
                            error=error,
                            tolerance=tolerance,
                            worst=worst,
                            seconds=time.perf_counter() - start,
                        )
                    )
    return report
