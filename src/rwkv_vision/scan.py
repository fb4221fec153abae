"""Scan policies: the order in which each layer of a linear RNN reads the image patches.

A recurrent layer reads its input left to right, so a patch only "sees" the patches before it in that
order. VisualRWKV compensates by changing the order per layer (paper section "Scan directions"): the
released v6.0 weights use :class:`BiDir` (odd layers read the patch span backwards). A scan policy is
*data*: for a layer index and a patch grid it returns a permutation of that image's patch span. Nothing
else moves — text tokens and the CLS token keep their places — and a policy has no parameters, so a
model switches policy in one line (``model.scan = MultiDir()``).

Conventions used throughout this module:

* patches of one image are numbered row-major, ``p = row * cols + col``;
* a permutation ``perm`` (LongTensor ``[rows*cols]``) lists, for each position ``k`` of the permuted span,
  the row-major patch placed there: ``permuted[k] = span[perm[k]]``; its inverse ``inv`` undoes it:
  ``span[p] = permuted[inv[p]]``;
* :class:`~rwkv_vision.image_tokens.ImageSpan` (defined in :mod:`rwkv_vision.image_tokens`, re-exported
  here) says where one image's tokens lie in a (text + image) sequence.

Each policy is registered by name in :data:`SCANS` (``"bidir"``, ``"multidir"``, ...), which
:func:`get_scan_policy`, ``config.json`` and the ``rwkv-vision`` command read.

Shape legend: b batch, t time (sequence positions), c channels.
"""

from __future__ import annotations

import abc
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .image_tokens import ClsPosition, ImageSpan  # noqa: F401  (ClsPosition: re-exported for old imports)
from .registry import Registry

__all__ = [
    "ImageSpan",
    "ScanPolicy",
    "SCANS",
    "UniDir",
    "BiDir",
    "MultiDir",
    "Snake",
    "Zigzag",
    "Custom",
    "get_scan_policy",
    "scan_policy_names",
    "normalize_spans",
    "permute_spans",
    "unpermute_spans",
    "scanned_call",
    "ScannedBlock",
]

#: Scan policies by name (``@SCANS.register("name")`` next to each class); names are case-insensitive.
SCANS: Registry[type[ScanPolicy]] = Registry("scan policy")

SpansArg = Sequence[ImageSpan] | Sequence[Sequence[ImageSpan]] | None


def normalize_spans(spans: SpansArg, batch_size: int) -> tuple[tuple[ImageSpan, ...], ...]:
    """Spans per batch row.

    ``spans`` is either one list of :class:`ImageSpan` shared by every row, or a list with one list per
    batch row (rows may hold different numbers of images at different positions), or ``None``.
    Returns a tuple of ``batch_size`` tuples, each sorted by position, checked for overlaps.
    """
    if spans is None:
        return tuple(() for _ in range(batch_size))
    if isinstance(spans, ImageSpan):
        spans = [spans]
    spans = list(spans)
    if all(isinstance(s, ImageSpan) for s in spans):
        per_row = [tuple(spans)] * batch_size
    elif all(isinstance(s, (list, tuple)) for s in spans):
        if len(spans) != batch_size:
            raise ValueError(
                f"spans: got {len(spans)} per-row span lists for a batch of {batch_size} rows; "
                "give one list per batch row, or one flat list of ImageSpan shared by all rows"
            )
        per_row = []
        for r, row in enumerate(spans):
            for s in row:
                if not isinstance(s, ImageSpan):
                    raise TypeError(f"spans[{r}] must contain ImageSpan objects, got {type(s).__name__}")
            per_row.append(tuple(row))
    else:
        raise TypeError(
            "spans must be a list of ImageSpan (shared by all rows) or a list of such lists (one per row), "
            f"got elements of types {sorted({type(s).__name__ for s in spans})}"
        )
    out = []
    for r, row in enumerate(per_row):
        row = tuple(sorted(row, key=lambda s: s.start))
        for a, b in zip(row, row[1:]):
            if b.start < a.stop:
                raise ValueError(f"spans of batch row {r} overlap: {a} and {b}")
        out.append(row)
    return tuple(out)


# --------------------------------------------------------------------------------------------------
# Orders of a grid (row-major patch indices, as plain lists so they are cheap to cache)
# --------------------------------------------------------------------------------------------------


def _row_major(rows: int, cols: int) -> list[int]:
    return list(range(rows * cols))


def _column_major(rows: int, cols: int) -> list[int]:
    return [r * cols + c for c in range(cols) for r in range(rows)]


def _snake(rows: int, cols: int) -> list[int]:
    out = []
    for r in range(rows):
        cs = range(cols) if r % 2 == 0 else range(cols - 1, -1, -1)
        out.extend(r * cols + c for c in cs)
    return out


def _zigzag(rows: int, cols: int) -> list[int]:
    # JPEG-style: walk anti-diagonals d = row + col, alternating direction so consecutive patches stay
    # neighbours (the previous diagonal ends next to where the next one starts).
    out = []
    for d in range(rows + cols - 1):
        r_lo, r_hi = max(0, d - cols + 1), min(d, rows - 1)
        rs = range(r_hi, r_lo - 1, -1) if d % 2 == 0 else range(r_lo, r_hi + 1)
        out.extend(r * cols + (d - r) for r in rs)
    return out


def _transposed(order_fn: Callable[[int, int], list[int]], rows: int, cols: int) -> list[int]:
    # The order of the transposed grid, expressed in row-major indices of the original grid.
    t_order = order_fn(cols, rows)  # indices into the cols x rows grid
    return [(p % rows) * cols + (p // rows) for p in t_order]


def _require_square(policy: ScanPolicy, rows: int, cols: int, layer_index: int) -> None:
    if rows != cols:
        raise ValueError(
            f"{policy!r} transposes the patch grid at some layers and is defined on square grids only; "
            f"got a {rows} x {cols} grid (layer {layer_index}). Use UniDir/BiDir/Snake or Custom for "
            "non-square grids."
        )


# --------------------------------------------------------------------------------------------------
# Policies
# --------------------------------------------------------------------------------------------------


class ScanPolicy(abc.ABC):
    """The order in which layer ``i`` reads the patches of a ``rows x cols`` grid.

    Subclasses implement :meth:`order` (a list of row-major patch indices, or ``None`` for the identity).
    :meth:`permutation` and :meth:`inverse` return cached LongTensors ``[rows*cols]``.
    Policies are immutable, hashable and parameter-free; :attr:`period` is the number of layers after
    which the pattern repeats.
    """

    period: int = 1

    @abc.abstractmethod
    def order(self, layer_index: int, rows: int, cols: int) -> list[int] | None:
        """Row-major patch indices in the order layer ``layer_index`` reads them; ``None`` = row-major."""

    def _check(self, layer_index: int, rows: int, cols: int) -> None:
        if not isinstance(layer_index, int) or isinstance(layer_index, bool) or layer_index < 0:
            raise ValueError(f"layer_index must be a non-negative int, got {layer_index!r}")
        for name, v in (("rows", rows), ("cols", cols)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")

    def is_identity(self, layer_index: int, rows: int, cols: int) -> bool:
        """True when layer ``layer_index`` reads the grid row-major (no data movement needed)."""
        self._check(layer_index, rows, cols)
        order = self.order(layer_index, rows, cols)
        return order is None or order == list(range(rows * cols))

    def permutation(self, layer_index: int, rows: int, cols: int, *, device=None) -> torch.Tensor:
        """LongTensor ``[rows*cols]``: ``permuted[k] = span[perm[k]]`` (a fresh copy; safe to modify)."""
        self._check(layer_index, rows, cols)
        return _cached_perm(self, layer_index % self.period, rows, cols, False, _device_key(device)).clone()

    def inverse(self, layer_index: int, rows: int, cols: int, *, device=None) -> torch.Tensor:
        """LongTensor ``[rows*cols]``: ``span[p] = permuted[inv[p]]`` (a fresh copy; safe to modify)."""
        self._check(layer_index, rows, cols)
        return _cached_perm(self, layer_index % self.period, rows, cols, True, _device_key(device)).clone()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self._key() == other._key()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._key()))

    def _key(self) -> tuple:
        return ()


def _device_key(device) -> str:
    return str(torch.device(device)) if device is not None else "cpu"


@functools.lru_cache(maxsize=512)
def _cached_perm(policy: ScanPolicy, layer_mod: int, rows: int, cols: int, inverse: bool, device: str):
    order = policy.order(layer_mod, rows, cols)
    perm = torch.arange(rows * cols) if order is None else torch.tensor(order, dtype=torch.long)
    if inverse:
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(perm.numel())
        perm = inv
    return perm.to(device)


@SCANS.register("unidir")
class UniDir(ScanPolicy):
    """Every layer reads the patches row-major (the plain causal order)."""

    def order(self, layer_index, rows, cols):
        return None


@SCANS.register("bidir")
class BiDir(ScanPolicy):
    """Odd layers (``i % 2 == 1``) read the patch span reversed; even layers row-major.

    This is the policy of the released VisualRWKV v6.0 weights: the residual stream's patch span is
    flipped before an odd block and flipped back after it.
    """

    period = 2

    def order(self, layer_index, rows, cols):
        return None if layer_index % 2 == 0 else list(range(rows * cols - 1, -1, -1))


@SCANS.register("multidir")
class MultiDir(ScanPolicy):
    """A 4-layer cycle over a square grid: row-major, row-major reversed, column-major, column-major
    reversed (``i % 4 == 0, 1, 2, 3``). Raises on a non-square grid."""

    period = 4

    def order(self, layer_index, rows, cols):
        _require_square(self, rows, cols, layer_index)
        phase = layer_index % 4
        if phase == 0:
            return None
        base = _row_major(rows, cols) if phase == 1 else _column_major(rows, cols)
        return base[::-1] if phase in (1, 3) else base


@SCANS.register("snake")
class Snake(ScanPolicy):
    """Boustrophedon rows: even rows left to right, odd rows right to left, so consecutive tokens are
    always spatial neighbours.

    Args:
        bidirectional: if True, odd layers walk the same path backwards (period 2).
    """

    def __init__(self, *, bidirectional: bool = False):
        self.bidirectional = bool(bidirectional)
        self.period = 2 if self.bidirectional else 1

    def order(self, layer_index, rows, cols):
        path = _snake(rows, cols)
        return path[::-1] if self.bidirectional and layer_index % 2 == 1 else path

    def _key(self):
        return (self.bidirectional,)

    def __repr__(self):
        return f"Snake(bidirectional={self.bidirectional})"


@SCANS.register("zigzag")
class Zigzag(ScanPolicy):
    """Anti-diagonal (JPEG-style) zigzag order, starting at the top-left patch.

    Args:
        bidirectional: odd layers walk the path backwards.
        transpose: also use the zigzag of the transposed grid, giving a 4-layer cycle
            (zigzag, reversed, transposed zigzag, transposed reversed) like :class:`MultiDir`;
            like MultiDir this is defined on square grids only. Implies ``bidirectional``.
    """

    def __init__(self, *, bidirectional: bool = False, transpose: bool = False):
        self.transpose = bool(transpose)
        self.bidirectional = bool(bidirectional) or self.transpose
        self.period = 4 if self.transpose else (2 if self.bidirectional else 1)

    def order(self, layer_index, rows, cols):
        if self.transpose:
            _require_square(self, rows, cols, layer_index)
        phase = layer_index % self.period
        path = _transposed(_zigzag, rows, cols) if phase >= 2 else _zigzag(rows, cols)
        return path[::-1] if self.bidirectional and phase % 2 == 1 else path

    def _key(self):
        return (self.bidirectional, self.transpose)

    def __repr__(self):
        return f"Zigzag(bidirectional={self.bidirectional}, transpose={self.transpose})"


@SCANS.register("custom")
class Custom(ScanPolicy):
    """User-given permutations, cycled over layers: layer ``i`` uses ``permutations[i % len]``.

    Each permutation lists row-major patch indices (``permuted[k] = span[perm[k]]``) and must be a
    permutation of ``range(rows*cols)`` for the grid it is applied to; the length is checked at use,
    since the grid is only known then. ``None`` in the list means row-major.

    Args:
        permutations: non-empty sequence of permutations (lists, tuples, 1-D integer tensors) or None.
    """

    def __init__(self, permutations: Sequence[Sequence[int] | torch.Tensor | None]):
        if isinstance(permutations, torch.Tensor) and permutations.dim() == 1:
            permutations = [permutations]
        if isinstance(permutations, (str, bytes)) or not isinstance(permutations, (Sequence, torch.Tensor)):
            raise TypeError(f"permutations must be a sequence of permutations, got {type(permutations).__name__}")
        perms: list[tuple[int, ...] | None] = []
        for j, p in enumerate(permutations):
            if p is None:
                perms.append(None)
                continue
            if isinstance(p, torch.Tensor):
                if p.dim() != 1 or p.dtype.is_floating_point or p.dtype == torch.bool:
                    raise ValueError(f"permutations[{j}] must be a 1-D integer tensor, got {p.dtype} {tuple(p.shape)}")
                p = p.tolist()
            p = tuple(int(v) for v in p)
            if sorted(p) != list(range(len(p))):
                raise ValueError(f"permutations[{j}] (length {len(p)}) is not a permutation of range({len(p)})")
            perms.append(p)
        if not perms:
            raise ValueError("permutations must hold at least one permutation")
        self.permutations = tuple(perms)
        self.period = len(perms)

    def order(self, layer_index, rows, cols):
        j = layer_index % self.period
        p = self.permutations[j]
        if p is None:
            return None
        if len(p) != rows * cols:
            raise ValueError(
                f"Custom permutations[{j}] (used for layer {layer_index}) has length {len(p)}, but the "
                f"{rows} x {cols} grid has {rows * cols} patches"
            )
        return list(p)

    def _key(self):
        return self.permutations

    def __repr__(self):
        lens = [None if p is None else len(p) for p in self.permutations]
        return f"Custom(<{self.period} permutations, lengths {lens}>)"


def _needs_arguments(cls: Callable[..., Any]) -> bool:
    """True when ``cls()`` cannot be called: a constructor argument has no default (e.g. Custom's)."""
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)


def scan_policy_names() -> list[str]:
    """Names :func:`get_scan_policy` builds without arguments (every registered policy but ``custom``):
    the choices of the ``rwkv-vision --scan`` option."""
    return [name for name in SCANS.names() if not _needs_arguments(SCANS.get(name))]


def get_scan_policy(policy: ScanPolicy | str | None) -> ScanPolicy:
    """A policy object from a policy or a name registered in :data:`SCANS` (``"unidir"``, ``"bidir"``,
    ``"multidir"``, ``"snake"``, ``"zigzag"``, or your own; case-insensitive). ``None`` gives
    :class:`UniDir`. For config files and the CLI; code should pass objects."""
    if policy is None:
        return UniDir()
    if isinstance(policy, ScanPolicy):
        return policy
    if isinstance(policy, str) and policy in SCANS:
        cls = SCANS.get(policy)
        if _needs_arguments(cls):
            raise ValueError(
                f"scan policy {policy!r} needs arguments: construct {cls.__name__}(...) and pass the object"
            )
        return cls()
    raise ValueError(f"scan policy must be a ScanPolicy or one of {scan_policy_names()}, got {policy!r}")


# --------------------------------------------------------------------------------------------------
# Applying a policy to a [b, t, c] residual stream
# --------------------------------------------------------------------------------------------------


def _gather_index(
    policy: ScanPolicy,
    layer_index: int,
    rows_spans: tuple[tuple[ImageSpan, ...], ...],
    t: int,
    offset: int,
    inverse: bool,
    device,
) -> torch.Tensor | None:
    """``[t]`` (all rows alike) or ``[b, t]`` source positions, or None when nothing moves."""
    per_row: list[torch.Tensor | None] = []
    for r, row in enumerate(rows_spans):
        idx = None
        for s in row:
            lo, hi = s.patch_start - offset, s.patch_stop - offset
            if s.stop - offset <= 0 or s.start - offset >= t:
                continue  # wholly outside this chunk: another call handles it
            if lo < 0 or hi > t:
                raise ValueError(
                    f"{s} (batch row {r}) is cut by the chunk [{offset}, {offset + t}); a scan needs a "
                    "whole image in one call, so split chunks at image boundaries"
                )
            if policy.is_identity(layer_index, s.rows, s.cols):
                continue
            if idx is None:
                idx = torch.arange(t, device=device)
            perm = _cached_perm(policy, layer_index % policy.period, s.rows, s.cols, inverse, _device_key(device))
            idx[lo:hi] = perm + lo
        per_row.append(idx)
    if all(i is None for i in per_row):
        return None
    if len(set(rows_spans)) == 1:
        return per_row[0]
    return torch.stack([torch.arange(t, device=device) if i is None else i for i in per_row])


def _apply(x: torch.Tensor, spans: SpansArg, policy, layer_index: int, offset: int, inverse: bool):
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"x must be a [b, t, c] tensor, got {getattr(x, 'shape', type(x).__name__)}")
    policy = get_scan_policy(policy)
    b, t, c = x.shape
    rows_spans = normalize_spans(spans, b)
    idx = _gather_index(policy, layer_index, rows_spans, t, offset, inverse, x.device)
    if idx is None:
        return x
    if idx.dim() == 1:
        return x.index_select(1, idx)
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(b, t, c))


def permute_spans(
    x: torch.Tensor, spans: SpansArg, policy: ScanPolicy, layer_index: int, *, offset: int = 0
) -> torch.Tensor:
    """Reorder every image's patch span of ``x`` as layer ``layer_index`` of ``policy`` reads it.

    Args:
        x: ``[b, t, c]`` sequence (text and image tokens).
        spans: :class:`ImageSpan` list shared by all rows, or one list per batch row; positions are
            absolute positions of the whole sequence.
        policy: a :class:`ScanPolicy`.
        layer_index: 0-based layer index.
        offset: absolute position of ``x[:, 0]`` (for chunked prefill); spans wholly outside the chunk are
            skipped, a span cut by the chunk is an error.
    Returns:
        ``[b, t, c]``; ``x`` itself (no copy) when nothing moves at this layer.
    """
    return _apply(x, spans, policy, layer_index, offset, inverse=False)


def unpermute_spans(
    x: torch.Tensor, spans: SpansArg, policy: ScanPolicy, layer_index: int, *, offset: int = 0
) -> torch.Tensor:
    """Undo :func:`permute_spans` for the same arguments. ``x``: ``[b, t, c]`` -> ``[b, t, c]``."""
    return _apply(x, spans, policy, layer_index, offset, inverse=True)


def scanned_call(
    block: Callable[..., Any],
    x: torch.Tensor,
    *args: Any,
    policy: ScanPolicy,
    layer_index: int,
    spans: SpansArg,
    offset: int = 0,
    **kwargs: Any,
) -> Any:
    """``permute -> block -> unpermute`` around any block.

    The block sees the residual stream ``x`` ``[b, t, c]`` with each image's patch span in this layer's
    order; its output stream is put back in row-major order, so the next layer (with its own order) and
    everything outside the blocks see a fixed layout. ``block(x, *args, **kwargs)`` may return a tensor or
    a tuple whose first element is the new stream (``(x, state, ...)``); the rest is passed through.

    RWKV-7 blocks: a ``v_first=`` [b, t, c] keyword (layer 0's value, aligned with the stream) is permuted like
    ``x``, and with ``return_v_first=True`` the returned v_first (the last element) is put back in row-major
    order, so block 0's value reaches every later layer in that layer's own patch order.
    """
    if not callable(block):
        raise TypeError(f"block must be callable, got {type(block).__name__}")
    xp = permute_spans(x, spans, policy, layer_index, offset=offset)
    # RWKV-7's value residual is a [b, t, c] activation aligned with the stream: it moves with it.
    v_first = kwargs.get("v_first")
    if isinstance(v_first, torch.Tensor) and xp is not x:
        kwargs["v_first"] = permute_spans(v_first, spans, policy, layer_index, offset=offset)
    out = block(xp, *args, **kwargs)
    if xp is x:  # nothing moved at this layer
        return out
    if isinstance(out, torch.Tensor):
        return unpermute_spans(out, spans, policy, layer_index, offset=offset)
    if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
        rest = out[1:]
        if kwargs.get("return_v_first") and rest and isinstance(rest[-1], torch.Tensor):
            v_out = rest[-1]
            # A later block hands back the v_first it was given: return the caller's, not a round trip.
            v_out = (
                v_first
                if v_out is kwargs.get("v_first")
                else unpermute_spans(v_out, spans, policy, layer_index, offset=offset)
            )
            rest = (*rest[:-1], v_out)
        return (unpermute_spans(out[0], spans, policy, layer_index, offset=offset), *rest)
    raise TypeError(
        "a scanned block must return a [b, t, c] tensor or a tuple whose first element is one, "
        f"got {type(out).__name__}"
    )


class ScannedBlock(nn.Module):
    """Wrap any block so layer ``layer_index`` of ``policy`` decides the patch order it sees.

    ``forward(x, *args, spans=None, offset=0, **kwargs)``: ``x`` is ``[b, t, c]``; ``spans`` as in
    :func:`permute_spans` (``None``: no images, the block is called directly). The wrapped block's return
    (tensor or tuple led by the stream) is returned with the stream unpermuted. ``policy`` is a plain
    attribute, so it can be swapped at any time.
    """

    def __init__(self, block: Callable[..., Any], policy: ScanPolicy, layer_index: int):
        super().__init__()
        if not callable(block):
            raise TypeError(f"block must be callable, got {type(block).__name__}")
        self.block = block
        self.policy = get_scan_policy(policy)
        if not isinstance(layer_index, int) or layer_index < 0:
            raise ValueError(f"layer_index must be a non-negative int, got {layer_index!r}")
        self.layer_index = layer_index

    def forward(self, x: torch.Tensor, *args: Any, spans: SpansArg = None, offset: int = 0, **kwargs: Any):
        if not spans:
            return self.block(x, *args, **kwargs)
        return scanned_call(
            self.block,
            x,
            *args,
            policy=self.policy,
            layer_index=self.layer_index,
            spans=spans,
            offset=offset,
            **kwargs,
        )

    def extra_repr(self) -> str:
        return f"policy={self.policy!r}, layer_index={self.layer_index}"
