"""Projectors: vision features -> language-model embedding space.

Shape legend: b batch, t time (image tokens), c channels (``in_features`` -> ``out_features``).

* :class:`LinearProjector` — VisualRWKV v6.0: one ``Linear(1024, C, bias=False)``; it subclasses
  ``nn.Linear``, so as ``model.proj`` its parameter is the official key ``proj.weight``.
* :class:`MLPProjector` — LLaVA-1.5's ``Linear -> GELU -> Linear``.
* :class:`GatedMLPProjector` — later VisualRWKV versions: ``x = proj(f); o_proj(x * sigmoid(gate(x)))``.
* :class:`ContextGatingProjector` — VisualRWKV v7.00's ``MLPWithContextGating``:
  ``ln_v(o_proj(f * sigmoid(gate(f))))``.

Each is registered by name in :data:`PROJECTORS` (``"linear"``, ``"mlp"``/``"mlp2x_gelu"``, ``"gated_mlp"``,
``"context_gating"``),
which :func:`create_projector` and ``config.json`` read. (This module was ``rwkv_vision.layers.projector``.)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..registry import Registry

__all__ = [
    "Projector",
    "LinearProjector",
    "MLPProjector",
    "GatedMLPProjector",
    "ContextGatingProjector",
    "create_projector",
    "PROJECTORS",
]


def _check_features(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _projector_key(name: str) -> str:
    return name.lower().replace("-", "_")


#: Projector classes by name (``@PROJECTORS.register("name")`` next to each class); case-insensitive, "-" = "_".
PROJECTORS: Registry[type[nn.Module]] = Registry("projector", normalize=_projector_key)


class Projector(nn.Module):
    """Base class: ``forward(features [b, t, in_features]) -> [b, t, out_features]`` (any leading dims)."""

    in_features: int
    out_features: int

    def _check_input(self, features: torch.Tensor) -> None:
        if not isinstance(features, torch.Tensor) or features.dim() < 1 or features.shape[-1] != self.in_features:
            raise ValueError(
                f"features must be a tensor [..., {self.in_features}], got {getattr(features, 'shape', type(features).__name__)}"
            )

    def _set_widths(self, in_features: Any, out_features: Any, hidden_features: Any) -> int:
        """Check and record the widths; the hidden width (default ``out_features``)."""
        self.in_features = _check_features("in_features", in_features)
        self.out_features = _check_features("out_features", out_features)
        return out_features if hidden_features is None else _check_features("hidden_features", hidden_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


@PROJECTORS.register("linear")
class LinearProjector(nn.Linear, Projector):
    """``Linear(in_features, out_features, bias=False)`` (VisualRWKV v6.0).

    It *is* an ``nn.Linear`` (parameter ``weight`` [out_features, in_features]), so a model holding it as
    ``self.proj`` has the official key ``proj.weight`` and loads the released checkpoint unchanged.

    Args:
        in_features: vision width (1024 for CLIP ViT-L/14).
        out_features: LM width C.
        bias: add a bias (False in v6.0).
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = False, device=None, dtype=None):
        _check_features("in_features", in_features)
        _check_features("out_features", out_features)
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        self._check_input(features)
        return super().forward(features)

    def extra_repr(self) -> str:
        return nn.Linear.extra_repr(self)


@PROJECTORS.register("mlp", aliases=("mlp2x_gelu",))
class MLPProjector(Projector):
    """LLaVA-1.5's ``mlp2x_gelu``: ``Linear(in, hidden) -> GELU -> Linear(hidden, out)``, with biases.

    Args:
        in_features, out_features: input / output widths.
        hidden_features: defaults to ``out_features`` (as in LLaVA).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        hidden_features: int | None = None,
        bias: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        hidden = self._set_widths(in_features, out_features, hidden_features)
        self.fc1 = nn.Linear(in_features, hidden, bias=bias, device=device, dtype=dtype)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_features, bias=bias, device=device, dtype=dtype)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        self._check_input(features)
        return self.fc2(self.act(self.fc1(features)))


@PROJECTORS.register("gated_mlp")
class GatedMLPProjector(Projector):
    """``x = proj(features); o_proj(x * sigmoid(gate(x)))`` (later VisualRWKV versions), no biases.

    Args:
        in_features, out_features: input / output widths.
        hidden_features: width of ``x``; defaults to ``out_features``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        hidden_features: int | None = None,
        bias: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        hidden = self._set_widths(in_features, out_features, hidden_features)
        self.proj = nn.Linear(in_features, hidden, bias=bias, device=device, dtype=dtype)
        self.gate = nn.Linear(hidden, hidden, bias=bias, device=device, dtype=dtype)
        self.o_proj = nn.Linear(hidden, out_features, bias=bias, device=device, dtype=dtype)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        self._check_input(features)
        x = self.proj(features)
        return self.o_proj(x * torch.sigmoid(self.gate(x)))


@PROJECTORS.register("context_gating", aliases=("mlp_with_context_gating",))
class ContextGatingProjector(Projector):
    """VisualRWKV v7.00's projector (``MLPWithContextGating``, its ``--proj_type mlp``):
    ``ln_v(o_proj(features * sigmoid(gate(features))))``.

    Parameters as the official ``proj.*`` keys: ``gate.weight`` [in, in] and ``o_proj.weight`` [out, in]
    (no biases), ``ln_v.weight`` / ``ln_v.bias`` [out] (a ``LayerNorm`` with torch's default eps 1e-5).

    Args:
        in_features: vision width (3200 for dino | siglip | sam).
        out_features: LM width C.
        bias: biases on ``gate`` and ``o_proj`` (False in v7.00).
        eps: ``ln_v``'s eps (1e-5 in v7.00).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = False,
        eps: float = 1e-5,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self._set_widths(in_features, out_features, None)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise ValueError(f"eps must be a number in (0, 1), got {eps!r}")
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be a bool, got {type(bias).__name__}")
        self.gate = nn.Linear(in_features, in_features, bias=bias, device=device, dtype=dtype)
        self.o_proj = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.ln_v = nn.LayerNorm(out_features, eps=float(eps), device=device, dtype=dtype)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        self._check_input(features)
        return self.ln_v(self.o_proj(features * torch.sigmoid(self.gate(features))))


def create_projector(name_or_cls: str | type[Projector], **kwargs: Any) -> Projector:
    """Build a projector from a name registered in :data:`PROJECTORS` (``"linear"``, ``"mlp"``/``"mlp2x_gelu"``,
    ``"gated_mlp"``, ``"context_gating"``, or your own) or a class.

    ``kwargs`` go to the constructor (``in_features``, ``out_features``, ``device``, ``dtype``, ...).
    """
    if isinstance(name_or_cls, str):
        if name_or_cls not in PROJECTORS:
            raise ValueError(
                f"name_or_cls: unknown projector {name_or_cls!r}; expected one of {sorted(PROJECTORS)} or a class"
            )
        cls = PROJECTORS.get(name_or_cls)
    elif isinstance(name_or_cls, type) and issubclass(name_or_cls, nn.Module):
        cls = name_or_cls
    else:
        raise TypeError(f"name_or_cls must be a projector name or an nn.Module subclass, got {name_or_cls!r}")
    return cls(**kwargs)
