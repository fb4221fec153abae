"""Training batches from conversations: only the assistant's answers are targets.

Letter legend: b batch, t time (ids, one placeholder per image), n images.

``ConversationCollator(processor)`` turns samples ``(conversation, images)`` into what
``VisualRWKV.forward`` takes for training: ``input_ids`` [b, t] right-padded, ``attention_mask`` [b, t],
``labels`` [b, t] aligned with ``input_ids`` and ``pixel_values`` [n, 3, H, W] (every row's images, row
after row). A conversation is rendered turn by turn with the processor's layout, as at inference:

    User: {question with the images placed}\\n\\n          labels -100 (the prompt; image placeholders too)
    Assistant:                                            labels -100 (what a generation prompt ends with)
     {answer}\\n\\n                                          labels = the ids: the model learns to answer and stop

so a model trained on these batches continues ``"Assistant:"`` the way ``generate`` asks it to, and multi-turn
conversations teach every answer, each conditioned on the turns before it. The model expands each placeholder
into its image tokens and gives them -100 itself, and shifts the labels (``forward(..., labels=...)``).

With ``pack=True`` the samples are packed into one row instead, without padding: ``input_ids`` and ``labels``
[1, T] (the samples one after another), ``cu_seqlens`` [N + 1] (their offsets, ``ops.pack_offsets``) and
``pixel_values``. The model reads each sample from a fresh state (``forward(..., cu_seqlens=...)``), and the
first label of every sample is -100, so no target crosses a boundary; the loss is that of the padded batch.
Packed samples may hold different numbers of images.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from .image_tokens import IMAGE_TOKEN_INDEX
from .models.output import IGNORE_INDEX
from .ops.cu_seqlens import pack_offsets
from .processor import VisualRWKVProcessor
from .prompt import IMAGE_PLACEHOLDER, normalize_conversation

__all__ = ["ConversationCollator"]


class ConversationCollator:
    """Samples -> a training batch (see the module notes).

    Args:
        processor: a :class:`~rwkv_vision.processor.VisualRWKVProcessor` (e.g. ``model.processor``): its
            tokenizer, layout and image preprocessor.
        pad_token_id: the id right padding uses (masked out by ``attention_mask``, never a target).
        max_length: drop samples whose ids are longer (None: keep all); a dropped sample is counted in
            ``dropped``.
        pack: pack the samples into one row with ``cu_seqlens`` (no padding, no ``attention_mask``) instead
            of a right-padded batch.

    Without ``pack`` every row of one batch holds the same number of images (the model expands each
    placeholder in place, and right padding must stay at the end); a batch that mixes counts is refused.

    A sample is ``(conversation, images)``, or a mapping with ``"conversation"`` (or ``"messages"``) and
    ``"images"``; ``images`` is a PIL image, a list of them, or None. The conversation is a string (one
    question with no answer: nothing to learn, refused) or a list of (role, text) turns / message dicts
    (:func:`rwkv_vision.prompt.normalize_conversation`) holding at least one assistant turn.
    """

    def __init__(
        self,
        processor: VisualRWKVProcessor,
        *,
        pad_token_id: int = 0,
        max_length: int | None = None,
        pack: bool = False,
    ):
        if not isinstance(processor, VisualRWKVProcessor):
            raise TypeError(f"processor must be a VisualRWKVProcessor, got {type(processor).__name__}")
        if not isinstance(pad_token_id, int) or isinstance(pad_token_id, bool) or pad_token_id < 0:
            raise ValueError(f"pad_token_id must be a token id (an int >= 0), got {pad_token_id!r}")
        if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
            raise ValueError(f"max_length must be a positive int or None, got {max_length!r}")
        if not isinstance(pack, bool):
            raise TypeError(f"pack must be a bool, got {type(pack).__name__}")
        self.processor, self.pad_token_id, self.max_length, self.pack = processor, pad_token_id, max_length, pack
        self.dropped = 0

    def _stop_id(self) -> int:
        stops = tuple(self.processor.stop_token_ids)
        if not stops:
            raise ValueError("the processor's tokenizer has no stop token to end an answer with")
        return int(stops[0])

    def encode(self, conversation: Any, num_images: int = 0) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of one conversation with ``num_images`` images: both length t."""
        layout, tok = self.processor.layout, self.processor.tokenizer
        messages = normalize_conversation(conversation)
        if not any(m.role == "assistant" for m in messages):
            raise ValueError("conversation: no assistant turn, so nothing to learn; give (role, text) turns")
        turns = layout.render_turns(messages, num_images=num_images, add_generation_prompt=False)
        ids: list[int] = []
        labels: list[int] = []
        for message, turn in zip(messages, turns):
            if message.role == "assistant":
                prefix = [int(i) for i in tok.encode(layout.generation_prompt)]
                answer = [int(i) for i in tok.encode(" " + layout.format_message(message.text))] + [self._stop_id()]
                ids += prefix + answer
                labels += [IGNORE_INDEX] * len(prefix) + answer
                continue
            for j, piece in enumerate(turn.split(IMAGE_PLACEHOLDER)):
                if j:
                    ids.append(IMAGE_TOKEN_INDEX)
                    labels.append(IGNORE_INDEX)
                if piece:
                    piece_ids = [int(i) for i in tok.encode(piece)]
                    ids += piece_ids
                    labels += [IGNORE_INDEX] * len(piece_ids)
        return ids, labels

    @staticmethod
    def _unpack(sample: Any, index: int) -> tuple[Any, list]:
        if isinstance(sample, Mapping):
            conversation = sample.get("conversation", sample.get("messages"))
            images = sample.get("images")
        elif isinstance(sample, Sequence) and not isinstance(sample, str) and len(sample) == 2:
            conversation, images = sample
        else:
            raise TypeError(f"samples[{index}] must be (conversation, images) or a dict, got {type(sample).__name__}")
        if images is None:
            images = []
        elif not isinstance(images, (list, tuple)):
            images = [images]
        return conversation, list(images)

    def __call__(self, samples: Sequence[Any]) -> dict[str, torch.Tensor | None]:
        if isinstance(samples, (str, bytes, Mapping)) or not isinstance(samples, Iterable):
            raise TypeError(
                f"samples must be a list of (conversation, images) pairs or dicts, got {type(samples).__name__}"
            )
        rows, targets, images, counts = [], [], [], []
        for i, sample in enumerate(samples):
            conversation, row_images = self._unpack(sample, i)
            ids, labels = self.encode(conversation, num_images=len(row_images))
            if self.max_length is not None and len(ids) > self.max_length:
                self.dropped += 1
                continue
            rows.append(ids)
            targets.append(labels)
            images += row_images
            counts.append(len(row_images))
        if not rows:
            raise ValueError("samples: every sample was dropped (longer than max_length) or none was given")
        pixel_values = None
        if images:
            if self.processor.image_processor is None:
                raise ValueError("the processor has no image_processor to turn the images into pixel_values")
            pixel_values = self.processor.image_processor(images)
        if self.pack:
            # Each sample's first label would be scored against the previous sample's last position: never.
            targets = [[IGNORE_INDEX] + t[1:] for t in targets]
            return {
                "input_ids": torch.tensor([sum(rows, [])], dtype=torch.long),
                "labels": torch.tensor([sum(targets, [])], dtype=torch.long),
                "cu_seqlens": pack_offsets([len(r) for r in rows]),
                "pixel_values": pixel_values,
            }
        if len(set(counts)) > 1:
            raise ValueError(
                f"samples: every row of a batch must hold the same number of images, got {counts}; batch samples "
                "by their image count"
            )
        width = max(len(r) for r in rows)

        def pad(row: list[int], value: int) -> list[int]:
            return row + [value] * (width - len(row))

        return {
            "input_ids": torch.tensor([pad(r, self.pad_token_id) for r in rows], dtype=torch.long),
            "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long),
            "labels": torch.tensor([pad(t, IGNORE_INDEX) for t in targets], dtype=torch.long),
            "pixel_values": pixel_values,
        }
