"""Hugging Face CLIPVisionModel -> timm conversion, checked against transformers' own forward."""

from __future__ import annotations

import pytest
import torch

from rwkv_vision.vision import (
    clip_config_from_state_dict,
    clip_to_timm_state_dict,
    encoder_from_clip_state_dict,
    find_clip_prefix,
    load_clip_state_dict,
    timm_to_clip_state_dict,
    tiny_clip,
)

transformers = pytest.importorskip("transformers")


def rel_rms(a, b):
    return ((a - b).pow(2).mean() / b.pow(2).mean()).sqrt().item()


@pytest.fixture(scope="module")
def hf_clip():
    """A tiny random CLIPVisionModel (3 layers, width 128, 2 heads of 64, patch 14, 56 px -> 4 x 4 grid)."""
    torch.manual_seed(0)
    cfg = transformers.CLIPVisionConfig(
        hidden_size=128,
        intermediate_size=320,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=56,
        patch_size=14,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    model = transformers.CLIPVisionModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():  # leave no LayerNorm at identity, no bias at zero
            p.add_(torch.randn_like(p) * 0.1)
    return model


def own_keys(model):
    """The model's keys without the buffer, and without the `vision_model.` level transformers 5 dropped."""
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    return {k.removeprefix("vision_model."): v for k, v in sd.items()}


@pytest.mark.parametrize("layer", [-1, -2])
@pytest.mark.parametrize("prefix", ["", "vision_model.", "vit.vision_model."])
def test_hidden_states_match_transformers(hf_clip, layer, prefix):
    sd = {prefix + k: v for k, v in own_keys(hf_clip).items()}
    if prefix.startswith("vit."):  # the official flat checkpoint: other towers around, position_ids present
        sd["rwkv.emb.weight"] = torch.zeros(3, 3)
        sd["proj.weight"] = torch.zeros(3, 128)
        sd["vit.vision_model.embeddings.position_ids"] = torch.arange(17).unsqueeze(0)
    enc = encoder_from_clip_state_dict(sd, layer=layer).eval()
    assert enc.vit.blocks[0].attn.num_heads == 2 and enc.grid == (4, 4)
    pixels = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        hidden = hf_clip(pixel_values=pixels, output_hidden_states=True).hidden_states[layer]
        ours = enc(pixels)
    expected = torch.cat([hidden[:, 1:], hidden[:, :1]], 1)  # patches row-major, CLS last
    assert ours.dtype == torch.float32 and rel_rms(ours, expected) < 1e-5


def test_round_trip_is_exact(hf_clip):
    sd = own_keys(hf_clip)
    timm_sd = clip_to_timm_state_dict(sd)
    back = timm_to_clip_state_dict(timm_sd, prefix="")
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    assert set(timm_to_clip_state_dict(timm_sd)) == {"vision_model." + k for k in sd}
    # and the concatenation order of qkv is q, k, v
    q = sd["encoder.layers.1.self_attn.q_proj.weight"]
    assert torch.equal(timm_sd["blocks.1.attn.qkv.weight"][: q.shape[0]], q)


def test_config_inference_and_loading_into_an_existing_encoder(hf_clip):
    sd = own_keys(hf_clip)
    cfg = clip_config_from_state_dict(sd)
    assert cfg == dict(embed_dim=128, depth=3, num_heads=2, patch_size=14, img_size=56, mlp_ratio=2.5)
    enc = tiny_clip(image_size=56, depth=3, embed_dim=128, num_heads=2, mlp_ratio=2.5)
    without_post = {k: v for k, v in sd.items() if not k.startswith("post_layernorm")}
    load_clip_state_dict(enc, without_post)  # post_layernorm is unused and may be absent
    assert torch.equal(enc.vit.cls_token.flatten(), sd["embeddings.class_embedding"])


def test_errors_name_the_keys(hf_clip):
    sd = own_keys(hf_clip)
    with pytest.raises(ValueError, match=r"unexpected CLIP vision keys: \['encoder.layers.0.self_attn.rope'\]"):
        clip_to_timm_state_dict({**sd, "encoder.layers.0.self_attn.rope": torch.zeros(1)})
    broken = {k: v for k, v in sd.items() if "layers.2.self_attn.k_proj.bias" not in k}
    with pytest.raises(ValueError, match=r"missing encoder.layers.2.self_attn.k_proj.bias"):
        clip_to_timm_state_dict(broken)
    with pytest.raises(ValueError, match="exactly one CLIP vision tower"):
        find_clip_prefix({"proj.weight": torch.zeros(1)})
    enc = tiny_clip(image_size=28)
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_clip_state_dict(enc, sd)
    with pytest.raises(ValueError, match="timm keys without a CLIP counterpart"):
        timm_to_clip_state_dict({"head.weight": torch.zeros(1)})
