"""Command line: ``rwkv-vision {chat,convert,info,demo,selftest} ...`` (or ``python -m rwkv_vision.cli``).

    chat     answer a question about an image, streaming the answer to stdout (or, with a text-only RWKV-7 /
             RWKV-6 language model, answer a question)
    convert  rewrite a checkpoint (e.g. a released .pth) as a save_pretrained directory (config.json +
             model.safetensors), or as one official-names .safetensors file
    info     what a checkpoint holds (sizes, encoder, projector, scan, layout, dtype, parameter count) as JSON;
             reads no tensor data. ``"family"`` names the released VisualRWKV family whose layout it has
             (v6.0, hd, uhd, v7.00; null for none; every family is loaded on the meta device). For a language
             model: its architecture (rwkv7 = x070, rwkv6 = x060) and sizes
    demo     the shipped toy model answering questions about generated images, offline
    selftest check every compiled kernel on this machine's devices against the float64 reference

A checkpoint (``--model`` / ``SOURCE``) is anything ``VisualRWKV.from_pretrained`` takes: a save_pretrained
directory, a .pth or .safetensors file, a Hub repo id (with ``--filename`` for one file), or a short name
such as ``visualrwkv-6.0-1b6`` or a shipped model's name (``shapes-vqa-tiny``). A local language-model
checkpoint (an official RWKV-7 "x070" or RWKV-6 "x060" ``.pth``/``.safetensors`` with bare ``emb.``/``blocks.``
keys, or a directory written by ``RWKV7.save_pretrained``) is recognised by its keys and handled as a text model. Errors are printed as one line on stderr with exit status 1 (``--debug``
anywhere on the line shows the traceback); a closed stdout (``| head``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from . import demo
from .checkpoint.config_json import parse_dtype

_DTYPE_CHOICES = ("float32", "bfloat16", "float16")
DEFAULT_MODEL = "visualrwkv-6.0-1b6"


def _scan_choices() -> list[str]:
    """The scan policies registered now (``scan.SCANS``) that need no arguments."""
    from .scan import scan_policy_names

    return scan_policy_names()


def _layout_choices() -> list[str]:
    """The prompt layouts registered now (``prompt.LAYOUTS``), names then aliases."""
    from .prompt import LAYOUTS

    return LAYOUTS.names(aliases=True)


def _load(args, **kwargs):
    from .models.visualrwkv import VisualRWKV

    return VisualRWKV.from_pretrained(
        args.model if hasattr(args, "model") else args.source,
        args.filename,
        args.revision,
        dtype=parse_dtype(getattr(args, "dtype", None)),
        device=getattr(args, "device", None),
        **kwargs,
    )


def _language_model_path(source, filename=None):
    """The local path of a text-only language-model checkpoint (RWKV7/RWKV6), or None for anything else."""
    from pathlib import Path

    from .checkpoint.lm import is_language_model_checkpoint

    if not isinstance(source, str) or not source:
        return None
    path = Path(source) / filename if filename else Path(source)
    return path if path.exists() and is_language_model_checkpoint(path) else None


def _chat_text(args, path) -> int:
    """A text-only chat turn with a language model: the World chat format, stopping at a blank line."""
    if args.image is not None:
        raise ValueError(f"IMAGE: {path} is a text-only language model; ask without an image")
    from .checkpoint.lm import load_language_model
    from .generation import CHAT_STOP_TOKENS, TextStreamer

    model = load_language_model(path, dtype=parse_dtype(args.dtype), device=args.device)
    if model.tokenizer is None:
        raise ValueError(f"--model: {path} has a {model.vocab_size}-token vocabulary, not the World tokenizer's 65536")
    prompt = f"User: {args.question.strip()}\n\nAssistant:"
    ids = model.tokenizer.encode(prompt)
    stop = set(CHAT_STOP_TOKENS)
    shown = []

    def on_text(row: int, text: str) -> None:
        shown.append(text)
        if not args.no_stream:
            sys.stdout.write(text)
            sys.stdout.flush()

    streamer = TextStreamer(model.tokenizer, on_text=on_text)
    out = model.generate(ids, max_new_tokens=args.max_new_tokens, stop_tokens=tuple(stop), streamer=streamer)
    if args.no_stream:
        tokens = [t for t in out.tokens[0] if t not in stop]
        print(model.tokenizer.decode(tokens).strip())
    else:
        sys.stdout.write("\n")
        sys.stdout.flush()
    return 0


def _chat(args) -> int:
    image_path, question = args.image, args.question
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    lm_path = _language_model_path(args.model, args.filename)
    if lm_path is not None:
        return _chat_text(args, lm_path)
    image = None
    if image_path is not None:
        from .errors import ImageError
        from .vision.preprocess import open_image

        try:
            image = open_image(image_path)  # the size is checked before decoding
        except ImageError as e:
            raise ImageError(f"IMAGE: cannot open {image_path!r} as an image ({e})") from None
    model = _load(args, **({"scan": args.scan} if args.scan else {}))
    from .chat import chat

    processor = model.processor if args.layout is None else model.processor.replace(layout=args.layout)
    if args.no_stream:
        print(chat(model, processor, image, question, max_new_tokens=args.max_new_tokens))
        return 0
    from .generation import TextStreamer

    seen, shown = [""], [""]

    def on_text(row: int, text: str) -> None:
        # Print the answer as chat() returns it: up to the first blank line (the stop token "\n\n" is
        # generated but not shown), without the space that follows "Assistant:".
        seen[0] += text
        answer = seen[0].split("\n\n")[0].lstrip()
        if len(answer) > len(shown[0]) and answer.startswith(shown[0]):
            sys.stdout.write(answer[len(shown[0]) :])
            sys.stdout.flush()
            shown[0] = answer

    chat(
        model,
        processor,
        image,
        question,
        max_new_tokens=args.max_new_tokens,
        streamer=TextStreamer(processor.tokenizer, on_text=on_text),
    )
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0


def _convert(args) -> int:
    lm_path = _language_model_path(args.source, args.filename)
    if lm_path is not None:
        if args.scan or args.layout:
            raise ValueError(f"--scan/--layout: {lm_path} is a text-only language model (no images to scan)")
        from .checkpoint.lm import load_language_model, save_language_model

        model = load_language_model(lm_path)
        print(f"wrote {save_language_model(model, args.output, dtype=parse_dtype(args.dtype))}")
        return 0
    kwargs = {k: v for k, v in (("scan", args.scan), ("layout", args.layout)) if v}
    model = _load(args, **kwargs)
    from .checkpoint.pretrained import checkpoint_metadata

    # the source's metadata (how it was trained, ...) goes with it; the save is atomic
    metadata = checkpoint_metadata(args.source, args.filename, revision=args.revision)
    out = model.save_pretrained(args.output, metadata=metadata)
    print(f"wrote {out}")
    return 0


def _info(args) -> int:
    lm_path = _language_model_path(args.source, args.filename)
    if lm_path is not None:
        from .checkpoint.lm import describe_language_model

        print(json.dumps(describe_language_model(lm_path), indent=2))
        return 0
    from .checkpoint.pretrained import describe_checkpoint

    print(json.dumps(describe_checkpoint(_resolve_name(args.source), args.filename, args.revision), indent=2))
    return 0


def _selftest(args) -> int:
    """Check the compiled kernels on this machine's devices against the float64 reference (a table;
    exit status 1 when any kernel exceeds its tolerance)."""
    from .selftest import run_selftest

    report = run_selftest(devices=args.devices, dtypes=args.dtypes, head_sizes=args.head_sizes)
    print(report.table())
    return 0 if report.passed else 1


def _add_source(p: argparse.ArgumentParser) -> None:
    p.add_argument("--filename", default=None, help="the file inside a Hub repo (or a local directory)")
    p.add_argument("--revision", default=None, help="Hub branch, tag or commit")


def _version() -> str:
    """The installed package's version (``rwkv-vision --version``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rwkv_vision")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _resolve_name(source):
    """A model shipped in the package by name (``shapes-vqa-tiny``) -> its directory; anything else as is."""
    from .pretrained.paths import resolve

    return resolve(source)


def build_parser() -> argparse.ArgumentParser:
    """The ``rwkv-vision`` parser; ``--scan`` / ``--layout`` offer what is registered when this is called."""
    scans, layouts = _scan_choices(), _layout_choices()
    parser = argparse.ArgumentParser(prog="rwkv-vision", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("chat", help="answer a question about an image (streamed to stdout)")
    p.add_argument("image", nargs="?", default=None, metavar="IMAGE", help="an image file (omit for text only)")
    p.add_argument("question", metavar="QUESTION")
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"directory, file, Hub repo id, released name or shipped name (shapes-vqa-tiny, offline) "
        f"(default {DEFAULT_MODEL}, downloads 3.8 GB)",
    )
    _add_source(p)
    p.add_argument("--layout", default=None, choices=layouts, help="where the image goes (default: the model's)")
    p.add_argument("--scan", default=None, choices=scans, help="patch order per layer (default: the model's)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--dtype", default=None, choices=_DTYPE_CHOICES, help="default: the checkpoint's")
    p.add_argument("--device", default=None, help="e.g. cuda, cpu (default cpu)")
    p.add_argument("--no-stream", action="store_true", help="print the answer once it is complete")
    p.set_defaults(func=_chat)

    p = sub.add_parser("convert", help="write a checkpoint as a save_pretrained directory")
    p.add_argument("source", help="directory, file, Hub repo id or released name")
    p.add_argument("output", help="a directory (config.json + model.safetensors), or a path ending in .safetensors")
    _add_source(p)
    p.add_argument("--dtype", default=None, choices=_DTYPE_CHOICES, help="cast the weights (default: keep)")
    p.add_argument("--scan", default=None, choices=scans, help="scan policy to record (default: the source's)")
    p.add_argument("--layout", default=None, choices=layouts, help="layout to record (default: the source's)")
    p.set_defaults(func=_convert)

    p = sub.add_parser("info", help="describe a checkpoint as JSON")
    p.add_argument("source", help="directory, file, Hub repo id or released name")
    _add_source(p)
    p.set_defaults(func=_info)

    p = sub.add_parser("demo", help="the shipped toy model answering questions about images, offline")
    demo.add_arguments(p)
    p.set_defaults(func=demo.demo)

    p = sub.add_parser("selftest", help="check the compiled kernels on this machine against the float64 reference")
    p.add_argument(
        "--device", dest="devices", action="append", default=None, help="cpu, cuda:0, ... (repeatable; default: all)"
    )
    p.add_argument(
        "--dtype",
        dest="dtypes",
        action="append",
        default=None,
        choices=("float32", "bfloat16", "float16", "float64"),
        help="repeatable; default: every supported one",
    )
    p.add_argument(
        "--head-size",
        dest="head_sizes",
        action="append",
        type=int,
        default=None,
        help="repeatable; default: 32, 64, 128 (and 40 on the CPU)",
    )
    p.set_defaults(func=_selftest)
    return parser


def _one_line(e: BaseException, limit: int = 2000) -> str:
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    """Run the command line. Every failure prints one line ``rwkv-vision CMD: error: ...`` on stderr and
    returns 1 (2 for an unexpected internal error); ``--debug`` (anywhere on the line) or
    ``RWKV_VISION_DEBUG=1`` shows the traceback instead. A closed stdout (``| head``) ends quietly."""
    import os

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("RWKV_VISION_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:
        # the reader went away (rwkv-vision info X | head -c 1): stop writing, without a traceback, and
        # keep Python from complaining again when it flushes stdout at exit
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"rwkv-vision {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line for every failure, the traceback only with --debug
        if debug:
            raise
        from .errors import ExtensionError

        expected = isinstance(e, (ValueError, TypeError, OSError, ExtensionError, MemoryError)) or (
            type(e).__name__ == "OutOfMemoryError"
        )
        if expected:
            print(f"rwkv-vision {args.command}: error: {_one_line(e)}", file=sys.stderr)
            return 1
        print(
            f"rwkv-vision {args.command}: error: internal error ({type(e).__name__}: {_one_line(e, 500)}); "
            "rerun with --debug for the traceback and please report it",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
