"""RWKV7 against an independent implementation: the PyPI package ``rwkv`` (BlinkDL's, RWKV_V7_ON=1, strategy
"cpu fp32") reading the same random official-format .pth.

The package switches to RWKV-7 through environment variables read at import and compiles TorchScript, so it
runs in a subprocess and nothing of it leaks into the other tests. It is installed by the Makefile (a test
dependency), so a missing package is a failure, not a skip.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from rwkv_vision import RWKV7

from reference.rwkv7_ref import random_official_x070_state_dict, relative_rms_error

_ORACLE = textwrap.dedent(
    """
    import json, os, sys
    os.environ["RWKV_V7_ON"] = "1"
    os.environ["RWKV_JIT_ON"] = "1"
    os.environ["RWKV_CUDA_ON"] = "0"
    import torch
    torch.set_num_threads(1)
    from rwkv.model import RWKV

    results = {}
    for stem, ids in json.loads(sys.argv[1]).items():                  # one process, every model
        model = RWKV(model=stem, strategy="cpu fp32")
        seq, state = model.forward(ids, None, full_output=True)        # the sequence form
        steps, state1 = [], None
        for token in ids:                                              # the one-token (RNN) form
            logits, state1 = model.forward([token], state1)
            steps.append(logits)
        results[stem] = {"seq": seq, "steps": torch.stack(steps), "wkv0": state[1]}
    torch.save(results, sys.argv[2])
    """
)


SIZES = {
    "small-heads": dict(n_layer=3, n_embd=64, head_size=16, d_w=6, d_a=5, d_v=4, d_g=7, vocab_size=97),
    "head-64": dict(n_layer=2, n_embd=128, head_size=64, d_w=32, d_a=32, d_v=32, d_g=64, vocab_size=60),
}


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    """(state dicts, token ids, the package's results) for every size of SIZES, from one subprocess."""
    tmp = tmp_path_factory.mktemp("rwkv_oracle")
    sds, ids = {}, {}
    for i, (name, sizes) in enumerate(SIZES.items()):
        sds[name] = random_official_x070_state_dict(**sizes, seed=11 + i)
        ids[name] = torch.randint(0, sizes["vocab_size"], (13,), generator=torch.Generator().manual_seed(i)).tolist()
        torch.save(sds[name], tmp / f"{name}.pth")
    script = tmp / "oracle.py"
    script.write_text(_ORACLE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RWKV_")}
    request = json.dumps({str(tmp / name): ids[name] for name in SIZES})
    proc = subprocess.run(
        [sys.executable, str(script), request, str(tmp / "out.pt")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = torch.load(tmp / "out.pt", weights_only=True)
    return sds, ids, {name: results[str(tmp / name)] for name in SIZES}


@pytest.mark.parametrize("name", list(SIZES))
def test_logits_equal_the_pypi_rwkv_package(oracle, name):
    sds, all_ids, results = oracle
    sd, ids, ref = sds[name], all_ids[name], results[name]
    model = RWKV7.from_official_state_dict(sd)
    out = model(torch.tensor([ids]))
    ours = out.logits[0]
    assert relative_rms_error(ours, ref["seq"]) < 1e-5
    assert relative_rms_error(ours, ref["steps"]) < 1e-5
    state = model.init_state(1)
    steps = torch.stack([model.step(torch.tensor([t]), state)[0] for t in ids])
    assert relative_rms_error(steps, ref["steps"]) < 1e-5
    # the package keeps the state as [h, value, key]: ours is its transpose
    assert relative_rms_error(out.state[0].wkv[0].transpose(-1, -2), ref["wkv0"]) < 1e-5
