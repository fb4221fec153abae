"""An independent float64 reference of the official VisualRWKV v6.0 forward.

Written from the project reference on VisualRWKV (shared/docs/visualrwkv-reference.md beside the repository) ("Vision path", "Scan directions"), reading an official flat
checkpoint (``rwkv.*``, ``vit.vision_model.*`` with Hugging Face CLIP names, ``proj.weight``) directly. It
uses no rwkv_vision module: the CLIP tower is written out here with separate q/k/v, and the RWKV-6 block
math comes from ``reference.rwkv6_ref``. Slow and plain on purpose.

Letter legend: b batch, t time, h heads, n head size, c channels, v vocabulary.
"""

from __future__ import annotations

import torch

from .rwkv6_ref import LN_EPS, _channel_mix, _layer_norm, _time_mix, random_official_state_dict

VIT = "vit.vision_model."


def random_clip_state_dict(*, width=64, layers=2, patch=14, image=56, mlp=96, seed=1, prefix=VIT):
    """A random CLIP vision tower in transformers 4.x names (under ``prefix``), post_layernorm and
    position_ids included, as in the released checkpoints."""
    g = torch.Generator().manual_seed(seed)
    grid = image // patch

    def rand(*shape, scale=1.0, offset=0.0):
        return torch.randn(*shape, generator=g) * scale + offset

    sd = {
        "embeddings.class_embedding": rand(width, scale=0.5),
        "embeddings.patch_embedding.weight": rand(width, 3, patch, patch, scale=(3 * patch * patch) ** -0.5),
        "embeddings.position_embedding.weight": rand(grid * grid + 1, width, scale=0.5),
        "embeddings.position_ids": torch.arange(grid * grid + 1).unsqueeze(0),
        "pre_layrnorm.weight": rand(width, scale=0.1, offset=1.0),
        "pre_layrnorm.bias": rand(width, scale=0.1),
        "post_layernorm.weight": rand(width, scale=0.1, offset=1.0),
        "post_layernorm.bias": rand(width, scale=0.1),
    }
    for i in range(layers):
        p = f"encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[p + f"self_attn.{name}.weight"] = rand(width, width, scale=width**-0.5)
            sd[p + f"self_attn.{name}.bias"] = rand(width, scale=0.1)
        for ln in ("layer_norm1", "layer_norm2"):
            sd[p + f"{ln}.weight"] = rand(width, scale=0.1, offset=1.0)
            sd[p + f"{ln}.bias"] = rand(width, scale=0.1)
        sd[p + "mlp.fc1.weight"] = rand(mlp, width, scale=width**-0.5)
        sd[p + "mlp.fc1.bias"] = rand(mlp, scale=0.1)
        sd[p + "mlp.fc2.weight"] = rand(width, mlp, scale=mlp**-0.5)
        sd[p + "mlp.fc2.bias"] = rand(width, scale=0.1)
    return {prefix + k: v for k, v in sd.items()}


def random_visualrwkv_checkpoint(*, rwkv_sizes: dict, vision_sizes: dict, seed=0) -> dict[str, torch.Tensor]:
    """A tiny official-format flat checkpoint: rwkv.* + vit.vision_model.* + proj.weight."""
    sd = {"rwkv." + k: v for k, v in random_official_state_dict(**rwkv_sizes, seed=seed).items()}
    sd.update(random_clip_state_dict(**vision_sizes, seed=seed + 1))
    width, c = vision_sizes.get("width", 64), rwkv_sizes["n_embd"]
    sd["proj.weight"] = torch.randn(c, width, generator=torch.Generator().manual_seed(seed + 2)) * width**-0.5
    return sd


def clip_features(sd: dict, pixels: torch.Tensor) -> torch.Tensor:
    """Last CLIP layer's hidden states, no post-LayerNorm, CLS LAST: pixels [b, 3, H, W] -> [b, 1 + g*g, w]."""
    sd = {k[len(VIT) :]: v.double() for k, v in sd.items() if k.startswith(VIT)}
    w = sd["embeddings.class_embedding"].shape[0]
    heads = w // 64 or 1
    patch = sd["embeddings.patch_embedding.weight"].shape[-1]
    x = torch.nn.functional.conv2d(pixels.double(), sd["embeddings.patch_embedding.weight"], stride=patch)
    x = x.flatten(2).transpose(1, 2)
    b = x.shape[0]
    x = torch.cat([sd["embeddings.class_embedding"].expand(b, 1, w), x], 1) + sd["embeddings.position_embedding.weight"]
    x = _layer_norm(x, sd["pre_layrnorm.weight"], sd["pre_layrnorm.bias"], 1e-5)
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers."))
    for i in range(layers):
        p = f"encoder.layers.{i}."

        def lin(z, name):
            return z @ sd[p + name + ".weight"].T + sd[p + name + ".bias"]

        h = _layer_norm(x, sd[p + "layer_norm1.weight"], sd[p + "layer_norm1.bias"], 1e-5)
        q, k, v = (lin(h, f"self_attn.{n}_proj").view(b, -1, heads, w // heads).transpose(1, 2) for n in "qkv")
        att = torch.softmax(q @ k.transpose(-1, -2) * (w // heads) ** -0.5, dim=-1) @ v
        x = x + lin(att.transpose(1, 2).reshape(b, -1, w), "self_attn.out_proj")
        h = lin(_layer_norm(x, sd[p + "layer_norm2.weight"], sd[p + "layer_norm2.bias"], 1e-5), "mlp.fc1")
        x = x + lin(h * torch.sigmoid(1.702 * h), "mlp.fc2")
    return torch.cat([x[:, 1:], x[:, :1]], dim=1)


def _order(layer: int, side: int, scan: str) -> torch.Tensor:
    """Row-major patch indices in the order layer ``layer`` reads them."""
    grid = torch.arange(side * side).view(side, side)
    if scan == "unidir":
        return grid.flatten()
    if scan == "bidir":
        return grid.flatten().flip(0) if layer % 2 == 1 else grid.flatten()
    if scan == "multidir":
        return [grid.flatten(), grid.flatten().flip(0), grid.t().flatten(), grid.t().flatten().flip(0)][layer % 4]
    raise ValueError(scan)


def visualrwkv_reference_logits(
    sd: dict, input_ids: list[int], pixels: torch.Tensor | None, *, image_token=-200, scan="bidir"
) -> torch.Tensor:
    """Logits [T, v] in float64 for one prompt (a list of ids with ``image_token`` once per image)."""
    rwkv = {k[5:]: v.double() for k, v in sd.items() if k.startswith("rwkv.")}
    pieces, spans = [], []  # spans: (start of patches, side)
    feats = clip_features(sd, pixels) @ sd["proj.weight"].double().T if pixels is not None else None
    pos, j = 0, 0
    for tok in input_ids:
        if tok == image_token:
            f = feats[j]
            side = int(round((f.shape[0] - 1) ** 0.5))
            spans.append((pos, side))
            pieces.append(f)
            pos += f.shape[0]
            j += 1
        else:
            pieces.append(rwkv["emb.weight"][tok].unsqueeze(0))
            pos += 1
    x = torch.cat(pieces).unsqueeze(0)  # [1, T, c]
    n_layer = 1 + max(int(k.split(".")[1]) for k in rwkv if k.startswith("blocks."))
    head_size = rwkv["blocks.0.att.time_faaaa"].shape[1]
    for i in range(n_layer):
        p = f"blocks.{i}."
        if i == 0:  # ln0 on text and image embeddings alike
            x = _layer_norm(x, rwkv[p + "ln0.weight"], rwkv[p + "ln0.bias"], LN_EPS)
        x = x.clone()
        for s, side in spans:  # reorder this layer's patch spans (CLS, after them, stays)
            x[:, s : s + side * side] = x[:, s : s + side * side][:, _order(i, side, scan)]
        x = x + _time_mix(
            rwkv, p + "att.", _layer_norm(x, rwkv[p + "ln1.weight"], rwkv[p + "ln1.bias"], LN_EPS), head_size
        )
        x = x + _channel_mix(rwkv, p + "ffn.", _layer_norm(x, rwkv[p + "ln2.weight"], rwkv[p + "ln2.bias"], LN_EPS))
        for s, side in spans:  # and put them back
            inv = torch.argsort(_order(i, side, scan))
            x[:, s : s + side * side] = x[:, s : s + side * side][:, inv]
    x = _layer_norm(x, rwkv["ln_out.weight"], rwkv["ln_out.bias"], LN_EPS)
    return (x @ rwkv["head.weight"].T)[0]
