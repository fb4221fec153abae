"""Models shipped inside the package, usable offline.

``shapes-vqa-tiny`` is a small VisualRWKV (a 2-block ViT trained from scratch, a linear projector, a 4-layer
RWKV-6 of width 128 and the ShapesVQA ``WordTokenizer``) trained by ``examples/train_toy.py`` on the
synthetic ShapesVQA dataset (:mod:`rwkv_vision.data`). It answers questions about images of coloured
shapes — "What color is the shape in the top left?", "How many circles are there?" — and exists so that the
whole path (image -> encoder -> projector -> prompt layout -> scanned RWKV-6 -> cached-state generation)
can be run and tested without downloading the released weights. See ``docs/toy_model.md``.

    >>> from rwkv_vision.pretrained import load_toy_model
    >>> model = load_toy_model()                                   # doctest: +SKIP
    >>> model.chat(image, "How many shapes are there?",            # doctest: +SKIP
    ...            stop_tokens=model.get_tokenizer().stop_token_ids)
    'three'
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["TOY_MODEL", "list_pretrained", "path", "load_toy_model"]

TOY_MODEL = "shapes-vqa-tiny"
_ROOT = Path(__file__).resolve().parent
#: Files every shipped model directory holds (written by ``VisualRWKV.save_pretrained``).
_REQUIRED = ("config.json", "model.safetensors")


def list_pretrained() -> list[str]:
    """Names of the models shipped with the package."""
    return sorted(p.name for p in _ROOT.iterdir() if p.is_dir() and (p / _REQUIRED[0]).is_file())


def path(name: str = TOY_MODEL) -> Path:
    """The directory of a shipped model (config.json, model.safetensors, tokenizer.json), for
    ``VisualRWKV.from_pretrained``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    directory = _ROOT / name
    if not directory.is_dir():
        raise ValueError(f"name: no shipped model {name!r}; shipped: {list_pretrained()}")
    missing = [f for f in _REQUIRED if not (directory / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the shipped model {name!r} at {directory} lacks {missing}; the package data was not installed "
            "(reinstall rwkv_vision, or check that package data is included in the wheel)"
        )
    return directory


def load_toy_model(name: str = TOY_MODEL, *, device=None, dtype=None):
    """The shipped toy VisualRWKV, in eval mode, loaded through ``VisualRWKV.from_pretrained`` like any
    saved model (its ``WordTokenizer`` and image preprocessor come with it)."""
    from ..models.visualrwkv import VisualRWKV

    return VisualRWKV.from_pretrained(path(name), device=device, dtype=dtype).eval()
