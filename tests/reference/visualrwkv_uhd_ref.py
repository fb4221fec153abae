"""An independent float64 re-statement of the official VisualRWKV-UHD (v0613) model: the tiling, the fusion of
the global and tile features, the projector and the greedy re-run generate.

Written from a reading of the official code (howard-hou/VisualRWKV, ``VisualRWKV-v6/VisualRWKV-UHD``:
``src/utils.py`` ``split_image_into_tiles``; ``evaluate.py`` / ``src/dataset.py``, which stack the whole image
then the four tiles per tower; ``src/vision.py`` ``SamDinoSigLIPViTBackbone.forward`` (the towers on
``B * N`` pictures) and ``fuse_image_features``; ``src/model.py`` ``MLPWithContextGating`` (gating commented
out, a ReLU instead), ``encode_images``, ``preparing_embedding``, ``bidirectional_forward``, ``generate``). No
code is copied and no rwkv_vision module is used for the math. The language model (x060 blocks, BiDir) is
the HD one of :mod:`reference.visualrwkv7_ref` (the UHD ``model.py`` differs from HD's only in the projector
and ``encode_images``).

What it takes as the image input: each tower's patch features of the 1 + 4 pictures, ``[1, 5, k, w_i]``
(dino, siglip, sam order), the towers' own business.

Letter legend: b batch, t time, c channels, v vocabulary, k tokens per picture, w width.
"""

from __future__ import annotations

import torch
from PIL import Image

from .visualrwkv7_ref import STOP_TOKEN, _adaptive_pool_1d, hd_lm_logits

__all__ = ["official_tiles", "fuse_features", "uhd_embeddings", "uhd_generate"]


def official_tiles(image: Image.Image) -> list[Image.Image]:
    """``split_image_into_tiles(image, 2)``: tiles of ``W // 2`` by ``H // 2`` at (j*tw, i*th), i rows
    outer, j columns inner: left top, right top, left bottom, right bottom."""
    width, height = image.size
    tw, th = width // 2, height // 2
    boxes = [(0, 0), (tw, 0), (0, th), (tw, th)]
    return [image.crop((x, y, x + tw, y + th)) for x, y in boxes]


def _pool_half(grid: torch.Tensor) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(., side // 2)`` on one tile's [side, side, w] grid -> [side//2, side//2, w]."""
    side = grid.shape[0]
    bins = _adaptive_pool_1d(side, side // 2)
    return torch.stack([torch.stack([grid[r0:r1, c0:c1].mean(dim=(0, 1)) for c0, c1 in bins]) for r0, r1 in bins])


def fuse_features(dino: torch.Tensor, siglip: torch.Tensor, sam: torch.Tensor) -> torch.Tensor:
    """``fuse_image_features`` for one image: per tower ``[5, k, w_i]`` (whole image, then the four tiles).
    The global picture's three towers side by side, then, per tower, the four pooled tiles laid out as
    [[0, 1], [2, 3]] and read row-major; everything concatenated along channels: [k, 2 * sum(w_i)]."""
    towers = [dino.double(), siglip.double(), sam.double()]
    k = towers[0].shape[1]
    side = int(k**0.5)
    out = [t[0] for t in towers]
    for t in towers:
        tiles = [_pool_half(t[i].reshape(side, side, -1)) for i in range(1, 5)]
        top = torch.cat([tiles[0], tiles[1]], dim=1)
        bottom = torch.cat([tiles[2], tiles[3]], dim=1)
        out.append(torch.cat([top, bottom], dim=0).reshape(k, -1))
    return torch.cat(out, dim=-1)


def uhd_embeddings(sd: dict, input_ids: list[int], fused: torch.Tensor, *, image_token: int = -200):
    """``preparing_embedding`` for one prompt with one image: the text before the placeholder, the projected
    features ``o_proj(relu(proj(f)))`` (``proj.gate`` is never read), the text after. Returns
    (x [1, t, c], (image start, image length))."""
    emb = sd["rwkv.emb.weight"].double()
    x = torch.relu(fused.double() @ sd["proj.proj.weight"].double().T)
    img = x @ sd["proj.o_proj.weight"].double().T
    j = input_ids.index(image_token)
    before, after = input_ids[:j], input_ids[j + 1 :]
    parts = [emb[torch.tensor(before, dtype=torch.long)], img, emb[torch.tensor(after, dtype=torch.long)]]
    return torch.cat(parts).unsqueeze(0), (j, img.shape[0])


def uhd_logits(sd: dict, input_ids: list[int], fused: torch.Tensor) -> torch.Tensor:
    """The official UHD forward's logits [t, v] (BiDir over the image span, as HD)."""
    x, span = uhd_embeddings(sd, input_ids, fused)
    return hd_lm_logits(sd, x, span)


def uhd_generate(sd: dict, input_ids: list[int], fused, *, max_new_tokens: int, stop_token: int = STOP_TOKEN):
    """The official UHD ``generate``: greedy, the whole sequence re-run every step (the image span stays where
    it was), stop at ``stop_token`` (kept)."""
    x, span = uhd_embeddings(sd, input_ids, fused)
    emb = sd["rwkv.emb.weight"].double()
    out: list[int] = []
    for _ in range(max_new_tokens):
        token = int(hd_lm_logits(sd, x, span)[-1].argmax())
        out.append(token)
        if token == stop_token:
            break
        x = torch.cat([x, emb[token].view(1, 1, -1)], dim=1)
    return out
