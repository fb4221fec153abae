"""Benchmark of the WKV7 op (the RWKV-7 generalised delta rule): every compared system in one run, one table.

Letter legend: b batch, t time, h heads, n head size.

CPU (always): the C++ kernel (``wkv7(backend="kernel")``) against the pure-PyTorch ``wkv7_chunked`` (the
fallback) and the ``wkv7_ref`` loop: float32 at b=1, t=1024, h=12, n=64 (an RWKV-7 0.1B layer's heads) and
b=4, t=256, h=12, n=64; float64 at b=1, t=256, h=12, n=64.
GPU (when CUDA is available): our CUDA kernel against ``wkv7_chunked`` on the GPU and flash-linear-attention's
``chunk_rwkv7`` / ``fused_recurrent_rwkv7`` (bf16, n=64); a peer that is not installed is reported as such.

    python benchmarks/wkv7.py [--quick]

Times are medians over repeated runs after warm-up; backward is timed alone over a kept graph,
forward+backward includes the forward. Inputs are shaped as an RWKV-7 layer makes them: a = -kk,
b = kk * iclr (kk of unit norm), log-decays in [-e^-0.5, 0).
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import statistics
import time

import torch

import rwkv_vision
from rwkv_vision.ops import backend_info, wkv7, wkv7_chunked, wkv7_ref
from rwkv_vision.ops.wkv7_kernel import WKV7_KERNEL_DEVICES


def make(b, t, h, n, dtype, device, grad):
    g = torch.Generator(device="cpu").manual_seed(0)
    rnd = lambda: torch.randn(b, t, h, n, generator=g)  # noqa: E731
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    kk = torch.nn.functional.normalize(rnd(), dim=-1)
    iclr = torch.rand(b, t, h, n, generator=g)
    w = -math.exp(-0.5) * torch.rand(b, t, h, n, generator=g).clamp_min(1e-3)
    xs = [rnd(), w, rnd() * 0.5, rnd(), -kk, kk * iclr]
    xs = [x.to(device, acc if i == 1 else dtype) for i, x in enumerate(xs)]
    return [x.requires_grad_(grad) for x in xs]


def time_cpu(fn, repeat, warmup=True):
    if warmup:
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def time_cuda(fn, repeat):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def fwd_and_bwd(call, xs):
    def fwd():
        with torch.no_grad():
            call(*[x.detach() for x in xs])

    def fwd_bwd():
        y = call(*xs)
        y.backward(torch.ones_like(y))
        for x in xs:
            x.grad = None

    y_kept = call(*xs)

    def bwd():  # the backward alone, over a graph kept from one forward
        y_kept.backward(torch.ones_like(y_kept), retain_graph=True)
        for x in xs:
            x.grad = None

    return fwd, fwd_bwd, bwd


#: Row name -> the call (forward; backward through autograd) on the CPU.
CPU_SYSTEMS = {
    "rwkv_vision C++ kernel": lambda *a: wkv7(*a, backend="kernel")[0],
    "wkv7_chunked (PyTorch)": lambda *a: wkv7_chunked(*a)[0],
    "wkv7_ref (PyTorch loop)": lambda *a: wkv7_ref(*a)[0],
}


def cpu_cases(quick):
    """(shape, dtype) of each CPU table block."""
    if quick:
        return [((1, 128, 4, 64), torch.float32), ((1, 64, 4, 64), torch.float64)]
    return [((1, 1024, 12, 64), torch.float32), ((4, 256, 12, 64), torch.float32), ((1, 256, 12, 64), torch.float64)]


def cpu_rows(quick):
    rows = []
    for shape, dtype in cpu_cases(quick):
        xs = make(*shape, dtype, "cpu", True)
        for name, call in CPU_SYSTEMS.items():
            if "kernel" in name and "cpu" not in WKV7_KERNEL_DEVICES:
                rows.append(("cpu", f"{name} (not built)", shape, dtype, *[float("nan")] * 3))
                continue
            fwd, fwd_bwd, bwd = fwd_and_bwd(call, xs)
            # The loop reference takes seconds a call and has nothing to warm up: timed once.
            loop = "loop" in name
            rep = 1 if quick or loop else (10 if "kernel" in name else 3)
            times = [time_cpu(fn, rep, warmup=not loop) for fn in (fwd, bwd, fwd_bwd)]
            rows.append(("cpu", name, shape, dtype, *times))
    return rows


def gpu_systems():
    """name -> call, or the exception saying why a system is absent."""
    systems = {}
    if "cuda" in WKV7_KERNEL_DEVICES:
        systems["rwkv_vision CUDA kernel"] = lambda *a: wkv7(*a, backend="kernel")[0]
    else:
        systems["rwkv_vision CUDA kernel (not built)"] = RuntimeError("this build has no CUDA wkv7 kernel")
    systems["wkv7_chunked (PyTorch)"] = lambda *a: wkv7_chunked(*a)[0]
    try:
        from fla.ops.rwkv7 import chunk_rwkv7, fused_recurrent_rwkv7

        # fla's r, w (log-decay), k, v, a, b in [b, t, h, n]; no output scaling in RWKV-7.
        systems["fla chunk_rwkv7"] = lambda r, w, k, v, a, b: chunk_rwkv7(r, w, k, v, a, b, scale=1.0)[0]
        systems["fla fused_recurrent_rwkv7"] = lambda r, w, k, v, a, b: fused_recurrent_rwkv7(
            r, w, k, v, a, b, scale=1.0
        )[0]
    except ImportError as err:
        systems["fla (not installed)"] = err
    return systems


def gpu_rows(quick):
    shapes = [(8, 4096, 32, 64), (1, 16384, 32, 64)]
    if quick:
        shapes = [(2, 1024, 8, 64)]
    rows = []
    for shape in shapes:
        xs = make(*shape, torch.bfloat16, "cuda", True)
        for name, system in gpu_systems().items():
            if isinstance(system, Exception):
                rows.append(("cuda", name, shape, torch.bfloat16, *[float("nan")] * 3))
                continue
            try:
                fwd, fwd_bwd, bwd = fwd_and_bwd(system, xs)
                times = time_cuda(fwd, 20), time_cuda(bwd, 10), time_cuda(fwd_bwd, 10)
                rows.append(("cuda", name, shape, torch.bfloat16, *times))
            except Exception as err:  # a peer failing must not hide the others' numbers
                print(f"{name} at {shape} failed: {type(err).__name__}: {err}")
                rows.append(("cuda", name, shape, torch.bfloat16, *[float("nan")] * 3))
    return rows


def fmt(x):
    return "n/a" if x != x else f"{x:.2f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes, one timed run: a smoke run")
    args = parser.parse_args()
    info = backend_info()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"# WKV7; {now}; rwkv_vision {rwkv_vision.__version__}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}"
    )
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()}")
    print(f"extension: {info['extension']}; wkv7 kernels on: {', '.join(sorted(WKV7_KERNEL_DEVICES)) or 'none'}")
    rows = cpu_rows(args.quick)
    if torch.cuda.is_available():
        rows += gpu_rows(args.quick)
    print()
    print("| device | system | b, t, h, n | dtype | forward ms | backward ms | forward+backward ms |")
    print("|---|---|---|---|---|---|---|")
    for device, name, shape, dtype, f, b, fb in rows:
        dt = str(dtype).removeprefix("torch.")
        print(f"| {device} | {name} | {', '.join(map(str, shape))} | {dt} | {fmt(f)} | {fmt(b)} | {fmt(fb)} |")
    for shape, dtype in cpu_cases(args.quick):
        cpu = {name: times for dev, name, s, d, *times in rows if dev == "cpu" and s == shape and d == dtype}
        kern = cpu.get("rwkv_vision C++ kernel")
        if kern is None:
            continue
        for label in ("wkv7_chunked (PyTorch)", "wkv7_ref (PyTorch loop)"):
            other = cpu[label]
            print(
                f"CPU kernel speed-up over {label.split()[0]} at {shape}, {str(dtype).removeprefix('torch.')}: "
                f"forward {other[0] / kern[0]:.1f}x, backward {other[1] / kern[1]:.1f}x, "
                f"forward+backward {other[2] / kern[2]:.1f}x"
            )


if __name__ == "__main__":
    main()
