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

Per row: median wall time of --repeat runs after --warmup (``time.perf_counter``). The two systems' logits are
compared too (relative RMS error of the last prefill logits), so a fast wrong answer shows.

    python benchmarks/rwkv7.py                   # 0.1B shape, 512-token prefill, 64 decode steps
    python benchmarks/rwkv7.py --tiny            # smoke run (seconds)
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


def _median_time(fn, warmup: int, repeat: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
    parser.add_argument("--repeat", type=int, default=3)
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
    print(
        f"# {datetime.date.today()} | {_cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads "
        f"| rwkv_vision {getattr(rwkv_vision, '__version__', '?')} (wkv7: {wkv7_path}) | float32"
    )
    model = _random_model(config)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, config.vocab_size, (1, tokens), generator=g)
    decode_ids = torch.randint(0, config.vocab_size, (n_decode,), generator=g).tolist()
    rows = []

    with torch.no_grad():
        ours_logits = model(ids, logits_to_keep=1).logits[0, -1]
        prefill = _median_time(lambda: model(ids, logits_to_keep=1), args.warmup, args.repeat)
        start_state = model(ids, logits_to_keep=1).state

        def decode():
            state = start_state.clone()
            for t in decode_ids:
                model.step(torch.tensor([t]), state)

        dec = _median_time(decode, args.warmup, args.repeat)
    rows.append(("rwkv_vision RWKV7", prefill, dec, "-"))

    if not args.no_rwkv_package:
        try:
            os.environ["RWKV_V7_ON"] = "1"
            os.environ.setdefault("RWKV_CUDA_ON", "0")
            from importlib.metadata import version

            from rwkv.model import RWKV as PackageRWKV

            with tempfile.TemporaryDirectory() as tmp:
                torch.save(model.state_dict(), Path(tmp) / "model.pth")
                peer = PackageRWKV(model=str(Path(tmp) / "model"), strategy="cpu fp32")
            id_list = ids[0].tolist()
            peer_logits, _ = peer.forward(id_list, None)
            p_prefill = _median_time(lambda: peer.forward(id_list, None), args.warmup, args.repeat)
            _, p_state = peer.forward(id_list, None)

            def p_decode():
                state = [s.clone() for s in p_state]
                for t in decode_ids:
                    _, state = peer.forward([t], state)

            p_dec = _median_time(p_decode, args.warmup, args.repeat)
            rows.append(
                (f"rwkv {version('rwkv')} (PyPI, cpu fp32)", p_prefill, p_dec, f"{_rel(ours_logits, peer_logits):.1e}")
            )
        except Exception as e:  # noqa: BLE001 - a peer that fails is reported, never dropped
            rows.append((f"rwkv (PyPI): error: {type(e).__name__}: {str(e)[:120]}", float("nan"), float("nan"), "-"))

    print()
    print("| system | prefill s | prefill tokens/s | decode ms/token | decode tokens/s | logits rel. RMS vs ours |")
    print("|---|---|---|---|---|---|")
    for name, pre, dec, err in rows:
        print(
            f"| {name} | {pre:.3f} | {tokens / pre:.1f} | {1000 * dec / n_decode:.2f} | {n_decode / dec:.1f} | {err} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
