"""An independent float64 reference of the RWKV-6 ("x060") language model.

Written from the math of the project reference on VisualRWKV (shared/docs/visualrwkv-reference.md beside the repository) ("The RWKV-6 block"), reading an official-format
state dict directly; it uses no rwkv_vision module, not even the wkv6 op. Slow and plain on purpose.
Letter legend: b batch, t time, h heads, n head size, c channels, v vocabulary.
"""

from __future__ import annotations

import math

import torch

LN_EPS = 1e-5
GN_EPS = 6.4e-4


def random_official_state_dict(
    *,
    n_layer=2,
    n_embd=32,
    head_size=8,
    dim_ffn=64,
    d_mix=4,
    d_decay=6,
    vocab_size=50,
    seed=0,
    dtype=torch.float32,
) -> dict[str, torch.Tensor]:
    """Every key of the official layout (no ``rwkv.`` prefix), random and never zero."""
    g = torch.Generator().manual_seed(seed)
    c, f, h = n_embd, dim_ffn, n_embd // head_size

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
        lns = ("ln0", "ln1", "ln2") if i == 0 else ("ln1", "ln2")
        for ln in lns:
            sd[p + ln + ".weight"] = rand(c, scale=0.1, offset=1.0)
            sd[p + ln + ".bias"] = rand(c, scale=0.1)
        for name in "xwkvrg":
            sd[p + f"att.time_maa_{name}"] = unif(1, 1, c)
        sd[p + "att.time_maa_w1"] = rand(c, 5 * d_mix, scale=0.3)
        sd[p + "att.time_maa_w2"] = rand(5, d_mix, c, scale=0.3)
        sd[p + "att.time_decay"] = unif(1, 1, c, lo=-3.0, hi=1.0)
        sd[p + "att.time_decay_w1"] = rand(c, d_decay, scale=0.3)
        sd[p + "att.time_decay_w2"] = rand(d_decay, c, scale=0.3)
        sd[p + "att.time_faaaa"] = rand(h, head_size, scale=0.5)
        for name in ("receptance", "key", "value", "gate", "output"):
            sd[p + f"att.{name}.weight"] = rand(c, c, scale=c**-0.5)
        sd[p + "att.ln_x.weight"] = rand(c, scale=0.1, offset=1.0)
        sd[p + "att.ln_x.bias"] = rand(c, scale=0.1)
        sd[p + "ffn.time_maa_k"] = unif(1, 1, c)
        sd[p + "ffn.time_maa_r"] = unif(1, 1, c)
        sd[p + "ffn.key.weight"] = rand(f, c, scale=c**-0.5)
        sd[p + "ffn.receptance.weight"] = rand(c, c, scale=c**-0.5)
        sd[p + "ffn.value.weight"] = rand(c, f, scale=f**-0.5)
    return sd


def _layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def _shift(x):
    """x_{t-1} with zeros before the first token: [b, t, c]."""
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)


def _wkv(r, k, v, w_raw, u):
    """Per head, S[j, i]: y_t[i] = sum_j r[j] (u[j] k[j] v[i] + S[j, i]); S = S*exp(-exp(w_raw)) + k v^T."""
    b, t, h, n = r.shape
    S = torch.zeros(b, h, n, n, dtype=torch.float64)
    ys = []
    for ti in range(t):
        kv = k[:, ti, :, :, None] * v[:, ti, :, None, :]  # [b, h, j, i]
        ys.append(((u[None, :, :, None] * kv + S) * r[:, ti, :, :, None]).sum(dim=2))  # sum over j
        S = S * torch.exp(-torch.exp(w_raw[:, ti]))[..., None] + kv
    return torch.stack(ys, dim=1)


def _time_mix(sd, p, x, head_size):
    b, t, c = x.shape
    h = c // head_size
    xx = _shift(x) - x
    xxx = x + xx * sd[p + "time_maa_x"]
    w1, w2 = sd[p + "time_maa_w1"], sd[p + "time_maa_w2"]
    d_mix = w2.shape[1]
    hidden = torch.tanh(xxx @ w1)
    mixed = {}
    for j, name in enumerate("wkvrg"):  # the LoRA chunk order is w, k, v, r, g
        m_j = hidden[..., j * d_mix : (j + 1) * d_mix] @ w2[j]
        mixed[name] = x + xx * (sd[p + f"time_maa_{name}"] + m_j)
    r = mixed["r"] @ sd[p + "receptance.weight"].T
    k = mixed["k"] @ sd[p + "key.weight"].T
    v = mixed["v"] @ sd[p + "value.weight"].T
    gate = mixed["g"] @ sd[p + "gate.weight"].T
    g = gate * torch.sigmoid(gate)
    w_raw = sd[p + "time_decay"] + torch.tanh(mixed["w"] @ sd[p + "time_decay_w1"]) @ sd[p + "time_decay_w2"]
    heads = lambda z: z.reshape(b, t, h, head_size)  # noqa: E731
    y = _wkv(heads(r), heads(k), heads(v), heads(w_raw), sd[p + "time_faaaa"])
    # GroupNorm with h groups: normalise each head's n channels per token.
    mean = y.mean(-1, keepdim=True)
    var = ((y - mean) ** 2).mean(-1, keepdim=True)
    y = ((y - mean) / torch.sqrt(var + GN_EPS)).reshape(b, t, c) * sd[p + "ln_x.weight"] + sd[p + "ln_x.bias"]
    return (y * g) @ sd[p + "output.weight"].T


def _channel_mix(sd, p, x):
    xx = _shift(x) - x
    xk = x + xx * sd[p + "time_maa_k"]
    xr = x + xx * sd[p + "time_maa_r"]
    k = torch.relu(xk @ sd[p + "key.weight"].T) ** 2
    return torch.sigmoid(xr @ sd[p + "receptance.weight"].T) * (k @ sd[p + "value.weight"].T)


def rwkv6_reference_logits(state_dict: dict[str, torch.Tensor], input_ids: torch.Tensor) -> torch.Tensor:
    """Logits [b, t, v] in float64 of an official-format state dict for input_ids [b, t] (from a zero state)."""
    sd = {k: v.detach().to(torch.float64) for k, v in state_dict.items()}
    n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    head_size = sd["blocks.0.att.time_faaaa"].shape[1]
    x = sd["emb.weight"][input_ids]
    for i in range(n_layer):
        p = f"blocks.{i}."
        if i == 0:
            x = _layer_norm(x, sd[p + "ln0.weight"], sd[p + "ln0.bias"], LN_EPS)
        x = x + _time_mix(sd, p + "att.", _layer_norm(x, sd[p + "ln1.weight"], sd[p + "ln1.bias"], LN_EPS), head_size)
        x = x + _channel_mix(sd, p + "ffn.", _layer_norm(x, sd[p + "ln2.weight"], sd[p + "ln2.bias"], LN_EPS))
    x = _layer_norm(x, sd["ln_out.weight"], sd["ln_out.bias"], LN_EPS)
    return x @ sd["head.weight"].T


def relative_rms_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| over all elements, in float64."""
    a, b = a.detach().double(), b.detach().double()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


assert math.isclose(GN_EPS, 1e-5 * 8**2)
