"""A decode engine for RWKV models: static state buffers, optional compilation and CUDA-graph replay.

Letter legend: b batch, t time, h heads, n head size, c channels (c = h * n), v vocabulary, L layers.

``RWKV6.forward`` / ``RWKV7.forward`` are general (any t, autograd, the wkv ops, a fresh ``RWKVState`` per
call). Decoding needs none of that: t = 1 every step, and the state can live in buffers that are updated in
place. The ``Decoder`` keeps

    att_shift [L, b, c], ffn_shift [L, b, c]   (model dtype)      wkv [L, b, h, n, n]  (float32)

allocated once, and each token runs ``RWKV6.step`` (or ``RWKV7.step``, which carries block 0's value v_first
from block to block inside the step) on views of them: every block's own ``step`` (the
one-token math lives in the layers, next to their ``forward``). The decoder adds only what a serving loop
needs around that step:

- on CUDA the whole step (embedding, every block, head) can be captured once into a ``torch.cuda.CUDAGraph``
  over static input-id and logits buffers, so a token costs one graph launch instead of ~50 kernel launches
  per layer from Python;
- ``compile=True`` runs the step through ``torch.compile`` (the element-wise work between the matmuls
  fused), and that compiled step is what a CUDA graph captures.

The prompt is read by the model's ``forward`` with ``chunk_size`` (state carried, only the last logits kept), so
a long prefill needs the weights plus memory for one chunk, whatever the prompt length. A ``VisualRWKV``
prompt is chunked the same way: an image placeholder is one id, so any cut of the ids keeps images whole; a
VisualRWKV with ``pad_to_multiple`` (v7.00) reads the official left pads of the whole prompt first after a
``reset`` (as its ``generate(official_padding=False)`` does).
Token picking and stopping are ``generation.decode_loop``, the loop every ``generate`` of the library runs.

Example::

    >>> dec = Decoder(model, batch_size=1)                     # model: RWKV6, RWKV7 or VisualRWKV, eval mode
    >>> logits = dec.prefill(input_ids=prompt, chunk_size=2048)  # [b, v]
    >>> out = dec.generate(next_logits=logits, max_new_tokens=64)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .generation import GenerationConfig, GenerationOutput, decode_loop, make_config
from .models.rwkv6 import RWKV6
from .models.rwkv7 import RWKV7
from .state import LayerState, RWKVState

__all__ = ["Decoder"]


class Decoder:
    """Prefill and token-by-token decoding of an ``RWKV6`` or ``RWKV7`` (or a ``VisualRWKV``'s language model)
    from statically allocated state.

    Args:
        model: an ``RWKV6`` or ``RWKV7``, or a model with one at ``.rwkv`` (``VisualRWKV``), whose ``forward``
            then reads prompts with images. Put it in eval mode; its parameters are read, never copied.
        batch_size: b, fixed for the life of the decoder (the buffers and the graph have this batch).
        use_cuda_graph: capture the step into a CUDA graph on first use. None (default): when the model is
            on a CUDA device. True on a non-CUDA model raises.
        device, dtype: where and in what the shift states live; None means the model's (the only values
            accepted: the step reads the model's weights in place).
        compile: run the step through ``torch.compile`` (``fullgraph=True``, static shapes), which fuses
            the element-wise work between the matmuls (layer norms, lerps, activations, the decay) into a
            few kernels; with a CUDA graph the compiled step is what gets captured. True for the defaults,
            or a dict of ``torch.compile`` keyword arguments (e.g. ``{"mode": "max-autotune-no-cudagraphs"}``).
            The first step then takes the compile time (seconds to a minute).

    Shapes: ``prefill(...) -> logits [b, v]``, ``step(input_ids [b] | [b, 1]) -> logits [b, v]``,
    ``state -> RWKVState`` (a copy), ``load_state(RWKVState)``.
    """

    def __init__(
        self,
        model,
        *,
        batch_size: int = 1,
        use_cuda_graph: bool | None = None,
        device=None,
        dtype=None,
        compile: bool | dict = False,
    ):
        rwkv = model if isinstance(model, (RWKV6, RWKV7)) else getattr(model, "rwkv", None)
        if not isinstance(rwkv, (RWKV6, RWKV7)):
            raise TypeError(
                "Decoder: model must be an RWKV6 or RWKV7, or have one at .rwkv (VisualRWKV), got "
                f"{type(model).__name__}"
            )
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"Decoder: batch_size must be a positive int, got {batch_size!r}")
        weight = rwkv.emb.weight
        if device is not None and torch.device(device) != weight.device:
            # torch.device("cuda") != torch.device("cuda:0"); compare what they resolve to.
            want = torch.device(device)
            if not (want.type == weight.device.type and want.index in (None, weight.device.index)):
                raise ValueError(f"Decoder: device must be the model's ({weight.device}) or None, got {device}")
        if dtype is not None and dtype != weight.dtype:
            raise ValueError(f"Decoder: dtype must be the model's ({weight.dtype}) or None, got {dtype}")
        if weight.device.type == "meta":
            raise ValueError("Decoder: the model is on the meta device; load its weights first")
        if use_cuda_graph is None:
            use_cuda_graph = weight.device.type == "cuda"
        if use_cuda_graph and weight.device.type != "cuda":
            raise ValueError(f"Decoder: use_cuda_graph=True needs a model on CUDA, the model is on {weight.device}")

        self.model, self.rwkv = model, rwkv
        self.batch_size = batch_size
        self.device, self.dtype = weight.device, weight.dtype
        self.use_cuda_graph = bool(use_cuda_graph)
        if not isinstance(compile, (bool, dict)):
            raise TypeError(f"Decoder: compile must be a bool or a dict of torch.compile arguments, got {compile!r}")
        self._compile_args = ({} if compile is True else dict(compile)) if compile else None
        L, b, c, h, n = rwkv.n_layer, batch_size, rwkv.n_embd, rwkv.n_head, rwkv.head_size
        # One tensor per kind rather than per layer: one copy_ loads or saves a whole state, and the CUDA
        # graph sees fixed addresses.
        self._att = torch.zeros(L, b, c, device=self.device, dtype=self.dtype)
        self._ffn = torch.zeros(L, b, c, device=self.device, dtype=self.dtype)
        self._wkv = torch.zeros(L, b, h, n, n, device=self.device, dtype=torch.float32)
        # A VisualRWKV with pad_to_multiple (v7.00) left-pads a fresh sequence: the prefill after a reset does too.
        self._fresh = True
        self.refresh_weights()

    # --- weights and state ----------------------------------------------------------------------------------

    def refresh_weights(self) -> None:
        """Drop a captured graph and compiled step (call after loading new weights into the model): a CUDA
        graph holds the addresses of the parameters it was captured with."""
        self._step_fn = self._step_eager
        if self._compile_args is not None:
            # Tensors reached through self become graph inputs, guarded on shape and dtype rather than
            # identity: decoders of same-shaped models share one compiled graph, each reading its own weights.
            args = {"fullgraph": True, "dynamic": False, **self._compile_args}
            self._step_fn = torch.compile(self._step_eager, **args)
        self._graph = None
        self._graph_ids = self._graph_logits = None

    @property
    def state(self) -> RWKVState:
        """A copy of the current state (batch b); feed it to the model's ``forward`` or save it."""
        return RWKVState(
            [
                LayerState(att_shift=self._att[i].clone(), wkv=self._wkv[i].clone(), ffn_shift=self._ffn[i].clone())
                for i in range(self.rwkv.n_layer)
            ]
        )

    def _views(self, rows: slice | None = None) -> RWKVState:
        rows = slice(None) if rows is None else rows
        return RWKVState(
            [
                LayerState(att_shift=self._att[i, rows], wkv=self._wkv[i, rows], ffn_shift=self._ffn[i, rows])
                for i in range(self.rwkv.n_layer)
            ]
        )

    @torch.no_grad()
    def load_state(self, state: RWKVState, *, rows: slice | None = None) -> None:
        """Copy ``state`` into the buffers (all rows, or ``rows``), e.g. after a prefill run elsewhere."""
        if not isinstance(state, RWKVState):
            raise TypeError(f"Decoder.load_state: state must be an RWKVState, got {type(state).__name__}")
        if len(state) != self.rwkv.n_layer:
            raise ValueError(f"Decoder.load_state: state has {len(state)} layers, the model {self.rwkv.n_layer}")
        target = self._views(rows)
        for i, (src, dst) in enumerate(zip(state, target)):
            for name in ("att_shift", "wkv", "ffn_shift"):
                s, d = getattr(src, name), getattr(dst, name)
                if s.shape != d.shape:
                    raise ValueError(
                        f"Decoder.load_state: state[{i}].{name} must be {list(d.shape)}, got {list(s.shape)}"
                    )
                d.copy_(s)
        self._fresh = False

    @torch.no_grad()
    def reset(self) -> None:
        """Zero the state (a fresh sequence in every row)."""
        for buf in (self._att, self._ffn, self._wkv):
            buf.zero_()
        self._fresh = True

    # --- prefill --------------------------------------------------------------------------------------------

    @torch.no_grad()
    def prefill(
        self,
        input_ids: torch.Tensor | Sequence[Sequence[int]] | None = None,
        pixel_values: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        chunk_size: int | None = 2048,
    ) -> torch.Tensor:
        """Read a prompt, continuing from the current state (``reset()`` first for a fresh one).

        Args:
            input_ids: [b, t] ids, or a list of b id lists of different lengths (each row then read alone).
                For a VisualRWKV, ids may hold ``IMAGE_TOKEN_INDEX`` once per image.
            pixel_values: [n, 3, H, W], one per image placeholder (row 0 first); VisualRWKV only.
            inputs_embeds: [b, t, c] instead of input_ids (RWKV6 / RWKV7 only).
            chunk_size: ids per forward call (None: all at once). Activation memory is bounded by one
                chunk; with images, a chunk grows by (k - 1) tokens per image it holds.

        Returns:
            logits [b, v] at the last position of each row (float, the model's dtype).
        """
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"Decoder.prefill: chunk_size must be a positive int or None, got {chunk_size!r}")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Decoder.prefill: pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is not None:
            if pixel_values is not None:
                raise ValueError("Decoder.prefill: pixel_values go with input_ids, not inputs_embeds")
            if not isinstance(inputs_embeds, torch.Tensor) or inputs_embeds.dim() != 3:
                raise ValueError("Decoder.prefill: inputs_embeds must be a [b, t, c] tensor")
            self._check_batch(inputs_embeds.shape[0], "inputs_embeds")
            logits, state = self.rwkv(
                inputs_embeds=inputs_embeds.to(self.device),
                state=self._views(),
                chunk_size=chunk_size,
                logits_to_keep=1,
            )
            self.load_state(state)
            self._fresh = False
            return logits[:, -1]
        if isinstance(input_ids, torch.Tensor):
            if input_ids.dim() != 2:
                raise ValueError(f"Decoder.prefill: input_ids must be [b, t], got shape {tuple(input_ids.shape)}")
            rows = [input_ids]
        else:
            if not isinstance(input_ids, Sequence) or not all(isinstance(r, Sequence) for r in input_ids):
                raise ValueError("Decoder.prefill: input_ids must be a [b, t] tensor or a list of b lists of ids")
            lengths = {len(r) for r in input_ids}
            if len(lengths) == 1:
                rows = [torch.tensor([list(r) for r in input_ids], dtype=torch.long)]
            else:
                rows = [torch.tensor([list(r)], dtype=torch.long) for r in input_ids]
        self._check_batch(sum(r.shape[0] for r in rows), "input_ids")
        if len(rows) > 1 and pixel_values is not None:
            raise ValueError("Decoder.prefill: prompts of different lengths with images are not supported; pad them")
        out, start = [], 0
        fresh = self._fresh
        for ids in rows:
            sel = slice(start, start + ids.shape[0])
            self._fresh = fresh  # load_state of the row before cleared it; every row of a fresh prefill is fresh
            out.append(self._prefill_rows(ids.to(self.device), pixel_values, chunk_size, sel))
            start += ids.shape[0]
        self._fresh = False
        return torch.cat(out)

    def _prefill_rows(self, ids: torch.Tensor, pixel_values, chunk_size, rows: slice) -> torch.Tensor:
        if ids.shape[1] == 0:
            raise ValueError("Decoder.prefill: a prompt is empty (t = 0)")
        state = self._views(rows)
        if self.model is self.rwkv:
            if pixel_values is not None:
                name = type(self.rwkv).__name__
                raise ValueError(f"Decoder.prefill: pixel_values need a VisualRWKV model, this decoder has an {name}")
            logits, state = self.rwkv(input_ids=ids, state=state, chunk_size=chunk_size, logits_to_keep=1)
            self.load_state(state, rows=rows)
            return logits[:, -1]
        from .image_tokens import IMAGE_TOKEN_INDEX

        run_id = getattr(self.model, "image_run_id", None)
        if run_id is not None and bool((ids == run_id).any()):
            raise ValueError(
                "Decoder.prefill: prompts with runs of image ids (the official v7.00 ids) are not read in chunks "
                "here; use the model's generate, or prompts with one IMAGE_TOKEN_INDEX per image"
            )
        is_image = ids == IMAGE_TOKEN_INDEX
        n_images = int(is_image.sum())
        if pixel_values is not None and pixel_values.shape[0] != n_images:
            raise ValueError(
                f"Decoder.prefill: input_ids hold {n_images} image placeholders but pixel_values has "
                f"{pixel_values.shape[0]} images"
            )
        # Image i is the i-th placeholder in row-major order of the whole prompt; a chunk takes its own in
        # the same order (row 0 first), which is the order VisualRWKV.forward expects within one call.
        if n_images and pixel_values is None:
            raise ValueError(f"Decoder.prefill: input_ids hold {n_images} image placeholders but no pixel_values")
        pad_count = getattr(self.model, "pad_count", None)
        if self._fresh and pad_count is not None and getattr(self.model, "pad_to_multiple", None):
            # The official v7.00 pads of the whole prompt (its length after image expansion), read first.
            if ids.shape[0] > 1 and not bool((is_image.sum(1) == is_image[0].sum()).all()):
                raise ValueError("Decoder.prefill: the rows of a batch must hold the same number of images")
            length = ids.shape[1] + int(is_image[0].sum()) * (self.model.image_tokens - 1)
            count = pad_count(length)
            if count:
                pad_id = torch.full((ids.shape[0], count), self.model.pad_token_id, device=self.device)
                _, state = self.rwkv(input_ids=pad_id, state=state, logits_to_keep=1)
        image_index = (is_image.flatten().cumsum(0) - 1).view_as(ids)
        step = chunk_size or ids.shape[1]
        logits = None
        for start in range(0, ids.shape[1], step):
            chunk = ids[:, start : start + step]
            chunk_images = is_image[:, start : start + step]
            if chunk_images.any():
                pixels = pixel_values[image_index[:, start : start + step][chunk_images].to(pixel_values.device)]
                pixels = pixels.to(self.device)
                logits, state = self.model(chunk, pixels, state, logits_to_keep=1)
            else:
                logits, state = self.rwkv(input_ids=chunk, state=state, logits_to_keep=1)
        self.load_state(state, rows=rows)
        return logits[:, -1]

    def _check_batch(self, b: int, name: str) -> None:
        if b != self.batch_size:
            raise ValueError(f"Decoder: {name} has batch {b}, the decoder was made for batch_size={self.batch_size}")

    # --- one token ------------------------------------------------------------------------------------------

    def _step_eager(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [b] (int64, on the device) -> logits [b, v]; updates the buffers in place. No host syncs, so
        it can be captured into a CUDA graph as it is."""
        return self.rwkv.step(ids, self._views())

    def _as_ids(self, input_ids, validate: bool) -> torch.Tensor:
        if not isinstance(input_ids, torch.Tensor):
            input_ids = torch.as_tensor(input_ids, dtype=torch.long)
        if input_ids.dim() == 2 and input_ids.shape[1] == 1:
            input_ids = input_ids[:, 0]
        if input_ids.dim() != 1 or input_ids.shape[0] != self.batch_size:
            raise ValueError(
                f"Decoder.step: input_ids must be [b] or [b, 1] with b = {self.batch_size}, "
                f"got shape {tuple(input_ids.shape)}"
            )
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise TypeError(f"Decoder.step: input_ids must be an integer tensor, got {input_ids.dtype}")
        # A range check of device ids would cost a host sync per token; ids from argmax/sampling over the
        # model's own logits are in range by construction, so only host ids are checked unless asked.
        if validate or input_ids.device.type == "cpu":
            low, high = int(input_ids.min()), int(input_ids.max())
            if low < 0 or high >= self.rwkv.vocab_size:
                raise ValueError(
                    f"Decoder.step: input_ids must be in [0, vocab_size = {self.rwkv.vocab_size}), got values in "
                    f"[{low}, {high}]"
                )
        return input_ids.to(device=self.device, dtype=torch.long, non_blocking=True)

    @torch.no_grad()
    def step(self, input_ids, *, validate: bool = False) -> torch.Tensor:
        """Feed one token per row: input_ids [b] or [b, 1] -> logits [b, v]; the state advances in place.

        With a CUDA graph the returned tensor is the graph's output buffer: the next ``step`` overwrites it
        (``.clone()`` it to keep it). ``validate=True`` range-checks ids already on the device (one sync).
        """
        ids = self._as_ids(input_ids, validate)
        if not self.use_cuda_graph:
            return self._step_fn(ids)
        if self._graph is None:
            self.capture()
        self._graph_ids.copy_(ids)
        self._graph.replay()
        return self._graph_logits

    @torch.no_grad()
    def capture(self, *, warmup: int = 3) -> None:
        """Capture the step into a CUDA graph (done on the first ``step`` otherwise). The state is left as
        it was: warm-up steps run on the live buffers, so they are saved first and restored after."""
        if not self.use_cuda_graph:
            raise RuntimeError("Decoder.capture: this decoder was made with use_cuda_graph=False")
        saved = [buf.clone() for buf in (self._att, self._ffn, self._wkv)]
        self._graph_ids = torch.zeros(self.batch_size, dtype=torch.long, device=self.device)
        # Warm-up on a side stream: cuBLAS picks its algorithms and the allocator grows its pools outside the
        # capture, as torch.cuda.graphs requires.
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._step_fn(self._graph_ids)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._graph_logits = self._step_fn(self._graph_ids)
        for buf, old in zip((self._att, self._ffn, self._wkv), saved):
            buf.copy_(old)
        self._graph = graph

    @property
    def graph_captured(self) -> bool:
        return self._graph is not None

    # --- generation -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        input_ids=None,
        config: GenerationConfig | None = None,
        *,
        pixel_values: torch.Tensor | None = None,
        next_logits: torch.Tensor | None = None,
        chunk_size: int | None = 2048,
        streamer: Callable[[int, int], None] | None = None,
        generator: torch.Generator | None = None,
        **overrides: Any,
    ) -> GenerationOutput:
        """Prefill (from a fresh state) and decode, with the semantics of ``rwkv_vision.generation.generate``.

        Args:
            input_ids: the prompt, [b, t] or a list of b id lists; or None with ``next_logits`` [b, v], to
                decode from the state already in the buffers (``prefill``/``load_state`` done by the caller).
            config, overrides: a ``GenerationConfig`` and field overrides (``max_new_tokens=32`` ...).
            pixel_values: images of a VisualRWKV prompt.
            chunk_size: prefill chunk (ids per forward call).
            streamer: ``streamer(row, token)`` per new token. generator: for reproducible sampling.

        Returns:
            ``GenerationOutput``: tokens per row (the stop token included), finish reasons, and the state after
            every token but a row's last (a row that stopped keeps the state it had when it stopped).
        """
        config = make_config(
            config,
            overrides,
            where="Decoder.generate",
            extra=("input_ids", "config", "pixel_values", "next_logits", "chunk_size", "streamer", "generator"),
        )
        if input_ids is None:
            if next_logits is None:
                raise ValueError("Decoder.generate: pass input_ids, or next_logits after your own prefill")
            if next_logits.dim() != 2 or next_logits.shape[0] != self.batch_size:
                raise ValueError(
                    f"Decoder.generate: next_logits must be [b = {self.batch_size}, v], got {tuple(next_logits.shape)}"
                )
            logits = next_logits
        else:
            if next_logits is not None:
                raise ValueError("Decoder.generate: pass input_ids or next_logits, not both")
            if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 1:
                input_ids = input_ids.unsqueeze(0)
            elif isinstance(input_ids, Sequence) and input_ids and all(isinstance(i, int) for i in input_ids):
                input_ids = [list(input_ids)]
            self.reset()
            chunk = config.prefill_chunk_size if config.prefill_chunk_size is not None else chunk_size
            logits = self.prefill(input_ids, pixel_values, chunk_size=chunk)

        frozen: dict[int, RWKVState] = {}  # row -> its state (batch 1) when it stopped

        def freeze(row: int) -> None:
            frozen[row] = self._views(slice(row, row + 1)).clone()

        tokens, reasons = decode_loop(
            logits,
            lambda picked, running: self.step(picked),
            config,
            streamer=streamer,
            generator=generator,
            on_stop=freeze,
        )
        state = self.state
        for row, saved in frozen.items():
            for layer, old in zip(state, saved):
                for name in ("att_shift", "wkv", "ffn_shift"):
                    getattr(layer, name)[row : row + 1].copy_(getattr(old, name))
        return GenerationOutput(tokens=tokens, finish_reasons=reasons, state=state, pad_token_id=config.pad_token_id)
