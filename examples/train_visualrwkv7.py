"""Train a small RWKV-7 VisualRWKV with a two-tower vision encoder on ShapesVQA, on one CPU or GPU.

    python examples/train_visualrwkv7.py --out runs/v7-toy                  # a few hundred steps
    python examples/train_visualrwkv7.py --steps 5 --out /tmp/v7            # a smoke run

The model has the parts of VisualRWKV v7.00 at toy size, built from the library's public pieces:

* vision: a :class:`~rwkv_vision.vision.MultiEncoder` of TWO timm towers with the released architectures
  (a DINOv2-with-registers ViT and a SigLIP ViT, both patch 14, tiny, random init), each reading its own
  preprocessed copy of the image (:class:`~rwkv_vision.vision.multi_preprocess.MultiImagePreprocessor`), their
  patch features (second-to-last block, no final norm) concatenated per token;
* projector: v7.00's :class:`~rwkv_vision.vision.projector.ContextGatingProjector`,
  ``ln_v(o_proj(x * sigmoid(gate(x))))``;
* language model: an :class:`~rwkv_vision.RWKV7` of a few layers;
* prompt: v7.00's layout (``"visualrwkv7"``: images first, each image a run of k placeholder ids) and, as the
  official forward, every fresh sequence left-padded with the embedding of "\\n\\n" to a multiple of 16
  (``--no-pad`` turns it off).

One example is ``prompt ids + answer ids + "\\n\\n"``; the labels are -100 except where the next token is an answer
token (the stop token is learnt too). Rows are right-padded with id 0 and label -100 (a recurrent model reads
left to right, so padding after the answer changes no scored logit; the left padding to a multiple of 16 is
the same for every row of a batch, since the rows are padded to one length first).

The towers are random and stay frozen by default, as VisualRWKV keeps its towers frozen (random patch
features still tell the cells of a ShapesVQA image apart); ``--train-towers`` trains them too. At the end the
model is saved with ``save_pretrained`` (config.json: architecture rwkv7, the two towers, the projector, the
layout, the per-tower preprocessing, the padding), reloaded, and its answers checked to be unchanged.

The functions here (``V7ToyConfig``, ``build_model``, ``collate``, ``train``) are reused by the test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rwkv_vision import RWKV7, VisualRWKV
from rwkv_vision.data import ShapesVQA, WordTokenizer, exact_match
from rwkv_vision.vision import MultiEncoder, timm_tower
from rwkv_vision.vision.projector import ContextGatingProjector

IGNORE = -100

# The timm architectures of the released towers (tiny sizes are passed as keyword arguments).
DINO = "vit_large_patch14_reg4_dinov2"
SIGLIP = "vit_so400m_patch14_siglip_384"


@dataclasses.dataclass
class V7ToyConfig:
    """Sizes: images of ``grid * 14`` pixels so each 14-pixel patch is one ShapesVQA cell."""

    grid: int = 3
    dino_width: int = 32
    siglip_width: int = 48
    tower_depth: int = 2
    n_layer: int = 2
    n_embd: int = 64
    head_size: int = 16
    pad: bool = True

    @property
    def image_size(self) -> int:
        return 14 * self.grid

    def dataset(self, split: str, *, size: int, seed: int) -> ShapesVQA:
        return ShapesVQA(split, size=size, seed=seed, image_size=self.image_size, grid=self.grid)


def build_model(config: V7ToyConfig, *, train_towers: bool = False, device=None) -> VisualRWKV:
    """A freshly initialised two-tower RWKV-7 VisualRWKV (draws from torch's global RNG: seed it first)."""
    tokenizer = WordTokenizer()
    kw = dict(img_size=config.image_size, depth=config.tower_depth, num_heads=2, layer=-2, device=device)
    encoder = MultiEncoder(
        {
            "dino": timm_tower(DINO, embed_dim=config.dino_width, **kw),
            "siglip": timm_tower(SIGLIP, embed_dim=config.siglip_width, **kw),
        },
        frozen=not train_towers,
    )
    rwkv = RWKV7(
        n_layer=config.n_layer,
        n_embd=config.n_embd,
        head_size=config.head_size,
        vocab_size=tokenizer.vocab_size,
        device=device,
    )
    proj = ContextGatingProjector(encoder.width, rwkv.n_embd, device=device)
    return VisualRWKV(
        rwkv=rwkv,
        encoder=encoder,
        proj=proj,
        scan="unidir",
        layout="visualrwkv7",
        tokenizer=tokenizer,
        freeze_encoder=not train_towers,
        pad_to_multiple=16 if config.pad else None,
        pad_token_id=tokenizer.stop_token_ids[0],  # this vocabulary's "\n\n" (261 in the World vocabulary)
    )


def collate(model: VisualRWKV, samples: Sequence[Any], *, device=None) -> dict[str, Any]:
    """ShapesVQA samples -> ``input_ids`` [b, t] (runs of placeholder ids), ``labels`` [b, t] and
    ``pixel_values`` (a dict tower -> [b, 3, H, W])."""
    processor = model.processor
    tok = processor.tokenizer
    stop = tok.stop_token_ids[0]
    rows, labels = [], []
    for sample in samples:
        prompt = processor.layout.tokenize([("user", sample.question)], tok, num_images=1).input_ids
        answer = tok.encode(" " + sample.answer) + [stop]
        ids = prompt + answer[:-1]
        rows.append(ids)
        # logits[i] predicts ids[i + 1]: the labels are the answer at the positions that precede each answer id.
        labels.append([IGNORE] * (len(prompt) - 1) + answer)
    t = max(map(len, rows))
    input_ids = torch.tensor([r + [0] * (t - len(r)) for r in rows], device=device)
    targets = torch.tensor([lab + [IGNORE] * (t - len(lab)) for lab in labels], device=device)
    pixels = processor.image_processor([s.image for s in samples], device=device)
    return {"input_ids": input_ids, "labels": targets, "pixel_values": pixels}


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)


@torch.no_grad()
def answers(model: VisualRWKV, samples: Sequence[Any], *, max_new_tokens: int = 4) -> list[str]:
    return [model.chat(s.image, s.question, max_new_tokens=max_new_tokens) for s in samples]


def train(
    config: V7ToyConfig,
    *,
    steps: int,
    batch_size: int = 8,
    lr: float = 3e-3,
    seed: int = 0,
    train_towers: bool = False,
    log_every: int = 10,
    device=None,
    log=print,
) -> tuple[VisualRWKV, list[float]]:
    torch.manual_seed(seed)
    model = build_model(config, train_towers=train_towers, device=device)
    data = config.dataset("train", size=steps * batch_size, seed=seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    losses = []
    model.train()
    start = time.time()
    for step in range(steps):
        batch = collate(model, [data[step * batch_size + i] for i in range(batch_size)], device=device)
        logits = model(batch["input_ids"], batch["pixel_values"]).logits
        loss = answer_loss(logits, batch["labels"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if log_every and (step % log_every == 0 or step == steps - 1):
            log(f"step {step:4d}  loss {losses[-1]:.4f}  ({time.time() - start:.1f} s)")
    return model.eval(), losses


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="save_pretrained directory to write")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", type=int, default=3)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--n-embd", type=int, default=64)
    p.add_argument("--no-pad", action="store_true", help="no v7.00 left padding to a multiple of 16")
    p.add_argument("--train-towers", action="store_true", help="train the vision towers too")
    p.add_argument("--eval", type=int, default=32, help="held-out questions answered at the end")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    config = V7ToyConfig(grid=args.grid, n_layer=args.n_layer, n_embd=args.n_embd, pad=not args.no_pad)
    model, losses = train(
        config,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        train_towers=args.train_towers,
        device=args.device,
    )
    held_out = config.dataset("test", size=args.eval, seed=args.seed + 1)
    samples = [held_out[i] for i in range(args.eval)]
    predicted = answers(model, samples)
    accuracy = sum(exact_match(a, s.answer) for a, s in zip(predicted, samples)) / max(len(samples), 1)
    model.save_pretrained(args.out, metadata={"example": "train_visualrwkv7", "steps": args.steps})
    reloaded = VisualRWKV.from_pretrained(args.out)
    if answers(reloaded, samples) != predicted:
        raise SystemExit("the reloaded model answers differently")
    print(json.dumps({"first_loss": losses[0], "last_loss": losses[-1], "accuracy": accuracy, "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
