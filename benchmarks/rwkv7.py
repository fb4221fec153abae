"""RWKV-7 ("x070") language model on the CPU: prefill and decode of ours against the PyPI ``rwkv`` package.

Letter legend: t time (tokens).

One random-weight model of the released 0.1B shape (12 layers, 768 channels, head size 64, vocabulary 65536,
LoRA ranks 64/64/32/128; every tensor random, none zero) is written once as an official .pth and read by both
systems, float32, batch 1, in this process:

  - rwkv_vision RWKV7: prefill = ``model(ids [1, t], logits_to_keep=1)`` (the ``wkv7`` op's default backend:
    the compiled CPU kernel when the build has it, else the chunked PyTorch form); decode = ``model.step``
    (``wkv7_step``, state updated in place).
  - rwkv (PyPI, ``RWKV_V7_ON=1``, strategy "cpu fp32"): prefill = ``model.forward(ids, None)`` (its sequence
    form: TorchScript, a per-token loop of the recurrence); decode = ``model.forward([token], state)``.

Both systems are built first, then timed in --repeat interleaved rounds (ours then the package, the order
swapped every other round, after --warmup untimed rounds), so a change of the machine's load hits both alike.
Per row: the median time; the next-to-last column is the median of the per-round ratios ours / package (below 1: ours
is faster), which is steadier than the ratio of two medians on a shared machine. ``--clock cpu`` times the
process's CPU time (``time.process_time``) instead of wall time: with one thread it leaves out the time the
process waits for a core on a loaded machine. The two systems' logits are compared too (relative RMS error
of the last prefill logits), so a fast wrong answer shows. The header reports the load average.

    python benchmarks/rwkv7.py --threads 1 --repeat 7   # 0.1B shape, 512-token prefill, 64 decode steps
    python benchmarks/rwkv7.py --tiny                   # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

import rwkv_vision
from rwkv_vision import RWKV7
from rwkv_vision.models.registry import get_config

TINY = dict(n_layer=2, n_embd=64, head_size=32, d_w=8, d_a=8, d_v=8, d_g=16, vocab_size=1000)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _random_model(config) -> RWKV7:
    """The official init, then every tensor made random and non-zero (zero output projections would make a
    model whose blocks do nothing: the arithmetic is the same, but a wrong implementation would not show)."""
    torch.manual_seed(0)
    model = RWKV7(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and not name.startswith(("emb", "head")):
                p.normal_(0.0, p.shape[-1] ** -0.5)
            elif name.endswith(("ln_x.weight", "r_k", "k_k")):
                p.uniform_(0.5, 1.0)
    return model.eval()


def _interleaved(systems: dict, warmup: int, repeat: int, clock) -> dict[str, dict[str, list[float]]]:
    """{system: {phase: [seconds per round]}}: every round runs every system's phases, the order of the
    systems reversed every other round; ``warmup`` rounds first, untimed."""
    times = {name: {phase: [] for phase in phases} for name, phases in systems.items()}
    names = list(systems)
    for round_ in range(warmup + repeat):
        for name in names if round_ % 2 == 0 else names[::-1]:
            for phase, fn in systems[name].items():
                start = clock()
                fn()
                if round_ >= warmup:
                    times[name][phase].append(clock() - start)
    return times


def _ratio(ours: list[float], theirs: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(ours, theirs))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float((a - b).norm() / b.norm())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny model and short runs (smoke test)")
    parser.add_argument("--tokens", type=int, default=None, help="prefill length (default 512; tiny 16)")
    parser.add_argument("--decode-tokens", type=int, default=None, help="decode steps timed (default 64; tiny 4)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5, help="timed interleaved rounds (the median is reported)")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall", help="wall time, or the process's CPU time (1 thread)"
    )
    parser.add_argument("--device", default="cpu", help="only cpu: the rwkv package's CPU path is the peer")
    parser.add_argument("--no-rwkv-package", action="store_true", help="skip the PyPI rwkv row")
    args = parser.parse_args(argv)
    if args.device != "cpu":
        parser.error("--device: this benchmark compares CPU implementations; use cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    tokens = args.tokens or (16 if args.tiny else 512)
    n_decode = args.decode_tokens or (4 if args.tiny else 64)
    config = get_config("rwkv7-0.1b").replace(**TINY) if args.tiny else get_config("rwkv7-0.1b")

    try:
        from rwkv_vision.ops import wkv7_kernel

        wkv7_path = "compiled CPU kernel" if wkv7_kernel.kernel_ops7() is not None else "chunked PyTorch"
    except ImportError:
        wkv7_path = "chunked PyTorch"
    print(f"# RWKV-7 {'tiny' if args.tiny else '0.1B shape'}: prefill {tokens} tokens, decode {n_decode} tokens")
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(
        f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC | {_cpu_name()} | {os.cpu_count()} "
        f"CPUs, load average {load} | torch {torch.__version__} | {torch.get_num_threads()} threads "
        f"| rwkv_vision {getattr(rwkv_vision, '__version__', '?')} (wkv7: {wkv7_path}) | float32 | "
        f"{args.clock} clock"
    )
    model = _random_model(config)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, config.vocab_size, (1, tokens), generator=g)
    decode_ids = torch.randint(0, config.vocab_size, (n_decode,), generator=g).tolist()
    systems: dict[str, dict] = {}
    errors: list[str] = []

    with torch.no_grad():
        ours_logits = model(ids, logits_to_keep=1).logits[0, -1]
        start_state = model(ids, logits_to_keep=1).state

        def decode():
            state = start_state.clone()
            for t in decode_ids:
                model.step(torch.tensor([t]), state)

        ours = "rwkv_vision RWKV7"
        systems[ours] = {"prefill": lambda: model(ids, logits_to_keep=1), "decode": decode}

    peer_name, peer_err = None, "-"
    if not args.no_rwkv_package:
        try:
            os.environ["RWKV_V7_ON"] = "1"
            os.environ.setdefault("RWKV_CUDA_ON", "0")
            from importlib.metadata import version

            from rwkv.model import RWKV as PackageRWKV

            with tempfile.TemporaryDirectory() as tmp:
                # Contiguous copies: the official layout (our step may have re-laid out weights in memory).
                torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, Path(tmp) / "model.pth")
                peer = PackageRWKV(model=str(Path(tmp) / "model"), strategy="cpu fp32")
            id_list = ids[0].tolist()
            peer_logits, p_state = peer.forward(id_list, None)
            peer_err = f"{_rel(ours_logits, peer_logits):.1e}"

            def p_decode():
                state = [s.clone() for s in p_state]
                for t in decode_ids:
                    _, state = peer.forward([t], state)

            peer_name = f"rwkv {version('rwkv')} (PyPI, cpu fp32)"
            systems[peer_name] = {"prefill": lambda: peer.forward(id_list, None), "decode": p_decode}
        except Exception as e:  # noqa: BLE001 - a peer that fails is reported, never dropped
            errors.append(f"rwkv (PyPI): error: {type(e).__name__}: {str(e)[:120]}")

    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    with torch.no_grad():
        times = _interleaved(systems, args.warmup, args.repeat, clock)
    rows = []
    for name, phases in times.items():
        pre, dec = statistics.median(phases["prefill"]), statistics.median(phases["decode"])
        if peer_name is not None and name == ours:
            ratio = (
                f"{_ratio(phases['prefill'], times[peer_name]['prefill']):.2f} / "
                f"{_ratio(phases['decode'], times[peer_name]['decode']):.2f}"
            )
        else:
            ratio = "-"
        rows.append((name, pre, dec, peer_err if name == peer_name else "-", ratio))

    print()
    print(
        "| system | prefill s | prefill tokens/s | decode ms/token | decode tokens/s "
        "| ours / package, prefill / decode (median of rounds) | logits rel. RMS vs ours |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, pre, dec, err, ratio in rows:
        print(
            f"| {name} | {pre:.3f} | {tokens / pre:.1f} | {1000 * dec / n_decode:.2f} | {n_decode / dec:.1f} "
            f"| {ratio} | {err} |"
        )
    for line in errors:
        print(f"| {line} | nan | nan | nan | nan | - | - |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
