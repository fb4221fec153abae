"""Vision-RWKV in a few lines: a timm ViT whose attention is replaced by RWKV-6 mixing, read with a scan policy.

    python examples/vision_rwkv_vit.py [--steps 20] [--seed 0] [--cls {first,last}] [--scan {unidir,bidir,multidir}]

What is replaced: in each of timm's transformer blocks, ``blk.attn`` (softmax self-attention) becomes a
:class:`ScannedTimeMix`: an RWKV-6 ``TimeMix`` (a linear recurrence, O(t) in sequence length) wrapped so that
the block's layer reads the image patches in the order its scan policy gives (BiDir by default: odd layers
read the patches backwards), and the output is put back in row-major order.

What is kept, untouched: timm's patch embedding, CLS token, position embedding, every block's ``norm1``,
``ls1``/``drop_path``, ``norm2`` and MLP, the final norm and the classifier head. ``vit.blocks[i]`` is still a
timm ``Block``; only its ``attn`` is a different module.

It then trains the model for a few steps on a synthetic task (which quadrant holds a bright square) and
prints the loss and the final train accuracy. Runs in about 10 s on one CPU core; no network, no weights.

Letter legend for shapes: b batch, t time (sequence positions), c channels, R x C the patch grid.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn

from rwkv_vision.layers import TimeMix
from rwkv_vision.scan import ImageSpan, ScanPolicy, get_scan_policy, permute_spans, unpermute_spans

IMG_SIZE, PATCH_SIZE, DEPTH, NUM_CLASSES = 32, 8, 4, 4  # a 4 x 4 patch grid, 4 quadrant classes


class ScannedTimeMix(nn.Module):
    """A drop-in for a timm block's ``attn``: permute the patches into this layer's order, mix, unpermute.

    ``forward(x [b, t, c]) -> [b, t, c]``, with ``t = R*C + 1`` (the patches and the CLS token, at the
    position ``span`` says). Only the patch tokens are reordered; the CLS token keeps its place.
    """

    def __init__(self, mix: TimeMix, *, span: ImageSpan, policy: ScanPolicy, layer_index: int):
        super().__init__()
        self.mix = mix
        self.span = span
        self.policy = policy  # a plain attribute: swap it at any time, the weights do not depend on it
        self.layer_index = layer_index

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        # timm's Block passes these for attention; a recurrence is causal in its scan order by construction.
        if attn_mask is not None:
            raise ValueError("ScannedTimeMix: an RWKV mixer takes no attention mask")
        spans = [self.span]
        x = permute_spans(x, spans, self.policy, self.layer_index)  # [b, t, c], patches in this layer's order
        y = self.mix(x)  # [b, t, c], token k has read tokens <= k
        return unpermute_spans(y, spans, self.policy, self.layer_index)  # back to row-major for the next block

    def extra_repr(self) -> str:
        return f"policy={self.policy!r}, layer_index={self.layer_index}, span={self.span}"


class VisionRWKV(nn.Module):
    """A timm ViT with each block's attention replaced by a :class:`ScannedTimeMix`.

    Where the CLS token sits matters for a recurrent mixer, unlike for attention: token k only reads tokens
    0..k of its layer's order, and scan policies move patches only, never the CLS token.

    - ``cls="first"`` (timm's layout): the CLS token is read before every patch, at every layer, so its
      output never depends on the image; it is a learned prefix that every patch reads. We pool the
      mean of the patch tokens instead.
    - ``cls="last"`` (VisualRWKV's layout): the CLS token is moved after the patches, so at every layer it
      reads all of them, whatever their order; we pool from it, as a ViT does.

    ``forward(images [b, 3, H, W]) -> logits [b, num_classes]``.
    """

    def __init__(
        self,
        vit: timm.models.VisionTransformer,
        *,
        scan: ScanPolicy | str = "bidir",
        cls: str = "first",
        head_size: int = 64,
    ):
        super().__init__()
        if cls not in ("first", "last"):
            raise ValueError(f"cls must be 'first' or 'last', got {cls!r}")
        self.vit, self.cls = vit, cls
        rows, cols = vit.patch_embed.grid_size
        # With cls="first" the patches are at [1, 1 + R*C); with cls="last" at [0, R*C) and CLS at R*C.
        span = ImageSpan(start=0, rows=rows, cols=cols, cls=cls)
        for i, blk in enumerate(vit.blocks):
            mix = TimeMix(vit.embed_dim, head_size=head_size, d_mix=8, d_decay=16, layer_id=i, n_layer=len(vit.blocks))
            blk.attn = ScannedTimeMix(mix, span=span, policy=get_scan_policy(scan), layer_index=i)

    @property
    def scan(self) -> ScanPolicy:
        return self.vit.blocks[0].attn.policy

    @scan.setter
    def scan(self, policy: ScanPolicy | str) -> None:
        for blk in self.vit.blocks:
            blk.attn.policy = get_scan_policy(policy)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The sequence the blocks read: ``[b, R*C + 1, c]``, CLS first or last."""
        vit = self.vit
        x = vit.patch_embed(images)  # [b, R*C, c], row-major patches
        cls = vit.cls_token.expand(x.shape[0], -1, -1)  # [b, 1, c]
        x = torch.cat([cls, x], dim=1) + vit.pos_embed  # timm's _pos_embed: CLS prepended, positions added
        if self.cls == "last":
            # Same CLS vector, same position embedding, only read after the patches.
            x = torch.cat([x[:, 1:], x[:, :1]], dim=1)
        return vit.norm_pre(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.vit.blocks(self.tokens(images))  # [b, t, c]
        x = self.vit.norm(x)
        pooled = x[:, -1] if self.cls == "last" else x[:, 1:].mean(dim=1)  # [b, c]
        return self.vit.head(self.vit.fc_norm(pooled))  # [b, num_classes]


def build_model(*, scan: ScanPolicy | str = "bidir", cls: str = "first", seed: int = 0) -> VisionRWKV:
    torch.manual_seed(seed)  # timm's and TimeMix's initialisations draw from the global generator
    vit = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=IMG_SIZE,
        patch_size=PATCH_SIZE,
        depth=DEPTH,
        num_classes=NUM_CLASSES,
    )
    return VisionRWKV(vit, scan=scan, cls=cls)


def quadrant_images(n: int, *, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noisy images ``[n, 3, 32, 32]`` with an 8 x 8 bright square somewhere in one quadrant, and the
    quadrant ``[n]`` (0 top left, 1 top right, 2 bottom left, 3 bottom right) as the label."""
    labels = torch.randint(NUM_CLASSES, (n,), generator=generator)
    images = 0.3 * torch.randn(n, 3, IMG_SIZE, IMG_SIZE, generator=generator)
    half, side = IMG_SIZE // 2, IMG_SIZE // 4
    offsets = torch.randint(half - side + 1, (n, 2), generator=generator)  # where in its quadrant
    for i, label in enumerate(labels.tolist()):
        top = (label // 2) * half + int(offsets[i, 0])
        left = (label % 2) * half + int(offsets[i, 1])
        images[i, :, top : top + side, left : left + side] += 2.0
    return images, labels


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20, help="optimizer steps")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights and the synthetic data")
    p.add_argument(
        "--cls",
        choices=["first", "last"],
        default="first",
        help="first: timm's layout, pool the patch mean; last: CLS reads every patch, pool from it",
    )
    p.add_argument("--scan", choices=["unidir", "bidir", "multidir"], default="bidir", help="scan policy")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    """Train and return ``{"losses": [...], "accuracy": float, "model": VisionRWKV}``."""
    args = parse_args(argv)
    torch.set_num_threads(1)  # a model this small gains nothing from more threads, only synchronisation
    start = time.perf_counter()
    model = build_model(scan=args.scan, cls=args.cls, seed=args.seed)
    images, labels = quadrant_images(256, generator=torch.Generator().manual_seed(args.seed))
    print(
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, scan={model.scan!r}, "
        f"cls={args.cls}, {len(model.vit.blocks)} blocks, sequence of {model.tokens(images[:1]).shape[1]} tokens"
    )

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    batch = torch.Generator().manual_seed(args.seed + 1)
    losses = []
    model.train()
    for step in range(args.steps):
        idx = torch.randint(len(images), (64,), generator=batch)  # a batch of 64 of the 256 training images
        loss = F.cross_entropy(model(images[idx]), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % max(1, args.steps // 10) == 0 or step == args.steps - 1:
            print(f"step {step:3d}  loss {loss.item():.4f}")

    model.eval()
    with torch.no_grad():
        accuracy = (model(images).argmax(dim=-1) == labels).float().mean().item()
    print(
        f"train accuracy {accuracy:.1%} on {len(images)} images ({NUM_CLASSES} classes, chance 25%), "
        f"{time.perf_counter() - start:.1f} s"
    )
    return {"losses": losses, "accuracy": accuracy, "model": model}


if __name__ == "__main__":
    main()
