"""The official key layouts, converted on the loading side: RWKV-6 "x060" and RWKV-7 "x070" language models
(``blocks.{i}.*``, the modules' own names) and the released VisualRWKV v6.0 flat checkpoints (``rwkv.*``, ``vit.vision_model.*``
with Hugging Face CLIP names, ``proj.weight``).

Every size is read off tensor shapes; every key must be present with its shape and nothing else may be,
otherwise one ``StateDictError`` lists every missing, unexpected and mis-shaped key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import ConfigError, StateDictError
from ..models.config import LIMITS, RWKV6Config, RWKV7Config
from ..models.rwkv6 import RWKV6
from ..models.rwkv7 import RWKV7
from ..models.visualrwkv import VisualRWKV
from ..prompt import PromptLayout
from ..scan import ScanPolicy
from ..vision.convert_clip import clip_config_from_state_dict, load_clip_state_dict, timm_to_clip_state_dict
from ..vision.encoders import timm_vit
from ..vision.projector import LinearProjector
from .diff import assign_state_dict, check_state_dict, diff_state_dict

__all__ = [
    "OFFICIAL_PREFIXES",
    "config_from_official_state_dict",
    "rwkv6_from_official_state_dict",
    "X070_VARIANT_KEYS",
    "official_architecture",
    "config_from_official_x070_state_dict",
    "rwkv7_from_official_state_dict",
    "visualrwkv_from_official_state_dict",
    "visualrwkv_official_state_dict",
]

#: Prefixes of the released flat checkpoints: language model, CLIP tower (transformers 4.x names), projector.
OFFICIAL_PREFIXES = {"rwkv": "rwkv.", "vit": "vit.vision_model.", "proj": "proj.weight"}
#: The most vision-tower layers a released-format checkpoint may describe (ViT-L has 24, ViT-g 40).
MAX_VISION_LAYERS = 256


def _contiguous_layers(state_dict: Mapping[str, Any], pattern: str, *, limit: int, what: str, prefix: str = "") -> int:
    """The number of layers ``0..n-1`` whose keys match ``pattern`` (group 1: the index), checked before any
    module is built: a single key such as ``blocks.20000.x`` must not make the loader build 20,001 layers.
    Keys of a layer past a gap, or past ``limit``, are reported as unexpected (a few, and a count)."""
    rx = re.compile(pattern)
    by_index: dict[int, list[str]] = {}
    for key in state_dict:
        m = rx.match(key)
        if m:
            digits = m.group(1)
            index = int(digits) if len(digits) <= 9 else 10**9  # no bignum parsing of a hostile index
            by_index.setdefault(index, []).append(key)
    n = 0
    while n in by_index:
        n += 1
    beyond = sorted(i for i in by_index if i >= n)
    if n > limit or beyond:
        over = [k for i in sorted(by_index) if i >= min(n, limit) for k in by_index[i]]
        why = (
            f"{what}: {n} layers is more than the limit of {limit}"
            if n > limit
            else f"{what}: layers 0..{n - 1} are present, then index {beyond[0]}: layer indices must be 0..n-1"
        )
        raise StateDictError([], [prefix + k for k in over], [], hint=why)
    return n


#: Tensors of the released CLIP tower that the model does not use (or rebuilds), accepted when present.
_OPTIONAL_VIT_KEYS = ("embeddings.position_ids", "post_layernorm.weight", "post_layernorm.bias")


def config_from_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> RWKV6Config:
    """The ``RWKV6Config`` of an official "x060" state dict (keys without ``rwkv.``).

    Every size comes from tensor shapes: n_layer (block indices), n_embd and vocab_size (``emb.weight``),
    heads and head size (``time_faaaa`` [h, n]), dim_ffn (``ffn.key.weight``), d_mix (``time_maa_w1``
    [c, 5*d_mix]) and d_decay (``time_decay_w1`` [c, d_decay]), from the first block that has the key. The lerp
    and the decay are data-dependent if any block has their LoRA tensors (the static variants have none).
    """

    def dim(name: str, *sources: tuple[str, int, int]) -> int:
        # The first (key, axis, divisor) present gives the size; later ones are fallbacks for a missing key
        # (which the strict load then reports together with every other offending key).
        for key, axis, div in sources:
            if key in state_dict and state_dict[key].dim() > axis:
                return state_dict[key].shape[axis] // div
        keys = [key for key, _, _ in sources]
        raise StateDictError([], [], [], hint=f"cannot infer {name}: none of the keys {keys} is present")

    n_layer = _contiguous_layers(state_dict, r"blocks\.(\d+)\.", limit=LIMITS["n_layer"], what="language model")
    layer_ids = set(range(n_layer))
    if not layer_ids:
        prefixed = any(key.startswith("rwkv.") for key in state_dict)
        hint = " (its keys start with 'rwkv.': strip that prefix first)" if prefixed else ""
        raise StateDictError([], [], [], hint=f"no 'blocks.{{i}}.*' keys: not an RWKV-6 state dict{hint}")
    layers = sorted(layer_ids)

    def in_blocks(suffix: str, axis: int, div: int = 1) -> list[tuple[str, int, int]]:
        return [(f"blocks.{i}.{suffix}", axis, div) for i in layers]

    def anywhere(*suffixes: str) -> bool:
        return any(f"blocks.{i}.{s}" in state_dict for i in layers for s in suffixes)

    data_dependent_lerp = anywhere("att.time_maa_x", "att.time_maa_w1", "att.time_maa_w2")
    data_dependent_decay = anywhere("att.time_decay_w1", "att.time_decay_w2")
    n_embd = dim("n_embd", ("emb.weight", 1, 1), ("head.weight", 1, 1), *in_blocks("ln1.weight", 0))
    head_size = dim("head_size", *in_blocks("att.time_faaaa", 1))
    config = dict(
        n_layer=layers[-1] + 1,
        n_embd=n_embd,
        head_size=head_size,
        dim_ffn=dim("dim_ffn", *in_blocks("ffn.key.weight", 0), *in_blocks("ffn.value.weight", 1)),
        vocab_size=dim("vocab_size", ("emb.weight", 0, 1), ("head.weight", 0, 1)),
        data_dependent_lerp=data_dependent_lerp,
        data_dependent_decay=data_dependent_decay,
    )
    if data_dependent_lerp:
        config["d_mix"] = dim("d_mix", *in_blocks("att.time_maa_w1", 1, 5), *in_blocks("att.time_maa_w2", 1))
    if data_dependent_decay:
        config["d_decay"] = dim("d_decay", *in_blocks("att.time_decay_w1", 1), *in_blocks("att.time_decay_w2", 0))
    if n_embd % head_size != 0:
        raise StateDictError(
            [],
            [],
            [],
            hint=f"n_embd {n_embd} (from the embedding) is not a multiple of head_size {head_size} "
            f"(from att.time_faaaa)",
        )
    return RWKV6Config(**config)


def rwkv6_from_official_state_dict(
    state_dict: Mapping[str, torch.Tensor], *, cls: type[RWKV6] = RWKV6, device=None, dtype=None
) -> RWKV6:
    """Build an ``RWKV6`` from an official "x060" state dict (keys without the ``rwkv.`` prefix).

    Sizes are read from the tensor shapes (``config_from_official_state_dict``), then every key must be
    present with its shape and nothing else may be: otherwise a ``StateDictError`` lists every missing,
    unexpected and mis-shaped key. The parameters keep the state dict's dtype unless ``dtype`` is given,
    and share memory with its tensors when neither ``device`` nor ``dtype`` asks for a copy.
    """
    config = config_from_official_state_dict(state_dict)
    model = cls(config, device="meta")  # no memory, no init: every tensor comes from the state dict
    check_state_dict(model, state_dict)
    _check_floating(model.state_dict(), state_dict)
    _assign_by_block(model, state_dict)
    return model.to(device=device, dtype=dtype)


def _assign_by_block(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Assign a checked state dict child by child (``diff.assign_state_dict``: linear, not quadratic, in the
    layer count)."""
    assign_state_dict(model, state_dict)


def _check_floating(expected: Mapping[str, torch.Tensor], state_dict: Mapping[str, Any]) -> None:
    """Floating-point parameters must come as floating-point tensors (an integer or bool tensor would fail
    inside ``load_state_dict`` with an opaque error)."""
    bad = [
        f"{k} ({state_dict[k].dtype})"
        for k, want in expected.items()
        if k in state_dict and want.is_floating_point() and not state_dict[k].is_floating_point()
    ]
    if bad:
        raise StateDictError([], [], [], hint=f"tensors {bad[:8]} must be floating point (float32/float16/bfloat16)")


# --- RWKV-7 ("x070") -----------------------------------------------------------------------------------------

#: Key fragments of the x070 variants this library does not implement, with their names: x070a ("DeepEmbed":
#: per-layer token embeddings scaling the channel mix, ``ffn.s_emb``/``s_emb_x``/``s0``/``s1``/``s2``) and x070b
#: (x070a plus an attention branch, ``blocks.{i}.qkv.*``), as read in the official rwkv_v7a_demo.py /
#: rwkv_v7b_demo.py.
X070_VARIANT_KEYS = (
    (".qkv.", "x070b (RWKV-7 with an attention branch)"),
    (".ffn.s_emb", "x070a (RWKV-7 DeepEmbed)"),
    (".ffn.s0", "x070a (RWKV-7 DeepEmbed)"),
    (".ffn.s1", "x070a (RWKV-7 DeepEmbed)"),
    (".ffn.s2", "x070a (RWKV-7 DeepEmbed)"),
)
#: Block 0 never uses its value-residual LoRA (it is the source of v_first): files may leave it out.
_X070_OPTIONAL = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")
#: Keys only one of the two language-model formats has (each is in every block of its format).
_X060_MARKS = ("att.time_faaaa", "att.time_maa_k", "att.time_decay", "ffn.time_maa_k")
_X070_MARKS = ("att.r_k", "att.k_k", "att.w0", "ffn.x_k")


def official_architecture(state_dict: Mapping[str, Any]) -> str:
    """``"rwkv6"`` (x060) or ``"rwkv7"`` (x070) for an official language-model state dict (keys without
    ``rwkv.``), from which keys are present; a StateDictError naming the variant for x070a/x070b files and
    saying what was expected for anything else."""
    _refuse_x070_variants(state_dict)
    blocks = [k for k in state_dict if k.startswith("blocks.")]
    if any(k.endswith(m) for k in blocks for m in _X070_MARKS):
        return "rwkv7"
    if any(k.endswith(m) for k in blocks for m in _X060_MARKS):
        return "rwkv6"
    prefixed = any(key.startswith("rwkv.") for key in state_dict)
    hint = " (its keys start with 'rwkv.': strip that prefix first)" if prefixed else ""
    raise StateDictError(
        [],
        [],
        [],
        hint=f"not an RWKV language model: no block has x060 keys {list(_X060_MARKS)} or x070 keys "
        f"{list(_X070_MARKS)}{hint}",
    )


def _refuse_x070_variants(state_dict: Mapping[str, Any]) -> None:
    for fragment, name in X070_VARIANT_KEYS:
        keys = [k for k in state_dict if fragment in k]
        if keys:
            raise StateDictError(
                [],
                keys,
                [],
                hint=f"this is an {name} checkpoint (keys such as {keys[0]!r}); only plain x070 (RWKV-7) and "
                "x060 (RWKV-6) language models are supported",
            )


def config_from_official_x070_state_dict(state_dict: Mapping[str, torch.Tensor]) -> RWKV7Config:
    """The ``RWKV7Config`` of an official x070 state dict (keys without ``rwkv.``).

    Every size comes from tensor shapes: n_layer (block indices, 0..n-1, bounded), n_embd and vocab_size
    (``emb.weight`` [v, c]), heads and head size (``att.r_k`` [h, n]), dim_ffn (``ffn.key.weight`` [f, c]) and
    the four LoRA ranks d_w, d_a, d_v, d_g (``att.w1``, ``att.a1``, ``att.v1``, ``att.g1`` [c, rank]; d_v from a
    later block when block 0 has no v1), from the first block that has the key. x070a/x070b files are refused.
    """
    _refuse_x070_variants(state_dict)
    n_layer = _contiguous_layers(state_dict, r"blocks\.(\d+)\.", limit=LIMITS["n_layer"], what="language model")
    if not n_layer:
        official_architecture(state_dict)  # raises with the reason
        raise StateDictError([], [], [], hint="no 'blocks.{i}.*' keys: not an RWKV-7 state dict")

    def dim(name: str, *sources: tuple[str, int]) -> int:
        for key, axis in sources:
            t = state_dict.get(key)
            if t is not None and t.dim() > axis:
                return int(t.shape[axis])
        raise StateDictError(
            [], [], [], hint=f"cannot infer {name}: none of the keys {[k for k, _ in sources][:4]} is present"
        )

    def in_blocks(suffix: str, axis: int) -> list[tuple[str, int]]:
        return [(f"blocks.{i}.{suffix}", axis) for i in range(n_layer)]

    n_embd = dim("n_embd", ("emb.weight", 1), ("head.weight", 1), *in_blocks("ln1.weight", 0))
    n_head = dim("the head count", *in_blocks("att.r_k", 0))
    head_size = dim("head_size", *in_blocks("att.r_k", 1))
    if n_head * head_size != n_embd:
        raise StateDictError(
            [],
            [],
            [],
            hint=f"att.r_k is [{n_head}, {head_size}] (heads, head size) but n_embd is {n_embd} (from the "
            "embedding): heads * head size must equal n_embd",
        )
    config = dict(
        n_layer=n_layer,
        n_embd=n_embd,
        head_size=head_size,
        dim_ffn=dim("dim_ffn", *in_blocks("ffn.key.weight", 0), *in_blocks("ffn.value.weight", 1)),
        vocab_size=dim("vocab_size", ("emb.weight", 0), ("head.weight", 0)),
        d_w=dim("d_w", *in_blocks("att.w1", 1), *in_blocks("att.w2", 0)),
        d_a=dim("d_a", *in_blocks("att.a1", 1), *in_blocks("att.a2", 0)),
        d_g=dim("d_g", *in_blocks("att.g1", 1), *in_blocks("att.g2", 0)),
    )
    try:
        config["d_v"] = dim("d_v", *in_blocks("att.v1", 1), *in_blocks("att.v2", 0))
    except StateDictError:
        if n_layer > 1:
            raise
        config["d_v"] = None  # a one-block model without the unused block-0 LoRA: any rank will do
    try:
        return RWKV7Config(**config)
    except ConfigError as e:
        raise StateDictError([], [], [], hint=f"the shapes give an invalid model: {e}") from None


def rwkv7_from_official_state_dict(
    state_dict: Mapping[str, torch.Tensor], *, cls: type[RWKV7] = RWKV7, device=None, dtype=None
) -> RWKV7:
    """Build an ``RWKV7`` from an official x070 state dict (keys without the ``rwkv.`` prefix).

    Sizes are read from the tensor shapes (``config_from_official_x070_state_dict``), then every key must be
    present with its shape and nothing else may be: otherwise a ``StateDictError`` lists every missing,
    unexpected and mis-shaped key. Only block 0's unused value-residual LoRA (``blocks.0.att.v0/v1/v2``) may
    be absent; it is then zero. Tensors keep the state dict's dtype unless ``dtype`` is given, and share
    memory with it when neither ``device`` nor ``dtype`` asks for a copy.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of tensors, got {type(state_dict).__name__}")
    config = config_from_official_x070_state_dict(state_dict)
    model = cls(config, device="meta")  # no memory, no init: every tensor comes from the state dict
    expected = model.state_dict()
    missing, unexpected, mismatched = diff_state_dict(expected, state_dict, optional=_X070_OPTIONAL)
    unexpected += [k for k in _X070_OPTIONAL if k in state_dict and k not in expected]
    if missing or unexpected or mismatched:
        hint = (
            "hint: keys start with 'rwkv.'; strip that prefix" if any(k.startswith("rwkv.") for k in unexpected) else ""
        )
        raise StateDictError(missing, unexpected, mismatched, hint)
    _check_floating(expected, state_dict)
    sd = dict(state_dict)
    like = state_dict["emb.weight"]
    for key in _X070_OPTIONAL:
        if key not in sd:
            sd[key] = torch.zeros(expected[key].shape, dtype=like.dtype, device=like.device)
    _assign_by_block(model, sd)
    return model.to(device=device, dtype=dtype)


def _check_vision_sizes(vcfg: Mapping[str, Any]) -> None:
    from ..sections import VIT_LIMITS

    for name in ("embed_dim", "depth", "num_heads", "patch_size", "img_size"):
        if not 1 <= vcfg[name] <= VIT_LIMITS[name]:
            raise StateDictError([], [], [], hint=f"vision tower: {name} {vcfg[name]} is outside 1..{VIT_LIMITS[name]}")
    ratio = vcfg["mlp_ratio"]
    if not 0 < ratio <= VIT_LIMITS["mlp_ratio"]:
        raise StateDictError(
            [], [], [], hint=f"vision tower: mlp ratio {ratio} is outside (0, {VIT_LIMITS['mlp_ratio']}]"
        )
    if (vcfg["img_size"] // vcfg["patch_size"]) ** 2 > VIT_LIMITS["patches"]:
        raise StateDictError([], [], [], hint=f"vision tower: more than {VIT_LIMITS['patches']} patches per image")


def visualrwkv_from_official_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    *,
    cls: type[VisualRWKV] = VisualRWKV,
    scan: ScanPolicy | str | None = None,
    layout: PromptLayout | str | None = None,
    vision_layer: int = -1,
    vision_head_dim: int = 64,
    device=None,
    dtype=None,
    **kwargs: Any,
) -> VisualRWKV:
    """A ``VisualRWKV`` (or ``cls``) from a released flat checkpoint (``rwkv.*``, ``vit.vision_model.*``, ``proj.weight``).

    Every size is read from tensor shapes (vision heads = width / ``vision_head_dim``). The unused
    ``vit.vision_model.post_layernorm.*`` and an optional ``embeddings.position_ids`` are accepted;
    any other missing, unexpected or mis-shaped key raises a ``StateDictError`` listing all of them.
    Tensors keep the checkpoint's dtype unless ``dtype`` is given. ``kwargs`` go to the constructor.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of tensors, got {type(state_dict).__name__}")
    rp, vp, pk = OFFICIAL_PREFIXES["rwkv"], OFFICIAL_PREFIXES["vit"], OFFICIAL_PREFIXES["proj"]
    rwkv_sd = {k[len(rp) :]: v for k, v in state_dict.items() if k.startswith(rp)}
    vit_sd = {k: v for k, v in state_dict.items() if k.startswith(vp)}
    missing, unexpected, mismatched = [], [], []
    unexpected += [k for k in state_dict if not (k.startswith(rp) or k.startswith(vp) or k == pk)]
    if not rwkv_sd:
        raise StateDictError([], [], [], hint=f"state_dict has no '{rp}*' keys: not a VisualRWKV checkpoint")
    if not any(k.endswith("embeddings.patch_embedding.weight") for k in vit_sd):
        raise StateDictError(
            [vp + "embeddings.patch_embedding.weight"],
            unexpected,
            [],
            hint="cannot size the vision tower without its patch embedding",
        )

    # Language model: sizes from shapes, then every key checked against a meta-device model.
    _contiguous_layers(rwkv_sd, r"blocks\.(\d+)\.", limit=LIMITS["n_layer"], what="language model", prefix=rp)
    rwkv = RWKV6(config_from_official_state_dict(rwkv_sd), device="meta")
    m, u, mm = diff_state_dict(rwkv.state_dict(), rwkv_sd)
    missing += [rp + k for k in m]
    unexpected += [rp + k for k in u]
    mismatched += [(rp + k, got, want) for k, got, want in mm]

    # Vision tower: the keys a tower of the inferred size has, in the checkpoint's naming.
    _contiguous_layers(
        {k[len(vp) :]: v for k, v in vit_sd.items()},
        r"encoder\.layers\.(\d+)\.",
        limit=MAX_VISION_LAYERS,
        what="vision tower",
        prefix=vp,
    )
    try:
        vcfg = clip_config_from_state_dict(vit_sd, prefix=vp, head_dim=vision_head_dim)
    except ValueError as e:
        raise StateDictError([], [], [], hint=f"vision tower: {e}") from None
    _check_vision_sizes(vcfg)
    encoder = timm_vit(
        "vit_base_patch16_clip_224",
        layer=vision_layer,
        cls="last",
        device="meta",
        pre_norm=True,
        act_layer="quick_gelu",
        **vcfg,
    )
    expected_vit = timm_to_clip_state_dict(encoder.vit.state_dict(), prefix=vp)
    m, u, mm = diff_state_dict(expected_vit, vit_sd, optional={vp + k for k in _OPTIONAL_VIT_KEYS})
    missing += m
    unexpected += u
    mismatched += mm

    # Projector: Linear(w, c) without bias.
    want = (rwkv.n_embd, encoder.width)
    if pk not in state_dict:
        missing.append(pk)
    elif tuple(state_dict[pk].shape) != want:
        mismatched.append((pk, tuple(state_dict[pk].shape), want))
    if missing or unexpected or mismatched:
        raise StateDictError(missing, unexpected, mismatched)

    assign_state_dict(rwkv, rwkv_sd)
    load_clip_state_dict(
        encoder, {k: v for k, v in vit_sd.items() if not k.endswith("position_ids")}, prefix=vp, assign=True
    )
    proj = LinearProjector(encoder.width, rwkv.n_embd, device="meta")
    proj.load_state_dict({"weight": state_dict[pk]}, assign=True)
    model = cls(rwkv=rwkv, encoder=encoder, proj=proj, scan=scan, layout=layout, **kwargs)
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


def visualrwkv_official_state_dict(model: VisualRWKV) -> dict[str, torch.Tensor]:
    """The parameters under the released checkpoint's names (``rwkv.*``, ``vit.vision_model.*``,
    ``proj.weight``); only for the v6.0 linear projector."""
    if not isinstance(model.proj, LinearProjector) or model.proj.bias is not None:
        raise ValueError("official_state_dict: the official layout has a bias-free LinearProjector as proj")
    sd = {OFFICIAL_PREFIXES["rwkv"] + k: v for k, v in model.rwkv.state_dict().items()}
    sd.update(timm_to_clip_state_dict(model.encoder.vit.state_dict(), prefix=OFFICIAL_PREFIXES["vit"]))
    sd[OFFICIAL_PREFIXES["proj"]] = model.proj.weight
    return sd
