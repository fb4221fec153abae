"""ShapesVQA: determinism, split hygiene, answers that follow from the scene, balance, argument errors."""

from __future__ import annotations

import collections
import hashlib
import random
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rwkv_vision.data.shapes import (
    BACKGROUND,
    COLORS,
    QUESTION_TYPES,
    SHAPES,
    Scene,
    ShapeObject,
    ShapesVQA,
    all_words,
    exact_match,
    make_sample,
    normalize_answer,
    position_phrase,
    render,
    scene_split,
)

NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
# Written out here, not taken from the module, so a renamed cell would fail the test.
CELLS_3X3 = {
    "in the top left": (0, 0),
    "in the top middle": (0, 1),
    "in the top right": (0, 2),
    "in the middle left": (1, 0),
    "in the center": (1, 1),
    "in the middle right": (1, 2),
    "in the bottom left": (2, 0),
    "in the bottom middle": (2, 1),
    "in the bottom right": (2, 2),
}
PLURALS = {"squares": "square", "circles": "circle", "triangles": "triangle", "crosses": "cross"}


def fingerprint(sample) -> str:
    h = hashlib.sha256(sample.image.tobytes())
    h.update(f"|{sample.image.size}|{sample.question}|{sample.answer}|{sample.question_type}".encode())
    return h.hexdigest()


def expected_answer(question: str, scene: Scene) -> str:
    """Re-derive the answer from the scene by parsing the question, independently of the generator."""
    objs = scene.objects
    cells = (
        CELLS_3X3
        if scene.grid == 3
        else {position_phrase(r, c, scene.grid): (r, c) for r in range(scene.grid) for c in range(scene.grid)}
    )

    def at(r, c):
        found = [o for o in objs if (o.row, o.col) == (r, c)]
        assert len(found) <= 1
        return found[0] if found else None

    if m := re.fullmatch(r"What color is the shape (.+)\?", question):
        o = at(*cells[m[1]])
        assert o is not None, "asked about an empty cell"
        return o.color
    if m := re.fullmatch(r"What shape is (.+)\?", question):
        o = at(*cells[m[1]])
        assert o is not None, "asked about an empty cell"
        return o.shape
    if question == "How many shapes are there?":
        return NUMBERS[len(objs)]
    if m := re.fullmatch(r"How many (\w+) shapes are there\?", question):
        assert m[1] in COLORS
        return NUMBERS[sum(o.color == m[1] for o in objs)]
    if m := re.fullmatch(r"How many (\w+) are there\?", question):
        return NUMBERS[sum(o.shape == PLURALS[m[1]] for o in objs)]
    if m := re.fullmatch(r"What is (left of|right of|above|below) the (\w+) (\w+)\?", question):
        refs = [o for o in objs if (o.color, o.shape) == (m[2], m[3])]
        assert len(refs) == 1, f"reference {m[2]} {m[3]} is ambiguous or absent"
        dr, dc = {"left of": (0, -1), "right of": (0, 1), "above": (-1, 0), "below": (1, 0)}[m[1]]
        r, c = refs[0].row + dr, refs[0].col + dc
        while 0 <= r < scene.grid and 0 <= c < scene.grid:
            if (o := at(r, c)) is not None:
                return f"{o.color} {o.shape}"
            r, c = r + dr, c + dc
        return "nothing"
    if m := re.fullmatch(r"Is there a (\w+) (\w+)\?", question):
        return "yes" if any((o.color, o.shape) == (m[1], m[2]) for o in objs) else "no"
    raise AssertionError(f"unrecognised question {question!r}")


# ---- determinism ------------------------------------------------------------------------------------


def test_same_seed_split_index_gives_identical_samples():
    a, b = ShapesVQA("train", size=50, seed=7), ShapesVQA("train", size=50, seed=7)
    for i in (0, 1, 17, 49):
        assert fingerprint(a[i]) == fingerprint(b[i])
        assert a[i].scene == b[i].scene
    # Access order does not matter: items are independent of each other.
    assert fingerprint(b[17]) == fingerprint(ShapesVQA("train", size=50, seed=7)[17])
    assert fingerprint(a[-1]) == fingerprint(a[49])


def test_golden_fingerprints():
    # Pins the generator byte for byte: a change here changes every dataset built from these seeds,
    # which invalidates trained checkpoints' held-out numbers. Update only on purpose.
    train, test = ShapesVQA("train", size=3, seed=0), ShapesVQA("test", size=3, seed=0)
    got = [fingerprint(train[0]), fingerprint(train[2]), fingerprint(test[1])]
    assert got == GOLDEN, got


GOLDEN = [
    "2907b2ed66077e545180610035fc07d426de63bfa2e4182a9eb9856d6cfe4495",
    "c424274dab3fdec28d40ec0185743f4af28a34f15611916602f004bf65a50c9f",
    "10b92f38f6424aafbacfba633bef69aa6ba02a312c6a5cf4ee61d46b6980f0aa",
]


def test_different_seeds_and_splits_differ():
    base = [ShapesVQA("train", size=20, seed=0)[i].scene for i in range(20)]
    other_seed = [ShapesVQA("train", size=20, seed=1)[i].scene for i in range(20)]
    assert sum(a != b for a, b in zip(base, other_seed)) >= 18


def test_splits_own_disjoint_scenes():
    keys = {}
    for split in ("train", "val", "test"):
        ds = ShapesVQA(split, size=150, seed=0, question_types=["count_all"])
        scenes = [ds[i].scene for i in range(len(ds))]
        assert all(scene_split(s) == split for s in scenes)
        keys[split] = {s.key() for s in scenes}
    assert not keys["train"] & keys["val"]
    assert not keys["train"] & keys["test"]
    assert not keys["val"] & keys["test"]


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**64),
    grid=st.integers(min_value=2, max_value=5),
    extra_pixels=st.integers(min_value=0, max_value=40),
)
def test_make_sample_is_a_function_of_the_rng_seed(seed, grid, extra_pixels):
    kwargs = dict(grid=grid, image_size=8 * grid + extra_pixels, max_objects=min(4, grid * grid))
    a = make_sample(random.Random(seed), **kwargs)
    b = make_sample(random.Random(seed), **kwargs)
    assert fingerprint(a) == fingerprint(b)
    assert a.image.size == (kwargs["image_size"],) * 2 and a.image.mode == "RGB"
    assert expected_answer(a.question, a.scene) == a.answer


# ---- answers follow from the scene, images from the scene --------------------------------------------


def test_answers_follow_from_the_scene():
    ds = ShapesVQA("val", size=700, seed=3)
    seen = collections.Counter()
    for i in range(len(ds)):
        s = ds[i]
        seen[s.question_type] += 1
        assert expected_answer(s.question, s.scene) == s.answer, (i, s.question, s.answer, s.scene)
        assert 1 <= len(s.scene.objects) <= 5
        assert s.answer == normalize_answer(s.answer) and 1 <= len(s.answer.split()) <= 2
    assert set(seen) == set(QUESTION_TYPES)


def test_larger_grids_have_consistent_answers():
    ds = ShapesVQA("train", size=150, seed=0, grid=4, image_size=64, max_objects=8)
    for i in range(len(ds)):
        s = ds[i]
        assert expected_answer(s.question, s.scene) == s.answer


def test_image_shows_the_scene():
    ds = ShapesVQA("test", size=60, seed=1, image_size=48)
    for i in range(len(ds)):
        s = ds[i]
        pixels = np.asarray(s.image)
        cell = 48 / 3
        for r in range(3):
            for c in range(3):
                o = s.scene.at(r, c)
                block = pixels[int(r * cell) : int((r + 1) * cell), int(c * cell) : int((c + 1) * cell)]
                if o is None:
                    assert (block == BACKGROUND).all()
                    continue
                # Every shape covers its own centre; the pixel there has the shape's exact colour.
                x = int((c + 0.5 + o.dx) * cell)
                y = int((r + 0.5 + o.dy) * cell)
                assert tuple(pixels[y, x]) == COLORS[o.color]


def test_render_draws_each_shape_differently():
    images = {}
    for shape in SHAPES:
        scene = Scene(grid=2, objects=(ShapeObject("red", shape, 0, 0, scale=0.8),))
        images[shape] = np.asarray(render(scene, image_size=64)).tobytes()
    assert len(set(images.values())) == len(SHAPES)


# ---- vocabulary, balance, restriction ----------------------------------------------------------------


def test_every_word_is_in_the_vocabulary():
    vocab = set(all_words())
    for grid in (2, 3, 6):
        ds = ShapesVQA("train", size=150, seed=2, grid=grid, image_size=16 * grid)
        for i in range(len(ds)):
            s = ds[i]
            assert set(re.findall(r"\w+", s.question + " " + s.answer)) <= vocab, s.question
            assert re.fullmatch(r"[A-Za-z ,]+\?", s.question)


def test_yes_no_balance():
    ds = ShapesVQA("train", size=1000, seed=0, question_types=["exists"])
    answers = collections.Counter(ds[i].answer for i in range(len(ds)))
    assert set(answers) == {"yes", "no"}
    assert 0.42 <= answers["yes"] / 1000 <= 0.58, answers


def test_answer_spread_of_other_types():
    ds = ShapesVQA("train", size=600, seed=0, question_types=["relative", "color_at", "count_all"])
    by_type = collections.defaultdict(collections.Counter)
    for i in range(len(ds)):
        s = ds[i]
        by_type[s.question_type][s.answer] += 1
    relative = by_type["relative"]
    assert 0.15 <= relative["nothing"] / sum(relative.values()) <= 0.45, relative
    assert set(by_type["color_at"]) == set(COLORS)
    assert set(by_type["count_all"]) == {"one", "two", "three", "four", "five"}
    assert set(by_type) == {"relative", "color_at", "count_all"}


def test_question_types_subset_and_order_insensitive():
    a = ShapesVQA("val", size=40, question_types=["exists", "shape_at"])
    b = ShapesVQA("val", size=40, question_types=("shape_at", "exists", "exists"))
    assert a.question_types == b.question_types == ("shape_at", "exists")
    assert {a[i].question_type for i in range(40)} == {"exists", "shape_at"}
    assert [fingerprint(a[i]) for i in range(5)] == [fingerprint(b[i]) for i in range(5)]
    assert {s.question_type for s in (ShapesVQA("val", size=5, question_types="count_all")[i] for i in range(5))} == {
        "count_all"
    }


# ---- dataset protocol, evaluation helper ---------------------------------------------------------------


def test_dataset_protocol_and_transform():
    ds = ShapesVQA("train", size=3, transform=lambda s: (s.question, s.answer))
    assert len(ds) == 3
    q, a = ds[1]
    assert isinstance(q, str) and isinstance(a, str)
    assert ds.sample(1).question == q
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(IndexError):
        ds[-4]
    messages = ShapesVQA("train", size=1)[0].messages()
    assert messages[0][0] == "user" and messages[0][1].endswith("\nAnswer the question using a single word or phrase.")
    assert messages[1] == ("assistant", ShapesVQA("train", size=1)[0].answer)


@pytest.mark.parametrize(
    "prediction, answer, ok",
    [
        ("red", "red", True),
        (" Red.\n\n", "red", True),
        ("green   triangle", "green triangle", True),
        ("Green Triangle!", "green triangle", True),
        ("2", "two", True),
        ("yes", "no", False),
        ("green", "green triangle", False),
        ("", "nothing", False),
    ],
)
def test_exact_match(prediction, answer, ok):
    assert exact_match(prediction, answer) is ok


# ---- argument errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(split="training"), "unknown split"),
        (dict(grid=1), "grid must be"),
        (dict(grid=9), "grid must be"),
        (dict(grid=3.0), "grid must be"),
        (dict(image_size=20), "image_size must be"),
        (dict(image_size=32, grid=5), "image_size must be"),
        (dict(question_types=["colour_at"]), "unknown question type"),
        (dict(question_types=[]), "must not be empty"),
        (dict(min_objects=0), "min_objects"),
        (dict(min_objects=4, max_objects=3), "min_objects"),
        (dict(max_objects=10), "max_objects"),
        (dict(size=-1), "size must be"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShapesVQA(**{"split": "train", **kwargs})


def test_bad_arguments_of_functions():
    with pytest.raises(ValueError, match="unknown split"):
        make_sample(random.Random(0), split="dev")
    with pytest.raises(ValueError, match="image_size must be"):
        render(Scene(grid=3, objects=()), image_size=8)
    with pytest.raises(ValueError, match="share a cell"):
        Scene(grid=3, objects=(ShapeObject("red", "square", 0, 0), ShapeObject("blue", "circle", 0, 0)))
    with pytest.raises(ValueError, match="outside"):
        Scene(grid=2, objects=(ShapeObject("red", "square", 2, 0),))
    with pytest.raises(ValueError, match="unknown colour"):
        Scene(grid=2, objects=(ShapeObject("pink", "square", 0, 0),))
    with pytest.raises(TypeError):
        ShapesVQA("train", size=3)["0"]


def test_docs_examples_run(tmp_path, monkeypatch):
    from pathlib import Path

    doc = Path(__file__).resolve().parents[2] / "docs" / "data.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)  # the tokenizer example saves a file
    namespace: dict = {}
    for code in blocks:
        exec(compile(code, str(doc), "exec"), namespace)
    # The values the doc shows in comments.
    assert (namespace["s"].question, namespace["s"].answer, namespace["s"].question_type) == (
        "Is there a white cross?",
        "yes",
        "exists",
    )
    assert namespace["tok"].vocab_size == 131


def test_single_object_scenes():
    ds = ShapesVQA("test", size=40, min_objects=1, max_objects=1)
    for i in range(len(ds)):
        s = ds[i]
        assert len(s.scene.objects) == 1
        assert expected_answer(s.question, s.scene) == s.answer
