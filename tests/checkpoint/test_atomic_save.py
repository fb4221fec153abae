"""Saves are atomic (issue 13, item 2): an interruption at any write leaves the old or the new checkpoint,
loadable, and no stray files; files get the user's umask permissions; convert keeps the metadata."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rwkv_vision.checkpoint import pretrained
from rwkv_vision.checkpoint.atomic import cleanup_leftovers
from rwkv_vision.models.visualrwkv import VisualRWKV

from .conftest import SHIPPED

WRITERS = ("save_file", "save_tokenizer", "write_text")


def _fingerprint(directory: Path) -> tuple:
    """(n_layer, the embedding's first value, metadata) of a saved directory: which checkpoint it is."""
    config = json.loads((directory / "config.json").read_text())
    emb = load_file(directory / "model.safetensors")["rwkv.emb.weight"]
    return config["rwkv"]["n_layer"], float(emb[0, 0]), json.dumps(config.get("metadata"))


def _other(model: VisualRWKV) -> VisualRWKV:
    new = VisualRWKV.from_pretrained(SHIPPED)
    with torch.no_grad():
        new.rwkv.emb.weight.add_(1.0)
    return new


def _fail_at(monkeypatch, k: int) -> list:
    """Make the k-th write (0-based) of a save raise OSError; return the list of writes made."""
    calls = []
    for name in WRITERS:
        original = getattr(pretrained._writers, name)

        def wrapper(*args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            if len(calls) - 1 == k:
                # half a file first, as a full disk would leave it
                target = args[1] if _name != "write_text" else args[0]
                Path(target).write_bytes(b"partial")
                raise OSError(28, "No space left on device (injected)")
            return _original(*args, **kwargs)

        monkeypatch.setattr(pretrained._writers, name, staticmethod(wrapper))
    return calls


def _entries(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


@pytest.mark.parametrize("existing", [False, True], ids=["new", "over-old"])
def test_directory_save_fails_at_every_write(shipped_model, tmp_path, monkeypatch, existing):
    target = tmp_path / "out"
    if existing:
        shipped_model.save_pretrained(target, metadata={"v": "old"})
        (target / "NOTES.txt").write_text("mine")
        old = _fingerprint(target)
    new_model = _other(shipped_model)
    n_writes = len(WRITERS)
    for k in range(n_writes):
        _fail_at(monkeypatch, k)
        with pytest.raises(OSError, match="injected"):
            new_model.save_pretrained(target, metadata={"v": "new"})
        monkeypatch.undo()
        assert _entries(tmp_path) == (["out"] if existing else []), f"stray files after a failure at write {k}"
        if existing:
            assert _fingerprint(target) == old
            VisualRWKV.from_pretrained(target)
            assert (target / "NOTES.txt").read_text() == "mine"
    calls = _fail_at(monkeypatch, 10**6)
    new_model.save_pretrained(target, metadata={"v": "new"})
    assert len(calls) == n_writes  # every write was made to fail once above
    monkeypatch.undo()
    assert _entries(tmp_path) == ["out"]
    assert _fingerprint(target)[1] == pytest.approx(_fingerprint(SHIPPED)[1] + 1.0)
    assert json.loads((target / "config.json").read_text())["metadata"] == {"v": "new"}
    if existing:
        assert (target / "NOTES.txt").read_text() == "mine"  # files the save does not write are kept
    VisualRWKV.from_pretrained(target)


def test_single_file_save_fails_without_damage(shipped_model, tmp_path, monkeypatch):
    target = tmp_path / "m.safetensors"
    shipped_model.save_pretrained(target)
    before = target.read_bytes()
    _fail_at(monkeypatch, 0)
    with pytest.raises(OSError, match="injected"):
        _other(shipped_model).save_pretrained(target)
    monkeypatch.undo()
    assert target.read_bytes() == before and _entries(tmp_path) == ["m.safetensors"]
    _other(shipped_model).save_pretrained(target, metadata={"trained": 1})
    assert target.read_bytes() != before
    assert pretrained.checkpoint_metadata(target) == {"trained": 1}


def test_interrupt_between_renames_puts_the_old_checkpoint_back(shipped_model, tmp_path, monkeypatch):
    """Without RENAME_EXCHANGE the swap takes two renames; a failure between them restores the old one."""
    from rwkv_vision.checkpoint import atomic

    target = tmp_path / "out"
    shipped_model.save_pretrained(target, metadata={"v": "old"})
    old = _fingerprint(target)
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    real_rename, seen = os.rename, []

    def rename(a, b):
        seen.append((a, b))
        if len(seen) == 2:
            raise OSError("interrupted between the renames (injected)")
        return real_rename(a, b)

    monkeypatch.setattr(atomic.os, "rename", rename)
    with pytest.raises(OSError, match="injected"):
        _other(shipped_model).save_pretrained(target)
    monkeypatch.undo()
    assert _fingerprint(target) == old and _entries(tmp_path) == ["out"]


def test_leftovers_of_a_killed_save_are_cleaned_or_restored(tmp_path):
    target = tmp_path / "out"
    # a save killed after renaming the old checkpoint aside (pid 2**22 + 1 does not exist)
    aside = tmp_path / f".out.old-{2**22 + 1}-abcd"
    aside.mkdir()
    (aside / "config.json").write_text("{}")
    stale = tmp_path / f".out.saving-{2**22 + 1}-ef01"
    stale.mkdir()
    cleanup_leftovers(target)
    assert _entries(tmp_path) == ["out"] and (target / "config.json").is_file()


def test_an_old_tokenizer_file_is_not_carried_over(shipped_model, tmp_path):
    target = shipped_model.save_pretrained(tmp_path / "out")
    (target / "README.md").write_text("notes")
    model = VisualRWKV.from_pretrained(SHIPPED)
    model.tokenizer = None
    model.save_pretrained(target)
    assert _entries(target) == ["README.md", "config.json", "model.safetensors"]


def test_saving_through_a_symlink_is_refused(shipped_model, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ValueError, match="symbolic link"):
        shipped_model.save_pretrained(tmp_path / "link")
    assert _entries(tmp_path) == ["link", "real"] and _entries(tmp_path / "real") == []


def test_saved_files_follow_the_umask(shipped_model, tmp_path):
    old_mask = os.umask(0o027)
    try:
        d = shipped_model.save_pretrained(tmp_path / "d")
        f = shipped_model.save_pretrained(tmp_path / "f.safetensors")
    finally:
        os.umask(old_mask)
    assert stat.S_IMODE(d.stat().st_mode) == 0o750
    for p in [*d.iterdir(), f]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o640, p


def test_cli_convert_keeps_metadata_and_is_atomic(tmp_path):
    from rwkv_vision import cli

    out = tmp_path / "converted"
    assert cli.main(["convert", str(SHIPPED), str(out)]) == 0
    src = json.loads((SHIPPED / "config.json").read_text())["metadata"]
    assert json.loads((out / "config.json").read_text())["metadata"] == src
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o666 & ~_umask()
    # converting again over it (e.g. to another dtype) swaps the whole directory
    assert cli.main(["convert", str(SHIPPED), str(out), "--dtype", "bfloat16"]) == 0
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert _entries(tmp_path) == ["converted"]
    single = tmp_path / "one.safetensors"
    assert cli.main(["convert", str(SHIPPED), str(single)]) == 0
    assert pretrained.checkpoint_metadata(single) == src


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_SAVER = textwrap.dedent(
    """
    import sys, torch
    from rwkv_vision.models.visualrwkv import VisualRWKV
    model = VisualRWKV.from_pretrained(sys.argv[1])
    target = sys.argv[2]
    i = 0
    print("ready", flush=True)
    while True:
        i += 1
        with torch.no_grad():
            model.rwkv.emb.weight[0, 0] = float(i)
        model.save_pretrained(target, metadata={"i": i})
    """
)


@pytest.mark.slow
def test_killed_save_leaves_old_or_new(shipped_model, tmp_path):
    """A child process saves in a loop and is killed with SIGKILL at random moments; each time the
    directory loads, as one complete checkpoint (config and weights agree), and the next save clears
    the leftovers."""
    target = tmp_path / "out"
    shipped_model.save_pretrained(target, metadata={"i": 0})
    rng = random.Random(0)
    proc = subprocess.Popen(
        [sys.executable, "-c", _SAVER, str(SHIPPED), str(target)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        for _ in range(6):
            time.sleep(rng.uniform(0.05, 0.4))
            proc.send_signal(signal.SIGSTOP)  # freeze it mid-save, check, then let it go on
            config = json.loads((target / "config.json").read_text())
            emb = load_file(target / "model.safetensors")["rwkv.emb.weight"]
            i = config["metadata"]["i"]
            assert i == 0 or float(emb[0, 0]) == float(i), "config.json and the weights are of different saves"
            proc.send_signal(signal.SIGCONT)
        time.sleep(rng.uniform(0.05, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    model = VisualRWKV.from_pretrained(target)
    i = json.loads((target / "config.json").read_text())["metadata"]["i"]
    assert i == 0 or float(model.rwkv.emb.weight.detach()[0, 0]) == float(i)
    shipped_model.save_pretrained(target, metadata={"i": -1})  # the next save removes what the kill left
    assert _entries(tmp_path) == ["out"]
