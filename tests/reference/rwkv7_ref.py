"""An independent float64 re-statement of the official RWKV-7 ("x070") RNN demo.

Written from a reading of BlinkDL/RWKV-LM ``RWKV-v7/rwkv_v7_demo_rnn.py`` (``time_mixing``, ``channel_mixing``,
``RWKV_RNN.forward``): one token at a time, the state in the official orientation [h, value i, key j], reading
an official-format state dict directly. It uses no rwkv_vision module, not even the wkv7 op; slow and plain on
purpose. Letter legend: b batch, t time, h heads, n head size, c channels, v vocabulary.
"""

from __future__ import annotations

import math

import torch

LN_EPS = 1e-5
GN_EPS = 64e-5

__all__ = ["random_official_x070_state_dict", "rwkv7_reference_logits", "relative_rms_error"]


def random_official_x070_state_dict(
    *,
    n_layer=3,
    n_embd=32,
    head_size=8,
    dim_ffn=None,
    d_w=6,
    d_a=5,
    d_v=4,
    d_g=7,
    vocab_size=50,
    seed=0,
    dtype=torch.float32,
    block0_value_lora=True,
) -> dict[str, torch.Tensor]:
    """Every key of the official x070 layout (no ``rwkv.`` prefix), random and never zero: random lerps,
    LoRAs, k_k, k_a, r_k, norms. ``block0_value_lora=False`` leaves out blocks.0.att.v0/v1/v2 (unused)."""
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
        a = p + "att."
        for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"):
            sd[a + name] = unif(1, 1, c)
        for z, rank in (("w", d_w), ("a", d_a), ("v", d_v)):
            if z == "v" and i == 0 and not block0_value_lora:
                continue
            sd[a + z + "0"] = rand(1, 1, c, scale=0.5, offset=-0.5 if z == "w" else 0.0)
            sd[a + z + "1"] = rand(c, rank, scale=0.3)
            sd[a + z + "2"] = rand(rank, c, scale=0.3)
        sd[a + "g1"] = rand(c, d_g, scale=0.3)
        sd[a + "g2"] = rand(d_g, c, scale=0.3)
        sd[a + "k_k"] = rand(1, 1, c, scale=0.2, offset=0.8)
        sd[a + "k_a"] = rand(1, 1, c, scale=0.2, offset=1.0)
        sd[a + "r_k"] = rand(h, head_size, scale=0.5)
        for name in ("receptance", "key", "value", "output"):
            sd[a + name + ".weight"] = rand(c, c, scale=c**-0.5)
        sd[a + "ln_x.weight"] = rand(c, scale=0.1, offset=1.0)
        sd[a + "ln_x.bias"] = rand(c, scale=0.1)
        sd[p + "ffn.x_k"] = unif(1, 1, c)
        sd[p + "ffn.key.weight"] = rand(f, c, scale=c**-0.5)
        sd[p + "ffn.value.weight"] = rand(c, f, scale=f**-0.5)
    return sd


def _layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def _time_mixing(z, a, layer_id, h, n, x, x_prev, v_first, S):
    """One token of one layer, as the demo's time_mixing: x [c], x_prev [c], S [h, value i, key j]."""
    xx = x_prev - x
    xr, xw, xk, xv, xa, xg = (x + xx * z[a + m] for m in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"))
    r = z[a + "receptance.weight"] @ xr
    k = z[a + "key.weight"] @ xk
    v = z[a + "value.weight"] @ xv
    d = z[a + "w0"] + torch.tanh(xw @ z[a + "w1"]) @ z[a + "w2"]
    decay = torch.exp(-math.exp(-0.5) * torch.sigmoid(d))  # = exp(-exp(-softplus(-d) - 0.5))
    iclr = torch.sigmoid(z[a + "a0"] + (xa @ z[a + "a1"]) @ z[a + "a2"])
    g = torch.sigmoid(xg @ z[a + "g1"]) @ z[a + "g2"]
    kk = (k * z[a + "k_k"]).view(h, n)
    kk = (kk / kk.norm(dim=-1, keepdim=True).clamp_min(1e-12)).view(-1)
    k = k * (1 + (iclr - 1) * z[a + "k_a"])
    if layer_id == 0:
        v_first = v
    else:
        v = v + (v_first - v) * torch.sigmoid(z[a + "v0"] + (xv @ z[a + "v1"]) @ z[a + "v2"])
    vk = v.view(h, n, 1) @ k.view(h, 1, n)
    ab = (-kk).view(h, n, 1) @ (kk * iclr).view(h, 1, n)
    S = S * decay.view(h, 1, n) + S @ ab + vk
    out = (S @ r.view(h, n, 1)).view(h, n)
    mean = out.mean(-1, keepdim=True)
    var = ((out - mean) ** 2).mean(-1, keepdim=True)
    out = ((out - mean) / torch.sqrt(var + GN_EPS)).view(-1) * z[a + "ln_x.weight"] + z[a + "ln_x.bias"]
    out = out + ((r * k * z[a + "r_k"].reshape(-1)).view(h, n).sum(-1, keepdim=True) * v.view(h, n)).view(-1)
    return z[a + "output.weight"] @ (out * g), x, S, v_first


def _channel_mixing(z, f, x, x_prev):
    k = x + (x_prev - x) * z[f + "x_k"]
    return z[f + "value.weight"] @ (torch.relu(z[f + "key.weight"] @ k) ** 2), x


def rwkv7_reference_logits(state_dict: dict[str, torch.Tensor], input_ids: torch.Tensor) -> torch.Tensor:
    """Logits [b, t, v] in float64 of an official x070 state dict for input_ids [b, t], from a zero state,
    one token at a time (each row on its own)."""
    z = {k: v.detach().to(torch.float64).squeeze() for k, v in state_dict.items()}
    for k in list(z):
        if k.endswith("att.r_k"):
            z[k] = z[k].reshape(-1)
    n_layer = 1 + max(int(k.split(".")[1]) for k in z if k.startswith("blocks."))
    h, n = state_dict["blocks.0.att.r_k"].shape
    c = h * n
    emb = _layer_norm(z["emb.weight"], z["blocks.0.ln0.weight"], z["blocks.0.ln0.bias"], LN_EPS)
    rows = []
    for row in input_ids.tolist():
        state = [[torch.zeros(c, dtype=torch.float64), torch.zeros(h, n, n, dtype=torch.float64),
                  torch.zeros(c, dtype=torch.float64)] for _ in range(n_layer)]  # fmt: skip
        logits = []
        for token in row:
            x = emb[token]
            v_first = None
            for i in range(n_layer):
                p = f"blocks.{i}."
                xx = _layer_norm(x, z[p + "ln1.weight"], z[p + "ln1.bias"], LN_EPS)
                dx, state[i][0], state[i][1], v_first = _time_mixing(
                    z, p + "att.", i, h, n, xx, state[i][0], v_first, state[i][1]
                )
                x = x + dx
                xx = _layer_norm(x, z[p + "ln2.weight"], z[p + "ln2.bias"], LN_EPS)
                dx, state[i][2] = _channel_mixing(z, p + "ffn.", xx, state[i][2])
                x = x + dx
            logits.append(z["head.weight"] @ _layer_norm(x, z["ln_out.weight"], z["ln_out.bias"], LN_EPS))
        rows.append(torch.stack(logits))
    return torch.stack(rows)


def relative_rms_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| over all elements, in float64."""
    a, b = a.detach().double(), b.detach().double()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))
