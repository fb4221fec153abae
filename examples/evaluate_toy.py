"""Held-out exact-match accuracy of a toy VisualRWKV on ShapesVQA, overall and per question type.

    python examples/evaluate_toy.py                                  # the shipped shapes-vqa-tiny
    python examples/evaluate_toy.py --model runs/toy --size 2000     # a save_pretrained directory

Answers are produced the way a user gets them: the prompt (image included) is prefilled once and the answer
is decoded greedily from the cached state until the stop token; a prediction counts when it equals the
true answer after ``rwkv_vision.data.exact_match``'s normalisation (case, punctuation, spaces). Samples
come from the ``test`` split, whose scenes never occur in training. The dataset options (image size, grid,
objects, question types, instruction) are read from the training metadata saved with the model, so the
evaluation asks the same kind of questions the model was trained on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_toy import ToyConfig, evaluate, format_accuracy  # noqa: E402

from rwkv_vision import VisualRWKV  # noqa: E402
from rwkv_vision.pretrained import TOY_MODEL, load_toy_model, path  # noqa: E402


def toy_config_of(model_dir: Path | None, model: VisualRWKV) -> ToyConfig:
    """The dataset options the model was trained with (from config.json's metadata), or defaults that match
    the encoder (one patch per grid cell)."""
    meta = {}
    if model_dir is not None and (model_dir / "config.json").is_file():
        meta = json.loads((model_dir / "config.json").read_text()).get("metadata", {}) or {}
    data = meta.get("toy_config")
    if data:
        return ToyConfig(**data)
    return ToyConfig(
        image_size=model.encoder.image_size[0],
        grid=model.encoder.grid[0],
        patch_size=model.encoder.patch_size[0],
        vit_width=model.encoder.width,
    )


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--model", default=TOY_MODEL, help=f"a save_pretrained directory or a shipped name ({TOY_MODEL})")
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument("--size", type=int, default=1000, help="number of samples (indices 0 .. size-1)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed of the held-out stream")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--scan", default=None, help="override the model's scan policy (unidir, bidir, multidir, ...)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=None, help="also write the result (and every prediction) here")
    p.add_argument("--show-errors", type=int, default=10, help="print this many wrong answers")
    args = p.parse_args(argv)
    if args.size < 1 or args.batch_size < 1:
        p.error("--size and --batch-size must be >= 1")

    if Path(args.model).is_dir():
        model_dir = Path(args.model)
        model = VisualRWKV.from_pretrained(model_dir, device=args.device).eval()
    else:
        model_dir = path(args.model)
        model = load_toy_model(args.model, device=args.device)
    if args.scan:
        model.scan = args.scan
    config = toy_config_of(model_dir, model)
    dataset = config.dataset(args.split, size=args.size, seed=args.seed)
    samples = [dataset[i] for i in range(len(dataset))]
    start = time.perf_counter()
    result = evaluate(
        model, samples, batch_size=args.batch_size, instruction=config.instruction, device=torch.device(args.device)
    )
    seconds = time.perf_counter() - start
    print(
        f"{model_dir}: {args.split} split, seed {args.seed}, samples 0..{args.size - 1} "
        f"(scan {model.scan!r}, layout {type(model.layout).__name__}); {seconds:.1f}s"
    )
    print(format_accuracy(result))
    wrong = [(i, pred, ans, t) for i, pred, ans, t in result["predictions"] if pred.strip().lower() != ans]
    for i, pred, ans, t in wrong[: args.show_errors]:
        print(f"  wrong #{i} [{t}] {samples[i].question!r}: predicted {pred!r}, true {ans!r}")
    if args.json is not None:
        args.json.write_text(json.dumps(dict(result, model=str(model_dir), split=args.split, seed=args.seed), indent=1))
    return result


if __name__ == "__main__":
    main()
