"""Your own visual language model from rwkv_vision's blocks, in a page of code.

Pieces (each swappable on its own):
  encoder  any timm ViT with one CLS token — here a 2-block ViT-Tiny at 64 px (4 x 4 patches), random weights;
  proj     GatedMLPProjector: ViT width 192 -> LM width 64;
  rwkv     RWKV6 from the registry's "rwkv6-test-tiny" configuration (2 layers, width 64, 256 byte tokens);
  scan     MultiDir: each layer reads the patch grid in another of 4 directions;
  layout   Sandwich: question, image, question again.

It runs one forward pass and a greedy generation on a random image, chats through a byte-level tokenizer,
and saves / reloads the model through save_pretrained / from_pretrained. With random weights the text is
noise; the shapes and the plumbing are the point. Runs in a few seconds on a CPU:

    python examples/assemble_vlm.py
"""

from __future__ import annotations

import tempfile

import numpy as np
import torch
from PIL import Image

from rwkv_vision import IMAGE_TOKEN_INDEX, GatedMLPProjector, MultiDir, Sandwich, VisualRWKV, create_model
from rwkv_vision.vision import timm_vit


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255: the smallest tokenizer that fits a 256-token vocabulary."""

    stop_token_ids = (10,)  # "\n": stop at the end of the answer line

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def build() -> VisualRWKV:
    encoder = timm_vit("vit_tiny_patch16_224", img_size=64, depth=2, layer=-1, cls="last")  # [n, 17, 192]
    rwkv = create_model("rwkv6-test-tiny")  # c = 64, v = 256
    proj = GatedMLPProjector(encoder.width, rwkv.n_embd)  # [.., 192] -> [.., 64]
    return VisualRWKV(rwkv=rwkv, encoder=encoder, proj=proj, scan=MultiDir(), layout=Sandwich()).eval()


def main(verbose: bool = True) -> dict:
    torch.manual_seed(0)
    model = build()
    say = print if verbose else (lambda *a, **k: None)
    say(f"encoder {model.encoder.extra_repr()}; {model.image_tokens} tokens per image; scan {model.scan!r}")

    # One forward pass: ids [b, t] with one placeholder per image, pixel_values [n, 3, H, W].
    input_ids = torch.tensor([[72, 105, 32, IMAGE_TOKEN_INDEX, 63]])
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        logits, state = model(input_ids, pixel_values)
    say(f"logits {tuple(logits.shape)} (t = {input_ids.shape[1]} ids + {model.image_tokens - 1} more image tokens)")

    # Greedy generation: the prompt (image included) is read once, then one token per step from the state.
    out = model.generate(input_ids, pixel_values, max_new_tokens=8)
    say(f"generated ids {out.tokens[0]}")

    # Chat: a PIL image + a question through the layout, preprocessing and tokenizer.
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 100, 3), dtype=np.uint8))
    answer = model.chat(image, "What is in the picture?", tokenizer=ByteTokenizer(), max_new_tokens=12)
    say(f"chat answer (random weights): {answer!r}")

    # Save and reload: config.json describes every piece above, so loading needs no code.
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        again = VisualRWKV.from_pretrained(tmp)
        with torch.no_grad():
            same = torch.equal(again(input_ids, pixel_values)[0], logits)
    say(f"reloaded from save_pretrained: scan {again.scan!r}, same logits: {same}")
    return {"logits_shape": tuple(logits.shape), "tokens": out.tokens[0], "answer": answer, "reloaded_equal": same}


if __name__ == "__main__":
    main()
