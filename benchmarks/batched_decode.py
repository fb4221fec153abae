"""Batched decode throughput of a 7B model: tokens/s at batch 1, 8, 32, 128 after a prompt of --context.

Systems, one at a time in this process (random weights, bf16 on a GPU): the rwkv_vision Decoder with a
CUDA graph and eager, fla 0.6.0 RWKV6ForCausalLM (missing if not installed), transformers Llama-2-7B
shape (SDPA, KV cache). A step decodes one token for every row; tokens/s = batch / (median step time).
The RWKV state is constant per row (about 34 MB at 7B), the Llama KV cache grows with the context
(0.5 MB per token per row at 7B): at batch 128 and context 512 that is 34 GB, so Llama may run out of
memory at larger contexts; such a row says "error" with the reason.

    python benchmarks/batched_decode.py                 # 7B, batches 1,8,32,128, context 512 (GPU)
    python benchmarks/batched_decode.py --tiny          # smoke run on the CPU
"""

from __future__ import annotations

import argparse

import _common as C


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(parser, default_repeat=20)
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,8,32,128)")
    parser.add_argument("--context", type=int, default=None, help="prompt length per row (default 512)")
    parser.add_argument("--chunk-size", type=int, default=512, help="prefill chunk of our systems")
    args = parser.parse_args(argv)
    device, dtype = C.resolve(args)
    batches = [int(b) for b in (args.batches or ("1,4" if args.tiny else "1,8,32,128")).split(",")]
    context = args.context or (8 if args.tiny else 512)
    rwkv_cfg, llama_cfg = (C.RWKV_TINY, C.LLAMA_TINY) if args.tiny else (C.RWKV_7B, C.LLAMA_7B)
    C.header(f"batched decode after {context} prompt tokens per row", device, dtype)

    def ours(graph, compile=False):
        def make():
            model = C.build_rwkv(rwkv_cfg, device, dtype)
            return model, lambda b: C.OursDecoder(model, b, args.chunk_size, graph=graph, compile=compile)

        return make

    def hf(build, cfg):
        return C.hf_system(build, cfg, device, dtype, wrap=lambda model: lambda b: C.HFCausal(model))

    systems = {}
    if device.type == "cuda":
        systems["rwkv_vision Decoder + torch.compile + CUDA graph"] = (ours(True, True), rwkv_cfg["vocab_size"])
        systems["rwkv_vision Decoder + CUDA graph"] = (ours(True), rwkv_cfg["vocab_size"])
    systems["rwkv_vision Decoder eager"] = (ours(False), rwkv_cfg["vocab_size"])
    systems["fla 0.6.0 RWKV6ForCausalLM"] = (hf(C.build_fla, rwkv_cfg), rwkv_cfg["vocab_size"])
    systems["transformers Llama (SDPA, KV cache)"] = (hf(C.build_llama, llama_cfg), llama_cfg["vocab_size"])

    def measure(name, model, runner_for, vocab):
        rows = []
        for b in batches:
            runner = logits = None
            C.free(device)
            C.reset_peak(device)
            try:
                runner = runner_for(b)
                logits = runner.prefill(C.random_ids(b, context, vocab, device, seed=b))
                ms = C.decode_ms(runner, logits, device, warmup=args.warmup, repeat=args.repeat)
                rows.append([name, b, context, C.fmt(ms), C.fmt(b / ms * 1e3, 0), C.fmt(C.peak_gib(device)), ""])
            except Exception as err:  # noqa: BLE001 - an OOM at one batch must not hide the others
                rows.append([name, b, context, "error", "", C.fmt(C.peak_gib(device)), C.error_text(err)])
            finally:
                del runner, logits
        return rows

    rows = C.for_each_system(
        args, systems, device, measure, lambda name, status, note: [name, "all", context, status, "", "", note]
    )
    C.print_table(["system", "batch", "context", "step ms (median)", "tokens/s", "peak GiB", "note"], rows)


if __name__ == "__main__":
    main()
