"""VisualRWKV against an independent float64 reference of the official v6.0 forward, plus loading,
cached-state generation and chat."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rwkv_vision.errors import StateDictError
from rwkv_vision.image_tokens import IMAGE_TOKEN_INDEX as IMG
from rwkv_vision.models.rwkv6 import RWKV6
from rwkv_vision.models.visualrwkv import VisualRWKV
from rwkv_vision.prompt import ImageFirst
from rwkv_vision.scan import BiDir, MultiDir, UniDir

from reference.rwkv6_ref import relative_rms_error
from reference.visualrwkv_ref import random_visualrwkv_checkpoint, visualrwkv_reference_logits

RWKV_SIZES = dict(n_layer=4, n_embd=32, head_size=8, dim_ffn=64, d_mix=4, d_decay=6, vocab_size=50)
VISION_SIZES = dict(width=64, layers=2, patch=14, image=56, mlp=96)  # 4 x 4 grid + CLS = 17 tokens
PROMPT = [3, 4, 5, IMG, 6, 7, 8, 9]


@pytest.fixture(scope="module")
def checkpoint():
    return random_visualrwkv_checkpoint(rwkv_sizes=RWKV_SIZES, vision_sizes=VISION_SIZES)


@pytest.fixture(scope="module")
def model(checkpoint):
    return VisualRWKV.from_official_state_dict(checkpoint).eval()


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("scan,name", [(BiDir(), "bidir"), (MultiDir(), "multidir"), (UniDir(), "unidir")])
def test_logits_match_the_official_reference(checkpoint, model, pixels, scan, name):
    model.scan = scan  # one-line policy swap
    try:
        with torch.no_grad():
            logits, _ = model(torch.tensor([PROMPT]), pixels[:1])
    finally:
        model.scan = BiDir()
    reference = visualrwkv_reference_logits(checkpoint, PROMPT, pixels[:1], scan=name)
    assert logits.shape == (1, len(PROMPT) + 16, 50)
    assert relative_rms_error(logits[0], reference) < 1e-5


def test_defaults_are_the_released_configuration(model):
    assert model.scan == BiDir() and model.image_tokens == 17
    assert type(model.layout).__name__ == "Sandwich" and model.layout.image_tokens == 17
    assert not any(p.requires_grad for p in model.encoder.parameters())


def test_two_images_and_rows_with_images_at_different_places(checkpoint, model, pixels):
    rows = [[1, IMG, 2, 3, IMG, 4], [IMG, 5, 6, IMG, 7, 8]]
    with torch.no_grad():
        logits, _ = model(torch.tensor(rows), torch.cat([pixels, pixels.flip(0)]))
    for r, imgs in enumerate([pixels, pixels.flip(0)]):
        reference = visualrwkv_reference_logits(checkpoint, rows[r], imgs)
        assert relative_rms_error(logits[r], reference) < 1e-5


def test_prefill_then_decode_equals_one_pass(model, pixels):
    ids = torch.tensor([PROMPT + [10, 11, 12]])
    with torch.no_grad():
        full, _ = model(ids, pixels[:1])
        logits, state = model(ids[:, : len(PROMPT)], pixels[:1])
        steps = [logits[:, -1]]
        for tok in [10, 11, 12]:
            out, state = model(torch.tensor([[tok]]), state=state)
            steps.append(out[:, -1])
    assert relative_rms_error(torch.stack(steps[:-1], 1), full[:, len(PROMPT) + 16 - 1 : -1]) < 1e-5
    assert relative_rms_error(steps[-1], full[:, -1]) < 1e-5


def test_greedy_generation_equals_rerunning_the_whole_sequence(model, pixels):
    out = model.generate(torch.tensor([PROMPT]), pixels[:1], max_new_tokens=8)
    ids = list(PROMPT)
    with torch.no_grad():
        for _ in range(8):
            logits, _ = model(torch.tensor([ids]), pixels[:1])  # no cache: the whole prompt again
            ids.append(int(logits[0, -1].argmax()))
    assert out.tokens[0] == ids[len(PROMPT) :]
    assert out.finish_reasons == ["length"]


def test_text_only_is_the_language_model(checkpoint, model):
    lm = RWKV6.from_official_state_dict({k[5:]: v for k, v in checkpoint.items() if k.startswith("rwkv.")})
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.allclose(model(ids)[0], lm(input_ids=ids)[0], atol=1e-6)


def test_image_embeds_reuse_gives_the_same_logits(model, pixels):
    with torch.no_grad():
        a, _ = model(torch.tensor([PROMPT]), pixels[:1])
        b, _ = model(torch.tensor([PROMPT]), image_embeds=model.encode_images(pixels[:1]))
    assert torch.equal(a, b)


def test_official_state_dict_round_trip(checkpoint, model):
    ours = model.official_state_dict()
    expected = {k for k in checkpoint if not k.endswith("position_ids")}
    assert set(ours) == expected
    assert all(torch.equal(ours[k], checkpoint[k]) for k in expected)


def test_optional_keys_and_offending_keys(checkpoint):
    lean = {k: v for k, v in checkpoint.items() if "post_layernorm" not in k and "position_ids" not in k}
    VisualRWKV.from_official_state_dict(lean)  # both optional
    bad = dict(checkpoint)
    del bad["rwkv.blocks.1.ffn.key.weight"]
    del bad["vit.vision_model.encoder.layers.1.mlp.fc2.bias"]
    bad["proj.weight"] = torch.zeros(32, 63)
    bad["vit.vision_model.extra.weight"] = torch.zeros(1)
    bad["lm_head.weight"] = torch.zeros(1)
    with pytest.raises(StateDictError) as info:
        VisualRWKV.from_official_state_dict(bad)
    e = info.value
    assert e.missing == ["rwkv.blocks.1.ffn.key.weight", "vit.vision_model.encoder.layers.1.mlp.fc2.bias"]
    assert set(e.unexpected) == {"lm_head.weight", "vit.vision_model.extra.weight"}
    assert e.mismatched == [("proj.weight", (32, 63), (32, 64))]


def test_dtype_and_placeholder_errors(checkpoint, model, pixels):
    half = VisualRWKV.from_official_state_dict(checkpoint, dtype=torch.bfloat16, scan="multidir")
    assert half.rwkv.emb.weight.dtype == torch.bfloat16 and half.scan == MultiDir()
    with pytest.raises(ValueError, match="1 image placeholders .* but no pixel_values"):
        model(torch.tensor([PROMPT]))
    with pytest.raises(ValueError, match="1 image placeholders .* pixel_values has 2 images"):
        model(torch.tensor([PROMPT]), pixels)
    with pytest.raises(ValueError, match=r"input_ids must be a \[b, t\] tensor"):
        model(torch.tensor(PROMPT), pixels[:1])


class CharTokenizer:
    """Lower-case letters and a few symbols as ids below 50 (the tiny vocabulary); other ids decode to '#'."""

    chars = "\x00abcdefghijklmnopqrstuvwxyz :?.\n,AU"

    def encode(self, text):
        return [self.chars.index(ch) if ch in self.chars else 30 for ch in text]

    def decode(self, ids):
        return "".join(self.chars[i] if i < len(self.chars) else "#" for i in ids)


def test_chat_runs_the_layout_and_decodes(model):
    tok = CharTokenizer()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8))
    answer = model.chat(image, "what is it?", tokenizer=tok, max_new_tokens=5)
    prompt = model.layout.tokenize("what is it?", tok, num_images=1)
    pixels = model.get_preprocessor()([image])
    out = model.generate(prompt.to_tensor(), pixels, max_new_tokens=5, stop_tokens=(261, 0))
    assert answer == tok.decode(out.tokens[0]).split("\n\n")[0].strip()
    assert isinstance(model.chat(None, "hi", tokenizer=tok, max_new_tokens=2, layout=ImageFirst()), str)
