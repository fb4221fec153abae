"""config.json sections of the v7.00 components: multi-tower encoder, per-tower preprocessing, the
context-gating projector and the image-run prompt layout survive a JSON round trip, and bad files fail with
a CheckpointError naming the field."""

from __future__ import annotations

import json

import pytest
import torch

from rwkv_vision.errors import CheckpointError
from rwkv_vision.prompt import ImageFirstRun
from rwkv_vision.sections import (
    _fingerprint,
    encoder_from_config,
    encoder_to_config,
    layout_from_config,
    layout_to_config,
    preprocessor_from_config,
    preprocessor_to_config,
    projector_from_config,
    projector_to_config,
)
from rwkv_vision.vision import (
    ContextGatingProjector,
    MultiEncoder,
    MultiImagePreprocessor,
    SquareResize,
    timm_tower,
    tiny_visualrwkv7_encoder,
    visualrwkv7_encoder,
    visualrwkv7_preprocessor,
)


def through_json(data):
    return json.loads(json.dumps(data))


def same_structure(a: MultiEncoder, b: MultiEncoder):
    assert a.names == b.names and a.grid == b.grid and a.width == b.width and a.pool == b.pool
    for name in a.names:
        assert _fingerprint(a.towers[name].model) == _fingerprint(b.towers[name].model), name
        assert type(a.towers[name]) is type(b.towers[name])
        assert getattr(a.towers[name], "layer", None) == getattr(b.towers[name], "layer", None)
        assert getattr(a.towers[name], "factor", None) == getattr(b.towers[name], "factor", None)


def test_tiny_multi_encoder_round_trip_and_same_outputs():
    torch.manual_seed(0)
    enc = tiny_visualrwkv7_encoder(pool=2)
    data = through_json(encoder_to_config(enc))
    assert data["kind"] == "multi" and [t["name"] for t in data["towers"]] == ["dino", "siglip", "sam"]
    assert data["towers"][2]["norm_eps"] == 1e-6 and data["towers"][2]["factor"] == 2
    assert data["pool"] == [2, 2] and data["frozen"] is True
    back = encoder_from_config(data)
    same_structure(enc, back)
    assert not any(p.requires_grad for p in back.parameters())
    back.load_state_dict(enc.state_dict())
    px = {n: torch.randn(1, 3, *s) for n, s in enc.image_sizes.items()}
    assert torch.equal(back(px), enc(px))


def test_full_size_v7_encoder_round_trip_on_meta():
    enc = visualrwkv7_encoder(device="meta")
    data = through_json(encoder_to_config(enc))
    sam = data["towers"][2]
    assert sam["timm_model"] == "samvit_base_patch16" and sam["timm_kwargs"]["img_size"] == [1024, 1024]
    assert data["towers"][0]["layer"] == 22 and data["towers"][1]["layer"] == 25
    same_structure(enc, encoder_from_config(data, device="meta"))


def test_two_tower_encoder_with_other_timm_models():
    enc = MultiEncoder(
        {
            "siglip2": timm_tower(
                "vit_base_patch16_siglip_384.v2_webli", img_size=64, depth=2, embed_dim=32, num_heads=2
            ),
            "sam": timm_tower(
                "samvit_base_patch16",
                img_size=128,
                depth=2,
                embed_dim=32,
                num_heads=2,
                window_size=4,
                global_attn_indexes=(1,),
                neck_chans=8,
            ),
        },
        frozen=False,
    )
    data = through_json(encoder_to_config(enc))
    assert data["frozen"] is False
    back = encoder_from_config(data)
    same_structure(enc, back)
    assert all(p.requires_grad for p in back.parameters())


def test_bad_multi_encoder_sections():
    data = through_json(encoder_to_config(tiny_visualrwkv7_encoder()))

    def bad(change, match):
        d = json.loads(json.dumps(data))
        change(d)
        with pytest.raises(CheckpointError, match=match):
            encoder_from_config(d, device="meta")

    bad(lambda d: d["towers"][0].update(type="cnn"), r"towers\[0\]\.type")
    bad(lambda d: d["towers"][2]["timm_kwargs"].update(depth=10**9), "depth")
    bad(lambda d: d["towers"][2]["timm_kwargs"].update(global_attn_indexes=[7]), "global_attn_indexes")
    bad(lambda d: d["towers"][2]["timm_kwargs"].update(evil=1), "unknown SAM argument")
    bad(lambda d: d["towers"][0]["timm_kwargs"].update(img_size=10**6), "img_size")
    bad(lambda d: d["towers"][0].update(layer=99), "layer")
    bad(lambda d: d["towers"][1].update(timm_model="os.system"), "timm model name")
    bad(lambda d: d["towers"][1].update(norm_eps="small"), "norm_eps")
    bad(lambda d: d["towers"][1].update(name="dino"), "used twice")
    bad(lambda d: d.update(pool=[0, 1]), "pool")
    bad(lambda d: d.update(towers=[]), "1..8 towers")
    bad(lambda d: d["towers"][0]["timm_kwargs"].update(img_size=[112, 112]), "same token grid")
    bad(lambda d: d.pop("frozen"), "frozen is missing")


def test_multi_preprocessor_round_trip_and_errors():
    pre = visualrwkv7_preprocessor()
    data = through_json(preprocessor_to_config(pre))
    assert list(data["towers"]) == ["dino", "siglip", "sam"]
    back = preprocessor_from_config(data)
    assert isinstance(back, MultiImagePreprocessor) and back == pre
    custom = MultiImagePreprocessor({"a": SquareResize((20, 30), resample="bilinear")}, alpha="white")
    assert preprocessor_from_config(through_json(preprocessor_to_config(custom))) == custom
    data["towers"]["sam"]["size"] = [0, 0]
    with pytest.raises(CheckpointError, match=r"towers\['sam'\]"):
        preprocessor_from_config(data)
    with pytest.raises(CheckpointError, match="1..8 towers"):
        preprocessor_from_config({"towers": {}, "alpha": "drop"})


def test_context_gating_projector_round_trip():
    proj = ContextGatingProjector(3200, 768, eps=1e-6, device="meta")
    data = through_json(projector_to_config(proj))
    assert data == {"type": "context_gating", "in_features": 3200, "out_features": 768, "bias": False, "eps": 1e-6}
    back = projector_from_config(data, device="meta")
    assert isinstance(back, ContextGatingProjector) and back.ln_v.eps == 1e-6
    assert {k: v.shape for k, v in back.state_dict().items()} == {k: v.shape for k, v in proj.state_dict().items()}
    with pytest.raises(CheckpointError, match="eps"):
        projector_from_config({**data, "eps": 2})
    with pytest.raises(CheckpointError, match="hidden_features"):
        projector_from_config({**data, "hidden_features": 5})


def test_image_first_run_layout_round_trip():
    layout = ImageFirstRun(image_token_id=65000)
    data = through_json(layout_to_config(layout))
    assert data["name"] == "image_first_run" and data["image_token_id"] == 65000
    back = layout_from_config(data)
    assert isinstance(back, ImageFirstRun) and back.image_token_id == 65000 and back.image_grid == (32, 32)
    with pytest.raises(CheckpointError, match="image_token_id"):
        layout_from_config({**data, "image_token_id": -1})
    with pytest.raises(CheckpointError, match="unknown field"):
        layout_from_config({**data, "instruction": "x"})
