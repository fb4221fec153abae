"""Swap the scan policy of a VisualRWKV model in one line and see how the logits move.

Builds a tiny random model in the official checkpoint layout (no download), reads one image + question
with each policy, and prints the order in which each layer reads a 4 x 4 patch grid.

    python examples/swap_scan.py
"""

from __future__ import annotations

import torch

from rwkv_vision import IMAGE_TOKEN_INDEX, RWKV6, BiDir, Custom, MultiDir, Snake, UniDir, VisualRWKV, Zigzag
from rwkv_vision.vision import tiny_clip


def main() -> None:
    torch.manual_seed(0)
    encoder = tiny_clip(image_size=56)  # 4 x 4 patches + CLS last = 17 image tokens
    rwkv = RWKV6(n_layer=4, n_embd=64, head_size=32, d_mix=8, d_decay=16, vocab_size=256)
    with torch.no_grad():
        rwkv.emb.weight.normal_()  # a fresh model's tiny embedding would make every policy look alike
    model = VisualRWKV(rwkv=rwkv, encoder=encoder).eval()

    input_ids = torch.tensor([[10, 11, IMAGE_TOKEN_INDEX, 12, 13]])
    pixel_values = torch.randn(1, 3, 56, 56)
    policies = [
        BiDir(),
        MultiDir(),
        Snake(),
        Zigzag(bidirectional=True),
        Custom([torch.randperm(16) for _ in range(2)]),
    ]

    with torch.no_grad():
        model.scan = UniDir()  # the default is BiDir, the released weights' policy
        baseline, _ = model(input_ids, pixel_values)
        for policy in policies:
            model.scan = policy  # the whole change
            logits, _ = model(input_ids, pixel_values)
            change = (logits - baseline).norm() / baseline.norm()
            print(f"{policy!r:45s} relative change of the logits vs UniDir: {change:.3f}")
            for layer in range(2):
                print(f"    layer {layer} reads patches {policy.permutation(layer, 4, 4).tolist()}")


if __name__ == "__main__":
    main()
