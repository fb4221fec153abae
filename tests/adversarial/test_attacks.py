"""The adversarial suite (issue 13, item 7): attacks on loading, saving, state files, preprocessing,
tokenizer files and the CLI, each run under a memory limit and a time limit in one child process
(``attacks.py``), asserting a quick clear error or a correct result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import attacks  # noqa: E402

#: attacks that must succeed (a correct result); all others must fail with a short library error
SUCCEED = {"state_round_trip", "image_wide_but_fine", "v7dir_loads"}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("attacks")
    proc = subprocess.run(
        [sys.executable, str(HERE / "attacks.py"), str(work)], capture_output=True, text=True, timeout=300
    )
    out = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            out[r["name"]] = r
    assert out, f"the attack process printed nothing (status {proc.returncode}): {proc.stderr[-3000:]}"
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", list(attacks.ATTACKS))
def test_attack(results, name):
    r = results.get(name)
    assert r is not None, f"{name} did not report (the process died before it)"
    assert r["outcome"] in ("ok", "error"), r
    assert r["seconds"] < attacks.SECONDS, r
    if name in SUCCEED:
        assert r["outcome"] == "ok", r
    elif r["outcome"] == "error":
        from rwkv_vision import errors

        library = {n for n in dir(errors) if n.endswith("Error")}
        assert r["kind"] in library | {"FileNotFoundError", "ValueError"}, r
        assert len(r["message"]) < 3000 and r["message"].count("\n") < 25, r
