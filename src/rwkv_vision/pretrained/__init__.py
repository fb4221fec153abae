"""Models shipped inside the package, usable offline.

``shapes-vqa-tiny`` is a small VisualRWKV (a 2-block ViT trained from scratch, a linear projector, a 4-layer
RWKV-6 of width 128 and the ShapesVQA ``WordTokenizer``) trained by ``examples/train_toy.py`` on the
synthetic ShapesVQA dataset (:mod:`rwkv_vision.data`). It answers questions about images of coloured
shapes — "What color is the shape in the top left?", "How many circles are there?" — and exists so that the
whole path (image -> encoder -> projector -> prompt layout -> scanned RWKV-6 -> cached-state generation)
can be run and tested without downloading the released weights. See ``docs/toy_model.md``.

Load it by name like any model: ``VisualRWKV.from_pretrained("shapes-vqa-tiny")``,
``create_model("shapes-vqa-tiny", pretrained=True)`` or ``rwkv-vision chat IMAGE QUESTION --model
shapes-vqa-tiny`` (the names are resolved by :func:`resolve`; an existing path of that name wins).

    >>> from rwkv_vision.pretrained import load_toy_model
    >>> model = load_toy_model()                                   # doctest: +SKIP
    >>> model.chat(image, "How many shapes are there?",            # doctest: +SKIP
    ...            stop_tokens=model.get_tokenizer().stop_token_ids)
    'three'
"""

from __future__ import annotations

from .paths import TOY_MODEL, list_pretrained, path, resolve

__all__ = ["TOY_MODEL", "list_pretrained", "path", "resolve", "load_toy_model"]


def load_toy_model(name: str = TOY_MODEL, *, device=None, dtype=None):
    """The shipped toy VisualRWKV, in eval mode, loaded through ``VisualRWKV.from_pretrained`` like any
    saved model (its ``WordTokenizer`` and image preprocessor come with it)."""
    from ..models.visualrwkv import VisualRWKV

    return VisualRWKV.from_pretrained(path(name), device=device, dtype=dtype).eval()
