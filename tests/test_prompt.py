"""Prompt layouts: exact reference strings, per-turn tokenisation, image spans, embedding expansion."""

from __future__ import annotations

import pytest
import torch

from rwkv_vision.image_tokens import IMAGE_TOKEN_INDEX, ImageSpan
from rwkv_vision.prompt import (
    LAYOUTS,
    V7_IMAGE_TOKEN_ID,
    ImageFirst,
    ImageFirstRun,
    ImageLast,
    Message,
    Sandwich,
    clean_text,
    expand_image_embeddings,
    fill_image_runs,
    get_layout,
)

VQA = "<image>\nWhat color is the bus?\nAnswer the question using a single word or phrase."


class ByteTokenizer:
    """One id per UTF-8 byte (id = byte + 1, so 0 stays free); records every encode call."""

    def __init__(self):
        self.calls: list[str] = []

    def encode(self, text):
        self.calls.append(text)
        return [b + 1 for b in text.encode("utf-8")]

    def decode(self, ids):
        return bytes(i - 1 for i in ids).decode("utf-8")


def test_sandwich_reference_string():
    # The reference's example VQA prompt, character for character.
    assert Sandwich().render(VQA) == (
        "User: What color is the bus?\n"
        "<image>"
        "\nWhat color is the bus?\nAnswer the question using a single word or phrase.\n\n"
        "Assistant:"
    )


def test_image_first_and_last_reference_strings():
    assert ImageFirst().render(VQA) == (
        "User: <image>\nWhat color is the bus?\nAnswer the question using a single word or phrase.\n\nAssistant:"
    )
    assert ImageLast().render(VQA) == (
        "User: What color is the bus?\nAnswer the question using a single word or phrase.\n<image>\n\nAssistant:"
    )
    # The placeholder may be anywhere (or absent, with num_images) in the input: the layout decides.
    assert ImageFirst().render("What is this?\n<image>") == ImageFirst().render("What is this?", num_images=1)


def test_cleaning_strips_and_collapses_blank_lines():
    assert clean_text("  a\n\n\nb \n \n\t\nc  ") == "a\nb \nc"
    # Only blank lines go; indentation of a following line stays, as in the original.
    assert Sandwich().render("  Describe.\n\n\n  Be brief.  ", num_images=1) == (
        "User: Describe.\n  Be brief.\n<image>\nDescribe.\n  Be brief.\n\nAssistant:"
    )
    # Nothing but the image and the instruction: no stray empty lines.
    assert Sandwich().render("<image>") == "User: <image>\n\nAssistant:"
    assert Sandwich().render("<image> Answer the question using a single word or phrase.") == (
        "User: <image>\nAnswer the question using a single word or phrase.\n\nAssistant:"
    )


def test_multi_turn_conversation():
    conv = [
        {"from": "human", "value": VQA},
        {"from": "gpt", "value": "Red"},
        ("user", "And the car?"),
        Message("assistant", "Blue\n\n"),
        {"role": "user", "content": "Thanks."},
    ]
    expected_turns = [
        "User: What color is the bus?\n<image>\nWhat color is the bus?\n"
        "Answer the question using a single word or phrase.\n\n",
        "Assistant: Red\n\n",
        "User: And the car?\n\n",
        "Assistant: Blue\n\n",
        "User: Thanks.\n\n",
        "Assistant:",
    ]
    assert Sandwich().render_turns(conv) == expected_turns
    assert Sandwich().render(conv, add_generation_prompt=False) == "".join(expected_turns[:-1])


def test_tokenised_per_turn_split_at_image():
    tok = ByteTokenizer()
    layout = Sandwich(image_grid=(2, 2))  # 4 patches + CLS = 5 image tokens
    conv = [("user", VQA), ("assistant", "Red"), ("user", "Why?")]
    p = layout.tokenize(conv, tok)
    assert tok.calls == [
        "User: What color is the bus?\n",
        "\nWhat color is the bus?\nAnswer the question using a single word or phrase.\n\n",
        "Assistant: Red\n\n",
        "User: Why?\n\n",
        "Assistant:",
    ]
    expected = tok.encode(tok.calls[0]) + [IMAGE_TOKEN_INDEX] + sum((tok.encode(s) for s in tok.calls[1:5]), [])
    assert p.input_ids == expected
    assert layout.image_tokens == 5 and Sandwich().image_tokens == 577
    start = len(tok.encode("User: What color is the bus?\n"))
    assert p.spans == [ImageSpan(start, 2, 2, "last")]
    assert p.expanded_length == len(p.input_ids) + 4
    assert p.to_tensor().shape == (1, len(p.input_ids))


def test_multiple_images_and_spans():
    tok = ByteTokenizer()
    layout = ImageFirst(image_grid=(1, 2), cls=None)
    p = layout.tokenize([("user", "<image><image>Compare."), ("assistant", "ok"), ("user", "<image>And?")], tok)
    assert p.text == "User: <image>\n<image>\nCompare.\n\nAssistant: ok\n\nUser: <image>\nAnd?\n\nAssistant:"
    assert [i for i, v in enumerate(p.input_ids) if v == IMAGE_TOKEN_INDEX] == [6, 8, 41]
    # expanded positions: each earlier image adds (2 - 1) extra tokens
    assert [s.start for s in p.spans] == [6, 8 + 1, 41 + 2]


def test_placeholder_count_mismatch_is_an_error():
    with pytest.raises(ValueError, match="num_images=2 but the conversation has 1"):
        Sandwich().render(VQA, num_images=2)
    with pytest.raises(ValueError, match="assistant turn cannot contain <image>"):
        Sandwich().render([("user", "hi"), ("assistant", "<image>")])
    with pytest.raises(ValueError, match="role must be one of"):
        Sandwich().render([("system", "hi")])
    with pytest.raises(TypeError, match="tokenizer must have an encode"):
        Sandwich().tokenize("hi", object())


def test_get_layout_and_grid():
    assert isinstance(get_layout(None), Sandwich)
    assert isinstance(get_layout("first"), ImageFirst) and isinstance(get_layout("middle"), Sandwich)
    assert get_layout("last", image_grid=(4, 4)).image_tokens == 17
    assert Sandwich().with_grid(3, 3, cls="first").image_tokens == 10
    with pytest.raises(ValueError, match="layout must be"):
        get_layout("center")
    with pytest.raises(ValueError, match="image_grid"):
        Sandwich(image_grid=(0, 3))


def test_expand_image_embeddings_matches_manual_concatenation():
    emb = torch.nn.Embedding(50, 3, dtype=torch.float64)
    ids = torch.tensor(
        [[5, IMAGE_TOKEN_INDEX, 6, 7, IMAGE_TOKEN_INDEX], [IMAGE_TOKEN_INDEX, 1, 2, IMAGE_TOKEN_INDEX, 3]]
    )
    images = torch.randn(4, 5, 3)  # 2 x 2 grid + CLS, float32: cast to the text dtype
    x, spans = expand_image_embeddings(ids, images, emb)
    e = emb.weight
    ref0 = torch.cat([e[[5]], images[0].double(), e[[6, 7]], images[1].double()])
    ref1 = torch.cat([images[2].double(), e[[1, 2]], images[3].double(), e[[3]]])
    assert x.dtype == torch.float64 and torch.equal(x, torch.stack([ref0, ref1]))
    assert spans == [[ImageSpan(1, 2, 2), ImageSpan(8, 2, 2)], [ImageSpan(0, 2, 2), ImageSpan(7, 2, 2)]]
    # the layout passes its geometry
    layout = ImageFirst(image_grid=(1, 4), cls="first")
    _, spans = layout.expand(ids, images, emb)
    assert spans[0][0] == ImageSpan(1, 1, 4, "first")


def test_expand_image_embeddings_errors():
    emb = torch.nn.Embedding(10, 3)
    ids = torch.tensor([[1, IMAGE_TOKEN_INDEX, 2]])
    with pytest.raises(ValueError, match="1 image placeholders .* but 2 image embeddings"):
        expand_image_embeddings(ids, torch.randn(2, 5, 3), emb)
    with pytest.raises(ValueError, match="7 tokens, which is not a square grid"):
        expand_image_embeddings(ids, torch.randn(1, 7, 3), emb)
    with pytest.raises(ValueError, match="width 4, text embeddings have 3"):
        expand_image_embeddings(ids, torch.randn(1, 5, 4), emb)
    with pytest.raises(ValueError, match="different lengths"):
        expand_image_embeddings(torch.tensor([[IMAGE_TOKEN_INDEX, 1], [1, 2]]), torch.randn(1, 5, 3), emb)
    with pytest.raises(ValueError, match=r"input_ids must be an integer tensor \[b, t\]"):
        expand_image_embeddings(torch.tensor([1, 2]), [], emb)
    with pytest.raises(ValueError, match="negative ids"):
        expand_image_embeddings(torch.tensor([[1, -3]]), [], emb)


def test_world_tokenizer_ids_per_turn():
    pyrwkv = pytest.importorskip("pyrwkv_tokenizer")
    tok = pyrwkv.RWKVTokenizer()
    p = Sandwich().tokenize(VQA, tok)
    assert p.input_ids[-3:] == [5585, 41693, 59]  # "Assistant:" on its own
    assert p.input_ids[:2] == [24281, 59]  # "User", ":"
    first = tok.encode("User: What color is the bus?\n")
    assert p.input_ids[len(first)] == IMAGE_TOKEN_INDEX
    assert tok.encode("\nWhat color is the bus?\nAnswer the question using a single word or phrase.\n\n")[-1] == 261


# --- VisualRWKV v7.00 --------------------------------------------------------------------------------------


def official_v7_ids(conversation, tokenizer, num_token_per_image, *, num_images, generation=True):
    """The official v7.00 dataset.py / evaluate.py path, restated: image turns lose their <image> marks and
    get them back as a "\\n"-joined prefix; text is stripped and blank-line runs collapse to "\\n"; each turn
    becomes "Role: text\\n\\n" (the empty generation turn "Assistant:"); each turn is tokenised alone, split
    at <image>, every image a run of 65535."""
    import re

    turns = []
    for role, text in conversation:
        n = text.count("<image>")
        if n:
            text = re.sub(r"\n(\s*\n)+", "\n", text.replace("<image>", "").strip())
            if role == "human":
                text = "\n".join(n * ["<image>"]) + "\n" + text
            text = text.strip()
        else:
            text = re.sub(r"\n(\s*\n)+", "\n", text.strip())
        name = {"human": "User", "gpt": "Assistant"}[role]
        turns.append(f"{name}: {text}\n\n" if text else f"{name}:")
    if generation:
        turns.append("Assistant:")
    ids = []
    for turn in turns:
        chunks = [tokenizer.encode(c) for c in turn.split("<image>")] if num_images else [tokenizer.encode(turn)]
        ids.extend(chunks[0])
        for c in chunks[1:]:
            ids.extend([65535] * num_token_per_image)
            ids.extend(c)
    return ids


def world():
    from rwkv_vision.tokenizers import WorldTokenizer

    return WorldTokenizer()


def test_v7_layout_exact_official_ids():
    tok = world()
    layout = get_layout("visualrwkv7").with_grid(2, 2)
    assert isinstance(layout, ImageFirstRun) and LAYOUTS.get("image_first_run") is ImageFirstRun
    assert layout.image_tokens == 4 and layout.cls is None and V7_IMAGE_TOKEN_ID == 65535
    p = layout.tokenize("<image>\nWhat is it?", tok)
    img = [65535] * 4
    # "User" ":" " " (the space alone: "User: " is tokenised on its own), the run, "\nWhat is it?\n\n",
    # "Assistant:"
    assert p.input_ids == [24281, 59, 33, *img, 11, 24326, 4600, 4601, 64, 261, 5585, 41693, 59]
    assert p.expanded and p.expanded_length == len(p.input_ids)
    assert p.spans == [ImageSpan(3, 2, 2, None)]
    assert p.text == "User: <image>\nWhat is it?\n\nAssistant:"


@pytest.mark.parametrize(
    "conversation,num_images",
    [
        ([("human", "What is it?\n<image>")], 1),
        ([("human", "<image>\n<image>\nCompare   them.\n\n\nBriefly.")], 2),
        ([("human", "<image>\nQ1?"), ("gpt", "A1.\n \nMore."), ("human", "Q2?")], 1),
        ([("human", "<image>")], 1),
    ],
)
def test_v7_layout_matches_the_official_preprocess(conversation, num_images):
    tok = world()
    layout = ImageFirstRun(image_grid=(3, 2))
    p = layout.tokenize([{"from": r, "value": t} for r, t in conversation], tok)
    assert p.input_ids == official_v7_ids(conversation, tok, 6, num_images=num_images)
    assert len(p.spans) == num_images
    for span in p.spans:
        assert p.input_ids[span.start : span.stop] == [65535] * 6
        assert p.input_ids[span.start - 1] in (33, 11)  # after "User: " or the "\n" between images


def test_v7_empty_assistant_turn_is_the_generation_stub():
    tok = world()
    conv = [("human", "<image>\nQ?"), ("gpt", "")]  # evaluate.py's form
    p = ImageFirstRun(image_grid=(1, 1)).tokenize([{"from": r, "value": t} for r, t in conv], tok)
    assert p.input_ids == official_v7_ids(conv, tok, 1, num_images=1, generation=False)
    assert p.text == "User: <image>\nQ?\n\nAssistant:"


def test_v7_training_form_without_generation_prompt():
    tok = world()
    conv = [("human", "<image>\nQ?"), ("gpt", "Yes.")]
    p = ImageFirstRun(image_grid=(1, 1)).tokenize(conv, tok, add_generation_prompt=False)
    assert p.input_ids == official_v7_ids(conv, tok, 1, num_images=1, generation=False)
    assert p.input_ids[-1] == 261  # "Yes.\n\n" ends with the stop token


def test_fill_image_runs_overwrites_placeholders_in_order():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(65536, 5)
    ids = torch.tensor([[7, 65535, 65535, 8, 65535, 65535], [65535, 65535, 1, 2, 3, 4]])
    images = torch.randn(3, 2, 5)
    out, spans = fill_image_runs(ids, images, emb, grid=(1, 2))
    want = emb(ids).detach().clone()
    want[0, 1:3], want[0, 4:6], want[1, 0:2] = images[0], images[1], images[2]
    assert torch.equal(out, want)
    assert spans == [[ImageSpan(1, 1, 2, None), ImageSpan(4, 1, 2, None)], [ImageSpan(0, 1, 2, None)]]
    layout = ImageFirstRun(image_grid=(1, 2))
    assert torch.equal(layout.expand(ids, list(images), emb)[0], out)
    with pytest.raises(ValueError, match="need 8"):
        fill_image_runs(ids, torch.randn(4, 2, 5), emb, grid=(1, 2))
    with pytest.raises(ValueError, match="consecutive"):
        fill_image_runs(torch.tensor([[65535, 1, 65535]]), torch.randn(1, 2, 5), emb, grid=(1, 2))
    with pytest.raises(ValueError, match="width"):
        fill_image_runs(ids, torch.randn(3, 2, 4), emb, grid=(1, 2))
    with pytest.raises(ValueError, match="tokens per image"):
        fill_image_runs(ids, torch.randn(3, 3, 5), emb, grid=(1, 2))
    with pytest.raises(ValueError, match="image_token_id"):
        ImageFirstRun(image_token_id=-200)
