"""Benchmark of the WKV6 op: every compared system in one run, one table.

CPU (always): the C++ kernel against the pure-PyTorch ``wkv6_chunked`` (the fallback) and ``wkv6_ref``
(float32, b=2, t=1024, h=8, n=64).
GPU (when CUDA is available): our CUDA kernel variants, each chosen by ``wkv6(backend=...)``, against
flash-linear-attention's ``chunk_rwkv6`` and ``fused_recurrent_rwkv6`` (bf16, n=64) at the shapes of
``docs/performance.md``; a peer that is not installed, or an experimental variant this build does not
include, is reported as such, not skipped silently.

    python benchmarks/wkv6.py [--quick] [--exclude chunked]

Times are medians over repeated runs after warm-up; backward is timed alone over a kept graph,
forward+backward includes the forward.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import rwkv_vision
from rwkv_vision.ops import backend_info, wkv6, wkv6_chunked, wkv6_ref


def make(b, t, h, n, dtype, device, grad):
    g = torch.Generator(device="cpu").manual_seed(0)
    rnd = lambda: torch.randn(b, t, h, n, generator=g).to(device, dtype)  # noqa: E731
    r, k, v = rnd(), rnd() * 0.5, rnd()
    w = -torch.exp(torch.empty(b, t, h, n).uniform_(-6, 1, generator=g)).to(device, torch.float32)
    u = (torch.randn(h, n, generator=g) * 0.5).to(device, torch.float32)
    xs = [r, k, v, w, u]
    return [x.requires_grad_(grad) for x in xs]


def time_cpu(fn, repeat):
    fn()  # warm-up
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


def cpu_rows(quick):
    b, t, h, n = (2, 256, 8, 64) if quick else (2, 1024, 8, 64)
    xs = make(b, t, h, n, torch.float32, "cpu", True)
    rows = []
    systems = {
        "rwkv_vision C++ kernel": lambda *a: wkv6(*a, backend="kernel")[0],
        "wkv6_chunked (PyTorch, chunks of 16)": lambda *a: wkv6_chunked(*a)[0],
        "wkv6_ref (PyTorch loop)": lambda *a: wkv6_ref(*a)[0],
    }
    for name, call in systems.items():
        fwd, fwd_bwd, bwd = fwd_and_bwd(call, xs)
        rep = 10 if "kernel" in name else 3
        rows.append(
            ("cpu", name, (b, t, h, n), "float32", time_cpu(fwd, rep), time_cpu(bwd, rep), time_cpu(fwd_bwd, rep))
        )
    return rows


#: Row name -> wkv6's backend for our CUDA kernel variants (each with its own forward and backward:
#: the split forward's backward is the recurrent one). cuda_split and cuda_chunked are experimental.
CUDA_ROWS = {
    "rwkv_vision CUDA, recurrent": "cuda_recurrent",
    "rwkv_vision CUDA, split forward": "cuda_split",
    "rwkv_vision CUDA, chunked": "cuda_chunked",
}


def _variant(backend):
    return lambda r, k, v, w, u: wkv6(r, k, v, w, u, backend=backend)[0]


def gpu_systems():
    """name -> call (forward; backward through autograd), or the exception saying why a system is absent."""
    built = backend_info()["cuda_variants"]
    systems = {}
    for name, backend in CUDA_ROWS.items():
        if backend in built:
            systems[name] = _variant(backend)
        else:
            systems[f"{name} (not built)"] = RuntimeError(
                f"{backend} is not in this build (RWKV_VISION_EXPERIMENTAL_CUDA_KERNELS=ON builds it)"
            )
    # The pure-PyTorch fallback (no extension or an unsupported head size) on the GPU.
    systems["wkv6_chunked (PyTorch, chunks of 16)"] = lambda r, k, v, w, u: wkv6_chunked(r, k, v, w, u)[0]
    try:
        from fla.ops.rwkv6 import chunk_rwkv6, fused_recurrent_rwkv6

        # fla scales r by n^-0.5 unless told otherwise; RWKV-6 uses no scale.
        systems["fla chunk_rwkv6"] = lambda r, k, v, w, u: chunk_rwkv6(r, k, v, w, u.to(r.dtype), scale=1.0)[0]
        systems["fla fused_recurrent_rwkv6"] = lambda r, k, v, w, u: fused_recurrent_rwkv6(
            r, k, v, w, u.to(r.dtype), scale=1.0
        )[0]
    except ImportError as err:
        systems["fla (not installed)"] = err
    return systems


def gpu_rows(quick, exclude=()):
    shapes = [(8, 4096, 32, 64), (16, 1024, 32, 64), (1, 24576, 64, 64)]
    if quick:
        shapes = shapes[1:2]
    rows = []
    for shape in shapes:
        xs = make(*shape, torch.bfloat16, "cuda", True)
        for name, system in gpu_systems().items():
            if any(part in name for part in exclude):
                continue
            if isinstance(system, Exception):
                rows.append(("cuda", name, shape, "bfloat16", *[float("nan")] * 3))
                continue
            try:
                fwd, fwd_bwd, bwd = fwd_and_bwd(system, xs)
                times = time_cuda(fwd, 20), time_cuda(bwd, 10), time_cuda(fwd_bwd, 10)
                rows.append(("cuda", name, shape, "bfloat16", *times))
            except Exception as err:  # a peer failing must not hide the others' numbers
                print(f"{name} at {shape} failed: {type(err).__name__}: {err}")
                rows.append(("cuda", name, shape, "bfloat16", *[float("nan")] * 3))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes, for a smoke run")
    parser.add_argument(
        "--exclude",
        default="",
        metavar="PART[,PART...]",
        help="leave out the GPU systems whose name contains one of these (say so in the output)",
    )
    args = parser.parse_args()
    exclude = tuple(part for part in args.exclude.split(",") if part)
    info = backend_info()
    print(
        f"rwkv_vision {rwkv_vision.__version__}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"{platform.processor() or platform.machine()}"
    )
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()}")
    print(
        f"extension: {info['extension']} (cpu {info['cpu_kernels']}, cuda {info['cuda_kernels']}, "
        f"CUDA variants built: {', '.join(info['cuda_variants']) or 'none'})"
    )
    rows = cpu_rows(args.quick)
    if torch.cuda.is_available():
        rows += gpu_rows(args.quick, exclude)
        if exclude:
            print(f"left out on request (--exclude): GPU systems whose name contains {', '.join(exclude)}")
    print()
    print("| device | system | b, t, h, n | dtype | forward ms | backward ms | forward+backward ms |")
    print("|---|---|---|---|---|---|---|")
    for device, name, shape, dtype, f, b, fb in rows:
        print(f"| {device} | {name} | {', '.join(map(str, shape))} | {dtype} | {f:.2f} | {b:.2f} | {fb:.2f} |")
    cpu = {name: times for device, name, _, _, *times in rows if device == "cpu"}
    kern, ref = cpu["rwkv_vision C++ kernel"], cpu["wkv6_ref (PyTorch loop)"]
    chunk = cpu["wkv6_chunked (PyTorch, chunks of 16)"]
    for label, other in (("wkv6_ref", ref), ("wkv6_chunked", chunk)):
        print(
            f"CPU kernel speed-up over {label}: forward {other[0] / kern[0]:.1f}x, backward {other[1] / kern[1]:.1f}x, "
            f"forward+backward {other[2] / kern[2]:.1f}x"
        )


if __name__ == "__main__":
    main()
