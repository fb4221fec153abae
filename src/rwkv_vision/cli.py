"""Command line: ``python -m rwkv_vision.cli {chat,convert,info} ...``.

    chat     answer a question about an image with a VisualRWKV checkpoint
    convert  rewrite a released .pth checkpoint as .safetensors (no pickle needed to load it afterwards)
    info     print the sizes read from a checkpoint's tensor shapes
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from .hub import from_pretrained, load_checkpoint, resolve_checkpoint, save_pretrained

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _info(args) -> int:
    from .models.rwkv6 import config_from_official_state_dict
    from .vision.convert_clip import clip_config_from_state_dict

    sd = load_checkpoint(resolve_checkpoint(args.checkpoint))
    rwkv = config_from_official_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("rwkv.")})
    vision = clip_config_from_state_dict(sd, prefix="vit.vision_model.")
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in sd.values()})
    info = dict(rwkv=rwkv, vision=vision, proj=list(sd["proj.weight"].shape) if "proj.weight" in sd else None,
                tensors=len(sd), parameters=sum(v.numel() for v in sd.values()), dtypes=dtypes)
    print(json.dumps(info, indent=2))
    return 0


def _convert(args) -> int:
    model = from_pretrained(args.checkpoint)
    out = save_pretrained(model, args.output, dtype=_DTYPES[args.dtype] if args.dtype else None)
    print(f"wrote {out}")
    return 0


def _chat(args) -> int:
    from PIL import Image

    from .generation import TextStreamer

    model = from_pretrained(args.checkpoint, scan=args.scan, device=args.device,
                            dtype=_DTYPES[args.dtype] if args.dtype else None).eval()
    image = Image.open(args.image) if args.image else None
    tok = model.get_tokenizer()
    streamer = TextStreamer(tok) if args.stream else None
    answer = model.chat(image, args.question, layout=args.layout, max_new_tokens=args.max_new_tokens,
                        streamer=streamer)
    if streamer is not None:
        print()
    else:
        print(answer)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rwkv-vision", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("chat", help="answer a question about an image")
    p.add_argument("checkpoint", help="file, released name (e.g. visualrwkv-6.0-1b6) or owner/repo/file")
    p.add_argument("--image", help="image file (omit for text only)")
    p.add_argument("--question", required=True)
    p.add_argument("--layout", default=None, choices=["first", "last", "sandwich"], help="default: sandwich")
    p.add_argument("--scan", default=None, choices=["unidir", "bidir", "multidir", "snake", "zigzag"],
                   help="default: bidir (the released weights)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, choices=sorted(_DTYPES))
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    p.set_defaults(func=_chat)
    p = sub.add_parser("convert", help="write a checkpoint as .safetensors")
    p.add_argument("checkpoint")
    p.add_argument("output", help="a .safetensors path")
    p.add_argument("--dtype", default=None, choices=sorted(_DTYPES))
    p.set_defaults(func=_convert)
    p = sub.add_parser("info", help="sizes read from a checkpoint")
    p.add_argument("checkpoint")
    p.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
