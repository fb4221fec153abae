"""Vision towers of the VisualRWKV v7.00 stack: feature selection against hand computations with timm's
own blocks, SAM against the segment_anything package (float64), space-to-depth order, pooling, the
multi-encoder, and the v7.00 key converter. Tiny random towers only (never a download)."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rwkv_vision.errors import StateDictError
from rwkv_vision.vision import (
    ENCODERS,
    MultiEncoder,
    SamTower,
    ViTTower,
    create_encoder,
    encoder_to_v7_state_dict,
    load_v7_vision_state_dict,
    pool_grid,
    sam_to_timm_state_dict,
    space_to_depth,
    timm_to_sam_state_dict,
    timm_tower,
    tiny_visualrwkv7_encoder,
    v7_to_encoder_state_dict,
    visualrwkv7_encoder,
)


def rel_rms(a, b):
    return ((a.double() - b.double()).pow(2).mean() / b.double().pow(2).mean()).sqrt().item()


def randomize(module, std=0.2):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * std)
    return module


def tiny_dino(**kw):
    return timm_tower("vit_large_patch14_reg4_dinov2", img_size=56, depth=3, embed_dim=32, num_heads=2, **kw)


def tiny_siglip(**kw):
    return timm_tower("vit_so400m_patch14_siglip_384", img_size=56, depth=3, embed_dim=48, num_heads=2, **kw)


def tiny_sam(**kw):
    args = dict(img_size=128, depth=3, embed_dim=32, num_heads=2, window_size=3, global_attn_indexes=(1,))
    return timm_tower("samvit_base_patch16", neck_chans=16, **{**args, **kw})


def hand_vit_tokens(model, pixels, layer):
    """The official ``get_intermediate_layers(n={layer})`` computed step by step with timm's own modules:
    embeddings, blocks 0..layer, no final norm, prefix tokens dropped."""
    x = model.patch_embed(pixels)
    x = model._pos_embed(x)
    x = model.norm_pre(x)
    for blk in model.blocks[: layer + 1]:
        x = blk(x)
    return x[:, model.num_prefix_tokens :]


@pytest.mark.parametrize("build,prefix", [(tiny_dino, 5), (tiny_siglip, 0)])
@pytest.mark.parametrize("layer", [-2, 0, -1])
def test_vit_tower_selects_block_output_patch_tokens_without_norm(build, prefix, layer):
    torch.manual_seed(0)
    tower = randomize(build(layer=layer)).double()
    assert tower.model.num_prefix_tokens == prefix
    x = torch.randn(2, 3, 56, 56, dtype=torch.float64)
    out = tower(x)
    assert out.shape == (2, 16, tower.width)
    ref = hand_vit_tokens(tower.model, x, layer % 3)
    assert rel_rms(out, ref) < 1e-12
    # the official call itself: featurizer.get_intermediate_layers(x, n={index}) (a set, unpacked from a list)
    (official,) = tower.model.get_intermediate_layers(x, n={layer % 3})
    assert torch.equal(out, official)
    # the final norm is not applied: forward_features (norm included) differs at the last block
    if layer == -1:
        normed = tower.model.forward_features(x)[:, prefix:]
        assert rel_rms(out, normed) > 1e-3


def test_default_layer_is_second_to_last_and_siglip_gelu_is_exact():
    dino, siglip = tiny_dino(), tiny_siglip()
    assert dino.layer == 1 and siglip.layer == 1
    # timm's SigLIP (as the official code builds it) uses exact erf GELU, not the tanh approximation; the v7
    # builders pin it
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    exact = torch.nn.functional.gelu(x)
    for enc in (tiny_visualrwkv7_encoder(), visualrwkv7_encoder(device="meta")):
        for name in ("dino", "siglip"):
            act = enc.towers[name].model.blocks[0].mlp.act
            assert type(act) is torch.nn.GELU and act.approximate == "none"
    assert torch.equal(siglip.model.blocks[0].mlp.act(x), exact)
    assert not torch.allclose(torch.nn.functional.gelu(x, approximate="tanh"), exact, rtol=0, atol=1e-6)


def test_space_to_depth_channel_order():
    b, c, h, w = 2, 3, 4, 6
    x = torch.randn(b, c, h, w)
    y = space_to_depth(x, 2)
    assert y.shape == (b, 4 * c, 2, 3)
    for k in range(c):
        for dy in range(2):
            for dx in range(2):
                for i in range(2):
                    for j in range(3):
                        assert y[1, k * 4 + dy * 2 + dx, i, j] == x[1, k, 2 * i + dy, 2 * j + dx]
    with pytest.raises(ValueError, match="divisible"):
        space_to_depth(torch.randn(1, 2, 5, 4), 2)
    with pytest.raises(ValueError, match=r"\[b, c, H, W\]"):
        space_to_depth(torch.randn(2, 5, 4), 2)


def official_lossless_downsample(x):
    """The official v7.00 LosslessDownSampler (its 64 -> 32 constant generalised to H/2) followed by the
    backbone's ``view(B, C, H*W).permute(0, 2, 1)``."""
    b, c, h, w = x.shape
    y = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    y = y.contiguous().view(b, h // 2, w // 2, 4 * c).permute(0, 3, 1, 2)
    return y.reshape(b, 4 * c, (h // 2) * (w // 2)).permute(0, 2, 1)


def test_sam_tower_matches_segment_anything_float64():
    sa = pytest.importorskip("segment_anything.modeling")
    torch.manual_seed(1)
    # window 3 on an 8 x 8 grid: windowed blocks pad to 9 x 9 (the zero-padding quirk is exercised)
    ref = sa.ImageEncoderViT(
        img_size=128,
        patch_size=16,
        embed_dim=32,
        depth=3,
        num_heads=2,
        mlp_ratio=4,
        out_chans=16,
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=3,
        global_attn_indexes=(1,),
    )
    randomize(ref).double()
    tower = tiny_sam().double()
    # timm's VisionTransformerSAM would use eps 1e-5 in its blocks; segment_anything uses 1e-6
    assert tower.norm_eps == 1e-6 and all(b.norm1.eps == b.norm2.eps == 1e-6 for b in tower.model.blocks)
    tower.model.load_state_dict(sam_to_timm_state_dict(ref.state_dict()), strict=True)
    x = torch.randn(2, 3, 128, 128, dtype=torch.float64)
    out = tower(x)
    assert out.shape == (2, 16, 64) and tower.grid == (4, 4) and tower.width == 64
    want = official_lossless_downsample(ref(x))
    assert rel_rms(out, want) < 1e-12
    # and back: the timm keys convert to the segment_anything keys exactly
    assert set(timm_to_sam_state_dict(tower.model.state_dict())) == set(ref.state_dict())


def test_pool_grid_is_row_major_block_mean():
    torch.manual_seed(2)
    x = torch.randn(2, 16, 5, dtype=torch.float64)
    y = pool_grid(x, (4, 4), 2)
    grid = x.view(2, 4, 4, 5)
    for r in range(2):
        for c in range(2):
            want = grid[:, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2].mean((1, 2))
            assert torch.allclose(y[:, r * 2 + c], want, rtol=0, atol=1e-14)
    assert torch.equal(pool_grid(x, (4, 4), (4, 4)), x)
    # a size that does not divide: torch's adaptive pooling, as the official nn.AdaptiveAvgPool2d
    ad = torch.nn.AdaptiveAvgPool2d(3)(x.transpose(1, 2).reshape(2, 5, 4, 4)).flatten(2).transpose(1, 2)
    assert torch.allclose(pool_grid(x, (4, 4), 3), ad, rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="must not exceed"):
        pool_grid(x, (4, 4), 5)
    with pytest.raises(ValueError, match=r"\[b, 16, c\]"):
        pool_grid(x[:, :15], (4, 4), 2)


def test_multi_encoder_two_towers_concatenates_in_order():
    torch.manual_seed(3)
    enc = MultiEncoder({"siglip": tiny_siglip(), "sam": tiny_sam()}, frozen=False).double()
    randomize(enc)
    px = {"sam": torch.randn(2, 3, 128, 128, dtype=torch.float64), "siglip": torch.randn(2, 3, 56, 56).double()}
    out = enc(px)
    assert out.shape == (2, 16, 48 + 64) and enc.width == 112 and enc.grid == (4, 4) and enc.num_tokens == 16
    want = torch.cat([enc.towers["siglip"](px["siglip"]), enc.towers["sam"](px["sam"])], -1)
    assert torch.equal(out, want)
    assert torch.equal(enc([px["siglip"], px["sam"]]), out)  # a sequence in tower order
    pooled = MultiEncoder(dict(enc.towers), pool=(2, 2), frozen=False)
    assert torch.allclose(pooled(px), pool_grid(out, (4, 4), 2), rtol=0, atol=1e-14)
    assert pooled.grid == (2, 2) and pooled.num_tokens == 4
    assert all(p.requires_grad for p in enc.parameters())


def test_multi_encoder_frozen_by_default_and_bad_inputs():
    enc = tiny_visualrwkv7_encoder()
    assert enc.names == ["dino", "siglip", "sam"] and enc.width == 32 + 48 + 64 and enc.cls is None
    assert not any(p.requires_grad for p in enc.parameters())
    px = {n: torch.randn(1, 3, *s) for n, s in enc.image_sizes.items()}
    assert enc(px).shape == (1, 16, 144)
    with pytest.raises(ValueError, match=r"missing \['sam'\]"):
        enc({k: v for k, v in px.items() if k != "sam"})
    with pytest.raises(ValueError, match="same batch size"):
        enc({**px, "sam": torch.randn(2, 3, 128, 128)})
    with pytest.raises(ValueError, match=r"pixel_values\['dino'\].*56x56"):
        enc({**px, "dino": torch.randn(1, 3, 64, 64)})
    with pytest.raises(TypeError, match="dict tower name"):
        enc(torch.randn(1, 3, 56, 56))
    with pytest.raises(ValueError, match="same token grid"):
        MultiEncoder({"a": tiny_dino(), "b": tiny_sam(img_size=64)})
    with pytest.raises(ValueError, match="pool"):
        MultiEncoder({"a": tiny_dino()}, pool=8)
    with pytest.raises(TypeError, match="VisionTransformer"):
        ViTTower(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="VisionTransformerSAM"):
        SamTower(tiny_dino().model)
    with pytest.raises(ValueError, match="layer"):
        tiny_dino(layer=3)
    with pytest.raises(ValueError, match="timm model name"):
        timm_tower("not_a_model")
    with pytest.raises(ValueError, match="norm_eps"):
        tiny_sam(norm_eps=0)
    assert tiny_dino(norm_eps=1e-3).model.blocks[1].norm2.eps == 1e-3


def test_tagged_timm_names_as_the_official_code_writes_them():
    t = timm_tower("vit_large_patch14_reg4_dinov2.lvd142m", img_size=28, depth=2, embed_dim=16, num_heads=1)
    assert t.model.pretrained_cfg["architecture"] == "vit_large_patch14_reg4_dinov2" and t.grid == (2, 2)


def test_registered_and_full_size_structure_on_meta():
    assert "visualrwkv7-sam-dino-siglip" in ENCODERS and "tiny-sam-dino-siglip" in ENCODERS
    enc = create_encoder("visualrwkv7-sam-dino-siglip", device="meta")
    assert enc.widths == {"dino": 1024, "siglip": 1152, "sam": 1024} and enc.width == 3200
    assert enc.grid == (32, 32) and enc.num_tokens == 1024
    assert enc.image_sizes == {"dino": (448, 448), "siglip": (448, 448), "sam": (1024, 1024)}
    assert enc.towers["dino"].layer == 22 and enc.towers["siglip"].layer == 25
    assert enc.towers["dino"].model.num_prefix_tokens == 5 and enc.towers["siglip"].model.num_prefix_tokens == 0
    assert visualrwkv7_encoder(pool=4, device="meta").num_tokens == 16


def official_v7_keys_and_shapes(enc):
    """What the official v7.00 backbone's state dict holds for these towers: DINOv2/SigLIP as timm builds
    them, SAM as segment_anything's ImageEncoderViT (built here from the package, not from our code)."""
    sa = pytest.importorskip("segment_anything.modeling")
    sam_cfg = enc.towers["sam"].model
    out = {}
    for name in ("dino", "siglip"):
        out.update({f"vit.{name}_featurizer.{k}": v.shape for k, v in enc.towers[name].model.state_dict().items()})
    with torch.device("meta"):
        ref = sa.ImageEncoderViT(
            img_size=sam_cfg.patch_embed.img_size[0],
            patch_size=16,
            embed_dim=sam_cfg.embed_dim,
            depth=len(sam_cfg.blocks),
            num_heads=sam_cfg.blocks[0].attn.num_heads,
            mlp_ratio=4,
            out_chans=enc.towers["sam"].neck_chans,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=sam_cfg.blocks[0].window_size,
            global_attn_indexes=[i for i, b in enumerate(sam_cfg.blocks) if b.window_size == 0],
        )
    out.update({f"vit.sam_featurizer.{k}": v.shape for k, v in ref.state_dict().items()})
    return out


def test_full_size_keys_match_the_official_structure():
    enc = visualrwkv7_encoder(device="meta")
    official = official_v7_keys_and_shapes(enc)
    ours = {k: v.shape for k, v in encoder_to_v7_state_dict(enc).items()}
    assert ours == official
    assert "vit.sam_featurizer.blocks.0.mlp.lin1.weight" in ours
    assert ours["vit.siglip_featurizer.pos_embed"] == (1, 1024, 1152)
    assert ours["vit.dino_featurizer.pos_embed"] == (1, 1024, 1024)


def test_v7_converter_round_trip_and_strict_errors():
    torch.manual_seed(4)
    src = randomize(tiny_visualrwkv7_encoder())
    file = {f"x{k}": v for k, v in encoder_to_v7_state_dict(src, prefix="").items()}  # any prefix
    file = {k[1:]: v for k, v in file.items()}
    file = {"vit." + k: v for k, v in file.items()}
    file["rwkv.emb.weight"] = torch.zeros(3, 3)  # outside the prefix: ignored
    file["proj.gate.weight"] = torch.zeros(3, 3)
    dst = tiny_visualrwkv7_encoder()
    load_v7_vision_state_dict(dst, file)
    px = {n: torch.randn(1, 3, *s) for n, s in src.image_sizes.items()}
    assert torch.equal(dst(px), src(px))
    converted, unexpected = v7_to_encoder_state_dict(file, dst)
    assert unexpected == [] and set(converted) == set(dst.state_dict())

    bad = dict(file)
    del bad["vit.sam_featurizer.blocks.0.mlp.lin1.weight"]
    bad["vit.clip_featurizer.x"] = torch.zeros(1)
    bad["vit.dino_featurizer.extra"] = torch.zeros(1)
    bad["vit.siglip_featurizer.pos_embed"] = torch.zeros(1, 3, 48)
    with pytest.raises(StateDictError) as e:
        load_v7_vision_state_dict(tiny_visualrwkv7_encoder(), bad)
    assert e.value.missing == ["vit.sam_featurizer.blocks.0.mlp.lin1.weight"]
    assert sorted(e.value.unexpected) == ["vit.clip_featurizer.x", "vit.dino_featurizer.extra"]
    assert e.value.mismatched == [("vit.siglip_featurizer.pos_embed", (1, 3, 48), (1, 16, 48))]
    assert "vit.sam_featurizer.blocks.0.mlp.lin1.weight" in str(e.value)

    meta = tiny_visualrwkv7_encoder(device="meta")
    load_v7_vision_state_dict(meta, {k: v.bfloat16() for k, v in file.items()}, assign=True)
    assert {p.dtype for p in meta.parameters()} == {torch.bfloat16} and not any(
        p.requires_grad for p in meta.parameters()
    )
    meta.float()
    assert rel_rms(meta(px), src(px)) < 3e-2  # the same weights, rounded to bf16
    with pytest.raises(TypeError, match="MultiEncoder"):
        load_v7_vision_state_dict(torch.nn.Linear(2, 2), file)


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 2),
    c=st.integers(1, 3),
    rows=st.integers(1, 4),
    cols=st.integers(1, 4),
    f=st.integers(1, 3),
)
def test_space_to_depth_is_the_official_permutation_for_any_shape(b, c, rows, cols, f):
    x = torch.randn(b, c, rows * f, cols * f, dtype=torch.float64)
    y = space_to_depth(x, f)
    want = x.view(b, c, rows, f, cols, f).permute(0, 2, 4, 1, 3, 5).reshape(b, rows, cols, c * f * f)
    assert torch.equal(y.permute(0, 2, 3, 1), want)  # channel k*f*f + dy*f + dx at each block


@settings(max_examples=20, deadline=None)
@given(rows=st.integers(1, 5), cols=st.integers(1, 5), r=st.integers(1, 5), s=st.integers(1, 5))
def test_pool_grid_equals_adaptive_pooling_with_gradients(rows, cols, r, s):
    r, s = min(r, rows), min(s, cols)
    x = torch.randn(2, rows * cols, 3, dtype=torch.float64, requires_grad=True)
    y = pool_grid(x, (rows, cols), (r, s))
    ref = torch.nn.AdaptiveAvgPool2d((r, s))(x.transpose(1, 2).reshape(2, 3, rows, cols)).flatten(2).transpose(1, 2)
    assert torch.allclose(y, ref, rtol=0, atol=1e-14)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    (gr,) = torch.autograd.grad(ref, x, g)
    assert torch.allclose(gx, gr, rtol=0, atol=1e-14)
