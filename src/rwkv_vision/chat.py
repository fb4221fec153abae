"""Chat: answer a question about an image with a model and its processor.

``chat(model, processor, image, question)`` is the whole application loop: the processor builds the prompt
(``input_ids`` with image placeholders, ``pixel_values``), the model prefills it once and decodes greedily
from its state, and the answer is the decoded text up to the first blank line. ``VisualRWKV.chat`` is this
function with the model's own processor; the demo and the ``rwkv-vision chat`` command call it directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["chat", "extract_answer"]


def extract_answer(text: str) -> str:
    """The answer in generated text: everything before the first ``"\\n\\n"`` (the end of the assistant's
    turn), stripped (the space after ``"Assistant:"`` belongs to the first token)."""
    return text.split("\n\n")[0].strip()


def _model_placement(model) -> tuple[torch.device, torch.dtype | None]:
    """Where the prompt ids go (the language model's embeddings) and the dtype of pixel_values (the encoder's)."""
    device = model.rwkv.emb.weight.device
    encoder_param = next(model.encoder.parameters(), None)
    return device, (encoder_param.dtype if encoder_param is not None else None)


@torch.no_grad()
def chat(
    model,
    processor,
    image: Any,
    question: str | Sequence[Any],
    *,
    max_new_tokens: int = 128,
    streamer=None,
    **generation_overrides: Any,
) -> str:
    """Answer ``question`` about ``image`` (a PIL image, a list of them, or None for text only).

    Args:
        model: a :class:`~rwkv_vision.VisualRWKV` (anything with its ``generate``, ``rwkv`` and ``encoder``).
        processor: a :class:`~rwkv_vision.processor.VisualRWKVProcessor` (e.g. ``model.processor``).
        question: a string or a conversation (see :mod:`rwkv_vision.prompt`); the processor's layout places
            the image.
        max_new_tokens: the most tokens generated (stop token included).
        streamer: ``streamer(row, token)`` called per generated token (e.g. ``generation.TextStreamer``).
        generation_overrides: :class:`~rwkv_vision.generation.GenerationConfig` fields (greedy by default);
            ``stop_tokens`` defaults to ``processor.stop_token_ids`` (the tokenizer's, else "\\n\\n" (261), 0).
    Returns:
        The decoded text up to the first ``"\\n\\n"``, stripped.
    """
    device, dtype = _model_placement(model)
    inputs = processor(image, question, device=device, dtype=dtype)
    generation_overrides.setdefault("stop_tokens", processor.stop_token_ids)
    out = model.generate(
        inputs.input_ids,
        inputs.pixel_values,
        max_new_tokens=max_new_tokens,
        streamer=streamer,
        **generation_overrides,
    )
    return extract_answer(processor.decode(out.tokens[0]))
