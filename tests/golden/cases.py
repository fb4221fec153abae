"""The cases of the golden-logits test: the shipped toy model, a converted official-format checkpoint and a
text-only RWKV-6, each through forward, the static-buffer decoder and generation.

Only public entry points that existed before the architecture refactor are used, in the forms that keep
working after it, so the same code produces the stored outputs and the ones they are compared with.
"""

from __future__ import annotations

from pathlib import Path

import torch

from reference.visualrwkv_ref import random_visualrwkv_checkpoint

RWKV_SIZES = dict(n_layer=3, n_embd=32, head_size=8, dim_ffn=64, d_mix=4, d_decay=6, vocab_size=50)
VISION_SIZES = dict(width=64, layers=2, patch=14, image=28, mlp=96)


def _decoder_cls():
    try:
        from rwkv_vision.decoding import Decoder  # after the refactor
    except ImportError:
        from rwkv_vision.inference import Decoder  # before it
    return Decoder


def _decode(model, ids, pixels, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding with the static-buffer decoder: the logits of every step [steps, b, v] and the tokens."""
    dec = _decoder_cls()(model, batch_size=ids.shape[0])
    logits = dec.prefill(ids, pixels, chunk_size=None)
    all_logits, tokens = [logits.clone()], []
    for _ in range(steps):
        tok = logits.argmax(-1)
        tokens.append(tok)
        logits = dec.step(tok)
        all_logits.append(logits.clone())
    return torch.stack(all_logits), torch.stack(tokens)


def _vlm_outputs(prefix: str, model, ids, pixels) -> dict[str, torch.Tensor]:
    out = {}
    with torch.no_grad():
        logits, state = model(ids, pixels)
        out[f"{prefix}.forward_logits"] = logits
        out[f"{prefix}.state_wkv_last"] = state[len(state) - 1].wkv
        # stop_tokens=(): run to max_new_tokens, as generate did before it stopped at the tokenizer's stop
        # tokens by default (a later, deliberate change of defaults, not of the numbers).
        gen = model.generate(ids, pixels, max_new_tokens=6, stop_tokens=())
        out[f"{prefix}.generate_tokens"] = torch.tensor(gen.tokens)
        dec_logits, dec_tokens = _decode(model, ids, pixels, steps=5)
        out[f"{prefix}.decoder_logits"] = dec_logits
        out[f"{prefix}.decoder_tokens"] = dec_tokens
    return out


def golden_outputs(work: Path) -> dict[str, torch.Tensor]:
    from rwkv_vision import VisualRWKV, create_model, generate
    from rwkv_vision.data import ShapesVQA
    from rwkv_vision.image_tokens import IMAGE_TOKEN_INDEX as IMG
    from rwkv_vision.pretrained import load_toy_model

    out: dict[str, torch.Tensor] = {}

    # 1. The shipped toy model on a test-split question, with its own processor path.
    toy = load_toy_model()
    sample = ShapesVQA(split="test", size=4, seed=0)[1]
    tok = toy.get_tokenizer()
    prompt = toy.layout.tokenize(sample.question, tok, num_images=1)
    ids = prompt.to_tensor()
    pixels = toy.get_preprocessor()([sample.image])
    out["toy.pixels"] = pixels
    out.update(_vlm_outputs("toy", toy, ids, pixels))
    out["toy.chat"] = torch.tensor(
        list(toy.chat(sample.image, sample.question, max_new_tokens=6).encode()), dtype=torch.uint8
    )

    # 2. A released-layout (official keys) checkpoint, read as .pth and after conversion to a directory.
    work.mkdir(parents=True, exist_ok=True)
    sd = random_visualrwkv_checkpoint(rwkv_sizes=RWKV_SIZES, vision_sizes=VISION_SIZES)
    pth = work / "official.pth"
    torch.save(sd, pth)
    official = VisualRWKV.from_pretrained(pth)
    converted = VisualRWKV.from_pretrained(official.save_pretrained(work / "converted"))
    ids = torch.tensor([[1, 7, IMG, 2, 3, 4], [5, IMG, 6, 9, 10, 11]])
    pixels = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(3))
    out.update(_vlm_outputs("official", official, ids, pixels))
    out.update(_vlm_outputs("converted", converted, ids, pixels))

    # 3. A text-only RWKV-6: forward (one pass and chunked), generation, decoder.
    torch.manual_seed(0)
    lm = create_model("rwkv6-test-tiny").eval()
    ids = torch.randint(0, 256, (2, 13), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        logits, _ = lm(input_ids=ids)
        out["lm.forward_logits"] = logits
        out["lm.chunked_logits"] = lm(input_ids=ids, chunk_size=5)[0]
        out["lm.generate_tokens"] = torch.tensor(generate(lm, ids, max_new_tokens=7).tokens)
        dec_logits, dec_tokens = _decode(lm, ids, None, steps=5)
        out["lm.decoder_logits"] = dec_logits
        out["lm.decoder_tokens"] = dec_tokens
    return out
