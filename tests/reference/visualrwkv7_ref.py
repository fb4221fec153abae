"""An independent float64 re-statement of the official VisualRWKV v7.00 model: its sequence assembly, its
language-model forward (RWKV-7 "x070" blocks, the left padding with token 261) and its greedy generate.

Written from a reading of the official code (howard-hou/VisualRWKV, ``VisualRWKV-v7/v7.00``: ``src/model.py``
``RWKV_Tmix_x070``, ``RWKV_CMix_x070``, ``Block``, ``RWKV.forward``/``pad_left``, ``MLPWithContextGating``,
``VisualRWKV.adaptive_pooling``/``encode_images``/``preparing_embedding``/``generate``; ``src/dataset.py``
``process_image_tokens_in_conversations``, ``_add_speaker_and_signal``, ``tokenize_with_image_token``,
``preprocess``; ``cuda/wkv7_cuda.cu`` ``forward_kernel``). No code is copied and no rwkv_vision module is used
for the math: the WKV recurrence is the kernel's loop, written out in float64. Slow and plain on purpose.

What it takes as the image input: the patch features of each tower (dino | siglip | sam, already [n, k, w_i],
the towers' own business), concatenated along channels as the official backbone does, then pooled and projected
here exactly as the official ``encode_images``.

Letter legend: b batch, t time, h heads, n head size, c channels, v vocabulary, k tokens per image.
"""

from __future__ import annotations

import math
import re

import torch

LN_EPS = 1e-5  # nn.LayerNorm default
HEAD_SIZE_DIVISOR = 8  # evaluate.py's --head_size_divisor default: GroupNorm eps = 1e-5 * 8**2
CHUNK_LEN = 16  # model.py: the kernel's chunk; the sequence is left-padded to a multiple of it
STOP_TOKEN = 261  # "\n\n": the pad embedding and the stop token
IMAGE_TOKEN = 65535  # placeholder id of one image token
IMAGE_MARK = "<image>"

__all__ = [
    "random_x070_state_dict",
    "random_gated_projector",
    "random_v700_checkpoint",
    "official_prompt_ids",
    "official_embeddings",
    "official_lm_logits",
    "official_logits",
    "official_generate",
    "relative_rms_error",
]


# --- random official-format tensors --------------------------------------------------------------------------


def random_x070_state_dict(
    *,
    n_layer=2,
    n_embd=32,
    head_size=8,
    vocab_size=300,
    d_decay=8,
    d_aaa=8,
    d_mv=4,
    d_gate=12,
    dim_ffn=None,
    seed=0,
    dtype=torch.float32,
) -> dict[str, torch.Tensor]:
    """Every key of an official x070 language model (no ``rwkv.`` prefix), random and never zero, scaled so
    that decays, in-context rates and gates spread over their ranges. ``v0/v1/v2`` are absent in block 0, as
    in the official module (``if self.layer_id != 0``)."""
    g = torch.Generator().manual_seed(seed)
    c, h = n_embd, n_embd // head_size
    f = 4 * c if dim_ffn is None else dim_ffn

    def rand(*shape, scale=1.0, offset=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + offset).to(dtype)

    def unif(*shape, lo=0.0, hi=1.0):
        return (torch.rand(*shape, generator=g, dtype=torch.float64) * (hi - lo) + lo).to(dtype)

    sd = {
        "emb.weight": rand(vocab_size, c),
        "head.weight": rand(vocab_size, c, scale=c**-0.5),
        "ln_out.weight": rand(c, scale=0.1, offset=1.0),
        "ln_out.bias": rand(c, scale=0.1),
    }
    for i in range(n_layer):
        p = f"blocks.{i}."
        for ln in ("ln0", "ln1", "ln2") if i == 0 else ("ln1", "ln2"):
            sd[p + ln + ".weight"] = rand(c, scale=0.1, offset=1.0)
            sd[p + ln + ".bias"] = rand(c, scale=0.1)
        for name in "rwkvag":
            sd[p + f"att.x_{name}"] = unif(1, 1, c)
        sd[p + "att.w0"] = unif(1, 1, c, lo=-3.0, hi=1.0)
        sd[p + "att.w1"] = rand(c, d_decay, scale=0.3)
        sd[p + "att.w2"] = rand(d_decay, c, scale=0.3)
        sd[p + "att.a0"] = rand(1, 1, c, scale=0.5)
        sd[p + "att.a1"] = rand(c, d_aaa, scale=0.3)
        sd[p + "att.a2"] = rand(d_aaa, c, scale=0.3)
        if i != 0:
            sd[p + "att.v0"] = rand(1, 1, c, scale=0.5, offset=0.5)
            sd[p + "att.v1"] = rand(c, d_mv, scale=0.3)
            sd[p + "att.v2"] = rand(d_mv, c, scale=0.3)
        sd[p + "att.g1"] = rand(c, d_gate, scale=0.3)
        sd[p + "att.g2"] = rand(d_gate, c, scale=0.3)
        sd[p + "att.k_k"] = unif(1, 1, c, lo=0.5, hi=1.2)
        sd[p + "att.k_a"] = unif(1, 1, c, lo=0.5, hi=1.5)
        sd[p + "att.r_k"] = rand(h, head_size, scale=0.5)
        for name in ("receptance", "key", "value", "output"):
            sd[p + f"att.{name}.weight"] = rand(c, c, scale=c**-0.5)
        sd[p + "att.ln_x.weight"] = rand(c, scale=0.1, offset=1.0)
        sd[p + "att.ln_x.bias"] = rand(c, scale=0.1)
        sd[p + "ffn.x_k"] = unif(1, 1, c)
        sd[p + "ffn.key.weight"] = rand(f, c, scale=c**-0.5)
        sd[p + "ffn.value.weight"] = rand(c, f, scale=f**-0.5)
    return sd


def random_gated_projector(in_dim: int, n_embd: int, *, seed=5, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """``proj.*`` of the official ``MLPWithContextGating``: gate [w, w], o_proj [c, w], ln_v (LayerNorm c)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, offset=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + offset).to(dtype)

    return {
        "proj.gate.weight": rand(in_dim, in_dim, scale=in_dim**-0.5),
        "proj.o_proj.weight": rand(n_embd, in_dim, scale=in_dim**-0.5),
        "proj.ln_v.weight": rand(n_embd, scale=0.1, offset=1.0),
        "proj.ln_v.bias": rand(n_embd, scale=0.1),
    }


def random_v700_checkpoint(
    *, tower_sd: dict[str, torch.Tensor] | None = None, vision_width: int, seed=0, dtype=torch.float32, **lm_sizes
) -> dict[str, torch.Tensor]:
    """A tiny v7.00 flat checkpoint: ``rwkv.*`` (x070), ``proj.*`` (gated, input width ``vision_width``) and
    the given tower tensors (``vit.{dino,siglip,sam}_featurizer.*``, e.g. from tiny timm towers)."""
    lm = random_x070_state_dict(seed=seed, dtype=dtype, **lm_sizes)
    sd = {"rwkv." + k: v for k, v in lm.items()}
    sd.update(random_gated_projector(vision_width, lm["emb.weight"].shape[1], seed=seed + 7, dtype=dtype))
    sd.update(tower_sd or {})
    return sd


# --- the official prompt ------------------------------------------------------------------------------------


def official_prompt_ids(tokenizer, question: str, num_images: int, num_token_per_image: int) -> list[int]:
    """The ids ``evaluate.py`` feeds ``generate`` for one question about ``num_images`` images.

    ``get_input_text`` puts the images first ("<image>\\n" per image, joined by "\\n"); the conversation is
    [human: that text, gpt: ""]; ``process_image_tokens_in_conversations`` strips, collapses blank lines and
    re-prefixes the images; ``_add_speaker_and_signal`` makes "User: {text}\\n\\n" and "Assistant:" (no trailing
    space); each turn is tokenised on its own, split at "<image>", every piece separately ("User: " alone gives
    its trailing-space token), each image a run of ``num_token_per_image`` placeholders (65535)."""
    text = question.replace(IMAGE_MARK, "").strip()
    text = "\n".join([IMAGE_MARK] * num_images) + "\n" + text
    # process_image_tokens_in_conversations (human turn with images)
    count = text.count(IMAGE_MARK)
    value = text.replace(IMAGE_MARK, "").strip()
    value = re.sub(r"\n(\s*\n)+", "\n", value)
    if count:
        value = "\n".join([IMAGE_MARK] * count) + "\n" + value
    value = value.strip()
    turns = ["User: " + value + "\n\n", "Assistant:"]
    ids: list[int] = []
    for turn in turns:
        pieces = turn.split(IMAGE_MARK)
        ids.extend(tokenizer.encode(pieces[0]))
        for piece in pieces[1:]:
            ids.extend([IMAGE_TOKEN] * num_token_per_image)
            ids.extend(tokenizer.encode(piece))
    return ids


# --- the model, float64 -------------------------------------------------------------------------------------


def _layer_norm(x, weight, bias, eps=LN_EPS):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * weight + bias


def _shift(x):
    """The previous token's value (zero before the first): nn.ZeroPad2d((0, 0, 1, -1)) on [b, t, c]."""
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)


def _adaptive_pool_1d(length: int, out: int) -> list[tuple[int, int]]:
    return [(math.floor(i * length / out), math.ceil((i + 1) * length / out)) for i in range(out)]


def pool_features(features: torch.Tensor, num_token_per_image: int) -> torch.Tensor:
    """``VisualRWKV.adaptive_pooling``: [n, k, w] on a square grid -> [n, num_token_per_image, w] through
    ``nn.AdaptiveAvgPool2d(int(num_token_per_image ** 0.5))`` (row-major, windows floor/ceil)."""
    n, k, w = features.shape
    side, out = int(k**0.5), int(num_token_per_image**0.5)
    grid = features.reshape(n, side, side, w)
    rows = []
    for r0, r1 in _adaptive_pool_1d(side, out):
        for c0, c1 in _adaptive_pool_1d(side, out):
            rows.append(grid[:, r0:r1, c0:c1].mean(dim=(1, 2)))
    return torch.stack(rows, dim=1)


def project(sd: dict, features: torch.Tensor) -> torch.Tensor:
    """``MLPWithContextGating``: ln_v(o_proj(x * sigmoid(gate(x)))), in float64."""
    x = features.double()
    gate = torch.sigmoid(x @ sd["proj.gate.weight"].double().T)
    y = (x * gate) @ sd["proj.o_proj.weight"].double().T
    return _layer_norm(y, sd["proj.ln_v.weight"].double(), sd["proj.ln_v.bias"].double())


def official_embeddings(
    sd: dict, input_ids: list[int], tower_features=None, *, num_token_per_image: int | None = None
) -> torch.Tensor:
    """``preparing_embedding`` for one prompt: the embedding of every id (65535 included, the table has the
    row) then, in order, the image rows overwritten with the projected features. ``tower_features``: a list
    of per-tower [n, k, w_i] (dino, siglip, sam order) or one concatenated [n, k, w]. Returns [1, t, c]."""
    emb = sd["rwkv.emb.weight"].double()
    ids = torch.tensor(input_ids, dtype=torch.long)
    selected = ids == IMAGE_TOKEN
    # The official table has a row for 65535 and looks it up; those rows are overwritten below, so a test
    # vocabulary smaller than 65536 looks up only the text ids (the same result).
    x = torch.zeros(len(input_ids), emb.shape[1], dtype=torch.float64)
    x[~selected] = emb[ids[~selected]]
    if tower_features is None:
        if bool(selected.any()):
            raise ValueError("placeholders without image features")
        return x.unsqueeze(0)
    feats = (
        torch.cat([f.double() for f in tower_features], dim=-1)
        if isinstance(tower_features, (list, tuple))
        else tower_features.double()
    )
    k = feats.shape[1] if num_token_per_image is None else num_token_per_image
    feats = pool_features(feats, k)
    proj = project(sd, feats).reshape(-1, x.shape[-1])
    if int(selected.sum()) != proj.shape[0]:
        raise ValueError(f"{int(selected.sum())} placeholders for {proj.shape[0]} image rows")
    x[selected] = proj
    return x.unsqueeze(0)


def _wkv7(r, w_log, k, v, a, b, head_size):
    """The kernel's loop per head, state[i(value), j(key)]: sa = state @ a; state = state * exp(-exp(w)) +
    sa b^T + v k^T; y = state @ r. Inputs [B, T, c]; output [B, T, c]."""
    bsz, t, c = r.shape
    h = c // head_size
    shape = (bsz, t, h, head_size)
    r, w_log, k, v, a, b = (z.reshape(shape) for z in (r, w_log, k, v, a, b))
    decay = torch.exp(-torch.exp(w_log))
    state = torch.zeros(bsz, h, head_size, head_size, dtype=torch.float64)
    out = []
    for s in range(t):
        sa = torch.einsum("bhij,bhj->bhi", state, a[:, s])
        state = (
            state * decay[:, s, :, None, :]
            + sa[..., :, None] * b[:, s, :, None, :]
            + v[:, s, :, :, None] * k[:, s, :, None, :]
        )
        out.append(torch.einsum("bhij,bhj->bhi", state, r[:, s]))
    return torch.stack(out, dim=1).reshape(bsz, t, c)


def _time_mix(sd, p, x, v_first, layer, head_size):
    bsz, t, c = x.shape
    h = c // head_size
    xx = _shift(x) - x
    xr, xw, xk, xv, xa, xg = (x + xx * sd[p + f"x_{z}"] for z in "rwkvag")
    r = xr @ sd[p + "receptance.weight"].T
    w = -torch.nn.functional.softplus(-(sd[p + "w0"] + torch.tanh(xw @ sd[p + "w1"]) @ sd[p + "w2"])) - 0.5
    k = xk @ sd[p + "key.weight"].T
    v = xv @ sd[p + "value.weight"].T
    if layer == 0:
        v_first = v
    else:
        v = v + (v_first - v) * torch.sigmoid(sd[p + "v0"] + (xv @ sd[p + "v1"]) @ sd[p + "v2"])
    a = torch.sigmoid(sd[p + "a0"] + (xa @ sd[p + "a1"]) @ sd[p + "a2"])
    g = torch.sigmoid(xg @ sd[p + "g1"]) @ sd[p + "g2"]
    kk = (k * sd[p + "k_k"]).reshape(bsz, t, h, head_size)
    kk = (kk / kk.norm(dim=-1, keepdim=True).clamp_min(1e-12)).reshape(bsz, t, c)  # F.normalize
    k = k * (1 + (a - 1) * sd[p + "k_a"])
    y = _wkv7(r, w, k, v, -kk, kk * a, head_size)
    # GroupNorm(h groups) per token
    yh = y.reshape(bsz, t, h, head_size)
    mu = yh.mean(-1, keepdim=True)
    var = ((yh - mu) ** 2).mean(-1, keepdim=True)
    y = ((yh - mu) / torch.sqrt(var + 1e-5 * HEAD_SIZE_DIVISOR**2)).reshape(bsz, t, c)
    y = y * sd[p + "ln_x.weight"] + sd[p + "ln_x.bias"]
    bonus = (r.reshape(bsz, t, h, -1) * k.reshape(bsz, t, h, -1) * sd[p + "r_k"]).sum(-1, keepdim=True)
    y = y + (bonus * v.reshape(bsz, t, h, -1)).reshape(bsz, t, c)
    return (y * g) @ sd[p + "output.weight"].T, v_first


def _channel_mix(sd, p, x):
    xk = x + (_shift(x) - x) * sd[p + "x_k"]
    return (torch.relu(xk @ sd[p + "key.weight"].T) ** 2) @ sd[p + "value.weight"].T


def _order(layer: int, length: int, scan: str) -> torch.Tensor:
    if scan == "unidir" or layer % 2 == 0:
        return torch.arange(length)
    if scan == "bidir":
        return torch.arange(length - 1, -1, -1)
    raise ValueError(f"scan {scan!r}: the reference knows 'unidir' and 'bidir'")


def official_lm_logits(sd: dict, x: torch.Tensor, *, pad: bool = True, scan: str = "unidir", spans=()) -> torch.Tensor:
    """``RWKV.forward`` on embeddings x [1, t, c]: left-pad with emb(261) up to a multiple of 16 (``pad``;
    an int gives the pad count instead),
    the blocks, ln_out, head, then drop the pad positions. Returns [t, v] float64.

    ``scan``/``spans`` are not part of the official model (it reads every span in order): ``"bidir"``
    reverses each (start, length) span (positions of the unpadded sequence) in odd layers, as VisualRWKV v6."""
    lm = {k[5:]: v.double() for k, v in sd.items() if k.startswith("rwkv.")}
    x = x.double()
    t = x.shape[1]
    if isinstance(pad, bool):
        n_pad = (CHUNK_LEN - t % CHUNK_LEN) % CHUNK_LEN if pad else 0
    else:  # an explicit pad count (not official: to state what a cached-state decoder computes)
        n_pad = int(pad)
    if n_pad:
        x = torch.cat([lm["emb.weight"][STOP_TOKEN].expand(1, n_pad, -1), x], dim=1)
    n_layer = 1 + max(int(k.split(".")[1]) for k in lm if k.startswith("blocks."))
    head_size = lm["blocks.0.att.r_k"].shape[1]
    v_first = None
    for i in range(n_layer):
        p = f"blocks.{i}."
        if i == 0:
            x = _layer_norm(x, lm[p + "ln0.weight"], lm[p + "ln0.bias"])
        x = x.clone()
        # Not official (v7.00 has no scan): block 0's value is a per-token activation, so it moves with its token.
        v_first = None if v_first is None else v_first.clone()
        for s, length in spans:
            x[:, n_pad + s : n_pad + s + length] = x[:, n_pad + s : n_pad + s + length][:, _order(i, length, scan)]
            if v_first is not None:
                v_first[:, n_pad + s : n_pad + s + length] = v_first[:, n_pad + s : n_pad + s + length][
                    :, _order(i, length, scan)
                ]
        dx, v_first = _time_mix(
            lm, p + "att.", _layer_norm(x, lm[p + "ln1.weight"], lm[p + "ln1.bias"]), v_first, i, head_size
        )
        x = x + dx
        x = x + _channel_mix(lm, p + "ffn.", _layer_norm(x, lm[p + "ln2.weight"], lm[p + "ln2.bias"]))
        for s, length in spans:
            inv = torch.argsort(_order(i, length, scan))
            x[:, n_pad + s : n_pad + s + length] = x[:, n_pad + s : n_pad + s + length][:, inv]
            v_first[:, n_pad + s : n_pad + s + length] = v_first[:, n_pad + s : n_pad + s + length][:, inv]
    x = _layer_norm(x, lm["ln_out.weight"], lm["ln_out.bias"])
    return (x @ lm["head.weight"].T)[0, n_pad:]


def official_logits(
    sd: dict, input_ids: list[int], tower_features=None, *, num_token_per_image=None, pad=True, scan="unidir"
) -> torch.Tensor:
    """The official ``VisualRWKV.forward`` for one prompt: embeddings (``official_embeddings``) then
    ``official_lm_logits``. Returns [t, v] float64 (one row per id, placeholders included)."""
    x = official_embeddings(sd, input_ids, tower_features, num_token_per_image=num_token_per_image)
    spans = []
    if scan != "unidir":
        ids = list(input_ids)
        i = 0
        while i < len(ids):
            if ids[i] == IMAGE_TOKEN:
                j = i
                while j < len(ids) and ids[j] == IMAGE_TOKEN and j - i < (num_token_per_image or 10**9):
                    j += 1
                spans.append((i, j - i))
                i = j
            else:
                i += 1
    return official_lm_logits(sd, x, pad=pad, scan=scan, spans=spans)


def official_generate(
    sd: dict,
    input_ids: list[int],
    tower_features=None,
    *,
    max_new_tokens: int,
    ctx_len: int,
    stop_token: int = STOP_TOKEN,
    num_token_per_image=None,
) -> list[int]:
    """The official ``VisualRWKV.generate`` (greedy): embed once, then per step re-run the whole sequence
    (re-padded to a multiple of 16 each time), take the argmax of the last position, stop after emitting
    ``stop_token`` (it is in the output), else append its embedding and keep the last ``ctx_len`` positions."""
    x = official_embeddings(sd, input_ids, tower_features, num_token_per_image=num_token_per_image)
    emb = sd["rwkv.emb.weight"].double()
    out: list[int] = []
    for _ in range(max_new_tokens):
        logits = official_lm_logits(sd, x)[-1]
        token = int(torch.argmax(logits))
        out.append(token)
        if token == stop_token:
            break
        x = torch.cat([x, emb[token].view(1, 1, -1)], dim=1)[:, -ctx_len:]
    return out


def relative_rms_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-30))


# --- tiny towers in the released key names ------------------------------------------------------------------


def tiny_dino_siglip_state_dicts(*, dino_width=16, siglip_width=24, depth=2, image=28, seed=11) -> dict:
    """``vit.dino_featurizer.*`` and ``vit.siglip_featurizer.*`` of tiny timm towers built from the released
    architectures (``vit_large_patch14_reg4_dinov2``, ``vit_so400m_patch14_siglip_384``) with small sizes,
    random weights: every key the released files have (final norms and SigLIP's attention pool included)."""
    import timm

    torch.manual_seed(seed)
    out = {}
    for name, arch, width in (
        ("dino", "vit_large_patch14_reg4_dinov2", dino_width),
        ("siglip", "vit_so400m_patch14_siglip_384", siglip_width),
    ):
        model = timm.create_model(
            arch, pretrained=False, num_classes=0, embed_dim=width, depth=depth, num_heads=2, img_size=image
        )
        for key, value in model.state_dict().items():
            out[f"vit.{name}_featurizer.{key}"] = value + 0.02 * torch.randn_like(value)
    return out


def tiny_sam_state_dict(*, width=16, depth=2, grid=4, neck=8, window=2, global_blocks=(1,), seed=13) -> dict:
    """``vit.sam_featurizer.*`` of a tiny SAM ViT image encoder in the official ``sam.py`` names (patch 16,
    absolute and relative positions, windowed blocks but ``global_blocks``, a two-conv neck of ``neck``
    channels; the space-to-depth after it has no weights)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2, offset=0.0):
        return torch.randn(*shape, generator=g) * scale + offset

    p = "vit.sam_featurizer."
    head_dim = width // 2
    sd = {
        p + "patch_embed.proj.weight": rand(width, 3, 16, 16, scale=0.05),
        p + "patch_embed.proj.bias": rand(width),
        p + "pos_embed": rand(1, grid, grid, width),
    }
    for i in range(depth):
        b = f"{p}blocks.{i}."
        size = grid if i in global_blocks else window
        sd |= {
            b + "norm1.weight": rand(width, offset=1.0),
            b + "norm1.bias": rand(width),
            b + "attn.qkv.weight": rand(3 * width, width),
            b + "attn.qkv.bias": rand(3 * width),
            b + "attn.proj.weight": rand(width, width),
            b + "attn.proj.bias": rand(width),
            b + "attn.rel_pos_h": rand(2 * size - 1, head_dim),
            b + "attn.rel_pos_w": rand(2 * size - 1, head_dim),
            b + "norm2.weight": rand(width, offset=1.0),
            b + "norm2.bias": rand(width),
            b + "mlp.lin1.weight": rand(4 * width, width),
            b + "mlp.lin1.bias": rand(4 * width),
            b + "mlp.lin2.weight": rand(width, 4 * width),
            b + "mlp.lin2.bias": rand(width),
        }
    sd |= {
        p + "neck.0.weight": rand(neck, width, 1, 1),
        p + "neck.1.weight": rand(neck, offset=1.0),
        p + "neck.1.bias": rand(neck),
        p + "neck.2.weight": rand(neck, neck, 3, 3),
        p + "neck.3.weight": rand(neck, offset=1.0),
        p + "neck.3.bias": rand(neck),
    }
    return sd


def tiny_family_checkpoint(family: str, *, n_embd=32, seed=0) -> dict[str, torch.Tensor]:
    """A tiny random flat checkpoint in the key layout of a released family: ``"v6.0"``, ``"hd"``, ``"uhd"``
    or ``"v7.00"``."""
    if family == "v6.0":
        from .visualrwkv_ref import random_visualrwkv_checkpoint

        return random_visualrwkv_checkpoint(
            rwkv_sizes=dict(n_layer=2, n_embd=n_embd, head_size=8, dim_ffn=64, d_mix=4, d_decay=6, vocab_size=300),
            vision_sizes=dict(width=16, layers=1, image=28, mlp=32),
            seed=seed,
        )
    towers = tiny_dino_siglip_state_dicts() | tiny_sam_state_dict()
    w = 16 + 24 + 4 * 8
    if family == "v7.00":
        return random_v700_checkpoint(tower_sd=towers, vision_width=w, n_embd=n_embd, seed=seed)
    from .rwkv6_ref import random_official_state_dict

    lm = random_official_state_dict(n_layer=2, n_embd=n_embd, head_size=8, dim_ffn=64, vocab_size=300, seed=seed)
    sd = {"rwkv." + k: v for k, v in lm.items()} | towers
    g = torch.Generator().manual_seed(seed + 3)
    width = w if family == "hd" else 2 * w
    sd["proj.proj.weight"] = torch.randn(n_embd, width, generator=g) * width**-0.5
    sd["proj.gate.weight"] = torch.randn(n_embd, n_embd, generator=g) * n_embd**-0.5
    sd["proj.o_proj.weight"] = torch.randn(n_embd, n_embd, generator=g) * n_embd**-0.5
    return sd


# --- VisualRWKV-HD (v0612): RWKV-6, the same towers, proj -> gate -> o_proj, BiDir -------------------------


def hd_embeddings(sd: dict, input_ids: list[int], features: torch.Tensor, *, image_token: int = -200):
    """The official HD ``preparing_embedding`` for one prompt with one image: the text before the placeholder,
    the projected features (``o_proj(x * sigmoid(gate(x)))``, ``x = proj(f)``), the text after. Returns
    (x [1, T, c], (image start, image length))."""
    emb = sd["rwkv.emb.weight"].double()
    f = features.double()[0]
    x = f @ sd["proj.proj.weight"].double().T
    img = (x * torch.sigmoid(x @ sd["proj.gate.weight"].double().T)) @ sd["proj.o_proj.weight"].double().T
    j = input_ids.index(image_token)
    before, after = input_ids[:j], input_ids[j + 1 :]
    parts = [emb[torch.tensor(before, dtype=torch.long)], img, emb[torch.tensor(after, dtype=torch.long)]]
    return torch.cat(parts).unsqueeze(0), (j, img.shape[0])


def hd_lm_logits(sd: dict, x: torch.Tensor, span: tuple[int, int]) -> torch.Tensor:
    """``bidirectional_forward``: x060 blocks; odd layers flip ``x[:, img_start:img_end]`` before the block and
    back after it; ln_out, head. Returns [T, v] float64."""
    from .rwkv6_ref import LN_EPS, _channel_mix, _layer_norm, _time_mix

    lm = {k[5:]: v.double() for k, v in sd.items() if k.startswith("rwkv.")}
    n_layer = 1 + max(int(k.split(".")[1]) for k in lm if k.startswith("blocks."))
    head_size = lm["blocks.0.att.time_faaaa"].shape[1]
    s, e = span[0], span[0] + span[1]
    x = x.double()
    for i in range(n_layer):
        p = f"blocks.{i}."
        if i == 0:
            x = _layer_norm(x, lm[p + "ln0.weight"], lm[p + "ln0.bias"], LN_EPS)
        x = x.clone()
        if i % 2 == 1:
            x[:, s:e] = x[:, s:e].flip(1)
        x = x + _time_mix(lm, p + "att.", _layer_norm(x, lm[p + "ln1.weight"], lm[p + "ln1.bias"], LN_EPS), head_size)
        x = x + _channel_mix(lm, p + "ffn.", _layer_norm(x, lm[p + "ln2.weight"], lm[p + "ln2.bias"], LN_EPS))
        if i % 2 == 1:
            x[:, s:e] = x[:, s:e].flip(1)
    x = _layer_norm(x, lm["ln_out.weight"], lm["ln_out.bias"], LN_EPS)
    return (x @ lm["head.weight"].T)[0]


def hd_generate(sd: dict, input_ids: list[int], features, *, max_new_tokens: int, stop_token: int = STOP_TOKEN):
    """The official HD ``generate`` (greedy, re-run everything; no truncation within ``ctx_len``)."""
    x, span = hd_embeddings(sd, input_ids, features)
    emb = sd["rwkv.emb.weight"].double()
    out: list[int] = []
    for _ in range(max_new_tokens):
        token = int(hd_lm_logits(sd, x, span)[-1].argmax())
        out.append(token)
        if token == stop_token:
            break
        x = torch.cat([x, emb[token].view(1, 1, -1)], dim=1)
    return out
