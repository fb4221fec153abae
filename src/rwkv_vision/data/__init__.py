"""Synthetic data for training and evaluating small VisualRWKV models.

* :mod:`.shapes` — ShapesVQA, coloured shapes on a grid with closed-vocabulary questions.
* ``WordTokenizer`` — a word-level tokenizer over that vocabulary plus the VisualRWKV prompt words (defined in
  :mod:`rwkv_vision.tokenizers.word`, re-exported here).
"""

from ..tokenizers.word import WordTokenizer
from .shapes import (
    COLORS,
    QUESTION_TYPES,
    SHAPES,
    SPLITS,
    Sample,
    Scene,
    ShapeObject,
    ShapesVQA,
    all_words,
    exact_match,
    make_sample,
    normalize_answer,
    random_scene,
    render,
    sample_seed,
    scene_split,
)

__all__ = [
    "COLORS",
    "SHAPES",
    "QUESTION_TYPES",
    "SPLITS",
    "Sample",
    "Scene",
    "ShapeObject",
    "ShapesVQA",
    "all_words",
    "exact_match",
    "make_sample",
    "normalize_answer",
    "random_scene",
    "render",
    "sample_seed",
    "scene_split",
    "WordTokenizer",
]
