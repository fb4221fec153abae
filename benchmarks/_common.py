"""Shared parts of the model benchmarks (decode.py, prefill.py, batched_decode.py, vlm_e2e.py).

Letter legend: b batch, t time, v vocabulary.

Every benchmark builds one system at a time (weights random, never zeros), measures it, frees it, then the
next, so each peak-memory figure is that system's alone while all of them share one process and device.
A peer that cannot be imported or built gets a row saying so. Times: CUDA events around each call on a
GPU (medians after warm-up), ``time.perf_counter`` on the CPU (smoke runs only; CPU numbers mean nothing
for the questions these scripts answer).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import gc
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

import rwkv_vision
from rwkv_vision import RWKV6
from rwkv_vision.decoding import Decoder
from rwkv_vision.models.registry import get_config

GIB = 1024**3

#: RWKV-6 7B (VisualRWKV-6 7B's language model) and a tiny twin for smoke runs on the CPU.
RWKV_7B = get_config("rwkv6-7b").to_dict()
RWKV_TINY = dict(n_layer=2, n_embd=64, head_size=32, d_mix=8, d_decay=16, vocab_size=256)
#: Llama-2-7B (LLaVA-1.5-7B's language model). max_position_embeddings covers the 24K contexts measured.
LLAMA_7B = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    vocab_size=32000,
    max_position_embeddings=32768,
)
#: RWKV-6 World 0.1B's shape (12 x 768) and a Llama of the same depth and width: a CPU-sized comparison.
RWKV_SMALL = dict(n_layer=12, n_embd=768, head_size=64, d_mix=32, d_decay=64, vocab_size=65536)
LLAMA_SMALL = dict(
    hidden_size=768,
    intermediate_size=2048,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_key_value_heads=12,
    vocab_size=32000,
    max_position_embeddings=8192,
)
LLAMA_TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    vocab_size=256,
    max_position_embeddings=4096,
)


class Missing(Exception):
    """A peer that is not installed or cannot be built here; its rows say why."""


def add_common_args(parser, *, default_repeat: int = 20) -> None:
    parser.add_argument("--tiny", action="store_true", help="tiny models and sizes: a smoke run (CPU, seconds)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help="bfloat16 (default on CUDA) or float32 (default on CPU)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before timing")
    parser.add_argument("--repeat", type=int, default=default_repeat, help="timed calls; the median is reported")
    parser.add_argument("--systems", default=None, help="comma-separated subset of system names to run")


def resolve(args) -> tuple[torch.device, torch.dtype]:
    if args.tiny:
        torch.set_num_threads(1)  # smoke runs share the machine; tiny models gain nothing from threads
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    name = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise SystemExit(f"--dtype: unknown dtype {name!r}")
    return device, dtype


def wanted(args, name: str) -> bool:
    return args.systems is None or any(s.strip() and s.strip() in name for s in args.systems.split(","))


def versions() -> str:
    parts = [f"rwkv_vision {rwkv_vision.__version__}", f"torch {torch.__version__}"]
    for mod in ("transformers", "fla", "triton", "timm"):
        try:
            parts.append(f"{mod} {__import__(mod).__version__}")
        except Exception as err:  # noqa: BLE001 - any import failure only means "not there"
            parts.append(f"{mod} missing ({type(err).__name__})")
    return ", ".join(parts)


def header(title: str, device: torch.device, dtype: torch.dtype) -> None:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    where = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    )
    print(f"# {title}")
    print(f"date {now}; device {device.type}: {where}; dtype {str(dtype).replace('torch.', '')}")
    print(versions())
    ext = rwkv_vision.ops.backend_info()
    print(
        f"rwkv_vision extension: {ext.get('extension')} (cpu {ext.get('cpu_kernels')}, cuda {ext.get('cuda_kernels')})"
    )
    print("command: " + " ".join(sys.argv))
    sys.stdout.flush()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], device: torch.device, *, warmup: int, repeat: int) -> list[float]:
    """Milliseconds of each of ``repeat`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else float("nan")


def param_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def step_bytes(model: torch.nn.Module, context: int, batch: int = 1) -> int:
    """The fewest bytes one decode step must read: every weight but the input-embedding table (one row of it
    per token), plus for attention models the KV cache of ``context`` tokens per row (bf16/fp16 or the
    model's dtype). The RWKV state (34 MB per row at 7B, read and written) is left out: under 1% at batch 1."""
    emb = model.emb if isinstance(model, RWKV6) else model.get_input_embeddings()
    total = param_bytes(model) - emb.weight.numel() * emb.weight.element_size()
    cfg = getattr(model, "config", None)
    text = getattr(cfg, "text_config", cfg)
    if text is not None and hasattr(text, "num_key_value_heads") and not isinstance(model, RWKV6):
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        itemsize = emb.weight.element_size()
        total += 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * itemsize * context * batch
    return total


def measure_bandwidth(device: torch.device, *, nbytes: int | None = None) -> float:
    """Device memory bandwidth in GB/s from a large copy (bytes read + bytes written), median of 10."""
    nbytes = nbytes or (2 * GIB if device.type == "cuda" else 64 * 1024**2)
    src = torch.rand(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    ms = median(time_calls(functools.partial(dst.copy_, src), device, warmup=3, repeat=10))
    del src, dst
    free(device)
    return 2 * nbytes / (ms * 1e-3) / 1e9


@contextlib.contextmanager
def default_dtype_and_device(dtype: torch.dtype, device: torch.device):
    """Build a third-party model directly in ``dtype`` on ``device`` (no float32 CPU copy of 7B weights)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


# --- the systems ------------------------------------------------------------------------------------------


def build_rwkv(cfg: dict, device, dtype) -> RWKV6:
    model = RWKV6(**cfg, device=device, dtype=dtype).eval()
    with torch.no_grad():
        # The default init has a 1e-4 embedding; spread it so activations look like a trained model's.
        model.emb.weight.normal_(0.0, 1.0)
    return model


def fla_config(cfg: dict):
    try:
        from fla.models import RWKV6Config  # the model classes live in the flash-linear-attention wheel
    except Exception as err:  # noqa: BLE001
        raise Missing(f"fla RWKV6 model not importable ({type(err).__name__}: {err})") from err
    from rwkv_vision.layers.channel_mix import default_dim_ffn

    return RWKV6Config(
        hidden_size=cfg["n_embd"],
        num_hidden_layers=cfg["n_layer"],
        num_heads=cfg["n_embd"] // cfg["head_size"],
        expand_k=1.0,
        expand_v=1.0,
        intermediate_size=cfg.get("dim_ffn") or default_dim_ffn(cfg["n_embd"]),
        proj_low_rank_dim=cfg["d_mix"],
        gate_low_rank_dim=cfg["d_decay"],
        vocab_size=cfg["vocab_size"],
        attn_mode="chunk",
        use_cache=True,
        tie_word_embeddings=False,
        fuse_cross_entropy=False,
    )


def build_fla(cfg: dict, device, dtype):
    config = fla_config(cfg)
    from fla.models import RWKV6ForCausalLM

    with default_dtype_and_device(dtype, device):
        model = RWKV6ForCausalLM(config)
    return model.to(device=device, dtype=dtype).eval()


def build_llama(cfg: dict, device, dtype):
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except Exception as err:  # noqa: BLE001
        raise Missing(f"transformers not importable ({type(err).__name__}: {err})") from err
    config = LlamaConfig(**cfg, attn_implementation="sdpa", use_cache=True)
    with default_dtype_and_device(dtype, device):
        model = LlamaForCausalLM(config)
    return model.to(device=device, dtype=dtype).eval()


class HFCausal:
    """prefill/step over a Hugging Face-style causal LM with a cache (transformers Llama, fla RWKV6)."""

    def __init__(self, model):
        self.model, self.cache = model, None

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor, **kwargs) -> torch.Tensor:
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **kwargs)
        self.cache = out.past_key_values
        return out.logits[:, -1]

    @torch.no_grad()
    def step(self, tok: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=tok.view(-1, 1), past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.cache = out.past_key_values
        return out.logits[:, -1]

    def close(self) -> None:
        self.cache = None


class OursForward:
    """Decoding through the general ``RWKV6.forward`` (t = 1 per call): the baseline the Decoder replaces."""

    def __init__(self, model: RWKV6, chunk_size: int):
        self.model, self.state, self.chunk_size = model, None, chunk_size

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        logits, self.state = self.model(input_ids=ids, chunk_size=self.chunk_size, logits_to_keep=1)
        return logits[:, -1]

    @torch.no_grad()
    def step(self, tok: torch.Tensor) -> torch.Tensor:
        logits, self.state = self.model(input_ids=tok.view(-1, 1), state=self.state)
        return logits[:, -1]

    def close(self) -> None:
        self.state = None


class OursDecoder:
    """The static-state ``Decoder``: eager or with the CUDA graph, optionally through torch.compile."""

    def __init__(self, model: RWKV6, batch_size: int, chunk_size: int, graph: bool, compile: bool = False):
        self.dec = Decoder(model, batch_size=batch_size, use_cuda_graph=graph, compile=compile)
        self.chunk_size = chunk_size

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        self.dec.reset()
        return self.dec.prefill(ids, chunk_size=self.chunk_size)

    def step(self, tok: torch.Tensor) -> torch.Tensor:
        return self.dec.step(tok)

    def close(self) -> None:
        self.dec.reset()  # the buffers stay: they are the decoder's fixed cost, reused for the next prompt


def hf_system(build: Callable, cfg: dict, device, dtype, wrap: Callable = HFCausal) -> Callable:
    """A ``make()`` for a Hugging Face-style peer: builds the model, returns (model, wrap(model))."""

    def make():
        model = build(cfg, device, dtype)
        return model, wrap(model)

    return make


def for_each_system(args, systems: dict, device, measure: Callable, failed: Callable) -> list[list[Any]]:
    """Build and measure the wanted systems one at a time, freeing each before the next.

    ``systems``: name -> (make, vocab), ``make() -> (model, runner)``. ``measure(name, model, runner, vocab)``
    returns table rows; a peer that is not installed or fails as a whole gives one row
    ``failed(name, "missing" | "error", note)`` instead, so one failure never hides the other systems.
    """
    rows = []
    for name, (make, vocab) in systems.items():
        if not wanted(args, name):
            continue
        model = runner = None
        try:
            model, runner = make()
            rows.extend(measure(name, model, runner, vocab))
        except Missing as err:
            rows.append(failed(name, "missing", str(err)[:160]))
        except Exception as err:  # noqa: BLE001 - an OOM or a peer's failure must not hide the rest
            rows.append(failed(name, "error", error_text(err)))
        finally:
            del model, runner
            free(device)
    return rows


def random_ids(b: int, t: int, vocab: int, device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (b, t), generator=g).to(device)


def decode_ms(runner, logits: torch.Tensor, device, *, warmup: int, repeat: int) -> float:
    """Median ms of one greedy decode step (the argmax that picks the next id included)."""
    box = {"tok": logits.argmax(-1)}

    def one():
        box["tok"] = runner.step(box["tok"]).argmax(-1)

    return median(time_calls(one, device, warmup=warmup, repeat=repeat))


def fmt(x: float, digits: int = 2) -> str:
    return "n/a" if x != x else f"{x:.{digits}f}"  # NaN -> n/a


def print_table(columns: list[str], rows: list[list[Any]]) -> None:
    print()
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    sys.stdout.flush()


def error_text(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".replace("|", "/").replace("\n", " ")
    return text[:160]
