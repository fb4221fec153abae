"""Packed variable-length sequences: the ``cu_seqlens`` convention of the WKV ops.

Letter legend: b batch, t time, h heads, n head size; N the number of packed sequences.

Several sequences of different lengths run in one call as one row (b == 1) of t = sum of the lengths
steps; ``cu_seqlens`` [N + 1] holds the offsets of their starts, from 0 to t, non-decreasing (the
convention of flash-linear-attention): sequence i is steps ``cu_seqlens[i]:cu_seqlens[i + 1]``. The
state restarts at each boundary from that sequence's own initial state, and each sequence hands back
its own final state, so states are [N, h, n, n] instead of [b, h, n, n]. A sequence may be empty (its
final state is its initial state).
"""

from __future__ import annotations

import torch

__all__ = ["check_cu_seqlens", "seqlens_list", "pack_offsets"]


def check_cu_seqlens(cu_seqlens, b: int, t: int, fn: str, *, device: torch.device | None = None) -> int:
    """Validate ``cu_seqlens`` for inputs of batch b and length t (on ``device``, when given: cu_seqlens must be
    on the CPU or there); returns N, the number of sequences.

    The values are read on the host (one small copy from the device for a CUDA tensor): a wrong offset
    would make a kernel read outside its inputs. Skipped, apart from shapes, while torch.compile traces.
    """
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"{fn}: cu_seqlens must be a torch.Tensor of int32 or int64, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{fn}: cu_seqlens must be int32 or int64, got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"{fn}: cu_seqlens must be 1-D [N + 1] with N >= 1, got shape {tuple(cu_seqlens.shape)}")
    if b != 1:
        raise ValueError(f"{fn}: with cu_seqlens the sequences are packed into one row, so b must be 1, got b = {b}")
    if cu_seqlens.is_meta or (device is not None and cu_seqlens.device.type != "cpu" and cu_seqlens.device != device):
        # a meta tensor has no values to check; a kernel would read offsets on another device as its own
        where = "the CPU" if device is None else f"the CPU or the inputs' device ({device})"
        raise ValueError(f"{fn}: cu_seqlens is on {cu_seqlens.device}; put it on {where}")
    if not torch.compiler.is_compiling():
        values = cu_seqlens.tolist()
        if values[0] != 0 or values[-1] != t:
            raise ValueError(f"{fn}: cu_seqlens must run from 0 to t = {t}, got {values[0]} ... {values[-1]}")
        if any(a > c for a, c in zip(values, values[1:])):
            raise ValueError(f"{fn}: cu_seqlens must be non-decreasing, got {values}")
    return cu_seqlens.numel() - 1


def seqlens_list(cu_seqlens: torch.Tensor) -> list[tuple[int, int]]:
    """[(start, end)] of each packed sequence, read on the host."""
    values = cu_seqlens.tolist()
    return list(zip(values[:-1], values[1:]))


def pack_offsets(lengths, *, device=None) -> torch.Tensor:
    """``cu_seqlens`` (int64 [N + 1]) of sequences of the given lengths, packed one after another."""
    lengths = [int(x) for x in lengths]
    if not lengths or any(x < 0 for x in lengths):
        raise ValueError(f"pack_offsets: lengths must be a non-empty list of counts >= 0, got {lengths}")
    out = [0]
    for x in lengths:
        out.append(out[-1] + x)
    return torch.tensor(out, dtype=torch.int64, device=device)
