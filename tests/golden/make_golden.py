"""Write tests/golden/*.safetensors: logits and tokens of the library as it was before the architecture
refactor (commit 95180d5), so tests/test_golden.py can show they stay bit-identical.

Run once, single-threaded, from the repository root: ``.venv/bin/python tests/golden/make_golden.py``.
The official-format checkpoint is built here from a seed (tests/reference/visualrwkv_ref.py), so nothing but
the outputs is stored. Every case is a pure function of the inputs listed in ``golden_cases``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from golden.cases import golden_outputs  # noqa: E402


def main() -> None:
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    out = golden_outputs(HERE / "_work")
    save_file({k: v.contiguous() for k, v in out.items()}, str(HERE / "golden.safetensors"))
    for k, v in out.items():
        print(f"{k:40s} {tuple(v.shape)} {v.dtype}")


if __name__ == "__main__":
    main()
