"""The processor: everything between a user's image and question and the model's inputs, and back to text.

Like a transformers LLaVA processor, :class:`VisualRWKVProcessor` holds the three parts that are not
weights — the ``tokenizer``, the ``image_processor`` (:class:`~rwkv_vision.vision.ImagePreprocessor`) and the
prompt ``layout`` (a :class:`~rwkv_vision.prompt.PromptLayout` set to the encoder's patch grid) — and turns
``(images, question or conversation)`` into ``input_ids [1, t]`` (one
:data:`~rwkv_vision.image_tokens.IMAGE_TOKEN_INDEX` per image) and ``pixel_values [n, 3, H, W]``.

For VisualRWKV v7.00 the same processor holds the v7.00 layout (:class:`~rwkv_vision.prompt.ImageFirstRun`)
and a :class:`~rwkv_vision.vision.multi_preprocess.MultiImagePreprocessor`: ``input_ids`` are then the
official ids (images first, ``"User: "`` tokenised alone, each image a run of k ids 65535) and
``pixel_values`` a dict tower -> ``[n, 3, H_i, W_i]`` (DINOv2 and SigLIP resized to 448 with their own
mean/std, SAM to 1024 with DINOv2's), which :meth:`VisualRWKV.forward` and ``generate`` take as they are::

    processor = model.processor                       # or VisualRWKVProcessor(tokenizer, preprocessor, layout)
    inputs = processor(image, "What color is the shape in the top left?")
    out = model.generate(**inputs, max_new_tokens=8, stop_tokens=processor.stop_token_ids)
    processor.decode(out.tokens[0])

Its configuration is the ``layout``, ``preprocessor`` and ``tokenizer`` sections of a save_pretrained
``config.json``, in exactly that format (:mod:`rwkv_vision.checkpoint.config_json`).

Shape legend: n images, t prompt length (one placeholder per image), H, W the encoder's input size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .image_tokens import ImageSpan
from .prompt import PromptIds, PromptLayout, get_layout
from .sections import (
    layout_from_config,
    layout_to_config,
    preprocessor_from_config,
    preprocessor_to_config,
    tokenizer_from_config,
    tokenizer_to_config,
)
from .tokenizers.world import WORLD_STOP_TOKEN_IDS
from .vision.preprocess import ImagePreprocessor

__all__ = ["VisualRWKVProcessor", "ProcessorOutput", "PROCESSOR_SECTIONS"]

#: The config.json sections that describe a processor (the rest describe the network).
PROCESSOR_SECTIONS = ("layout", "preprocessor", "tokenizer")


@dataclasses.dataclass
class ProcessorOutput:
    """What :class:`VisualRWKVProcessor` returns.

    Attributes:
        input_ids: ``[1, t]`` int64, one ``IMAGE_TOKEN_INDEX`` per image (a run of k placeholder ids per image
            with a run layout such as v7.00's).
        pixel_values: ``[n, 3, H, W]`` (a dict tower -> ``[n, 3, H_i, W_i]`` with a multi-tower
            preprocessor), or None without images.
        prompt: the :class:`~rwkv_vision.prompt.PromptIds` (rendered text, turns, image spans).

    Unpacks as ``input_ids, pixel_values = processor(...)``, and as keyword arguments:
    ``model(**inputs)``, ``model.generate(**inputs, ...)``.
    """

    input_ids: torch.Tensor
    pixel_values: torch.Tensor | dict[str, torch.Tensor] | None
    prompt: PromptIds

    @property
    def spans(self) -> list[ImageSpan]:
        """The images' spans in the expanded sequence."""
        return self.prompt.spans

    def keys(self) -> tuple[str, str]:
        return ("input_ids", "pixel_values")

    def __getitem__(self, key: str | int) -> Any:
        if isinstance(key, int):
            return (self.input_ids, self.pixel_values)[key]
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.input_ids, self.pixel_values))

    def __len__(self) -> int:
        return 2


def _as_image_list(images: Any) -> list[Any]:
    if images is None:
        return []
    return list(images) if isinstance(images, (list, tuple)) else [images]


class VisualRWKVProcessor:
    """Tokenizer + image preprocessor + prompt layout: the model's inputs from images and text, and text back.

    Args:
        tokenizer: anything following :class:`rwkv_vision.tokenizers.Tokenizer` (``encode``/``decode`` at
            least); None for a processor that only prepares images.
        image_processor: PIL image(s) -> ``pixel_values`` (an :class:`~rwkv_vision.vision.ImagePreprocessor`).
        layout: a :class:`~rwkv_vision.prompt.PromptLayout` or its name, with the encoder's grid and CLS position
            (default: :class:`~rwkv_vision.prompt.Sandwich` at 24 x 24, CLS last — CLIP ViT-L/14-336).
    """

    def __init__(
        self,
        tokenizer: Any = None,
        image_processor: ImagePreprocessor | None = None,
        layout: PromptLayout | str | None = None,
    ):
        if image_processor is not None and not callable(image_processor):
            raise TypeError(
                f"image_processor must be an ImagePreprocessor (or None), got {type(image_processor).__name__}"
            )
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.layout = get_layout(layout)

    def replace(
        self,
        *,
        tokenizer: Any = None,
        image_processor: ImagePreprocessor | None = None,
        layout: PromptLayout | str | None = None,
    ) -> VisualRWKVProcessor:
        """A copy with the given parts replaced (None keeps this one's); a new layout keeps this grid and CLS."""
        if layout is not None:
            rows, cols = self.layout.image_grid
            layout = get_layout(layout).with_grid(rows, cols, cls=self.layout.cls)
        return type(self)(
            tokenizer=self.tokenizer if tokenizer is None else tokenizer,
            image_processor=self.image_processor if image_processor is None else image_processor,
            layout=self.layout if layout is None else layout,
        )

    # --- inputs ------------------------------------------------------------------------------------------

    def __call__(
        self,
        images: Any = None,
        text_or_conversation: str | Sequence[Any] | None = None,
        *,
        add_generation_prompt: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> ProcessorOutput:
        """``input_ids [1, t]`` and ``pixel_values [n, 3, H, W]`` for one prompt.

        Args:
            images: a PIL image, a list of them, or None (text only).
            text_or_conversation: a question or a conversation (see :mod:`rwkv_vision.prompt`); a message
                without ``<image>`` gets the images in the first user turn, placed by the layout.
            add_generation_prompt: end with ``"Assistant:"`` for the model to continue.
            device: where both tensors go; dtype: of ``pixel_values`` (default float32).
        """
        if text_or_conversation is None:
            raise ValueError("text_or_conversation: a question or a conversation is required")
        images = _as_image_list(images)
        prompt = self.layout.tokenize(
            text_or_conversation,
            self._require_tokenizer(),
            num_images=len(images),
            add_generation_prompt=add_generation_prompt,
        )
        pixels = None
        if images:
            if self.image_processor is None:
                raise ValueError("images: this processor has no image_processor")
            pixels = self.image_processor(images, device=device, dtype=dtype)
        return ProcessorOutput(input_ids=prompt.to_tensor(device=device), pixel_values=pixels, prompt=prompt)

    def _require_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise ValueError("this processor has no tokenizer; give one (e.g. WorldTokenizer())")
        return self.tokenizer

    # --- outputs -----------------------------------------------------------------------------------------

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Token ids -> text with the tokenizer (a tensor is flattened)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        return self._require_tokenizer().decode(ids)

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """Ids that end a chat answer: the tokenizer's ``stop_token_ids``, else World's ("\\n\\n", end-of-text:
        ``generation.CHAT_STOP_TOKENS``)."""
        return tuple(getattr(self.tokenizer, "stop_token_ids", WORLD_STOP_TOKEN_IDS))

    # --- configuration -----------------------------------------------------------------------------------

    def to_config(self, *, vocab_size: int | None = None) -> dict[str, Any]:
        """The ``layout``, ``preprocessor`` and ``tokenizer`` sections of ``config.json`` (same format).

        ``vocab_size`` is only read without a tokenizer: a World-sized vocabulary records ``"world"``.
        """

        if self.image_processor is None:
            raise ValueError("image_processor: a processor without one has no config.json form")
        entry, _ = tokenizer_to_config(self.tokenizer, vocab_size=vocab_size)
        return {
            "layout": layout_to_config(self.layout),
            "preprocessor": preprocessor_to_config(self.image_processor),
            "tokenizer": entry,
        }

    def save(self, directory: str | Path) -> dict[str, Any]:
        """Write the tokenizer's file (``tokenizer.json``, for a tokenizer that saves itself) into ``directory``
        and return :meth:`to_config` — the sections a ``config.json`` in that directory holds."""

        config = self.to_config()
        _, to_save = tokenizer_to_config(self.tokenizer, vocab_size=None)
        if to_save is not None:
            directory = Path(directory)
            directory.mkdir(parents=True, exist_ok=True)
            to_save.save(directory / config["tokenizer"]["file"])
        return config

    @classmethod
    def from_config(
        cls,
        data: Mapping[str, Any],
        directory: str | Path | None = None,
        *,
        image_grid: tuple[int, int] | None = None,
        cls_position: Any = "keep",
        tokenizer: Any = None,
    ) -> VisualRWKVProcessor:
        """The processor of :meth:`to_config` data (or of a whole ``config.json``).

        ``directory`` holds the tokenizer's file, if it has one. The layout's grid and CLS position follow the
        encoder: from ``image_grid`` / ``cls_position`` when given, else from the config's ``encoder`` section
        when ``data`` is a whole ``config.json`` (``img_size / patch_size``, ``cls``), else 24 x 24, CLS last.
        ``tokenizer`` replaces the config's.
        """

        if not isinstance(data, Mapping):
            raise CheckpointError(f"processor config must be an object, got {type(data).__name__}")
        missing = [k for k in PROCESSOR_SECTIONS if k not in data]
        if missing:
            raise CheckpointError(f"processor config: missing section(s) {missing}")
        layout = layout_from_config(data["layout"])
        grid, cls_pos = _encoder_grid(data.get("encoder"))
        grid = image_grid if image_grid is not None else grid
        cls_pos = cls_position if cls_position != "keep" else cls_pos
        if grid is not None:
            layout = layout.with_grid(*grid, cls=cls_pos)
        if tokenizer is None:
            tokenizer = tokenizer_from_config(data["tokenizer"], directory=directory)
        return cls(tokenizer=tokenizer, image_processor=preprocessor_from_config(data["preprocessor"]), layout=layout)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(tokenizer={self.tokenizer!r}, image_processor={self.image_processor!r}, "
            f"layout={self.layout!r})"
        )


def _encoder_grid(encoder: Any) -> tuple[tuple[int, int] | None, Any]:
    """(rows, cols) and CLS position from a config.json ``encoder`` section, or (None, "keep")."""
    if not isinstance(encoder, Mapping) or not isinstance(encoder.get("timm_kwargs"), Mapping):
        return None, "keep"
    kw = encoder["timm_kwargs"]
    size, patch = kw.get("img_size"), kw.get("patch_size")
    pair = lambda v: tuple(v) if isinstance(v, (list, tuple)) else (v, v)  # noqa: E731
    if size is None or patch is None:
        return None, "keep"
    (h, w), (ph, pw) = pair(size), pair(patch)
    return (h // ph, w // pw), encoder.get("cls", "last")
