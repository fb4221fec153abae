"""Projectors against float64 references written from their definitions."""

from __future__ import annotations

import pytest
import torch

from rwkv_vision.vision.projector import (
    GatedMLPProjector,
    LinearProjector,
    MLPProjector,
    create_projector,
)


def rel_rms(a, b):
    return ((a.double() - b.double()).pow(2).mean() / b.double().pow(2).mean()).sqrt().item()


def randomize(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
    return module


def test_linear_projector_is_the_official_proj():
    proj = randomize(LinearProjector(16, 8))
    assert set(proj.state_dict()) == {"weight"} and proj.weight.shape == (8, 16)
    holder = torch.nn.Module()
    holder.proj = proj
    assert set(holder.state_dict()) == {"proj.weight"}  # the released checkpoint's key
    x = torch.randn(2, 5, 16)
    ref = x.double() @ proj.weight.double().t()
    assert rel_rms(proj(x), ref) < 1e-6


def test_mlp_projector_reference():
    proj = randomize(MLPProjector(16, 8, hidden_features=12))
    x = torch.randn(2, 5, 16)
    w1, b1, w2, b2 = (p.double() for p in (proj.fc1.weight, proj.fc1.bias, proj.fc2.weight, proj.fc2.bias))
    h = x.double() @ w1.t() + b1
    h = 0.5 * h * (1 + torch.erf(h / 2**0.5))
    assert rel_rms(proj(x), h @ w2.t() + b2) < 1e-6
    assert MLPProjector(4, 6).fc1.out_features == 6  # hidden defaults to out_features (LLaVA)


def test_gated_mlp_projector_reference():
    proj = randomize(GatedMLPProjector(16, 8, hidden_features=10))
    assert set(proj.state_dict()) == {"proj.weight", "gate.weight", "o_proj.weight"}
    x = torch.randn(3, 16)
    h = x.double() @ proj.proj.weight.double().t()
    g = torch.sigmoid(h @ proj.gate.weight.double().t())
    assert rel_rms(proj(x), (h * g) @ proj.o_proj.weight.double().t()) < 1e-6


def test_factory_device_dtype_and_errors():
    p = create_projector("linear", in_features=4, out_features=6, dtype=torch.float64, device="cpu")
    assert isinstance(p, LinearProjector) and p.weight.dtype == torch.float64
    assert isinstance(create_projector("mlp2x_gelu", in_features=4, out_features=6), MLPProjector)
    assert isinstance(create_projector(GatedMLPProjector, in_features=4, out_features=6), GatedMLPProjector)
    assert create_projector("gated-mlp", in_features=4, out_features=6, device="meta").proj.weight.is_meta
    with pytest.raises(ValueError, match="name_or_cls: unknown projector 'conv'"):
        create_projector("conv", in_features=4, out_features=6)
    with pytest.raises(ValueError, match="in_features must be a positive int"):
        LinearProjector(0, 4)
    with pytest.raises(ValueError, match=r"features must be a tensor \[\.\.\., 4\]"):
        create_projector("gated_mlp", in_features=4, out_features=6)(torch.randn(2, 5))


def test_context_gating_projector_is_v7_mlp_with_context_gating():
    torch.manual_seed(5)
    proj = randomize(create_projector("context_gating", in_features=12, out_features=7)).double()
    assert create_projector("mlp_with_context_gating", in_features=3, out_features=2).__class__ is type(proj)
    shapes = {k: tuple(v.shape) for k, v in proj.state_dict().items()}
    assert shapes == {"gate.weight": (12, 12), "o_proj.weight": (7, 12), "ln_v.weight": (7,), "ln_v.bias": (7,)}
    assert proj.ln_v.eps == 1e-5
    x = torch.randn(2, 5, 12, dtype=torch.float64, requires_grad=True)
    out = proj(x)
    sd = {k: v.detach().clone().requires_grad_(True) for k, v in proj.state_dict().items()}
    xr = x.detach().clone().requires_grad_(True)
    h = (xr * torch.sigmoid(xr @ sd["gate.weight"].t())) @ sd["o_proj.weight"].t()
    mu = h.mean(-1, keepdim=True)
    var = ((h - mu) ** 2).mean(-1, keepdim=True)
    ref = (h - mu) / torch.sqrt(var + 1e-5) * sd["ln_v.weight"] + sd["ln_v.bias"]
    assert rel_rms(out, ref) < 1e-13
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    assert rel_rms(x.grad, xr.grad) < 1e-12
    for k, p in proj.named_parameters():
        assert rel_rms(p.grad, sd[k].grad) < 1e-12, k
    with pytest.raises(ValueError, match=r"\[\.\.\., 12\]"):
        proj(torch.randn(2, 11, dtype=torch.float64))
    with pytest.raises(ValueError, match="eps"):
        create_projector("context_gating", in_features=3, out_features=2, eps=0)
    with pytest.raises(ValueError, match="in_features"):
        create_projector("context_gating", in_features=0, out_features=2)
