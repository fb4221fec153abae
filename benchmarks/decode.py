"""Decode speed of a 7B model at long context, batch 1: ms per token after a prefill of 1K, 8K, 24K tokens.

Systems, one at a time in this process (random weights, bf16 on a GPU):
  - rwkv_vision Decoder + torch.compile + CUDA graph: the step's element-wise work fused by Inductor
  - rwkv_vision Decoder + CUDA graph: static state, one graph replay per token
  - rwkv_vision Decoder eager: the same step launched from Python
  - rwkv_vision RWKV6.forward: the general forward with t = 1 (what generation.generate does)
  - fla RWKV6ForCausalLM: flash-linear-attention 0.6.0 with the same sizes (missing if not installed)
  - transformers Llama-2-7B shape, SDPA, KV cache

Per system and context: the median ms of one greedy step (argmax included) over --repeat steps after
--warmup, the peak memory (torch.cuda.max_memory_allocated, weights included), and the weight bytes. The
floor is the bytes a step must read / bandwidth: every weight once but the embedding table (one row),
plus for Llama the KV cache of the context (0.5 MB per token at 7B). Bandwidth: measured here by a device-to-device copy, or --bandwidth-gbs.

    python benchmarks/decode.py                       # 7B, contexts 1024,8192,24576 (GPU)
    python benchmarks/decode.py --tiny                # smoke run on the CPU, seconds
    python benchmarks/decode.py --small --device cpu --compile-on-cpu   # 0.1B shape on the CPU
"""

from __future__ import annotations

import argparse

import _common as C


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(parser, default_repeat=50)
    parser.add_argument("--contexts", default=None, help="comma-separated prompt lengths (default 1024,8192,24576)")
    parser.add_argument("--chunk-size", type=int, default=2048, help="prefill chunk of our systems")
    parser.add_argument("--bandwidth-gbs", type=float, default=None, help="use this bandwidth for the floor")
    parser.add_argument(
        "--small",
        action="store_true",
        help="RWKV-6 0.1B shape (12 x 768) and a Llama of that size instead of 7B (for the CPU)",
    )
    parser.add_argument(
        "--compile-on-cpu",
        action="store_true",
        help="also time the torch.compile'd Decoder on the CPU (on a GPU it always runs)",
    )
    args = parser.parse_args(argv)
    device, dtype = C.resolve(args)
    tiny = args.tiny
    default_contexts = "16,48" if tiny else ("128,1024" if args.small else "1024,8192,24576")
    contexts = [int(c) for c in (args.contexts or default_contexts).split(",")]
    if args.small:
        rwkv_cfg, llama_cfg = C.RWKV_SMALL, C.LLAMA_SMALL
    else:
        rwkv_cfg, llama_cfg = (C.RWKV_TINY, C.LLAMA_TINY) if tiny else (C.RWKV_7B, C.LLAMA_7B)
    C.header("decode, batch 1: ms/token after a prefill", device, dtype)
    bandwidth = args.bandwidth_gbs or C.measure_bandwidth(device)
    source = "given" if args.bandwidth_gbs else "measured, copy"
    print(f"bandwidth {bandwidth:.0f} GB/s ({source})")

    def ours(kind):
        def make():
            model = C.build_rwkv(rwkv_cfg, device, dtype)
            if kind == "forward":
                return model, C.OursForward(model, args.chunk_size)
            return model, C.OursDecoder(model, 1, args.chunk_size, graph="graph" in kind, compile="compile" in kind)

        return make

    systems = {}
    if device.type == "cuda":
        systems["rwkv_vision Decoder + torch.compile + CUDA graph"] = (ours("compile graph"), rwkv_cfg["vocab_size"])
        systems["rwkv_vision Decoder + CUDA graph"] = (ours("graph"), rwkv_cfg["vocab_size"])
    elif args.compile_on_cpu:
        systems["rwkv_vision Decoder + torch.compile"] = (ours("compile"), rwkv_cfg["vocab_size"])
    systems["rwkv_vision Decoder eager"] = (ours("eager"), rwkv_cfg["vocab_size"])
    systems["rwkv_vision RWKV6.forward (t=1)"] = (ours("forward"), rwkv_cfg["vocab_size"])
    systems["fla 0.6.0 RWKV6ForCausalLM"] = (C.hf_system(C.build_fla, rwkv_cfg, device, dtype), rwkv_cfg["vocab_size"])
    systems["transformers Llama (SDPA, KV cache)"] = (
        C.hf_system(C.build_llama, llama_cfg, device, dtype),
        llama_cfg["vocab_size"],
    )

    def measure(name, model, runner, vocab):
        rows = []
        weights = C.param_bytes(model)
        for ctx in contexts:
            floor_ms = C.step_bytes(model, ctx) / (bandwidth * 1e9) * 1e3
            C.free(device)
            C.reset_peak(device)
            try:
                logits = runner.prefill(C.random_ids(1, ctx, vocab, device, seed=ctx))
                ms = C.decode_ms(runner, logits, device, warmup=args.warmup, repeat=args.repeat)
                rows.append(
                    [
                        name,
                        ctx,
                        C.fmt(ms),
                        C.fmt(C.peak_gib(device)),
                        C.fmt(weights / C.GIB),
                        C.fmt(floor_ms),
                        C.fmt(ms / floor_ms, 1),
                        "",
                    ]
                )
            except Exception as err:  # noqa: BLE001 - an OOM at one context must not hide the others
                rows.append([name, ctx, "error", "", C.fmt(weights / C.GIB), "", "", C.error_text(err)])
            logits = None
            runner.close()
        return rows

    rows = C.for_each_system(
        args, systems, device, measure, lambda name, status, note: [name, "all", status, "", "", "", "", note]
    )
    C.print_table(
        ["system", "context", "decode ms/token (median)", "peak GiB", "weights GiB", "floor ms", "x floor", "note"],
        rows,
    )


if __name__ == "__main__":
    main()
