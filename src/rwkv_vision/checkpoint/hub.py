"""Finding checkpoints: local paths, short names of the released files, and the Hugging Face Hub.

Hub files are fetched with ``huggingface_hub.hf_hub_download`` into (or found in) the Hub's cache; the
cache and offline mode are the Hub's own (``HF_HUB_CACHE``, ``HF_HOME``, ``HF_HUB_OFFLINE``; read when
called, so setting them after import works).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from ..errors import CheckpointError
from ..sections import contained_path
from .config_json import CONFIG_NAME, WEIGHTS_NAME, load_config

__all__ = ["REPO_ID", "OFFICIAL_CHECKPOINTS", "resolve_checkpoint"]

REPO_ID = "howard-hou/visualrwkv-6"
#: Short names of the released v6.0 checkpoints -> (Hugging Face repo, file).
OFFICIAL_CHECKPOINTS: dict[str, tuple[str, str]] = {
    "visualrwkv-6.0-1b6": (REPO_ID, "VisualRWKV-v060-1B6-v1.0-20240612.pth"),
    "visualrwkv-6.0-3b": (REPO_ID, "VisualRWKV-v060-3B-v1.0-20240612.pth"),
    "visualrwkv-6.0-7b": (REPO_ID, "VisualRWKV-v060-7B-v1.0-20240612.pth"),
}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _hub_cache_dir(cache_dir) -> str | None:
    # huggingface_hub reads HF_HUB_CACHE / HF_HOME once, at import; reading them here honours a change made
    # after that (a test, a notebook cell), with the Hub's own precedence.
    if cache_dir is not None:
        return str(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE") or bool(constants.HF_HUB_OFFLINE)


def _hub_download(repo_id: str, filename: str, *, revision, cache_dir) -> Path:
    from huggingface_hub import hf_hub_download

    offline = _hub_offline()
    try:
        return Path(
            hf_hub_download(
                repo_id=repo_id,
                filename=filename,
                revision=revision,
                cache_dir=_hub_cache_dir(cache_dir),
                local_files_only=offline,
            )
        )
    except Exception as e:  # noqa: BLE001 - the Hub's errors (not found, offline, HTTP) all mean "no file"
        where = f"{repo_id}/{filename}" + (f"@{revision}" if revision else "")
        from huggingface_hub import constants

        why = (
            f"offline (HF_HUB_OFFLINE) and not in the cache {_hub_cache_dir(cache_dir) or constants.HF_HUB_CACHE}"
            if offline
            else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        )
        raise FileNotFoundError(f"name_or_path: cannot get {where} from the Hugging Face Hub: {why}") from e


def _check_relative(filename: str) -> None:
    """A file name inside a directory or a Hub repo: no absolute path, no ``..``, no NUL."""
    from pathlib import PurePosixPath, PureWindowsPath

    posix, win = PurePosixPath(filename), PureWindowsPath(filename)
    if (
        "\x00" in filename
        or posix.is_absolute()
        or win.is_absolute()
        or win.drive
        or ".." in posix.parts
        or ".." in win.parts
    ):
        raise CheckpointError(f"filename {filename!r} leaves the checkpoint directory or repo; refused")


def resolve_checkpoint(
    name_or_path: str | os.PathLike,
    *,
    filename: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """A local file or save_pretrained directory for any accepted ``name_or_path`` (see the module notes);
    Hub files are downloaded to (or found in) the Hugging Face cache."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a path or a Hub repo id, got {type(name_or_path).__name__}")
    if filename is not None and (not isinstance(filename, str) or not filename):
        raise ValueError(f"filename must be a non-empty str, got {filename!r}")
    if filename is not None:
        _check_relative(filename)
    local = Path(name_or_path)
    if local.is_dir():
        if filename is None:
            return local
        path = contained_path(local, filename, field="filename")
        if not path.is_file():
            raise FileNotFoundError(f"filename: no file {filename!r} in the directory {str(local)!r}")
        return path
    if local.is_file():
        if filename is not None:
            raise ValueError(
                f"filename: {str(local)!r} is already a file; pass filename only with a directory or repo id"
            )
        return local
    name = str(name_or_path)
    if name in OFFICIAL_CHECKPOINTS and filename is None:
        repo_id, filename = OFFICIAL_CHECKPOINTS[name]
    elif _REPO_ID.match(name):
        repo_id = name
    elif name.count("/") >= 2 and filename is None and not name.startswith(("/", ".")):
        owner, repo, filename = name.split("/", 2)
        repo_id = f"{owner}/{repo}"
    else:
        raise ValueError(
            f"name_or_path: {name!r} is not a file, a directory, a known name {sorted(OFFICIAL_CHECKPOINTS)}, "
            "a Hub repo id 'owner/repo' (with filename=, or holding a save_pretrained directory) or 'owner/repo/filename'"
        )
    if filename is not None:
        return _hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir)
    # A save_pretrained directory on the Hub: its files, one by one, land in the same snapshot folder.
    config_path = _hub_download(repo_id, CONFIG_NAME, revision=revision, cache_dir=cache_dir)
    directory = config_path.parent
    config = load_config(directory)
    _hub_download(repo_id, WEIGHTS_NAME, revision=revision, cache_dir=cache_dir)
    tok_file = config["tokenizer"].get("file") if isinstance(config["tokenizer"], Mapping) else None
    if tok_file:
        contained_path(directory, tok_file, field="tokenizer.file")
        _hub_download(repo_id, tok_file, revision=revision, cache_dir=cache_dir)
    return directory
