"""Where images sit in a token sequence: the image placeholder id and the span of each image's tokens.

A prompt's ``input_ids`` hold one :data:`IMAGE_TOKEN_INDEX` per image (``rwkv_vision.prompt`` writes them);
the model replaces each by the image's ``k`` embeddings, and an :class:`ImageSpan` then says where those
tokens lie in the *expanded* sequence — which the scan policies (``rwkv_vision.scan``) reorder and nothing
else recomputes. :data:`ClsPosition` is where an encoder puts its CLS token among an image's tokens.

These names are also importable from their earlier homes (``rwkv_vision.scan.ImageSpan``,
``rwkv_vision.prompt.IMAGE_TOKEN_INDEX``); this module is where they are defined.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

__all__ = ["IMAGE_TOKEN_INDEX", "ClsPosition", "ImageSpan"]

IMAGE_TOKEN_INDEX: int = -200
"""Placeholder id in ``input_ids`` for one image (never a vocabulary id)."""

ClsPosition = Literal["first", "last", None]
"""Where the CLS token is among an image's tokens: ``"last"`` (VisualRWKV v6.0), ``"first"`` (timm / v5) or
``None`` (no CLS token)."""


@dataclasses.dataclass(frozen=True)
class ImageSpan:
    """The tokens of one image inside a sequence.

    ``start`` is the position of the image's first token (patch or CLS). The image occupies
    ``num_tokens = rows*cols + (cls is not None)`` positions from there. With ``cls="last"`` (VisualRWKV
    v6.0: 576 patches row-major, then CLS) the patch tokens are ``[start, start + rows*cols)`` and the CLS
    token sits at ``start + rows*cols``; with ``cls="first"`` (v5 checkpoints) CLS is at ``start`` and the
    patches follow. Only the patch tokens are ever reordered by a scan policy.

    Args:
        start: first position of the image block in the (expanded) sequence, >= 0.
        rows, cols: the patch grid (e.g. 24 x 24 for CLIP ViT-L/14 at 336 px).
        cls: ``"last"``, ``"first"`` or ``None`` (no CLS token).
    """

    start: int
    rows: int
    cols: int
    cls: ClsPosition = "last"

    def __post_init__(self) -> None:
        for name in ("start", "rows", "cols"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"ImageSpan.{name} must be an int, got {type(value).__name__}")
        if self.start < 0:
            raise ValueError(f"ImageSpan.start must be >= 0, got {self.start}")
        if self.rows < 1 or self.cols < 1:
            raise ValueError(f"ImageSpan grid must be at least 1 x 1, got rows={self.rows}, cols={self.cols}")
        if self.cls not in ("first", "last", None):
            raise ValueError(f"ImageSpan.cls must be 'first', 'last' or None, got {self.cls!r}")

    @property
    def num_patches(self) -> int:
        return self.rows * self.cols

    @property
    def num_tokens(self) -> int:
        """Patches plus the CLS token if there is one."""
        return self.num_patches + (self.cls is not None)

    @property
    def patch_start(self) -> int:
        return self.start + (self.cls == "first")

    @property
    def patch_stop(self) -> int:
        """One past the last patch position."""
        return self.patch_start + self.num_patches

    @property
    def stop(self) -> int:
        """One past the last token of the image block (CLS included)."""
        return self.start + self.num_tokens

    def shifted(self, offset: int) -> ImageSpan:
        """The same span moved by ``offset`` positions (e.g. after a prefix was prepended)."""
        return dataclasses.replace(self, start=self.start + offset)
