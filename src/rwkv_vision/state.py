"""The recurrent state of an RWKV-6 model: everything it remembers about the tokens it has read.

Letter legend: b batch, h heads, n head size, c channels.

Per layer (``LayerState``) there are three tensors (the time-mix's two are also its ``TimeMixState``):

- ``att_shift`` [b, c]: the last (LayerNorm-ed) input the time-mix saw, its x_{t-1} for the next token.
- ``wkv`` [b, h, n, n] float32: the WKV matrix S[b, h, key j, value i] of the time-mix.
- ``ffn_shift`` [b, c]: the last input the channel-mix saw.

The state of a whole model (``RWKVState``) is a list of these, one per block. It is all a model needs to
continue a sequence, so reading a prompt in one pass, in chunks with the state carried, or token by token
gives the same state and the same logits. Its size does not depend on how many tokens were read.

``RWKVState`` is a plain container: ``clone``, ``detach``, ``to``, batch selection (``select``, ``cat``,
``where``) and a flat ``state_dict`` of tensors that safetensors can store (``save``/``load``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from .errors import CheckpointError

__all__ = ["TimeMixState", "LayerState", "RWKVState"]


class TimeMixState(NamedTuple):
    """The state of one time-mix: ``shift`` [b, c] (its last input, model dtype) and ``wkv`` [b, h, n, n]
    (the WKV matrix S[b, h, key j, value i], float32). A tuple, so ``shift, wkv = state`` works."""

    shift: torch.Tensor
    wkv: torch.Tensor


_FIELDS = ("att_shift", "wkv", "ffn_shift")


@dataclass
class LayerState:
    """The state of one RWKV-6 block.

    Attributes:
        att_shift: [b, c] previous token's time-mix input (model dtype).
        wkv: [b, h, n, n] WKV state S[b, h, key j, value i], float32.
        ffn_shift: [b, c] previous token's channel-mix input (model dtype).
    """

    att_shift: torch.Tensor
    wkv: torch.Tensor
    ffn_shift: torch.Tensor

    def map(self, fn) -> "LayerState":
        """A new LayerState with ``fn`` applied to each tensor (fn(name, tensor) -> tensor)."""
        return LayerState(*(fn(name, getattr(self, name)) for name in _FIELDS))

    @property
    def batch_size(self) -> int:
        return self.wkv.shape[0]


class RWKVState:
    """The recurrent state of an ``RWKV6`` model: one ``LayerState`` per block.

    Index it by layer (``state[i]`` is a ``LayerState``), iterate over layers, ``len(state)`` is the number of
    layers. Methods return new states and never modify this one in place.

    Example::

        >>> logits, state = model(input_ids=prompt)                  # [b, t] -> [b, t, vocab], state
        >>> saved = state.clone()                                    # keep a copy (e.g. a cached system prompt)
        >>> logits, state = model(input_ids=next_ids, state=state)   # continue: O(1) memory per token
    """

    def __init__(self, layers: Sequence[LayerState]):
        self.layers = list(layers)
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, LayerState):
                raise TypeError(f"RWKVState: layers[{i}] must be a LayerState, got {type(layer).__name__}")

    @classmethod
    def zeros(
        cls,
        *,
        n_layer: int,
        batch_size: int,
        n_embd: int,
        n_head: int,
        head_size: int,
        device=None,
        dtype: torch.dtype = torch.float32,
    ) -> "RWKVState":
        """The state before any token: zero shift states (in ``dtype``) and zero WKV states (float32)."""

        def layer():
            return LayerState(
                att_shift=torch.zeros(batch_size, n_embd, device=device, dtype=dtype),
                wkv=torch.zeros(batch_size, n_head, head_size, head_size, device=device, dtype=torch.float32),
                ffn_shift=torch.zeros(batch_size, n_embd, device=device, dtype=dtype),
            )

        return cls([layer() for _ in range(n_layer)])

    # --- a list of layers -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> LayerState:
        return self.layers[i]

    def __setitem__(self, i: int, layer: LayerState) -> None:
        if not isinstance(layer, LayerState):
            raise TypeError(f"RWKVState: a layer must be a LayerState, got {type(layer).__name__}")
        self.layers[i] = layer

    def __iter__(self) -> Iterator[LayerState]:
        return iter(self.layers)

    def __repr__(self) -> str:
        if not self.layers:
            return "RWKVState(n_layer=0)"
        first = self.layers[0]
        return (
            f"RWKVState(n_layer={len(self)}, batch_size={self.batch_size}, "
            f"wkv={tuple(first.wkv.shape)} {first.wkv.dtype}, shift={tuple(first.att_shift.shape)} "
            f"{first.att_shift.dtype}, device={first.wkv.device})"
        )

    @property
    def batch_size(self) -> int:
        return self.layers[0].batch_size

    @property
    def device(self) -> torch.device:
        return self.layers[0].wkv.device

    def _map(self, fn) -> "RWKVState":
        return RWKVState([layer.map(fn) for layer in self.layers])

    # --- copies and conversions ---------------------------------------------------------------------------

    def clone(self) -> "RWKVState":
        return self._map(lambda _, x: x.clone())

    def detach(self) -> "RWKVState":
        """Cut the autograd graph (truncated backpropagation through time across segments)."""
        return self._map(lambda _, x: x.detach())

    def to(self, device=None, dtype: torch.dtype | None = None) -> "RWKVState":
        """Move to ``device``; ``dtype`` converts the shift states only, the WKV state stays float32."""
        return self._map(lambda name, x: x.to(device=device, dtype=None if name == "wkv" else dtype))

    # --- batch --------------------------------------------------------------------------------------------

    def select(self, index) -> "RWKVState":
        """Rows of the batch: ``index`` is an int, a slice, a list or a 1-D index/bool tensor.

        An int keeps the batch dimension (``state.select(2)`` has batch size 1), so the result can be fed
        straight back into the model.
        """
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        if isinstance(index, (list, tuple)):
            index = torch.as_tensor(index, dtype=torch.long, device=self.device)
        return self._map(lambda _, x: x[index])

    @staticmethod
    def cat(states: Sequence["RWKVState"]) -> "RWKVState":
        """Join states along the batch (e.g. prompts prefilled one by one, decoded together)."""
        if not states:
            raise ValueError("RWKVState.cat: states must not be empty")
        n_layer = len(states[0])
        if any(len(s) != n_layer for s in states):
            raise ValueError(f"RWKVState.cat: all states must have {n_layer} layers, got {[len(s) for s in states]}")
        return RWKVState(
            [
                LayerState(*(torch.cat([getattr(s[i], name) for s in states]) for name in _FIELDS))
                for i in range(n_layer)
            ]
        )

    def where(self, mask: torch.Tensor, other: "RWKVState") -> "RWKVState":
        """Row by row, this state where ``mask`` [b] (bool) is True, ``other`` where it is False."""
        mask = mask.to(device=self.device, dtype=torch.bool)

        def pick(name, x, y):
            return torch.where(mask.view(-1, *([1] * (x.dim() - 1))), x, y)

        return RWKVState(
            [
                LayerState(*(pick(name, getattr(a, name), getattr(b, name)) for name in _FIELDS))
                for a, b in zip(self.layers, other.layers)
            ]
        )

    # --- saving and loading -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        """A flat dict ``{"blocks.{i}.{att_shift|wkv|ffn_shift}": tensor}`` (contiguous; safetensors-ready)."""
        return {
            f"blocks.{i}.{name}": getattr(layer, name).contiguous()
            for i, layer in enumerate(self.layers)
            for name in _FIELDS
        }

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor]) -> "RWKVState":
        """The inverse of ``state_dict``; raises (a ``CheckpointError``, a ValueError) listing the first few
        missing and unexpected keys and how many more, or the tensors whose shapes do not fit together.

        Layer indices must run 0..n-1 (at most :data:`MAX_LAYERS`): a key such as ``blocks.20000.wkv`` is
        unexpected, it does not make a state of 20,001 layers."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"RWKVState.from_state_dict: expected a dict of tensors, got {type(state_dict).__name__}")
        layers: dict[int, dict[str, torch.Tensor]] = {}
        unexpected: list = []
        for key, value in state_dict.items():
            m = _STATE_KEY.match(key) if isinstance(key, str) else None
            if m is None or not isinstance(value, torch.Tensor):
                unexpected.append(key)
                continue
            layers.setdefault(int(m.group(1)), {})[m.group(2)] = value
        n_layer = 0
        while n_layer in layers and n_layer < MAX_LAYERS:
            n_layer += 1
        unexpected += [f"blocks.{i}.{name}" for i in sorted(layers) if i >= n_layer for name in layers[i]]
        missing = [f"blocks.{i}.{name}" for i in range(n_layer) for name in _FIELDS if name not in layers[i]]
        if missing or unexpected or n_layer == 0:
            raise CheckpointError(
                f"RWKVState.from_state_dict: not a state dict of {n_layer} layers (at most {MAX_LAYERS}); "
                f"missing keys {_few(missing)}, unexpected keys {_few(sorted(map(str, unexpected)))}"
            )
        problems = []
        batch = layers[0]["att_shift"].shape[0] if layers[0]["att_shift"].dim() else None
        for i in range(n_layer):
            a, w, f = (layers[i][name] for name in _FIELDS)
            shapes = [list(a.shape), list(w.shape), list(f.shape)]
            ok = (
                a.dim() == 2
                and f.dim() == 2
                and w.dim() == 4
                and w.shape[2] == w.shape[3]
                and a.shape == f.shape
                and a.shape[1] == w.shape[1] * w.shape[2]
                and a.shape[0] == w.shape[0] == batch
                and all(t.is_floating_point() for t in (a, w, f))
            )
            if not ok:
                problems.append(f"blocks.{i}: att_shift, wkv, ffn_shift are {shapes} ({a.dtype}, {w.dtype}, {f.dtype})")
        if problems:
            raise CheckpointError(
                "RWKVState.from_state_dict: expected floating att_shift [b, c], wkv [b, h, n, n] and ffn_shift [b, c] "
                f"with c = h * n and one b: {_few(problems)}"
            )
        return cls([LayerState(*(layers[i][name] for name in _FIELDS)) for i in range(n_layer)])

    def save(self, path: str | os.PathLike) -> None:
        """Write the state to a safetensors file, atomically: a temporary file beside ``path`` is renamed over
        it, so an interruption leaves the old file or the new one (and no temporary file)."""
        from safetensors.torch import save_file

        path = Path(path)
        tmp = path.with_name(f".{path.name}.saving-{os.getpid()}-{os.urandom(4).hex()}")
        try:
            save_file(self.state_dict(), str(tmp))
            mask = os.umask(0o022)
            os.umask(mask)
            os.chmod(tmp, (path.stat().st_mode & 0o7777) if path.is_file() else 0o666 & ~mask)
            os.replace(tmp, path)
        finally:
            if os.path.lexists(tmp):
                tmp.unlink()

    @classmethod
    def load(cls, path: str | os.PathLike, device="cpu") -> "RWKVState":
        """Read a state written by ``save``. Keys and shapes are checked (from the file header) before any
        tensor data is read; every problem is a ``CheckpointError`` naming the file."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"path: no state file at {str(path)!r}")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                specs = {}
                for key in f.keys():
                    sl = f.get_slice(key)
                    dtype = _SAFETENSORS_FLOATS.get(sl.get_dtype(), torch.int64)
                    specs[key] = torch.empty(sl.get_shape(), dtype=dtype, device="meta")
        except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, ...
            raise CheckpointError(
                f"{path}: cannot be read as a safetensors state file ({type(e).__name__}: {str(e)[:200]})"
            ) from None
        try:
            cls.from_state_dict(specs)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{path}: a tensor cannot be read ({type(e).__name__}: {str(e)[:200]})") from None
        return cls.from_state_dict(tensors).to(device=device)


#: The most layers a state file may hold (the largest language model allows 1024).
MAX_LAYERS = 1024
_STATE_KEY = re.compile(r"blocks\.(\d{1,9})\.(att_shift|wkv|ffn_shift)\Z")
_SAFETENSORS_FLOATS = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _few(items: list, n: int = 8) -> str:
    """The first ``n`` of ``items`` (each cut to 200 characters) and how many more."""
    shown = [i if not isinstance(i, str) or len(i) <= 200 else i[:197] + "..." for i in items[:n]]
    return str(shown) + (f" and {len(items) - n} more" if len(items) > n else "")
