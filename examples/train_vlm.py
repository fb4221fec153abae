"""Train a VisualRWKV assembled from the blocks with ``forward(..., labels=...)``: one process, DDP or FSDP2.

    python examples/train_vlm.py --steps 200                                       # one CPU or one GPU
    torchrun --standalone --nproc_per_node 8 examples/train_vlm.py --parallel ddp    # DDP, one process per GPU
    torchrun --standalone --nproc_per_node 8 examples/train_vlm.py --parallel fsdp2  # FSDP2 (fully_shard)
    python examples/train_vlm.py --init shapes-vqa-tiny --encoder trained           # fine-tune the shipped model

The model: a timm ViT (from scratch, as the data is synthetic), a projector, an RWKV-6 and a scan policy,
joined by ``VisualRWKV`` (or a shipped model with ``--init``). The data: ShapesVQA questions about images of
coloured shapes, with the ``WordTokenizer``. One example is the prompt (its image placeholder included)
followed by the answer and the stop token; its labels are the same ids with -100 on the prompt, so only
the answer is learnt. ``VisualRWKV.forward`` expands each placeholder's label to the image's k tokens of
-100 and shifts the labels itself, so the script never counts image tokens. Rows are right-padded with an
``attention_mask``: padding after a row cannot change its logits, and padded positions are not scored.

``VisualRWKV`` freezes its vision encoder by default (``freeze_encoder=True``, as VisualRWKV keeps CLIP
frozen). Here the ViT of a model built from scratch starts from random weights, so it is trained; with
``--init`` the loaded encoder stays frozen unless ``--encoder trained``. See docs/training.md.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist

from rwkv_vision import BiDir, LinearProjector, VisualRWKV, create_model
from rwkv_vision.data import ShapesVQA, WordTokenizer
from rwkv_vision.vision import ImagePreprocessor, timm_vit

IGNORE_INDEX = -100


def build_model(tokenizer: WordTokenizer, *, image_size: int = 48, grid: int = 3, freeze_encoder: bool = False):
    """A small VLM from the blocks: a CLIP-shaped ViT (grid x grid patches + CLS) -> linear projector ->
    4-layer RWKV-6. Its ViT starts from random weights, so it is trained (``freeze_encoder=False``)."""
    encoder = timm_vit(
        "vit_base_patch16_clip_224",
        img_size=image_size,
        patch_size=image_size // grid,
        embed_dim=128,
        depth=2,
        num_heads=2,
        pre_norm=True,
        final_norm=False,
        act_layer="quick_gelu",
        layer=-1,
        cls="last",
    )
    rwkv = create_model("rwkv6-test-tiny", n_layer=4, n_embd=128, vocab_size=tokenizer.vocab_size)
    return VisualRWKV(
        rwkv=rwkv,
        encoder=encoder,
        proj=LinearProjector(encoder.width, rwkv.n_embd),
        scan=BiDir(),
        tokenizer=tokenizer,
        preprocessor=ImagePreprocessor(image_size),
        freeze_encoder=freeze_encoder,
    )


def collate(model: VisualRWKV, samples) -> dict[str, torch.Tensor]:
    """ShapesVQA samples -> input_ids [b, t] (one placeholder each), pixel_values, labels [b, t] aligned with
    input_ids (-100 on the prompt and the padding) and attention_mask [b, t] (right padding)."""
    tok = model.get_tokenizer()
    rows, labels = [], []
    for sample in samples:
        prompt = model.layout.tokenize(sample.question, tok, num_images=1).input_ids
        answer = tok.encode(" " + sample.answer) + [tok.stop_token_ids[0]]
        rows.append(prompt + answer)
        labels.append([IGNORE_INDEX] * len(prompt) + answer)
    width = max(len(r) for r in rows)
    pad = lambda r, v: r + [v] * (width - len(r))  # noqa: E731
    return {
        "input_ids": torch.tensor([pad(r, 0) for r in rows]),
        "labels": torch.tensor([pad(r, IGNORE_INDEX) for r in labels]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
        "pixel_values": model.get_preprocessor()([s.image for s in samples]),
    }


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16, help="per process")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--parallel", choices=("none", "ddp", "fsdp2"), default="none")
    parser.add_argument("--init", default=None, help="start from a shipped or saved model (e.g. shapes-vqa-tiny)")
    parser.add_argument(
        "--encoder",
        choices=("frozen", "trained"),
        default=None,
        help="freeze the vision encoder or train it (default: trained from scratch, frozen with --init)",
    )
    parser.add_argument("--out", default=None, help="save_pretrained directory for the result (rank 0)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if args.parallel != "none" and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    torch.manual_seed(args.seed)  # the same initial weights on every rank

    frozen = (args.encoder or ("frozen" if args.init else "trained")) == "frozen"
    if args.init:
        model = VisualRWKV.from_pretrained(args.init, freeze_encoder=frozen)  # from_pretrained gives eval mode
    else:
        model = build_model(WordTokenizer(), freeze_encoder=frozen)
    model.to(device).train()
    size = model.encoder.image_size[0]
    data = ShapesVQA("train", size=args.steps * args.batch_size * world, seed=args.seed, image_size=size)

    net = model
    if args.parallel == "ddp":
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.index else None)
    elif args.parallel == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for block in model.rwkv.blocks:  # one all-gather per block, then the rest (embeddings, head, ...)
            fully_shard(block)
        fully_shard(model)
    trainable = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)

    start, loss = time.time(), torch.tensor(float("nan"))
    for step in range(args.steps):
        first = (step * world + rank) * args.batch_size  # each rank reads its own stride
        batch = collate(model, [data[i] for i in range(first, first + args.batch_size)])
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = net(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if rank == 0 and (step % 20 == 0 or step == args.steps - 1):
            print(f"step {step:4d}  loss {loss.item():.4f}  {time.time() - start:.1f}s", flush=True)
    final = float(loss.detach().float().cpu())
    if args.parallel == "fsdp2":
        from torch.distributed.tensor import DTensor

        # gather the sharded parameters into plain tensors before saving
        state = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in model.state_dict().items()}
    else:
        state = None
    if rank == 0 and args.out:
        if state is not None:
            plain = VisualRWKV.from_config(model.config, tokenizer=model.tokenizer, preprocessor=model.preprocessor)
            plain.load_state_dict({k: v.cpu() for k, v in state.items()})
            model = plain
        model.save_pretrained(args.out)
        print(f"saved {args.out}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return final


if __name__ == "__main__":
    main()
