"""examples/vision_rwkv_vit.py: a timm ViT with RWKV-6 scanned mixers trains, and its scan and CLS layout do what
the example says."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from reference.fixtures import one_cpu_thread  # noqa: F401

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "vision_rwkv_vit.py"

pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # main() sets one thread; the fixture restores it


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("vision_rwkv_vit_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_trains_and_every_mixer_parameter_gets_a_gradient(example):
    result = example.main(["--steps", "10", "--seed", "0"])
    losses = result["losses"]
    assert len(losses) == 10
    assert sum(losses[-3:]) / 3 < 0.85 * sum(losses[:3]) / 3, losses
    assert 0.0 <= result["accuracy"] <= 1.0

    model = result["model"]
    mixers = [blk.attn.mix for blk in model.vit.blocks]
    assert all(type(m).__name__ == "TimeMix" for m in mixers)
    for i, mix in enumerate(mixers):
        for name, p in mix.named_parameters():
            assert p.grad is not None, f"blocks.{i}.attn.mix.{name} got no gradient"
            assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"blocks.{i}.attn.mix.{name}"
    # timm's parts are kept: the MLPs and norms are still timm's and still trained.
    assert type(model.vit.blocks[0].mlp).__module__.startswith("timm")
    assert model.vit.blocks[0].mlp.fc1.weight.grad is not None


@pytest.mark.parametrize("cls", ["first", "last"])
def test_scan_policy_changes_the_output_but_never_moves_cls(example, cls):
    model = example.build_model(scan="unidir", cls=cls, seed=0).eval()
    x = images()
    with torch.no_grad():
        uni = model(x)
        model.scan = "bidir"  # same weights, another reading order
        bi = model(x)
    assert not torch.allclose(uni, bi, rtol=0, atol=1e-5), (uni - bi).abs().max()

    # What each mixer receives (permuted) against what its block handed it (row-major).
    seen = {}
    for i, blk in enumerate(model.vit.blocks):
        blk.attn.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(("in", i), args[0].clone()))
        blk.attn.mix.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(("mix", i), args[0].clone()))
    with torch.no_grad():
        model(x)
    t = 17
    cls_pos, patches = (0, slice(1, t)) if cls == "first" else (t - 1, slice(0, t - 1))
    for i in range(len(model.vit.blocks)):
        before, after = seen[("in", i)], seen[("mix", i)]
        assert torch.equal(after[:, cls_pos], before[:, cls_pos])  # CLS untouched at every layer
        expected = before[:, patches] if i % 2 == 0 else before[:, patches].flip(1)  # BiDir: odd layers reversed
        assert torch.equal(after[:, patches], expected)


def test_cls_last_puts_the_class_token_last_and_it_reads_every_patch(example):
    model = example.build_model(cls="last", seed=0).eval()
    vit = model.vit
    x = images()
    with torch.no_grad():
        tokens = model.tokens(x)  # what the first block reads
        assert tokens.shape == (2, 17, vit.embed_dim)
        cls_embedding = (vit.cls_token + vit.pos_embed[:, :1])[0, 0]  # timm's CLS with its position embedding
        assert torch.equal(tokens[0, -1], cls_embedding) and torch.equal(tokens[1, -1], cls_embedding)
        assert not torch.allclose(tokens[:, 0], cls_embedding.expand(2, -1))
        assert all(blk.attn.span.cls == "last" and blk.attn.span.patch_stop == 16 for blk in vit.blocks)

        # The CLS output depends on the image: it has read every patch (here a change in the first patch
        # row-major, which layer 1 of BiDir reads last before CLS and layer 0 reads first).
        y = x.clone()
        y[:, :, :8, :8] += 1.0
        out_x, out_y = vit.blocks(model.tokens(x)), vit.blocks(model.tokens(y))
        assert (out_x[:, -1] - out_y[:, -1]).abs().max() > 1e-4


def test_cls_first_is_read_before_every_patch(example):
    """Why the example pools the patch mean with cls="first": the CLS output never depends on the image."""
    model = example.build_model(cls="first", seed=0).eval()
    with torch.no_grad():
        out = model.vit.blocks(model.tokens(torch.cat([images(1, seed=1), images(1, seed=2)])))
    assert torch.allclose(out[0, 0], out[1, 0], rtol=0, atol=1e-6)
    assert not torch.allclose(out[0, 1:], out[1, 1:])
