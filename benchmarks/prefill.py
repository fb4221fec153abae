"""Prefill of a long prompt (24,576 tokens, batch 1) by a 7B model: time and peak memory.

Systems, one at a time in this process (random weights, bf16 on a GPU):
  - rwkv_vision RWKV6 chunked: ``RWKV6.forward(chunk_size=...)``, state carried, last logits only
    (what ``Decoder.prefill`` runs); memory should be weights + one chunk's activations
  - the same with the experimental chunked tensor-core WKV kernels (``ops.use_backend("cuda_chunked")``),
    on a GPU with a build that includes them (RWKV_VISION_EXPERIMENTAL_CUDA_KERNELS=ON)
  - rwkv_vision RWKV6 one pass: the same without chunks (activations for the whole prompt)
  - fla 0.6.0 RWKV6ForCausalLM: one pass, chunk_rwkv6 kernels (missing if not installed)
  - transformers Llama-2-7B shape: one pass, SDPA, KV cache kept (as generation needs it)

Per system: the median wall time of --repeat prefills after --warmup (CUDA events), the peak memory
(max_memory_allocated, weights included) and the part above the weights.

    python benchmarks/prefill.py                 # 7B, 24,576 tokens (GPU)
    python benchmarks/prefill.py --tiny          # smoke run on the CPU
"""

from __future__ import annotations

import argparse
import contextlib

import _common as C

from rwkv_vision.ops import backend_info, use_backend


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(parser, default_repeat=3)
    parser.set_defaults(warmup=1)
    parser.add_argument("--tokens", type=int, default=None, help="prompt length (default 24576)")
    parser.add_argument("--chunk-sizes", default=None, help="comma-separated chunk sizes of ours (default 2048)")
    args = parser.parse_args(argv)
    device, dtype = C.resolve(args)
    tokens = args.tokens or (64 if args.tiny else 24576)
    chunks = [int(c) for c in (args.chunk_sizes or ("16" if args.tiny else "2048")).split(",")]
    rwkv_cfg, llama_cfg = (C.RWKV_TINY, C.LLAMA_TINY) if args.tiny else (C.RWKV_7B, C.LLAMA_7B)
    C.header(f"prefill of {tokens} tokens, batch 1", device, dtype)

    def ours(chunk):
        def make():
            model = C.build_rwkv(rwkv_cfg, device, dtype)
            return model, C.OursForward(model, chunk)

        return make

    def not_built():
        raise C.Missing("cuda_chunked is not in this build (RWKV_VISION_EXPERIMENTAL_CUDA_KERNELS=ON builds it)")

    systems = {f"rwkv_vision RWKV6 chunked ({c})": (ours(c), rwkv_cfg["vocab_size"]) for c in chunks}
    # The same with the chunked tensor-core WKV kernels (csrc/cuda/wkv6_chunked_cuda.cu) instead of the
    # recurrent ones: 64 heads at batch 1 are too few blocks for a kernel that walks 24K steps in order.
    # The layers call wkv6 without a backend, so the row sets the default around its prefills.
    kernel_backend = {}
    if device.type == "cuda":
        name = f"rwkv_vision RWKV6 chunked ({chunks[0]}), chunked WKV kernel"
        kernel_backend[name] = "cuda_chunked"
        systems[name] = (
            ours(chunks[0]) if "cuda_chunked" in backend_info()["cuda_variants"] else not_built,
            rwkv_cfg["vocab_size"],
        )
    systems["rwkv_vision RWKV6 one pass"] = (ours(None), rwkv_cfg["vocab_size"])
    systems["fla 0.6.0 RWKV6ForCausalLM one pass"] = (
        C.hf_system(C.build_fla, rwkv_cfg, device, dtype),
        rwkv_cfg["vocab_size"],
    )
    systems["transformers Llama (SDPA) one pass"] = (
        C.hf_system(C.build_llama, llama_cfg, device, dtype),
        llama_cfg["vocab_size"],
    )

    def measure(name, model, runner, vocab):
        weights = C.param_bytes(model) / C.GIB
        ids = C.random_ids(1, tokens, vocab, device, seed=1)

        def run():
            runner.close()  # drop the last prompt's state / KV cache before reading the next
            runner.prefill(ids)

        C.free(device)
        C.reset_peak(device)
        backend = kernel_backend.get(name)
        with use_backend(backend) if backend else contextlib.nullcontext():
            ms = C.median(C.time_calls(run, device, warmup=args.warmup, repeat=args.repeat))
        peak = C.peak_gib(device)
        return [
            [
                name,
                tokens,
                C.fmt(ms / 1e3, 3),
                C.fmt(tokens / ms * 1e3, 0),
                C.fmt(peak),
                C.fmt(weights),
                C.fmt(peak - weights),
                "",
            ]
        ]

    rows = C.for_each_system(
        args, systems, device, measure, lambda name, status, note: [name, tokens, status, "", "", "", "", note]
    )
    C.print_table(
        ["system", "tokens", "prefill s (median)", "tokens/s", "peak GiB", "weights GiB", "peak - weights GiB", "note"],
        rows,
    )


if __name__ == "__main__":
    main()
