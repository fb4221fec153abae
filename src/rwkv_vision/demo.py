"""The offline demo: the shipped toy VisualRWKV answers questions about images, streaming its answers.

    rwkv-vision demo                                       # a few held-out ShapesVQA images
    rwkv-vision demo --image shapes.png --question "How many circles are there?"
    python -m rwkv_vision.demo --num-images 5 --output-dir demo_output

For each image it prints the question, the answer token by token as generation produces it (through the
``streamer`` callback of :func:`rwkv_vision.chat.chat`, run with the model's processor), the true answer when it is known, the time to the first
token (image preprocessing + encoder + the whole prompt prefill) and the time per further token (one step of
the recurrence from the cached state), and it writes the image as a PNG, upscaled with nearest-neighbour
so each pixel stays a crisp square, into the output folder.

The shipped model (``rwkv_vision.pretrained``, see ``docs/toy_model.md``) knows only the ShapesVQA words:
questions such as "What color is the shape in the top left?", "What shape is in the center?", "How many red
shapes are there?", "How many circles are there?", "How many shapes are there?", "What is left of the red
square?", "Is there a yellow circle?". Any PIL-readable image is resized to the model's input size; the
model has only ever seen coloured shapes on a dark 3 x 3 grid.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, TextIO

__all__ = ["add_arguments", "build_parser", "demo", "main", "run_demo", "answer_streamed"]

DEFAULT_OUTPUT_DIR = "rwkv_vision_demo"
PNG_SCALE = 8  # 48 px -> 384 px


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the demo's options to ``parser`` (used by ``rwkv-vision demo`` and ``python -m rwkv_vision.demo``)."""
    parser.add_argument("--image", default=None, help="your own image (any format PIL reads); needs --question")
    parser.add_argument(
        "--question", default=None, help="your question (with --image: about that image; alone: about each demo image)"
    )
    parser.add_argument("--model", default=None, help="a saved model directory (default: the shipped shapes-vqa-tiny)")
    parser.add_argument("--num-images", type=int, default=4, help="held-out ShapesVQA images to show")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out (test split) image stream")
    parser.add_argument("--start", type=int, default=0, help="index of the first test-split sample shown")
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help="where the PNG files are written")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (1: this model is too small to gain from more, and on busy cores "
        "extra threads mostly wait for each other)",
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rwkv-vision demo",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    return add_arguments(parser)


class _TimedStreamer:
    """A ``streamer(row, token)`` for row 0: prints each answer token as it arrives (not the stop token)
    and records when each one came."""

    def __init__(self, tokenizer, stop_tokens, out: TextIO):
        self.tokenizer, self.stop, self.out = tokenizer, set(stop_tokens), out
        self.times: list[float] = []
        self.tokens: list[int] = []

    def __call__(self, row: int, token: int) -> None:
        self.times.append(time.perf_counter())
        self.tokens.append(token)
        if token not in self.stop:
            text = self.tokenizer.decode([token])
            # The first answer token carries the space after "Assistant:"; the answer is shown without it.
            self.out.write(text.lstrip() if len(self.tokens) == 1 else text)
            self.out.flush()


def answer_streamed(
    model, image, question: str, *, max_new_tokens: int = 8, out: TextIO | None = None, processor=None
) -> dict[str, Any]:
    """Answer ``question`` about ``image`` (PIL) with :func:`~rwkv_vision.chat.chat` and ``processor``
    (default ``model.processor``), printing the answer as it streams.

    Returns ``{"answer", "tokens", "time_to_first_token", "time_per_token"}`` (seconds; ``time_per_token``
    is the mean gap between consecutive tokens, None with a single token).
    """
    # Looked up at call time, not import time, so a later redirection of sys.stdout is honoured.
    from .chat import chat

    out = sys.stdout if out is None else out
    processor = model.processor if processor is None else processor
    streamer = _TimedStreamer(processor.tokenizer, processor.stop_token_ids, out)
    start = time.perf_counter()
    answer = chat(model, processor, image, question, max_new_tokens=max_new_tokens, streamer=streamer)
    times = streamer.times
    return dict(
        answer=answer,
        tokens=streamer.tokens,
        time_to_first_token=(times[0] - start) if times else None,
        time_per_token=((times[-1] - times[0]) / (len(times) - 1)) if len(times) > 1 else None,
    )


EXAMPLE_QUESTIONS = (
    "What color is the shape in the top left?",
    "What shape is in the center?",
    "How many red shapes are there?",
    "How many circles are there?",
    "What is left of the red square?",
    "Is there a yellow circle?",
)


def _check_question(processor, question: str) -> None:
    """Tokenise the prompt once before anything is printed, so an unknown word is reported up front."""
    try:
        processor.layout.tokenize(question, processor.tokenizer, num_images=1)
    except ValueError as e:
        raise ValueError(
            f"question: {e}\nthe model knows only the ShapesVQA words (case-sensitive), e.g. "
            + "; ".join(repr(q) for q in EXAMPLE_QUESTIONS)
        ) from None


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{1000 * seconds:.1f} ms"


def _model_view(processor, image):
    """The image as the model sees it (after the preprocessor's resize and crop), as a PIL image."""
    import numpy as np
    from PIL import Image

    pre = processor.image_processor
    x = pre(image)[0].permute(1, 2, 0).numpy()  # [H, W, 3], normalised
    x = x * np.asarray(pre.std, np.float32) + np.asarray(pre.mean, np.float32)
    return Image.fromarray(np.clip(np.rint(x * 255), 0, 255).astype(np.uint8), mode="RGB")


def _save_png(image, path: Path, scale: int = PNG_SCALE) -> None:
    from PIL import Image

    image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST).save(path)


def run_demo(
    *,
    model=None,
    image: str | None = None,
    question: str | None = None,
    num_images: int = 4,
    seed: int = 0,
    start: int = 0,
    output_dir: str | Path = DEFAULT_OUTPUT_DIR,
    max_new_tokens: int = 8,
    device: str = "cpu",
    out: TextIO | None = None,
) -> list[dict[str, Any]]:
    """Run the demo and return one record per answered question (question, answer, truth, timings, png).

    ``model``: a ``VisualRWKV`` or a saved model directory; None loads the shipped toy model.
    """
    import torch

    from .data import ShapesVQA, exact_match
    from .models.visualrwkv import VisualRWKV
    from .pretrained import load_toy_model

    if image is not None and not question:
        raise ValueError("image: asking about your own image needs --question too")
    if not isinstance(num_images, int) or num_images < 0:
        raise ValueError(f"num_images must be an int >= 0, got {num_images!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if model is None:
        model = load_toy_model(device=device)
    elif not isinstance(model, torch.nn.Module):
        model = VisualRWKV.from_pretrained(model, device=device)
    model.eval()
    processor = model.processor
    if question:
        _check_question(processor, question)
    out = sys.stdout if out is None else out
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    print(f"writing images to {output_dir.resolve()}", file=out)

    records = []

    def ask(pil_image, q: str, truth: str | None, png: Path, view) -> None:
        _save_png(view, png)
        print(f"\nimage:    {png}", file=out)
        print(f"question: {q}", file=out)
        out.write("answer:   ")
        out.flush()
        r = answer_streamed(model, pil_image, q, max_new_tokens=max_new_tokens, out=out, processor=processor)
        out.write("\n")
        if truth is not None:
            mark = "correct" if exact_match(r["answer"], truth) else "WRONG"
            print(f"truth:    {truth}  ({mark})", file=out)
        print(
            f"time to first token {_ms(r['time_to_first_token'])}, "
            f"{_ms(r['time_per_token'])} per further token ({len(r['tokens'])} tokens incl. stop)",
            file=out,
        )
        records.append(dict(r, question=q, truth=truth, png=str(png)))

    with torch.inference_mode():
        if image is not None:
            from .errors import ImageError
            from .vision.preprocess import open_image

            try:
                pil = open_image(image)  # the size is checked before decoding
            except ImageError as e:
                raise ImageError(f"image: cannot read {image!r} as an image ({e})") from None
            ask(pil, question, None, output_dir / "your_image_model_view.png", _model_view(processor, pil))
            return records
        size, grid = model.encoder.image_size[0], model.encoder.grid[0]
        dataset = ShapesVQA("test", size=start + num_images, seed=seed, image_size=size, grid=grid)
        for i in range(start, start + num_images):
            s = dataset[i]
            q, truth = (question, None) if question else (s.question, s.answer)
            ask(s.image, q, truth, output_dir / f"test_{seed}_{i:04d}.png", s.image)
    return records


def demo(args: argparse.Namespace) -> int:
    """The ``rwkv-vision demo`` command (``args`` from a parser given :func:`add_arguments`)."""
    if args.threads < 1:
        print(f"rwkv-vision demo: error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    try:
        run_demo(
            model=args.model,
            image=args.image,
            question=args.question,
            num_images=args.num_images,
            seed=args.seed,
            start=args.start,
            output_dir=args.output_dir,
            max_new_tokens=args.max_new_tokens,
            device=args.device,
        )
    except ValueError as e:  # bad input: an unreadable image, a word the model does not know, ...
        print(f"\nrwkv-vision demo: error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    return demo(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
