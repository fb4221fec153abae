"""Model configurations: one frozen dataclass per model, the single source of its hyperparameters.

The constructor of each model takes its config (``RWKV6(config)``), the registry of named sizes holds
configs (``models.registry``), and ``config.json`` is written from and read into them (``to_dict`` /
``from_dict``, with the checks named here, so a bad file fails with the field and the expected range).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from ..layers.channel_mix import default_dim_ffn

__all__ = ["RWKV6Config", "RWKV7Config", "VisualRWKVConfig", "ConfigError"]

#: Upper bounds a config read from a file must respect: far above every released model, far below what
#: would make building it allocate without bound.
LIMITS = dict(
    n_layer=1024, n_embd=65536, head_size=4096, dim_ffn=1 << 20, d_mix=65536, d_decay=65536, vocab_size=1 << 24
)


def _check_int(owner: str, name: str, value: Any, *, low: int = 1, high: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{owner}.{name} must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        upper = f" and <= {high}" if high is not None else ""
        raise ConfigError(f"{owner}.{name} must be >= {low}{upper}, got {value}")


def _check_fields(cls: type, data: Mapping[str, Any], source: str) -> None:
    """Every field of the dataclass ``cls`` present in ``data``, and nothing else (a newer writer's field
    must not be silently dropped)."""
    fields = [f.name for f in dataclasses.fields(cls)]
    problems = [f"{source}.{k} is missing" for k in fields if k not in data]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        problems.append(f"{source} has unknown field(s) {unknown} (expected {fields})")
    if problems:
        raise ConfigError("; ".join(problems))


class _LanguageModelConfig:
    """What :class:`RWKV6Config` and :class:`RWKV7Config` share: the size checks, ``n_head`` and the
    ``config.json`` round trip (a mixin of the two frozen dataclasses; not a config itself)."""

    def _check_heads_and_ffn(self, owner: str, default_dim_ffn: int) -> None:
        """n_embd a multiple of head_size; dim_ffn resolved from ``default_dim_ffn`` when None, then bounded."""
        if self.n_embd % self.head_size != 0:
            raise ConfigError(f"{owner}: n_embd ({self.n_embd}) must be a multiple of head_size ({self.head_size})")
        if self.dim_ffn is None:
            object.__setattr__(self, "dim_ffn", default_dim_ffn)
        _check_int(owner, "dim_ffn", self.dim_ffn, high=LIMITS["dim_ffn"])

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size

    def replace(self, **changes: Any) -> "_LanguageModelConfig":
        """A copy with ``changes`` applied (and checked)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON values (the ``rwkv`` section of config.json)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "rwkv") -> "_LanguageModelConfig":
        """Read the ``to_dict`` form; unknown or missing fields and bad values raise ``ConfigError`` naming
        ``source`` and the field."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source} must be an object, got {type(data).__name__}")
        _check_fields(cls, data, source)
        try:
            return cls(**data)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None


@dataclasses.dataclass(frozen=True)
class RWKV6Config(_LanguageModelConfig):
    """The hyperparameters of an :class:`~rwkv_vision.models.RWKV6` language model.

    Attributes:
        n_layer: number of blocks.
        n_embd: channels c (a multiple of head_size).
        head_size: n, channels per head (the CUDA kernel takes 32, 64, 128; the CPU kernel any).
        dim_ffn: channel-mix hidden size; None gives the official int(3.5*c)//32*32 (resolved on creation).
        d_mix, d_decay: ranks of the token-shift and decay LoRAs.
        vocab_size: v.
        data_dependent_lerp, data_dependent_decay: False gives the static RWKV-5-style variants (ablation).
    """

    n_layer: int
    n_embd: int
    head_size: int = 64
    dim_ffn: int | None = None
    d_mix: int = 32
    d_decay: int = 64
    vocab_size: int = 65536
    data_dependent_lerp: bool = True
    data_dependent_decay: bool = True

    def __post_init__(self) -> None:
        owner = "RWKV6Config"
        for name in ("n_layer", "n_embd", "head_size", "d_mix", "d_decay", "vocab_size"):
            _check_int(owner, name, getattr(self, name), high=LIMITS[name])
        for name in ("data_dependent_lerp", "data_dependent_decay"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{owner}.{name} must be True or False, got {getattr(self, name)!r}")
        self._check_heads_and_ffn(owner, default_dim_ffn(self.n_embd))


@dataclasses.dataclass(frozen=True)
class RWKV7Config(_LanguageModelConfig):
    """The hyperparameters of an :class:`~rwkv_vision.models.RWKV7` ("x070", "Goose") language model.

    Attributes:
        n_layer: number of blocks.
        n_embd: channels c (a multiple of head_size).
        head_size: n, channels per head (64 in every released model).
        dim_ffn: channel-mix hidden size; None gives the official 4c (resolved on creation).
        d_w, d_a, d_v, d_g: ranks of the decay, in-context-rate, value-residual and gate LoRAs; None gives the
            official training code's suggestion for c (resolved on creation; 64, 64, 32, 128 at c = 768).
            Released models differ from the suggestion, so a loader reads them from the tensor shapes.
        vocab_size: v.
    """

    n_layer: int
    n_embd: int
    head_size: int = 64
    dim_ffn: int | None = None
    d_w: int | None = None
    d_a: int | None = None
    d_v: int | None = None
    d_g: int | None = None
    vocab_size: int = 65536

    #: The official name of this architecture (checkpoint format) and the config.json ``architecture`` value.
    architecture = "rwkv7"
    official_version = "x070"

    def __post_init__(self) -> None:
        from ..layers.time_mix7 import default_lora_sizes7

        owner = "RWKV7Config"
        for name in ("n_layer", "n_embd", "head_size", "vocab_size"):
            _check_int(owner, name, getattr(self, name), high=LIMITS[name])
        self._check_heads_and_ffn(owner, 4 * self.n_embd)
        defaults = default_lora_sizes7(self.n_embd)
        for name in ("d_w", "d_a", "d_v", "d_g"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, defaults[name])
            _check_int(owner, name, getattr(self, name), high=LIMITS["d_decay"])


def _frozen_section(owner: str, name: str, value: Any) -> Mapping[str, Any]:
    import json
    import types

    if not isinstance(value, Mapping):
        raise ConfigError(f"{owner}.{name} must be an object (a dict of JSON values), got {type(value).__name__}")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{owner}.{name} must hold JSON values only ({e})") from None
    return types.MappingProxyType(dict(value))


@dataclasses.dataclass(frozen=True)
class VisualRWKVConfig:
    """The hyperparameters of a :class:`~rwkv_vision.models.VisualRWKV`: its language model and the
    sections that describe its parts in ``config.json`` (read-only mappings of JSON values; their formats
    are those of :mod:`rwkv_vision.checkpoint.config_json`).

    Attributes:
        rwkv: the language model's :class:`RWKV6Config` or :class:`RWKV7Config` (which one picks the
            architecture).
        encoder: the vision tower(s) (timm model name and arguments, feature layer, CLS position, frozen).
        projector: ``type`` (a registered projector name), ``in_features``, ``out_features``, options.
        scan: ``name`` (a registered scan policy) and its options.
        layout: ``name`` (a registered prompt layout), roles and instruction; the processor uses it.
        padding: None, or ``{"multiple": m, "token": id}``: a fresh sequence is left-padded with the embedding
            of ``token`` up to a multiple of m before the blocks (the official v7.00 forward: 16 and 261).

    ``to_dict`` adds ``"architecture": "rwkv7"`` for an RWKV-7 language model and ``"padding"`` when set; a
    dict without them describes an RWKV-6 model without padding (the form every earlier file has).
    """

    rwkv: Any
    encoder: Mapping[str, Any]
    projector: Mapping[str, Any]
    scan: Mapping[str, Any]
    layout: Mapping[str, Any]
    padding: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.rwkv, (RWKV6Config, RWKV7Config)):
            raise ConfigError(
                f"VisualRWKVConfig.rwkv must be an RWKV6Config or an RWKV7Config, got {type(self.rwkv).__name__}"
            )
        for name in ("encoder", "projector", "scan", "layout"):
            object.__setattr__(self, name, _frozen_section("VisualRWKVConfig", name, getattr(self, name)))
        if self.padding is not None:
            padding = _frozen_section("VisualRWKVConfig", "padding", self.padding)
            if set(padding) != {"multiple", "token"}:
                raise ConfigError(
                    f"VisualRWKVConfig.padding must have exactly 'multiple' and 'token', got {sorted(padding)}"
                )
            _check_int("VisualRWKVConfig.padding", "multiple", padding["multiple"], low=2, high=1 << 16)
            _check_int("VisualRWKVConfig.padding", "token", padding["token"], low=0, high=LIMITS["vocab_size"])
            object.__setattr__(self, "padding", padding)

    @property
    def architecture(self) -> str:
        """``"rwkv6"`` or ``"rwkv7"``: the language model's."""
        return "rwkv6" if isinstance(self.rwkv, RWKV6Config) else "rwkv7"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data: the ``rwkv``, ``encoder``, ``projector``, ``scan`` and ``layout`` sections, plus
        ``architecture`` (RWKV-7 only) and ``padding`` (when set)."""
        import copy

        out = {
            "rwkv": self.rwkv.to_dict(),
            **{k: copy.deepcopy(dict(getattr(self, k))) for k in ("encoder", "projector", "scan", "layout")},
        }
        if self.architecture != "rwkv6":
            out["architecture"] = self.architecture
        if self.padding is not None:
            out["padding"] = dict(self.padding)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> "VisualRWKVConfig":
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source} must be an object, got {type(data).__name__}")
        required = ("rwkv", "encoder", "projector", "scan", "layout")
        problems = [f"{source}.{k} is missing" for k in required if k not in data]
        unknown = sorted(set(data) - set(required) - {"architecture", "padding"})
        if unknown:
            problems.append(
                f"{source} has unknown field(s) {unknown} (expected {list(required)}, architecture, padding)"
            )
        if problems:
            raise ConfigError("; ".join(problems))
        arch = data.get("architecture", "rwkv6")
        if arch not in ("rwkv6", "rwkv7"):
            raise ConfigError(f"{source}.architecture must be 'rwkv6' or 'rwkv7', got {arch!r}")
        lm_cls = RWKV6Config if arch == "rwkv6" else RWKV7Config
        return cls(
            rwkv=lm_cls.from_dict(data["rwkv"], source=f"{source}.rwkv"),
            padding=data.get("padding"),
            **{k: data[k] for k in ("encoder", "projector", "scan", "layout")},
        )
