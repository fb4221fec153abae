"""VisualRWKVProcessor: the model inputs exactly as VisualRWKV.chat built them before the processor existed,
its config sections (the very format of config.json), and its stop tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from rwkv_vision import RWKV6, VisualRWKV
from rwkv_vision.checkpoint.config_json import CheckpointError
from rwkv_vision.data import ShapesVQA
from rwkv_vision.generation import CHAT_STOP_TOKENS
from rwkv_vision.image_tokens import IMAGE_TOKEN_INDEX, ImageSpan
from rwkv_vision.pretrained import load_toy_model, path
from rwkv_vision.processor import ProcessorOutput, VisualRWKVProcessor
from rwkv_vision.prompt import ImageFirst, ImageLast, Sandwich
from rwkv_vision.tokenizers import WordTokenizer, WorldTokenizer
from rwkv_vision.vision import ImagePreprocessor, tiny_clip

from reference.chat_before import inputs_as_chat_built_them
from reference.fixtures import one_cpu_thread  # noqa: F401


@pytest.fixture(scope="module")
def toy():
    return load_toy_model()


@pytest.fixture(scope="module")
def samples(toy):
    data = ShapesVQA("test", size=3, seed=0, image_size=toy.encoder.image_size[0], grid=toy.encoder.grid[0])
    return [data[i] for i in range(3)]


class CharTokenizer:
    """Only encode/decode (no stop_token_ids, no stream_decoder): the minimum a tokenizer needs."""

    chars = "\x00abcdefghijklmnopqrstuvwxyz :?.\n,AU"

    def encode(self, text):
        return [self.chars.index(ch) if ch in self.chars else 30 for ch in text]

    def decode(self, ids):
        return "".join(self.chars[i] if i < len(self.chars) else "#" for i in ids)


@pytest.mark.parametrize("case", ["one image", "two images", "text only", "conversation", "layout", "tokenizer"])
def test_inputs_equal_what_chat_built(toy, samples, case):
    image, question, kwargs = samples[0].image, samples[0].question, {}
    if case == "two images":
        image, question = [samples[0].image, samples[1].image], f"<image>\n<image>\n{samples[0].question}"
    elif case == "text only":
        image = None
    elif case == "conversation":
        question = [
            ("user", f"<image>\n{samples[0].question}"),
            ("assistant", samples[0].answer),
            {"role": "user", "content": samples[1].question},
        ]
    elif case == "layout":
        kwargs = {"layout": "image_first"}
    elif case == "tokenizer":
        kwargs = {"tokenizer": CharTokenizer()}
    ids, pixels, stop = inputs_as_chat_built_them(toy, image, question, **kwargs)
    processor = toy._processor(**kwargs)
    device, dtype = toy.rwkv.emb.weight.device, next(toy.encoder.parameters()).dtype
    out = processor(image, question, device=device, dtype=dtype)
    assert torch.equal(out.input_ids, ids) and out.input_ids.dtype == torch.long and out.input_ids.shape[0] == 1
    if pixels is None:
        assert out.pixel_values is None
    else:
        assert torch.equal(out.pixel_values, pixels) and out.pixel_values.shape == (
            len(image) if isinstance(image, list) else 1,
            3,
            48,
            48,
        )
    assert processor.stop_token_ids == stop
    assert (out.input_ids == IMAGE_TOKEN_INDEX).sum() == (0 if pixels is None else pixels.shape[0])


def test_output_unpacks_and_feeds_the_model(toy, samples):
    out = toy.processor(samples[0].image, samples[0].question)
    assert isinstance(out, ProcessorOutput)
    ids, pixels = out
    assert ids is out.input_ids and pixels is out.pixel_values and out[0] is ids and out["pixel_values"] is pixels
    assert out.spans == out.prompt.spans and isinstance(out.spans[0], ImageSpan) and out.spans[0].rows == 3
    with torch.no_grad():
        logits, _ = toy(**out)
        reference, _ = toy(ids, pixels)
    assert torch.equal(logits, reference)
    assert logits.shape[1] == out.prompt.expanded_length
    assert toy.processor.decode(ids[0, :2]) == toy.processor.decode(ids[0, :2].tolist()) == "User:"


def test_the_model_processor_is_made_of_its_parts(toy):
    p = toy.processor
    assert p.tokenizer is toy.tokenizer and p.image_processor is toy.image_preprocessor and p.layout == toy.layout
    assert p.layout.image_grid == toy.encoder.grid == (3, 3)
    q = p.replace(layout="last")
    assert isinstance(q.layout, ImageLast) and q.layout.image_grid == (3, 3) and q.tokenizer is p.tokenizer
    assert p.layout == toy.layout  # replace() copies


def test_stop_tokens():
    assert VisualRWKVProcessor(WordTokenizer()).stop_token_ids == (1, 0)
    assert VisualRWKVProcessor(WorldTokenizer()).stop_token_ids == CHAT_STOP_TOKENS == (261, 0)
    assert VisualRWKVProcessor(CharTokenizer()).stop_token_ids == CHAT_STOP_TOKENS  # none of its own
    assert VisualRWKVProcessor().stop_token_ids == CHAT_STOP_TOKENS


def test_config_sections_are_those_of_config_json(toy, tmp_path):
    shipped = json.loads((path() / "config.json").read_text())
    sections = toy.processor.to_config()
    assert sections == {k: shipped[k] for k in ("layout", "preprocessor", "tokenizer")}
    assert sections == {k: v for k, v in toy.to_config().items() if k in sections}
    # save() writes the tokenizer's file byte for byte as save_pretrained does, and returns the sections
    assert toy.processor.save(tmp_path / "p") == sections
    assert (tmp_path / "p" / "tokenizer.json").read_bytes() == (path() / "tokenizer.json").read_bytes()


def test_round_trip(toy, samples, tmp_path):
    sections = toy.processor.save(tmp_path)
    again = VisualRWKVProcessor.from_config(sections, tmp_path, image_grid=toy.encoder.grid)
    assert again.tokenizer == toy.tokenizer and again.layout == toy.layout
    assert again.to_config() == sections
    a, b = toy.processor(samples[0].image, samples[0].question), again(samples[0].image, samples[0].question)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.pixel_values, b.pixel_values)
    # from a whole config.json, the grid and CLS position come from its encoder section
    whole = VisualRWKVProcessor.from_config(json.loads((path() / "config.json").read_text()), path())
    assert whole.layout == toy.layout and whole.to_config() == sections
    # without either, the default grid (CLIP ViT-L/14-336)
    assert VisualRWKVProcessor.from_config(sections, tmp_path).layout.image_grid == (24, 24)


def test_round_trip_world_and_other_layouts():
    for layout in (ImageFirst(image_grid=(2, 2)), Sandwich(image_grid=(2, 2), instruction="Be brief.")):
        p = VisualRWKVProcessor(WorldTokenizer(), ImagePreprocessor(28, alpha="white"), layout)
        data = p.to_config()
        assert data["tokenizer"] == {"type": "world"} and data["preprocessor"]["alpha"] == "white"
        q = VisualRWKVProcessor.from_config(data, image_grid=(2, 2))  # World needs no directory
        assert q.layout == layout and isinstance(q.tokenizer, WorldTokenizer) and q.to_config() == data


def test_errors():
    with pytest.raises(ValueError, match="no tokenizer"):
        VisualRWKVProcessor()(None, "hi")
    with pytest.raises(ValueError, match="no image_processor"):
        VisualRWKVProcessor(WorldTokenizer())(Image.new("RGB", (4, 4)), "hi")
    with pytest.raises(ValueError, match="text_or_conversation"):
        VisualRWKVProcessor(WorldTokenizer())(None)
    with pytest.raises(CheckpointError, match=r"missing section\(s\) \['preprocessor', 'tokenizer'\]"):
        VisualRWKVProcessor.from_config({"layout": {}})
    with pytest.raises(TypeError, match="image_processor must be"):
        VisualRWKVProcessor(image_processor=3)


def test_world_model_processor_defaults():
    # A model without a tokenizer gets World's (what chat always did), at the encoder's grid and size.
    rwkv = RWKV6(n_layer=1, n_embd=32, head_size=16, d_mix=4, d_decay=8, vocab_size=65536)
    model = VisualRWKV(rwkv=rwkv, encoder=tiny_clip(image_size=28))
    p = model.processor
    assert isinstance(p.tokenizer, WorldTokenizer) and p.image_processor.size == 28 and p.layout.image_grid == (2, 2)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    ids, pixels, stop = inputs_as_chat_built_them(model, image, "What is it?")
    out = p(image, "What is it?", dtype=torch.float32)
    assert torch.equal(out.input_ids, ids) and torch.equal(out.pixel_values, pixels) and p.stop_token_ids == stop
    assert ids[0, -3:].tolist() == [5585, 41693, 59]  # "Assistant:"
