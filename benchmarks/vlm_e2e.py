"""End to end: a 7B visual language model answering at 24,576 tokens of context, against LLaVA-1.5-7B.

Systems, one at a time in this process (random weights, bf16 on a GPU; one 336 px image then text, so
the expanded prompt has --context tokens):
  - VisualRWKV 7B (CLIP ViT-L/14-336 + RWKV-6 7B), rwkv_vision Decoder: chunked prefill (images stay
    whole: a placeholder is one id), then one CUDA-graph replay per token (eager when not on CUDA)
  - VisualRWKV 7B, the library's plain path: one-pass prefill, then RWKV6.forward with t = 1 per token
  - LLaVA-1.5-7B shape: transformers LlavaForConditionalGeneration (CLIP ViT-L/14-336 + Llama-2-7B, SDPA,
    KV cache), the prompt holding 576 image tokens

Per system: prefill s (image encoding included), decode ms/token (median of --repeat steps after
--warmup), end to end s for the prefill plus --new-tokens greedy tokens (median of --e2e-repeat runs), and
the peak memory over those runs (max_memory_allocated, weights included). Then LLaVA over ours: the
decode-speed ratio, the end-to-end ratio and the memory saving, printed beside the VisualRWKV-6 paper's
3.98x faster and 54% less memory at 24K tokens.

    python benchmarks/vlm_e2e.py                   # 7B, 24,576 tokens (GPU)
    python benchmarks/vlm_e2e.py --tiny            # smoke run on the CPU
"""

from __future__ import annotations

import argparse

import _common as C
import torch

from rwkv_vision.decoding import Decoder
from rwkv_vision.image_tokens import IMAGE_TOKEN_INDEX
from rwkv_vision.models.visualrwkv import VisualRWKV
from rwkv_vision.vision.encoders import clip_vit_l14_336, tiny_clip

PAPER_SPEEDUP, PAPER_MEMORY_SAVING = 3.98, 0.54


def build_visualrwkv(cfg, tiny, device, dtype) -> VisualRWKV:
    rwkv = C.build_rwkv(cfg, device, dtype)
    encoder = (
        tiny_clip(image_size=28, device=device, dtype=dtype) if tiny else clip_vit_l14_336(device=device, dtype=dtype)
    )
    return VisualRWKV(rwkv=rwkv, encoder=encoder).eval()


def build_llava(tiny, device, dtype):
    try:
        from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
    except Exception as err:  # noqa: BLE001
        raise C.Missing(f"transformers Llava not importable ({type(err).__name__}: {err})") from err
    if tiny:
        vision = CLIPVisionConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
            projection_dim=64,
        )
        text = LlamaConfig(**{**C.LLAMA_TINY, "vocab_size": 260})
        image_token, image_seq = 256, 4
    else:
        vision = CLIPVisionConfig(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=336,
            patch_size=14,
            projection_dim=768,
            hidden_act="quick_gelu",
        )
        text = LlamaConfig(**{**C.LLAMA_7B, "vocab_size": 32064})
        image_token, image_seq = 32000, 576
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token,
        image_seq_length=image_seq,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    config._attn_implementation = "sdpa"
    config.text_config._attn_implementation = "sdpa"
    config.vision_config._attn_implementation = "sdpa"
    with C.default_dtype_and_device(dtype, device):
        model = LlavaForConditionalGeneration(config)
    return model.to(device=device, dtype=dtype).eval(), image_token, image_seq


class OursVLM:
    def __init__(self, vlm: VisualRWKV, chunk_size: int, graph: bool):
        self.dec = Decoder(vlm, batch_size=1, use_cuda_graph=graph)
        self.chunk_size = chunk_size

    def prefill(self, ids, pixels):
        self.dec.reset()
        return self.dec.prefill(ids, pixels, chunk_size=self.chunk_size)

    def step(self, tok):
        return self.dec.step(tok)


class PlainVLM:
    def __init__(self, vlm: VisualRWKV):
        self.vlm, self.state = vlm, None

    @torch.no_grad()
    def prefill(self, ids, pixels):
        logits, self.state = self.vlm(ids, pixels, logits_to_keep=1)
        return logits[:, -1]

    @torch.no_grad()
    def step(self, tok):
        logits, self.state = self.vlm.rwkv(input_ids=tok.view(-1, 1), state=self.state)
        return logits[:, -1]


class LlavaRunner(C.HFCausal):
    @torch.no_grad()
    def prefill(self, ids, pixels):
        self.cache = None
        return super().prefill(ids, pixel_values=pixels)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(parser, default_repeat=30)
    parser.add_argument("--context", type=int, default=None, help="expanded prompt length (default 24576)")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens generated end to end (default 64)")
    parser.add_argument("--e2e-repeat", type=int, default=2, help="timed end-to-end runs (after one untimed)")
    parser.add_argument("--chunk-size", type=int, default=2048, help="prefill chunk (ids) of the Decoder")
    args = parser.parse_args(argv)
    device, dtype = C.resolve(args)
    tiny = args.tiny
    context = args.context or (40 if tiny else 24576)
    new_tokens = args.new_tokens or (4 if tiny else 64)
    cfg = C.RWKV_TINY if tiny else C.RWKV_7B
    image_size = 28 if tiny else 336
    C.header(f"VLM end to end: one image + text = {context} tokens, then {new_tokens} new tokens", device, dtype)
    pixels = torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(device, dtype)

    def ours(graph):
        def make():
            vlm = build_visualrwkv(cfg, tiny, device, dtype)
            k = vlm.image_tokens
            text = C.random_ids(1, context - k, cfg["vocab_size"], device, seed=2)
            ids = torch.cat([torch.full((1, 1), IMAGE_TOKEN_INDEX, device=device), text], dim=1)
            runner = OursVLM(vlm, args.chunk_size, graph) if graph is not None else PlainVLM(vlm)
            return vlm, runner, ids

        return make

    def llava():
        model, image_token, image_seq = build_llava(tiny, device, dtype)
        text = C.random_ids(1, context - image_seq, image_token, device, seed=2)
        ids = torch.cat([torch.full((1, image_seq), image_token, device=device), text], dim=1)
        return model, LlavaRunner(model), ids

    size = "tiny" if tiny else "7B"
    llava_name = f"LLaVA-1.5-{size} shape (transformers, SDPA)"
    systems = {}
    if device.type == "cuda":
        systems[f"VisualRWKV {size}, Decoder + CUDA graph"] = ours(True)
    systems[f"VisualRWKV {size}, Decoder eager"] = ours(False)
    systems[f"VisualRWKV {size}, plain forward"] = ours(None)
    systems[llava_name] = llava

    rows, results = [], {}
    for name, make in systems.items():
        if not C.wanted(args, name):
            continue
        model = runner = None
        try:
            model, runner, ids = make()
            weights = C.param_bytes(model) / C.GIB
            C.free(device)
            C.reset_peak(device)
            prefill_ms = C.median(
                C.time_calls(lambda: runner.prefill(ids, pixels), device, warmup=1, repeat=args.e2e_repeat)
            )
            logits = runner.prefill(ids, pixels)
            step_ms = C.decode_ms(runner, logits, device, warmup=args.warmup, repeat=args.repeat)

            def end_to_end():
                tok = runner.prefill(ids, pixels).argmax(-1)
                for _ in range(new_tokens - 1):
                    tok = runner.step(tok).argmax(-1)

            e2e_ms = C.median(C.time_calls(end_to_end, device, warmup=1, repeat=args.e2e_repeat))
            peak = C.peak_gib(device)
            results[name] = (step_ms, e2e_ms, peak)
            rows.append(
                [
                    name,
                    context,
                    C.fmt(prefill_ms / 1e3, 3),
                    C.fmt(step_ms),
                    C.fmt(e2e_ms / 1e3, 3),
                    C.fmt(peak),
                    C.fmt(weights),
                    "",
                ]
            )
        except C.Missing as err:
            rows.append([name, context, "missing", "", "", "", "", str(err)[:160]])
        except Exception as err:  # noqa: BLE001 - a peer's failure must not hide the others
            rows.append([name, context, "error", "", "", "", "", C.error_text(err)])
        finally:
            model = runner = None  # drop the references so the memory can be freed
            C.free(device)
    C.print_table(
        [
            "system",
            "context",
            "prefill s",
            "decode ms/token",
            f"end to end s ({new_tokens} tokens)",
            "peak GiB",
            "weights GiB",
            "note",
        ],
        rows,
    )

    if llava_name in results:
        l_step, l_e2e, l_peak = results[llava_name]
        ratio_rows = []
        for name, (step_ms, e2e_ms, peak) in results.items():
            if name == llava_name:
                continue
            saving = 1 - peak / l_peak if peak == peak and l_peak == l_peak else float("nan")
            ratio_rows.append(
                [
                    name,
                    C.fmt(l_step / step_ms) + "x",
                    C.fmt(l_e2e / e2e_ms) + "x",
                    C.fmt(100 * saving, 0) + ("%" if saving == saving else ""),
                    f"{PAPER_SPEEDUP}x",
                    f"{PAPER_MEMORY_SAVING:.0%}",
                ]
            )
        C.print_table(
            [
                "ours vs LLaVA",
                "decode speed-up",
                "end-to-end speed-up",
                "memory saving",
                "paper speed-up",
                "paper memory saving",
            ],
            ratio_rows,
        )
    else:
        print("\nno LLaVA numbers: ratios not computed")


if __name__ == "__main__":
    main()
