"""Vision encoders: feature selection (layer, no post-norm, CLS position) against a float64 ViT reference."""

from __future__ import annotations

import pytest
import torch

from rwkv_vision.vision import VisionEncoder, clip_vit_l14_336, create_encoder, list_encoders, timm_vit, tiny_clip


def rel_rms(a, b):
    return ((a.double() - b.double()).pow(2).mean() / b.double().pow(2).mean()).sqrt().item()


def randomize(module, std=0.2):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * std)
    return module


def reference_vit(sd, pixels, *, heads, layer, patch=14):
    """OpenAI-CLIP-style ViT in float64 from a timm state dict: hidden states after block ``layer``,
    CLS first, no final norm."""
    sd = {k: v.double() for k, v in sd.items()}
    x = torch.nn.functional.conv2d(pixels.double(), sd["patch_embed.proj.weight"], stride=patch)
    x = x.flatten(2).transpose(1, 2)
    b, _, c = x.shape
    x = torch.cat([sd["cls_token"].expand(b, 1, c), x], 1) + sd["pos_embed"]

    def ln(x, name):
        return torch.nn.functional.layer_norm(x, (c,), sd[f"{name}.weight"], sd[f"{name}.bias"], 1e-5)

    x = ln(x, "norm_pre")
    for i in range(layer + 1):
        p = f"blocks.{i}."
        h = ln(x, p + "norm1")
        q, k, v = (h @ sd[p + "attn.qkv.weight"].t() + sd[p + "attn.qkv.bias"]).chunk(3, -1)
        split = lambda z: z.view(b, -1, heads, c // heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        a = torch.softmax(q @ k.transpose(-1, -2) / (c // heads) ** 0.5, -1) @ v
        a = a.transpose(1, 2).reshape(b, -1, c)
        x = x + a @ sd[p + "attn.proj.weight"].t() + sd[p + "attn.proj.bias"]
        h = ln(x, p + "norm2") @ sd[p + "mlp.fc1.weight"].t() + sd[p + "mlp.fc1.bias"]
        h = h * torch.sigmoid(1.702 * h)  # quick-GELU
        x = x + h @ sd[p + "mlp.fc2.weight"].t() + sd[p + "mlp.fc2.bias"]
    return x


@pytest.mark.parametrize("layer,cls", [(-1, "last"), (-2, "first"), (0, None), (2, "last")])
def test_tiny_clip_selected_layer_matches_reference(layer, cls):
    enc = randomize(tiny_clip(image_size=56, depth=3, layer=layer, cls=cls)).eval()
    assert enc.grid == (4, 4) and enc.width == 64
    pixels = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        out = enc(pixels)
    ref = reference_vit(enc.vit.state_dict(), pixels, heads=1, layer=layer % 3)
    if cls == "last":
        ref = torch.cat([ref[:, 1:], ref[:, :1]], 1)
    elif cls is None:
        ref = ref[:, 1:]
    assert out.shape == (2, enc.num_tokens, 64) and enc.num_tokens == 16 + (cls is not None)
    assert rel_rms(out, ref) < 1e-5


def test_clip_vit_l14_336_shape_without_allocating():
    enc = clip_vit_l14_336(device="meta")
    vit = enc.vit
    assert (enc.grid, enc.width, enc.num_tokens, len(vit.blocks)) == ((24, 24), 1024, 577, 24)
    assert vit.blocks[0].attn.num_heads == 16 and vit.blocks[0].mlp.fc1.out_features == 4096
    assert type(vit.blocks[0].mlp.act).__name__ == "QuickGELU"
    assert vit.patch_embed.proj.bias is None and isinstance(vit.norm_pre, torch.nn.LayerNorm)
    assert enc.layer == 23 and enc.cls == "last"
    assert enc(torch.empty(1, 3, 336, 336, device="meta")).shape == (1, 577, 1024)


def test_any_timm_vit_and_registry():
    enc = timm_vit("vit_tiny_patch16_224", img_size=32, depth=2, layer=1, cls="first")
    assert enc.grid == (2, 2) and enc(torch.randn(1, 3, 32, 32)).shape == (1, 5, 192)
    assert {"clip-vit-l14-336", "tiny-clip"} <= set(list_encoders())
    assert isinstance(create_encoder("tiny-clip", dtype=torch.float64), VisionEncoder)
    assert create_encoder("vit_tiny_patch16_224", img_size=32, depth=1, device="meta").width == 192


def test_encoder_errors():
    with pytest.raises(ValueError, match=r"layer must be an int in \[-2, 2\)"):
        tiny_clip(layer=2)
    with pytest.raises(ValueError, match="cls must be"):
        tiny_clip(cls="middle")
    with pytest.raises(ValueError, match=r"pixel_values must be \[b, 3, H, W\]"):
        tiny_clip()(torch.randn(3, 28, 28))
    with pytest.raises(ValueError, match="pixel_values must be 28x28"):
        tiny_clip()(torch.randn(1, 3, 56, 56))
    with pytest.raises(ValueError, match="name must be a timm model name"):
        timm_vit("not_a_model")
    with pytest.raises(ValueError, match="unknown encoder"):
        create_encoder("nope")
    with pytest.raises(TypeError, match="timm VisionTransformer"):
        VisionEncoder(torch.nn.Linear(2, 2))
