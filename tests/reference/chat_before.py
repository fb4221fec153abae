"""How ``VisualRWKV.chat`` built its inputs before the processor existed (the code it had), so tests can
show the processor and ``chat()`` give exactly what it gave."""

from __future__ import annotations

from rwkv_vision.generation import CHAT_STOP_TOKENS
from rwkv_vision.prompt import get_layout


def inputs_as_chat_built_them(model, image, question, *, layout=None, tokenizer=None):
    """VisualRWKV.chat's input building before the processor (copied from it): ids, pixels, stop tokens."""
    tok = tokenizer if tokenizer is not None else model.get_tokenizer()
    rows, cols = model.encoder.grid
    lay = model.layout if layout is None else get_layout(layout).with_grid(rows, cols, cls=model.encoder.cls)
    images = [] if image is None else (list(image) if isinstance(image, (list, tuple)) else [image])
    prompt = lay.tokenize(question, tok, num_images=len(images))
    device = model.rwkv.emb.weight.device
    pixels = None
    if images:
        pixels = model.get_preprocessor()(images, device=device, dtype=next(model.encoder.parameters()).dtype)
    return prompt.to_tensor(device=device), pixels, tuple(getattr(tok, "stop_token_ids", CHAT_STOP_TOKENS))
