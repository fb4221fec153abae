"""WordTokenizer: fixed special ids, exact round trips on prompts, persistence, unknown words."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rwkv_vision.data import ShapesVQA, WordTokenizer, all_words
from rwkv_vision.tokenizers.word import END_ID, PROMPT_WORDS, TURN_ID, UNK_ID

TOK = WordTokenizer()
PIECES = [" ", "\n", "\n\n", "?", ".", ",", ":"]


def test_special_ids_are_fixed():
    assert (TOK.eos_token_id, TOK.pad_token_id, TOK.turn_token_id, TOK.unk_token_id) == (0, 0, 1, 2)
    assert (END_ID, TURN_ID, UNK_ID) == (0, 1, 2)
    assert TOK.stop_token_ids == (1, 0)
    assert TOK.encode("\n\n") == [TURN_ID]
    assert TOK.decode([END_ID]) == ""
    assert TOK.decode([TURN_ID]) == "\n\n"
    assert TOK.id_to_token(0) == "<end>" and TOK.token_to_id("<end>") == 0


def test_vocabulary_covers_dataset_and_prompt_words():
    assert set(all_words()) | set(PROMPT_WORDS) == set(TOK.words)
    assert TOK.vocab_size == len(TOK) == 3 + 2 + 4 + 2 * len(TOK.words)
    assert TOK.vocab_size < 256
    # Equal word sets give equal ids, in any order.
    assert WordTokenizer(sorted(all_words(), reverse=True)) == TOK


def test_prompt_round_trip_and_pieces():
    prompt = "User: What color is the shape in the top left?\n\nAssistant: red\n\n"
    ids = TOK.encode(prompt)
    assert TOK.decode(ids) == prompt
    assert [TOK.id_to_token(i) for i in ids] == [
        "User",
        ":",
        " What",
        " color",
        " is",
        " the",
        " shape",
        " in",
        " the",
        " top",
        " left",
        "?",
        "\n\n",
        "Assistant",
        ":",
        " red",
        "\n\n",
    ]
    assert ids[-1] in TOK.stop_token_ids


def test_every_dataset_prompt_round_trips():
    ds = ShapesVQA("train", size=200, seed=4)
    for i in range(len(ds)):
        s = ds[i]
        (_, question), (_, answer) = s.messages()
        for text in (
            f"User: {question}\n\nAssistant: {answer}\n\n",
            f"User: {s.question}\n{question}\n\nAssistant:",
            f" {answer}\n\n",
        ):
            assert TOK.decode(TOK.encode(text)) == text


def test_round_trip_through_the_library_prompt_layouts():
    prompt = pytest.importorskip("rwkv_vision.prompt")
    s = ShapesVQA("val", size=1)[0]
    for layout in ("first", "last", "sandwich"):
        ids = prompt.get_layout(layout, image_grid=(4, 4)).tokenize(s.messages(), TOK, num_images=1)
        assert ids.input_ids.count(prompt.IMAGE_TOKEN_INDEX) == 1
        text = "".join(TOK.decode([i]) if i >= 0 else "<image>" for i in ids.input_ids)
        assert text == ids.text


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(sorted(set(all_words()) | set(PROMPT_WORDS)) + PIECES), max_size=30))
def test_any_text_of_known_pieces_round_trips(parts):
    text = "".join(parts)
    # Adjacent words glue into one unknown word ("redcircle"), so only texts whose words are known apply.
    if any(w not in TOK.words for w in re.findall(r"[^\W_]+", text)):
        return
    assert TOK.decode(TOK.encode(text)) == text


@settings(max_examples=20, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_round_trip_over_dataset_seeds(seed):
    s = ShapesVQA("test", size=1, seed=seed)[0]
    text = f"User: {s.question}\n\nAssistant: {s.answer}\n\n"
    assert TOK.decode(TOK.encode(text)) == text


def test_save_and_load(tmp_path):
    path = tmp_path / "tokenizer.json"
    TOK.save(path)
    loaded = WordTokenizer.from_file(path)
    assert loaded == TOK and loaded.tokens == TOK.tokens
    text = "User: Is there a blue cross?\n\nAssistant: no\n\n"
    assert loaded.encode(text) == TOK.encode(text)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == "rwkv_vision.WordTokenizer" and data["tokens"][:3] == ["<end>", "\n\n", "<unk>"]
    assert WordTokenizer.from_dict(TOK.to_dict()) == TOK


def test_bad_descriptions_are_rejected(tmp_path):
    good = TOK.to_dict()
    with pytest.raises(ValueError, match="format"):
        WordTokenizer.from_dict({**good, "format": "something else"})
    with pytest.raises(ValueError, match="version"):
        WordTokenizer.from_dict({**good, "version": 99})
    with pytest.raises(ValueError, match="first tokens"):
        WordTokenizer.from_dict({**good, "tokens": good["tokens"][1:]})
    with pytest.raises(ValueError, match="unique"):
        WordTokenizer.from_dict({**good, "tokens": good["tokens"] + ["red"]})
    with pytest.raises(ValueError, match="single piece"):
        WordTokenizer.from_dict({**good, "tokens": good["tokens"] + ["red circle"]})


def test_unknown_words():
    with pytest.raises(ValueError, match=r"unknown piece\(s\) \[' pink'\]"):
        TOK.encode("Is there a pink circle?")
    with pytest.raises(ValueError, match="unknown piece"):
        TOK.encode("what\tis")
    lenient = WordTokenizer(unknown="unk")
    ids = lenient.encode("Is there a pink circle?")
    assert ids.count(UNK_ID) == 1
    assert lenient.decode(ids) == "Is there a<unk> circle?"
    with pytest.raises(ValueError, match="unknown must be"):
        WordTokenizer(unknown="ignore")


def test_bad_arguments():
    with pytest.raises(TypeError):
        TOK.encode(["red"])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        TOK.decode([TOK.vocab_size])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        TOK.decode([-1])
    with pytest.raises(ValueError, match="letters or digits"):
        WordTokenizer(["red", "two words"])
    with pytest.raises(TypeError):
        WordTokenizer("red")


def test_custom_vocabulary():
    tok = WordTokenizer(["cat", "dog"])
    assert set(tok.words) == {"cat", "dog", *PROMPT_WORDS}
    assert tok.decode(tok.encode("User: cat, dog.\n\nAssistant: dog\n\n")) == "User: cat, dog.\n\nAssistant: dog\n\n"
