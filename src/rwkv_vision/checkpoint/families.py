"""The released VisualRWKV families, recognised by their keys and shapes alone.

A released file is a flat dict of tensors under three prefixes: ``rwkv.`` (the language model), ``vit.`` (the
vision towers) and ``proj.`` (the projector). Which family a file belongs to follows from which keys are there
and from a few shapes; nothing is read from the file name. Letter legend: c channels of the language model,
w vision width (the towers' widths summed along channels).

=========  =====================  ======================  ==========================================  =========
family     files                  language model          vision keys                                 projector
=========  =====================  ======================  ==========================================  =========
v6.0       VisualRWKV-v060-*      RWKV-6 (x060)           ``vit.vision_model.*`` (CLIP, transformers   ``proj.weight`` [c, w]
                                                          4.x names)
hd         VisualRWKV-v0612-*     RWKV-6 (x060)           ``vit.{dino,siglip,sam}_featurizer.*``      ``proj.proj`` [c, w], ``proj.gate`` [c, c],
                                                                                                      ``proj.o_proj`` [c, c]
uhd        VisualRWKV-v0613-*     RWKV-6 (x060)           as hd                                        as hd with ``proj.proj`` [c, 2w]
v7.00      VisualRWKV-v0700-*     RWKV-7 (x070)           as hd                                        ``proj.gate`` [w, w], ``proj.o_proj`` [c, w],
                                                                                                      ``proj.ln_v`` (LayerNorm c)
=========  =====================  ======================  ==========================================  =========

hd and uhd share every key name; the input width of ``proj.proj`` tells them apart (the UHD code concatenates
a global image's features with the pooled features of four tiles, twice the width). The UHD projector is
``o_proj(relu(proj(x)))``: the official UHD ``MLPWithContextGating`` builds ``gate`` (so the files hold it) but
its forward has the gating commented out (``VisualRWKV-v6/VisualRWKV-UHD/src/model.py``). The attribution of the
file tags v0612 / v0613 to HD / UHD follows the release order and the repository's ``VisualRWKV-HD`` /
``VisualRWKV-UHD`` folders; the keys decide, not the tag.

:func:`detect_family` names the family of a state dict (or of the shapes of one) and raises a
``StateDictError`` naming the closest family and every key that does not fit it; :func:`check_family` does the
same against the family the caller expects. :func:`split_parts` cuts a file into its parts (language model
without ``rwkv.``, each tower without ``vit.<tower>_featurizer.``, projector without ``proj.``) for the
part converters, which check every key of their part strictly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from ..errors import StateDictError

__all__ = ["Family", "FAMILIES", "detect_family", "check_family", "family_misfits", "split_parts", "tower_widths"]

RWKV = "rwkv."
CLIP = "vit.vision_model."
TOWERS = ("dino", "siglip", "sam")
TOWER_PREFIX = {name: f"vit.{name}_featurizer." for name in TOWERS}

#: Keys that only an x060 (RWKV-6) time mix has, and keys that only an x070 (RWKV-7) one has.
_X060_ONLY = ("att.time_maa_x", "att.time_faaaa", "att.time_decay", "att.gate.weight", "ffn.receptance.weight")
_X070_ONLY = ("att.r_k", "att.w0", "att.a0", "att.k_k", "att.k_a", "att.g1", "ffn.x_k")


@dataclasses.dataclass(frozen=True)
class Family:
    """One released family: its name, the tag in its file names, and what its parts are."""

    name: str
    files: str
    language_model: str  # "x060" or "x070"
    vision: str  # "clip" or "dino+siglip+sam"
    projector: str  # "linear", "hd-gated", "uhd-mlp", "gated-ln"
    projector_keys: tuple[str, ...]
    description: str


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "v6.0",
            "VisualRWKV-v060-*",
            "x060",
            "clip",
            "linear",
            ("proj.weight",),
            "RWKV-6 + CLIP ViT-L/14-336, 577 tokens per image, linear projector, BiDir scan, sandwich prompt",
        ),
        Family(
            "hd",
            "VisualRWKV-v0612-*",
            "x060",
            "dino+siglip+sam",
            "hd-gated",
            ("proj.proj.weight", "proj.gate.weight", "proj.o_proj.weight"),
            "RWKV-6 + DINOv2/SigLIP/SAM (1024 tokens per image, 3200 wide), proj -> gate -> o_proj, BiDir scan",
        ),
        Family(
            "uhd",
            "VisualRWKV-v0613-*",
            "x060",
            "dino+siglip+sam",
            "uhd-mlp",
            ("proj.proj.weight", "proj.gate.weight", "proj.o_proj.weight"),
            "RWKV-6 + DINOv2/SigLIP/SAM on a global image and four tiles (1024 tokens, 6400 wide), "
            "o_proj(relu(proj(x))) (gate held, unused), BiDir scan",
        ),
        Family(
            "v7.00",
            "VisualRWKV-v0700-*",
            "x070",
            "dino+siglip+sam",
            "gated-ln",
            ("proj.gate.weight", "proj.o_proj.weight", "proj.ln_v.weight", "proj.ln_v.bias"),
            "RWKV-7 + DINOv2/SigLIP/SAM (1024 tokens per image, 3200 wide), ln_v(o_proj(x*sigmoid(gate(x)))), "
            "unidirectional, images first, 261-padding to a multiple of 16",
        ),
    )
}


def _shape(value: Any) -> tuple[int, ...] | None:
    shape = getattr(value, "shape", None)
    return None if shape is None else tuple(int(s) for s in shape)


def tower_widths(state_dict: Mapping[str, Any]) -> dict[str, int]:
    """The feature width of each HD tower present, from shapes: DINOv2 and SigLIP give their embedding width
    (``patch_embed.proj.weight`` [w, 3, p, p]); SAM gives 4 x its neck's channels (``neck.0.weight``
    [c_out, w, 1, 1], then the 2 x 2 space-to-depth)."""
    widths = {}
    for name in ("dino", "siglip"):
        shape = _shape(state_dict.get(TOWER_PREFIX[name] + "patch_embed.proj.weight"))
        if shape:
            widths[name] = shape[0]
    shape = _shape(state_dict.get(TOWER_PREFIX["sam"] + "neck.0.weight"))
    if shape:
        widths["sam"] = 4 * shape[0]
    return widths


def _lm_misfits(state_dict: Mapping[str, Any], kind: str) -> tuple[list[str], list[str]]:
    keys = [k for k in state_dict if k.startswith(RWKV)]
    required = [RWKV + "emb.weight", RWKV + "head.weight", RWKV + "blocks.0.ln0.weight"]
    required += [RWKV + "blocks.0." + s for s in (_X070_ONLY if kind == "x070" else _X060_ONLY)[:3]]
    missing = [k for k in required if k not in state_dict]
    foreign = _X060_ONLY if kind == "x070" else _X070_ONLY
    unexpected = [k for k in keys if any(k.endswith("." + s) for s in foreign)]
    return missing, unexpected


def family_misfits(
    state_dict: Mapping[str, Any], family: str | Family
) -> tuple[list[str], list[str], list[tuple[str, tuple, tuple]]]:
    """(missing, unexpected, mismatched) keys of ``state_dict`` against ``family``, at the level that tells the
    families apart: the language model's kind (signature keys), the vision prefixes and the tower signature
    keys, every projector key and its shape. Part converters then check every key of each part."""
    fam = family if isinstance(family, Family) else FAMILIES[family]
    missing, unexpected = _lm_misfits(state_dict, fam.language_model)
    mismatched: list[tuple[str, tuple, tuple]] = []
    if fam.vision == "clip":
        vision_prefixes = (CLIP,)
        missing += (
            [CLIP + "embeddings.patch_embedding.weight"]
            if CLIP + "embeddings.patch_embedding.weight" not in state_dict
            else []
        )
    else:
        vision_prefixes = tuple(TOWER_PREFIX.values())
        for name, key in (
            ("dino", "patch_embed.proj.weight"),
            ("siglip", "patch_embed.proj.weight"),
            ("sam", "patch_embed.proj.weight"),
            ("sam", "neck.0.weight"),
        ):
            if TOWER_PREFIX[name] + key not in state_dict:
                missing.append(TOWER_PREFIX[name] + key)
    for key in state_dict:
        if key.startswith(RWKV) or key in fam.projector_keys:
            continue
        if not key.startswith(vision_prefixes):
            unexpected.append(key)
    missing += [k for k in fam.projector_keys if k not in state_dict]

    # Projector shapes: c from the embedding, w from the towers.
    c = (_shape(state_dict.get(RWKV + "emb.weight")) or (None, None))[-1]
    if fam.vision == "clip":
        w = (_shape(state_dict.get(CLIP + "embeddings.patch_embedding.weight")) or (None,))[0]
    else:
        widths = tower_widths(state_dict)
        w = sum(widths.values()) if len(widths) == 3 else None
    want: dict[str, tuple] = {}
    if c is not None and w is not None:
        if fam.projector == "linear":
            want = {"proj.weight": (c, w)}
        elif fam.projector == "gated-ln":
            want = {
                "proj.gate.weight": (w, w),
                "proj.o_proj.weight": (c, w),
                "proj.ln_v.weight": (c,),
                "proj.ln_v.bias": (c,),
            }
        else:
            width = w if fam.projector == "hd-gated" else 2 * w
            want = {"proj.proj.weight": (c, width), "proj.gate.weight": (c, c), "proj.o_proj.weight": (c, c)}
    for key, shape in want.items():
        got = _shape(state_dict.get(key))
        if got is not None and got != shape:
            mismatched.append((key, got, shape))
    return missing, unexpected, mismatched


def _part(key: str) -> str:
    for prefix in (RWKV, "vit.", "proj."):
        if key.startswith(prefix):
            return prefix
    return "other"


def check_family(state_dict: Mapping[str, Any], family: str) -> Family:
    """``FAMILIES[family]`` if ``state_dict`` fits it, else a ``StateDictError`` naming the family and listing
    every missing, unexpected and mis-shaped key."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {family!r}")
    missing, unexpected, mismatched = family_misfits(state_dict, family)
    if missing or unexpected or mismatched:
        fam = FAMILIES[family]
        raise StateDictError(
            missing,
            unexpected,
            mismatched,
            hint=f"not a VisualRWKV {fam.name} checkpoint ({fam.files}: {fam.description})",
        )
    return FAMILIES[family]


def detect_family(state_dict: Mapping[str, Any]) -> Family:
    """The family whose keys and shapes ``state_dict`` has (tensors or anything with ``.shape``). When none
    fits, a ``StateDictError`` names the closest family and every key that does not fit it."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of tensors, got {type(state_dict).__name__}")
    scored = []
    for name in FAMILIES:
        missing, unexpected, mismatched = family_misfits(state_dict, name)
        if not (missing or unexpected or mismatched):
            return FAMILIES[name]
        # Closest = fewest parts (language model, vision, projector, other) that misfit, then fewest keys.
        bad = missing + unexpected + [m[0] for m in mismatched]
        parts = {_part(k) for k in bad}
        scored.append((len(parts), len(bad), name, missing, unexpected, mismatched))
    _, _, name, missing, unexpected, mismatched = min(scored)
    fam = FAMILIES[name]
    if not any(k.startswith(RWKV) for k in state_dict):
        hint = "no 'rwkv.*' keys: not a released VisualRWKV checkpoint"
    else:
        hint = (
            f"no released VisualRWKV family fits; the closest is {fam.name} ({fam.files}: {fam.description}), "
            "and these keys do not fit it"
        )
    raise StateDictError(missing, unexpected, mismatched, hint=hint)


def split_parts(state_dict: Mapping[str, Any], family: Family | str) -> dict[str, dict[str, Any]]:
    """The parts of a checked file, their prefixes removed: ``"rwkv"`` (official LM names), ``"proj"``
    (``weight`` or ``gate.weight`` ...), and ``"clip"`` (v6.0, keys kept with ``vit.vision_model.``) or
    ``"dino"``, ``"siglip"``, ``"sam"`` (the towers' own timm / SAM names)."""
    fam = family if isinstance(family, Family) else FAMILIES[family]
    parts: dict[str, dict[str, Any]] = {"rwkv": {}, "proj": {}}
    towers = ("clip",) if fam.vision == "clip" else TOWERS
    for name in towers:
        parts[name] = {}
    for key, value in state_dict.items():
        if key.startswith(RWKV):
            parts["rwkv"][key[len(RWKV) :]] = value
        elif key.startswith("proj."):
            parts["proj"][key[len("proj.") :]] = value
        elif fam.vision == "clip" and key.startswith(CLIP):
            parts["clip"][key] = value
        else:
            for name in TOWERS:
                if key.startswith(TOWER_PREFIX[name]):
                    parts[name][key[len(TOWER_PREFIX[name]) :]] = value
                    break
    return parts


# --- building a model from a v7.00 file -------------------------------------------------------------------------

#: Tower widths (dino, siglip, sam) -> the registered encoder built for them: the released stack and its
#: test-size twin. Other sizes need ``encoder=``.
_V7_ENCODERS = {(1024, 1152, 1024): "visualrwkv7-sam-dino-siglip", (32, 48, 64): "tiny-sam-dino-siglip"}


def _v7_encoder(state_dict: Mapping[str, Any], pool: int | None):
    from ..vision.encoders import ENCODERS

    widths = tower_widths(state_dict)
    key = tuple(widths.get(name) for name in TOWERS)
    if key not in _V7_ENCODERS:
        raise StateDictError(
            [],
            [],
            [],
            hint=f"v7.00 towers of widths {dict(zip(TOWERS, key))} match no known encoder "
            f"({ {v: dict(zip(TOWERS, k)) for k, v in _V7_ENCODERS.items()} }); pass encoder= a MultiEncoder "
            "of those towers",
        )
    return ENCODERS.get(_V7_ENCODERS[key])(pool=pool, device="meta")


def _v7_projector(in_features: int, out_features: int):
    from ..vision.projector import PROJECTORS

    return PROJECTORS.get(V7_PROJECTOR)(in_features, out_features, device="meta")


#: The registered projector of v7.00: ``ln_v(o_proj(x * sigmoid(gate(x))))``.
V7_PROJECTOR = "context_gating"


def visualrwkv7_from_official_state_dict(
    state_dict: Mapping[str, Any],
    *,
    cls: type | None = None,
    encoder: Any = None,
    num_token_per_image: int | None = None,
    scan: Any = None,
    layout: Any = None,
    pad: bool = True,
    device=None,
    dtype=None,
    **kwargs: Any,
):
    """A ``VisualRWKV`` from a released v7.00 flat state dict, strictly: the family's keys
    (:func:`check_family`), then every language-model key (``rwkv7_from_official_state_dict``: sizes and LoRA
    ranks from shapes), every tower key (``load_v7_vision_state_dict``) and every projector key.

    Args:
        encoder: a ``MultiEncoder`` to load the towers into (default: the registered encoder whose tower
            widths the file has: the released DINOv2-L/SigLIP-so400m/SAM-B stack, or its test-size twin).
        num_token_per_image: pool each image to this many tokens (a square; the official
            ``AdaptiveAvgPool2d(sqrt(n))``); None keeps the towers' grid (1024 tokens, as the released
            evaluation scripts do).
        scan: default UniDir (v7.00 reads every image span in order).
        layout: default the v7.00 prompt layout.
        pad: left-pad fresh sequences with emb(261) to a multiple of 16, as the official forward does (default).
        device, dtype: where and in what (default: the file's dtype, CPU).
    """
    from ..models.visualrwkv import V7_PAD_MULTIPLE, V7_PAD_TOKEN, VisualRWKV
    from ..vision.convert_v7 import load_v7_vision_state_dict
    from .official import rwkv7_from_official_state_dict

    cls = VisualRWKV if cls is None else cls
    check_family(state_dict, "v7.00")
    parts = split_parts(state_dict, "v7.00")
    rwkv = rwkv7_from_official_state_dict(parts["rwkv"])
    pool = None
    if num_token_per_image is not None:
        ok = isinstance(num_token_per_image, int) and not isinstance(num_token_per_image, bool)
        side = math.isqrt(num_token_per_image) if ok and num_token_per_image > 0 else 0
        if side < 1 or side * side != num_token_per_image:
            raise ValueError(f"num_token_per_image must be a square number of tokens, got {num_token_per_image!r}")
        pool = side
    if encoder is None:
        encoder = _v7_encoder(state_dict, pool)
        load_v7_vision_state_dict(encoder, state_dict, assign=True)
    else:
        load_v7_vision_state_dict(encoder, state_dict)
    width, c = encoder.width, rwkv.n_embd
    proj = _v7_projector(width, c)
    from .diff import diff_state_dict

    missing, unexpected, mismatched = diff_state_dict(proj.state_dict(), parts["proj"])
    if missing or unexpected or mismatched:
        raise StateDictError(
            ["proj." + k for k in missing],
            ["proj." + k for k in unexpected],
            [("proj." + k, got, want) for k, got, want in mismatched],
            hint="(the v7.00 projector: proj.gate [w, w], proj.o_proj [c, w], proj.ln_v [c])",
        )
    proj.load_state_dict(dict(parts["proj"]), strict=True, assign=True)
    if scan is None:
        scan = "unidir"
    if layout is None:
        layout = V7_LAYOUT
    model = cls(
        rwkv=rwkv,
        encoder=encoder,
        proj=proj,
        scan=scan,
        layout=layout,
        pad_to_multiple=V7_PAD_MULTIPLE if pad else None,
        pad_token_id=V7_PAD_TOKEN,
        **kwargs,
    )
    from_meta = any(getattr(v, "is_meta", False) for v in state_dict.values())  # describe(): shapes only
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left and not from_meta:
        from ..errors import CheckpointError

        raise CheckpointError(f"no values in the v7.00 file for {left[:8]} (tensors outside its state dict)")
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


#: The registered prompt layout of v7.00 (images first, "User: " tokenised alone).
V7_LAYOUT = "visualrwkv7"


def visualrwkv7_official_state_dict(model: Any) -> dict[str, Any]:
    """A v7.00-, HD- or UHD-layout model's parameters under the released names: ``rwkv.*`` (x070 / x060), the
    towers as ``vit.{name}_featurizer.*`` and the projector as ``proj.*``; the inverse of
    :func:`visualrwkv7_from_official_state_dict` / :func:`visualrwkv_hd_from_official_state_dict` /
    :func:`visualrwkv_uhd_from_official_state_dict` (a UHD model is an HD one with a ``TiledEncoder`` and a
    ``ReLUProjector``, a ``GatedMLPProjector`` subclass holding the same keys)
    (``check_family`` accepts the result)."""
    from ..models.rwkv6 import RWKV6
    from ..models.rwkv7 import RWKV7
    from ..vision.convert_v7 import encoder_to_v7_state_dict
    from ..vision.multi_encoder import MultiEncoder
    from ..vision.projector import PROJECTORS, GatedMLPProjector

    v7 = isinstance(model.rwkv, RWKV7) and isinstance(model.proj, PROJECTORS.get(V7_PROJECTOR))
    hd = isinstance(model.rwkv, RWKV6) and isinstance(model.proj, GatedMLPProjector)
    if not (isinstance(model.encoder, MultiEncoder) and (v7 or hd)):
        raise ValueError(
            "official_state_dict: the v7.00 layout needs an RWKV7 language model, a MultiEncoder and the "
            f"{V7_PROJECTOR!r} projector (HD: an RWKV6, a MultiEncoder and a 'gated_mlp' projector), got "
            f"{type(model.rwkv).__name__}, {type(model.encoder).__name__}, {type(model.proj).__name__}"
        )
    # Block 0 of the official x070 time mix has no value-residual LoRA (v0/v1/v2 are created for layer_id != 0
    # only, and block 0 never reads them), so the released files do not hold them.
    unused = {f"blocks.0.att.{name}" for name in ("v0", "v1", "v2")}
    sd = {RWKV + k: v for k, v in model.rwkv.state_dict().items() if k not in unused}
    sd.update(encoder_to_v7_state_dict(model.encoder))
    sd.update({"proj." + k: v for k, v in model.proj.state_dict().items()})
    return sd


def visualrwkv_hd_from_official_state_dict(
    state_dict: Mapping[str, Any],
    *,
    cls: type | None = None,
    encoder: Any = None,
    scan: Any = None,
    layout: Any = None,
    device=None,
    dtype=None,
    **kwargs: Any,
):
    """A ``VisualRWKV`` from a VisualRWKV-HD (v0612) flat state dict, strictly: an x060 RWKV-6 language model
    (``rwkv6_from_official_state_dict``), the v7.00 towers (``vit.{dino,siglip,sam}_featurizer.*``, 1024 tokens
    of 3200 per image) and the projector ``o_proj(x * sigmoid(gate(x)))`` with ``x = proj(features)``
    (``GatedMLPProjector``, no biases, hidden width c).

    As the official HD code: BiDir scan (odd layers read the image span reversed), images first with one
    placeholder per image (``"image_first"``: ``"User: "`` tokenised alone, then the image, then
    ``"\\n{question}"``), no padding (the RWKV-6 kernel has no chunk length). ``encoder``, ``scan``, ``layout``,
    ``device``, ``dtype`` as in :func:`visualrwkv7_from_official_state_dict`.
    """
    from ..models.visualrwkv import VisualRWKV
    from ..vision.convert_v7 import load_v7_vision_state_dict
    from ..vision.projector import GatedMLPProjector
    from .diff import diff_state_dict
    from .official import rwkv6_from_official_state_dict

    cls = VisualRWKV if cls is None else cls
    check_family(state_dict, "hd")
    parts = split_parts(state_dict, "hd")
    rwkv = rwkv6_from_official_state_dict(parts["rwkv"])
    if encoder is None:
        encoder = _v7_encoder(state_dict, None)
        load_v7_vision_state_dict(encoder, state_dict, assign=True)
    else:
        load_v7_vision_state_dict(encoder, state_dict)
    c = rwkv.n_embd
    proj = GatedMLPProjector(encoder.width, c, hidden_features=c, device="meta")
    missing, unexpected, mismatched = diff_state_dict(proj.state_dict(), parts["proj"])
    if missing or unexpected or mismatched:
        raise StateDictError(
            ["proj." + k for k in missing],
            ["proj." + k for k in unexpected],
            [("proj." + k, got, want) for k, got, want in mismatched],
            hint="(the HD projector: proj.proj [c, w], proj.gate [c, c], proj.o_proj [c, c])",
        )
    proj.load_state_dict(dict(parts["proj"]), strict=True, assign=True)
    model = cls(
        rwkv=rwkv,
        encoder=encoder,
        proj=proj,
        scan="bidir" if scan is None else scan,
        layout="image_first" if layout is None else layout,
        **kwargs,
    )
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


def visualrwkv_uhd_from_official_state_dict(
    state_dict: Mapping[str, Any],
    *,
    cls: type | None = None,
    encoder: Any = None,
    scan: Any = None,
    layout: Any = None,
    device=None,
    dtype=None,
    **kwargs: Any,
):
    """A ``VisualRWKV`` from a VisualRWKV-UHD (v0613) flat state dict, strictly: an x060 RWKV-6 language model,
    the v7.00 / HD towers run on the whole image and on 2 x 2 tiles of it (``TiledEncoder``: global features
    beside the mosaic of the pooled tiles, 1024 tokens of 2 x 3200 per image) and the projector
    ``o_proj(relu(proj(x)))`` (``ReLUProjector``: the official UHD ``MLPWithContextGating`` forward, whose
    ``gate`` is built, saved and never used).

    As the official UHD code (the HD code with these two changes): BiDir scan, images first with one
    placeholder per image (``"image_first"``), no padding; pixel values ``[n, 5, 3, H, W]`` per tower
    (``TilePreprocessor``, set as the model's preprocessor). ``encoder`` (a ``TiledEncoder``), ``scan``,
    ``layout``, ``device``, ``dtype`` as in :func:`visualrwkv_hd_from_official_state_dict`.
    """
    from ..models.visualrwkv import VisualRWKV
    from ..vision.convert_v7 import load_v7_vision_state_dict
    from ..vision.relu_projector import ReLUProjector
    from ..vision.tile_preprocess import TilePreprocessor
    from ..vision.tiles import TiledEncoder
    from .diff import diff_state_dict
    from .official import rwkv6_from_official_state_dict

    cls = VisualRWKV if cls is None else cls
    check_family(state_dict, "uhd")
    parts = split_parts(state_dict, "uhd")
    rwkv = rwkv6_from_official_state_dict(parts["rwkv"])
    if encoder is None:
        encoder = TiledEncoder(dict(_v7_encoder(state_dict, None).towers), tiles=2)
        load_v7_vision_state_dict(encoder, state_dict, assign=True)
    else:
        if not isinstance(encoder, TiledEncoder):
            raise TypeError(f"encoder must be a TiledEncoder for a UHD file, got {type(encoder).__name__}")
        load_v7_vision_state_dict(encoder, state_dict)
    c = rwkv.n_embd
    proj = ReLUProjector(encoder.width, c, hidden_features=c, device="meta")
    missing, unexpected, mismatched = diff_state_dict(proj.state_dict(), parts["proj"])
    if missing or unexpected or mismatched:
        raise StateDictError(
            ["proj." + k for k in missing],
            ["proj." + k for k in unexpected],
            [("proj." + k, got, want) for k, got, want in mismatched],
            hint="(the UHD projector: proj.proj [c, 2w], proj.gate [c, c] (unused), proj.o_proj [c, c])",
        )
    proj.load_state_dict(dict(parts["proj"]), strict=True, assign=True)
    kwargs.setdefault("preprocessor", TilePreprocessor.for_encoder(encoder))
    model = cls(
        rwkv=rwkv,
        encoder=encoder,
        proj=proj,
        scan="bidir" if scan is None else scan,
        layout="image_first" if layout is None else layout,
        **kwargs,
    )
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model
