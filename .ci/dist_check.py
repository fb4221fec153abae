"""Run by `make dist-check` with the freshly installed wheel: import it, load its kernels, run a forward.

It must import the installed wheel, not the source tree: run from outside the repository.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import rwkv_vision
from rwkv_vision import RWKV6
from rwkv_vision.ops import backend_info, pack_offsets, wkv6, wkv6_ref

venv = Path(sys.argv[1]).resolve()
where = Path(rwkv_vision.__file__).resolve()
info = backend_info()
assert venv in where.parents, f"imported {where}, not the wheel installed in {venv}"
assert info["extension"] and venv in Path(info["path"]).resolve().parents, info

torch.manual_seed(0)
r, k, v = (torch.randn(1, 9, 2, 16) for _ in range(3))
w = -torch.exp(torch.randn(1, 9, 2, 16))
u = torch.randn(2, 16)
cu = pack_offsets([4, 5])
y, s = wkv6(r, k, v, w, u, output_final_state=True, backend="kernel", cu_seqlens=cu)
y_ref, s_ref = wkv6_ref(r, k, v, w, u, output_final_state=True, cu_seqlens=cu)
assert torch.allclose(y, y_ref, atol=1e-5) and torch.allclose(s, s_ref, atol=1e-5)
model = RWKV6(n_layer=2, n_embd=64, head_size=32, vocab_size=100)
out = model(torch.randint(0, 100, (2, 7)))
assert out.logits.shape == (2, 7, 100) and torch.isfinite(out.logits).all()
print(f"dist-check: rwkv_vision {rwkv_vision.__version__} from {where.parent}, kernels {info['path']}")
