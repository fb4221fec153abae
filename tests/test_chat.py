"""The chat function: model + processor -> answer, bit-identical to what VisualRWKV.chat returned before it
became a thin method over chat(); the toy model answers as before."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rwkv_vision import RWKV6, VisualRWKV, chat
from rwkv_vision.chat import extract_answer
from rwkv_vision.data import ShapesVQA, exact_match
from rwkv_vision.generation import TextStreamer
from rwkv_vision.pretrained import load_toy_model
from rwkv_vision.vision import tiny_clip

from reference.chat_before import inputs_as_chat_built_them
from reference.fixtures import one_cpu_thread  # noqa: F401

N_SAMPLES = 8


@torch.no_grad()
def chat_as_it_was(
    model, image, question, *, layout=None, tokenizer=None, max_new_tokens=128, streamer=None, **overrides
):
    """VisualRWKV.chat before the processor and chat() existed (copied from it)."""
    ids, pixels, stop_tokens = inputs_as_chat_built_them(model, image, question, layout=layout, tokenizer=tokenizer)
    overrides.setdefault("stop_tokens", stop_tokens)
    tok = tokenizer if tokenizer is not None else model.get_tokenizer()
    out = model.generate(ids, pixels, max_new_tokens=max_new_tokens, streamer=streamer, **overrides)
    return tok.decode(out.tokens[0]).split("\n\n")[0].strip()


@pytest.fixture(scope="module")
def toy():
    return load_toy_model()


@pytest.fixture(scope="module")
def samples(toy):
    data = ShapesVQA("test", size=N_SAMPLES, seed=0, image_size=toy.encoder.image_size[0], grid=toy.encoder.grid[0])
    return [data[i] for i in range(N_SAMPLES)]


def test_toy_model_answers_as_before(toy, samples):
    correct = 0
    for s in samples:
        before = chat_as_it_was(toy, s.image, s.question, max_new_tokens=8)
        assert chat(toy, toy.processor, s.image, s.question, max_new_tokens=8) == before
        assert toy.chat(s.image, s.question, max_new_tokens=8) == before
        correct += exact_match(before, s.answer)
    assert correct >= N_SAMPLES - 1  # 96.9 % held-out accuracy


def test_chat_function_equals_the_method_with_every_option(toy, samples):
    s = samples[1]
    two = [samples[1].image, samples[2].image]
    cases = [
        dict(image=s.image, question=s.question, kwargs={}),
        dict(image=s.image, question=s.question, kwargs=dict(layout="image_first")),
        dict(image=None, question=s.question, kwargs={}),
        dict(image=two, question=f"<image>\n<image>\n{s.question}", kwargs={}),
        dict(image=s.image, question=s.question, kwargs=dict(max_new_tokens=2)),
        dict(image=s.image, question=s.question, kwargs=dict(do_sample=True, temperature=1.5, top_k=5)),
    ]
    for case in cases:
        kwargs = dict(case["kwargs"])
        torch.manual_seed(3)  # the same draws for sampling
        before = chat_as_it_was(toy, case["image"], case["question"], **kwargs)
        torch.manual_seed(3)
        method = toy.chat(case["image"], case["question"], **kwargs)
        layout = kwargs.pop("layout", None)
        processor = toy.processor if layout is None else toy.processor.replace(layout=layout)
        torch.manual_seed(3)
        function = chat(toy, processor, case["image"], case["question"], **kwargs)
        assert before == method == function, case


def test_streamer_sees_the_same_tokens(toy, samples):
    s = samples[0]
    seen = {"before": [], "now": []}
    chat_as_it_was(toy, s.image, s.question, max_new_tokens=8, streamer=lambda row, tok: seen["before"].append(tok))
    chat(toy, toy.processor, s.image, s.question, max_new_tokens=8, streamer=lambda row, tok: seen["now"].append(tok))
    assert seen["before"] == seen["now"] and seen["now"][-1] in toy.processor.stop_token_ids
    streamer = TextStreamer(toy.processor.tokenizer, on_text=lambda row, text: None)
    answer = chat(toy, toy.processor, s.image, s.question, max_new_tokens=8, streamer=streamer)
    assert extract_answer(streamer.texts[0]) == answer


def test_stop_tokens_can_be_overridden(toy, samples):
    s = samples[0]
    # Without the "\n\n" stop, generation runs to max_new_tokens; the answer is still cut at the first blank line.
    before = chat_as_it_was(toy, s.image, s.question, max_new_tokens=6, stop_tokens=())
    assert chat(toy, toy.processor, s.image, s.question, max_new_tokens=6, stop_tokens=()) == before


def test_a_tokenizer_override_leaves_the_model_untouched():
    class CharTokenizer:
        chars = "\x00abcdefghijklmnopqrstuvwxyz :?.\n,AU"

        def encode(self, text):
            return [self.chars.index(ch) if ch in self.chars else 30 for ch in text]

        def decode(self, ids):
            return "".join(self.chars[i] if i < len(self.chars) else "#" for i in ids)

    torch.manual_seed(0)
    rwkv = RWKV6(n_layer=2, n_embd=32, head_size=16, d_mix=4, d_decay=8, vocab_size=50)
    model = VisualRWKV(rwkv=rwkv, encoder=tiny_clip(image_size=28)).eval()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8))
    tok = CharTokenizer()
    before = chat_as_it_was(model, image, "what is it?", tokenizer=tok, max_new_tokens=5)
    assert model.chat(image, "what is it?", tokenizer=tok, max_new_tokens=5) == before
    assert model.tokenizer is None  # the override was used for this call only


def test_extract_answer():
    assert extract_answer(" red\n\n") == "red" and extract_answer(" two words\n\nUser: more") == "two words"
    assert extract_answer("") == "" and extract_answer(" a\nb") == "a\nb"
