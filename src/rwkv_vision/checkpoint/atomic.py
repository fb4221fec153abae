"""Atomic replacement of a checkpoint: everything is written into a temporary directory beside the target,
then swapped in with renames, so that an interruption at any moment (an exception, a full disk, Ctrl-C,
SIGKILL, a power cut after the data reached the disk) leaves either the old or the new checkpoint.

* A directory target that does not exist yet: the finished temporary directory is renamed to it.
* A directory target that exists: the two directories are exchanged in one ``renameat2(RENAME_EXCHANGE)``
  (Linux); elsewhere, or on a file system without it, the old directory is renamed aside and the new one
  renamed in (two renames: a crash between them leaves the old checkpoint under ``.NAME.old-*``, which
  the next save of that target puts back before it does anything else). Files of the old directory that
  the save does not write (a README, ...) are carried over (hard links where possible).
* A file target (``.safetensors``): the finished file is renamed over it (``os.replace``).

Temporary names are ``.NAME.saving-PID-*`` and ``.NAME.old-PID-*`` beside the target; a save removes its
own on every exit, and the leftovers of a killed save (whose process is gone) on the next save of the same
target. Files and directories get the permissions the user's umask gives (an existing directory keeps its
mode), not the 0600/0700 of temporary files.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_save", "cleanup_leftovers"]

_RENAME_EXCHANGE = 2


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2``); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    return False


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _leftovers(target: Path, kind: str) -> list[tuple[Path, int]]:
    out = []
    prefix = f".{target.name}.{kind}-"
    with contextlib.suppress(OSError):
        for p in target.parent.iterdir():
            if p.name.startswith(prefix):
                pid = p.name[len(prefix) :].split("-", 1)[0]
                out.append((p, int(pid) if pid.isdigit() else -1))
    return out


def cleanup_leftovers(target: str | os.PathLike) -> None:
    """Finish or undo what a killed save of ``target`` left: a lone ``.NAME.old-*`` (the target itself
    missing) is put back; temporary directories of dead processes are removed."""
    target = Path(target)
    for p, pid in _leftovers(target, "old"):
        if _pid_alive(pid):
            continue
        if not os.path.lexists(target):
            os.rename(p, target)  # the old checkpoint, renamed aside by a save that died before the swap
        else:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink()
    for p, pid in _leftovers(target, "saving"):
        if not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink()


def _carry_over(old: Path, new: Path, owned: tuple[str, ...] = ()) -> None:
    """Files of the old directory the new one does not have (a README, notes), hard-linked or copied;
    ``owned`` names files the save is responsible for (an old tokenizer.json the new model has no use for
    is not carried over)."""

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    for entry in old.iterdir():
        dst = new / entry.name
        if os.path.lexists(dst) or entry.name in owned:
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), dst)
        elif entry.is_dir():
            shutil.copytree(entry, dst, symlinks=True, copy_function=link_or_copy)
        else:
            link_or_copy(str(entry), str(dst))


def atomic_save(
    target: str | os.PathLike, write: Callable[[Path], None], *, directory: bool, owned: tuple[str, ...] = ()
) -> Path:
    """Run ``write(tmp)`` and swap its result in for ``target``.

    ``directory=True``: ``write`` fills the empty directory ``tmp``, which becomes ``target``.
    ``directory=False``: ``write`` creates the file ``tmp`` (a path inside a temporary directory), which
    replaces the file ``target``. On any exception nothing at ``target`` has changed and no temporary file
    is left.
    """
    target = Path(target)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    cleanup_leftovers(target)
    if directory and target.is_symlink():
        raise ValueError(
            f"path: {str(target)!r} is a symbolic link (to {os.readlink(target)!r}); save to the directory itself"
        )
    if directory and os.path.lexists(target) and not target.is_dir():
        raise ValueError(f"path: {str(target)!r} exists and is not a directory")
    if not directory and target.is_dir():
        raise ValueError(f"path: {str(target)!r} is a directory")
    mode = 0o777 & ~_umask()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.saving-{os.getpid()}-", dir=parent))
    old: Path | None = None
    try:
        if directory:
            os.chmod(tmp, target.stat().st_mode & 0o7777 if target.is_dir() else mode)
            write(tmp)
            for p in tmp.rglob("*"):
                if p.is_file() and not p.is_symlink():
                    os.chmod(p, mode & 0o666)
            if target.is_dir():
                _carry_over(target, tmp, owned)
            _fsync_tree(tmp)
            if not target.exists():
                os.rename(tmp, target)
            elif _exchange(tmp, target):
                old = tmp  # now holds the old checkpoint
            else:
                old = parent / f".{target.name}.old-{os.getpid()}-{os.urandom(4).hex()}"
                os.rename(target, old)
                os.rename(tmp, target)
        else:
            out = tmp / target.name
            write(out)
            os.chmod(out, (target.stat().st_mode & 0o7777) if target.is_file() else mode & 0o666)
            _fsync_tree(tmp)
            os.replace(out, target)
        _fsync_dir(parent)
    finally:
        if old is not None and not os.path.lexists(target) and os.path.lexists(old):
            os.rename(old, target)  # failed between the two renames of the fallback: the old one goes back
        for p in (tmp, old):
            if p is not None and os.path.lexists(p):
                shutil.rmtree(p, ignore_errors=True)
    return target
