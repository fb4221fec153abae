import pytest

from rwkv_vision import WorldTokenizer
from rwkv_vision.tokenizers import Tokenizer


@pytest.fixture(scope="module")
def tok():
    return WorldTokenizer()


@pytest.mark.parametrize(
    "text, ids", [("Assistant:", [5585, 41693, 59]), ("\n\n", [261]), ("User: hi", [24281, 59, 4571])]
)
def test_known_ids(tok, text, ids):
    assert tok.encode(text) == ids
    assert tok.decode(ids) == text


TEXTS = ["hello world", "你好，世界", "emoji 😀🎉 mixed 中文 and ünïcödé", "", "a\n\nb\tc"]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_prefix_that_splits_a_character_decodes_with_replacement(tok):
    ids = tok.encode("你好😀")
    assert len(ids) > 3  # the emoji spans several byte tokens
    prefixes = [tok.decode(ids[:i]) for i in range(len(ids) + 1)]  # must not raise
    assert prefixes[-1] == "你好😀"
    assert any("\ufffd" in p for p in prefixes)
    assert all(p.replace("\ufffd", "") in "你好😀" for p in prefixes)


def test_stream_decoder_emits_complete_characters_only(tok):
    ids = tok.encode("x😀y你")
    decoder = tok.stream_decoder()
    pieces = [decoder.decode([i]) for i in ids]
    assert "".join(pieces) + decoder.flush() == "x😀y你"
    assert all("\ufffd" not in p for p in pieces)


def test_decode_bytes_and_special_ids(tok):
    assert tok.decode_bytes(tok.encode("ab")) == b"ab"
    assert tok.decode([0]) == ""
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([70000])
    assert tok.vocab_size == 65536


def test_satisfies_the_protocol(tok):
    assert isinstance(tok, Tokenizer)
