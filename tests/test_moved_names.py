"""Names that moved keep working from their old homes for one release: the old import warns with a
DeprecationWarning naming the new place and gives the very same object. The image-token names stay plain
re-exports (no warning) from scan and prompt, where they are widely used."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest

import rwkv_vision
from rwkv_vision import image_tokens, tokenizers
from rwkv_vision.tokenizers import base, word, world
from rwkv_vision.vision import projector

# (old module, name, the object, where the warning says it lives now)
MOVED = [
    ("rwkv_vision.layers.projector", "Projector", projector.Projector, "rwkv_vision.vision.projector"),
    ("rwkv_vision.layers.projector", "LinearProjector", projector.LinearProjector, "rwkv_vision.vision.projector"),
    ("rwkv_vision.layers.projector", "MLPProjector", projector.MLPProjector, "rwkv_vision.vision.projector"),
    ("rwkv_vision.layers.projector", "GatedMLPProjector", projector.GatedMLPProjector, "rwkv_vision.vision.projector"),
    ("rwkv_vision.layers.projector", "create_projector", projector.create_projector, "rwkv_vision.vision.projector"),
    ("rwkv_vision.layers.projector", "PROJECTORS", projector.PROJECTORS, "rwkv_vision.vision.projector"),
    ("rwkv_vision.layers", "Projector", projector.Projector, "rwkv_vision.vision.projector"),
    ("rwkv_vision.layers", "LinearProjector", projector.LinearProjector, "rwkv_vision.vision.projector"),
    ("rwkv_vision.layers", "MLPProjector", projector.MLPProjector, "rwkv_vision.vision.projector"),
    ("rwkv_vision.layers", "GatedMLPProjector", projector.GatedMLPProjector, "rwkv_vision.vision.projector"),
    ("rwkv_vision.layers", "create_projector", projector.create_projector, "rwkv_vision.vision.projector"),
    ("rwkv_vision.tokenizer", "WorldTokenizer", world.WorldTokenizer, "rwkv_vision.tokenizers.world"),
    ("rwkv_vision.tokenizer", "StreamDecoder", world.StreamDecoder, "rwkv_vision.tokenizers.world"),
    ("rwkv_vision.tokenizer", "WORLD_VOCAB_SIZE", world.WORLD_VOCAB_SIZE, "rwkv_vision.tokenizers.world"),
    ("rwkv_vision.tokenizer", "Tokenizer", base.Tokenizer, "rwkv_vision.tokenizers.base"),
    ("rwkv_vision.data.word_tokenizer", "WordTokenizer", word.WordTokenizer, "rwkv_vision.tokenizers.word"),
    ("rwkv_vision.data.word_tokenizer", "END_ID", word.END_ID, "rwkv_vision.tokenizers.word"),
    ("rwkv_vision.data.word_tokenizer", "TURN_ID", word.TURN_ID, "rwkv_vision.tokenizers.word"),
    ("rwkv_vision.data.word_tokenizer", "UNK_ID", word.UNK_ID, "rwkv_vision.tokenizers.word"),
    ("rwkv_vision.data.word_tokenizer", "PROMPT_WORDS", word.PROMPT_WORDS, "rwkv_vision.tokenizers.word"),
    ("rwkv_vision.data.word_tokenizer", "PUNCTUATION", word.PUNCTUATION, "rwkv_vision.tokenizers.word"),
    ("rwkv_vision.prompt", "TextTokenizer", base.Tokenizer, "rwkv_vision.tokenizers.Tokenizer"),
]


@pytest.mark.parametrize("module, name, obj, new_home", MOVED, ids=[f"{m}.{n}" for m, n, _, _ in MOVED])
def test_old_path_warns_and_gives_the_same_object(module, name, obj, new_home):
    old = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=rf"{module}\.{name} is deprecated.*{new_home}") as record:
        got = getattr(old, name)
    assert got is obj
    assert record[0].filename == __file__  # the warning points at the caller, not at the shim
    # `from old import name` goes through the same path
    with pytest.warns(DeprecationWarning, match=new_home):
        exec(f"from {module} import {name} as again", {}, (scope := {}))
    assert scope["again"] is obj


@pytest.mark.parametrize(
    "module",
    [
        "rwkv_vision.layers.projector",
        "rwkv_vision.tokenizer",
        "rwkv_vision.data.word_tokenizer",
        "rwkv_vision.layers",
        "rwkv_vision.prompt",
    ],
)
def test_unknown_names_are_still_attribute_errors(module):
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        importlib.import_module(module).nope  # noqa: B018


def test_importing_the_package_and_the_new_homes_warns_nothing():
    modules = [
        "rwkv_vision",
        "rwkv_vision.layers",
        "rwkv_vision.data",
        "rwkv_vision.tokenizers",
        "rwkv_vision.vision",
        "rwkv_vision.image_tokens",
        "rwkv_vision.registry",
        "rwkv_vision.processor",
        "rwkv_vision.chat",
        "rwkv_vision.cli",
        "rwkv_vision.demo",
        "rwkv_vision.checkpoint",
        "rwkv_vision.decoding",
    ]
    code = "; ".join(f"import {m}" for m in modules)
    proc = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr


def test_image_tokens_are_re_exported_without_warning():
    from rwkv_vision import prompt, scan
    from rwkv_vision.vision import encoders

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert scan.ImageSpan is image_tokens.ImageSpan and scan.ClsPosition is image_tokens.ClsPosition
        assert prompt.ImageSpan is image_tokens.ImageSpan and prompt.IMAGE_TOKEN_INDEX == image_tokens.IMAGE_TOKEN_INDEX
        assert encoders.ClsPosition is image_tokens.ClsPosition
        assert rwkv_vision.ImageSpan is image_tokens.ImageSpan and rwkv_vision.IMAGE_TOKEN_INDEX == -200
    assert "ImageSpan" in scan.__all__ and "IMAGE_TOKEN_INDEX" in prompt.__all__


def test_data_word_tokenizer_stays_a_plain_re_export():
    from rwkv_vision import data

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert data.WordTokenizer is tokenizers.WordTokenizer is rwkv_vision.WordTokenizer
