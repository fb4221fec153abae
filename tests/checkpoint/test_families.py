"""The released VisualRWKV families are recognised by keys and shapes alone, strictly."""

from __future__ import annotations

import pytest
import torch

from rwkv_vision.checkpoint.families import FAMILIES, check_family, detect_family, split_parts, tower_widths
from rwkv_vision.errors import StateDictError

from reference.visualrwkv7_ref import tiny_family_checkpoint

NAMES = ("v6.0", "hd", "uhd", "v7.00")


@pytest.fixture(scope="module")
def files():
    return {name: tiny_family_checkpoint(name) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_each_family_is_recognised(files, name):
    assert detect_family(files[name]).name == name
    assert check_family(files[name], name) is FAMILIES[name]


def test_shapes_alone_suffice(files):
    """describe/info reads the shapes of a file without its data: meta tensors work as well as real ones."""
    meta = {k: torch.empty(v.shape, device="meta") for k, v in files["uhd"].items()}
    assert detect_family(meta).name == "uhd"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("other", NAMES)
def test_a_file_fits_no_other_family(files, name, other):
    if name == other:
        return
    with pytest.raises(StateDictError) as err:
        check_family(files[name], other)
    assert f"not a VisualRWKV {other} checkpoint" in str(err.value)
    e = err.value
    assert e.missing or e.unexpected or e.mismatched


def test_hd_and_uhd_differ_by_projector_width(files):
    with pytest.raises(StateDictError) as err:
        check_family(files["hd"], "uhd")
    (key, got, want) = err.value.mismatched[0]
    assert key == "proj.proj.weight" and want[1] == 2 * got[1]


def test_tower_widths(files):
    assert tower_widths(files["v7.00"]) == {"dino": 16, "siglip": 24, "sam": 32}


def test_v7_with_an_x060_key_names_the_family_and_the_key(files):
    sd = dict(files["v7.00"])
    sd["rwkv.blocks.1.att.time_faaaa"] = torch.zeros(4, 8)
    with pytest.raises(StateDictError) as err:
        detect_family(sd)
    assert "closest is v7.00" in str(err.value)
    assert err.value.unexpected == ["rwkv.blocks.1.att.time_faaaa"]


def test_v7_without_a_tower_or_with_a_stray_key(files):
    sd = {k: v for k, v in files["v7.00"].items() if not k.startswith("vit.sam_featurizer.")}
    sd["extra.thing"] = torch.zeros(1)
    with pytest.raises(StateDictError) as err:
        check_family(sd, "v7.00")
    e = err.value
    assert "vit.sam_featurizer.neck.0.weight" in e.missing and "extra.thing" in e.unexpected


def test_v7_projector_shape_is_checked(files):
    sd = dict(files["v7.00"])
    sd["proj.gate.weight"] = torch.zeros(10, 10)
    with pytest.raises(StateDictError) as err:
        check_family(sd, "v7.00")
    assert err.value.mismatched == [("proj.gate.weight", (10, 10), (72, 72))]


def test_not_visualrwkv_at_all():
    with pytest.raises(StateDictError, match="no 'rwkv.\\*' keys"):
        detect_family({"weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="family must be one of"):
        check_family({}, "v8")


def test_split_parts(files):
    parts = split_parts(files["v7.00"], "v7.00")
    assert set(parts) == {"rwkv", "proj", "dino", "siglip", "sam"}
    assert "emb.weight" in parts["rwkv"] and "blocks.0.att.r_k" in parts["rwkv"]
    assert set(parts["proj"]) == {"gate.weight", "o_proj.weight", "ln_v.weight", "ln_v.bias"}
    assert "reg_token" in parts["dino"] and "attn_pool.latent" in parts["siglip"] and "neck.0.weight" in parts["sam"]
    assert sum(len(p) for p in parts.values()) == len(files["v7.00"])
    v6 = split_parts(files["v6.0"], "v6.0")
    assert set(v6) == {"rwkv", "proj", "clip"} and set(v6["proj"]) == {"weight"}


def test_a_released_size_v700_file_is_recognised_and_sized_from_shapes():
    """The shapes of VisualRWKV-v0700-0B1 (RWKV-7 L12 C768, the DINOv2-L / SigLIP-so400m / SAM-B towers at
    448 / 448 / 1024 px), on the meta device: the family, the encoder and every LoRA rank from the shapes."""
    from rwkv_vision import RWKV7, VisualRWKV
    from rwkv_vision.checkpoint.pretrained import load_released_state_dict
    from rwkv_vision.vision import visualrwkv7_encoder
    from rwkv_vision.vision.projector import ContextGatingProjector

    enc = visualrwkv7_encoder(device="meta")
    lm = RWKV7(n_layer=12, n_embd=768, head_size=64, vocab_size=65536, device="meta")
    proj = ContextGatingProjector(enc.width, 768, device="meta")
    model = VisualRWKV(rwkv=lm, encoder=enc, proj=proj, scan="unidir", layout="visualrwkv7", pad_to_multiple=16)
    sd = model.official_state_dict()
    assert not any(k.startswith("rwkv.blocks.0.att.v") and k[-2:] in ("v0", "v1", "v2") for k in sd)
    assert detect_family(sd).name == "v7.00" and tower_widths(sd) == {"dino": 1024, "siglip": 1152, "sam": 1024}
    assert tuple(sd["proj.gate.weight"].shape) == (3200, 3200)
    loaded = load_released_state_dict(sd)  # meta tensors: sizes only
    assert loaded.rwkv.config == lm.config and (loaded.rwkv.config.d_w, loaded.rwkv.config.d_g) == (64, 128)
    assert loaded.image_tokens == 1024 and loaded.pad_to_multiple == 16
    assert loaded.image_preprocessor.transforms["sam"].size == (1024, 1024)
