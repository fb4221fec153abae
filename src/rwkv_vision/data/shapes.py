"""ShapesVQA: a synthetic visual-question dataset of coloured shapes on a grid.

Every sample is a small RGB image of 1-5 coloured shapes, each in its own cell of a ``grid x grid`` layout
on a plain dark background, with one question whose one- or two-word answer can only be read off the
image. It is meant for training and evaluating *small* VisualRWKV models from scratch: the vocabulary
is closed (:func:`all_words`), answers are unambiguous, and held-out splits share no scene with training.

Question types (:data:`QUESTION_TYPES`)::

    color_at     What color is the shape in the top left?   -> red
    shape_at     What shape is in the center?               -> circle
    count_color  How many red shapes are there?             -> two
    count_shape  How many circles are there?                -> one
    count_all    How many shapes are there?                 -> four
    relative     What is left of the red square?            -> green triangle | nothing
    exists       Is there a yellow circle?                  -> yes | no

Determinism: sample ``index`` of ``ShapesVQA(split, seed)`` is drawn from a ``random.Random`` seeded with
a BLAKE2 digest of ``(seed, split, index)``, and only ``Random.random()`` is used, the one method whose
sequence Python promises to keep across versions. Shapes are rasterised with plain IEEE arithmetic in
numpy (no drawing library whose algorithms may change between releases), so the same
``(seed, split, index)`` gives byte-identical images and identical text on any machine.

Splits: the abstract scene (grid, and every object's cell, colour and shape; not the jitter) is hashed
into one of ten buckets: 0-7 train, 8 val, 9 test. A split only ever contains scenes of its buckets, so
no val/test scene appears in training, even with a different jitter or question.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

__all__ = [
    "COLORS",
    "SHAPES",
    "QUESTION_TYPES",
    "SPLITS",
    "NUMBER_WORDS",
    "DIRECTIONS",
    "SHORT_ANSWER_INSTRUCTION",
    "BACKGROUND",
    "ShapeObject",
    "Scene",
    "Sample",
    "ShapesVQA",
    "make_sample",
    "random_scene",
    "render",
    "sample_seed",
    "scene_split",
    "position_phrase",
    "all_words",
    "normalize_answer",
    "exact_match",
]

#: Colour name -> RGB. Six hues chosen to stay distinct at a few pixels and against the background.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
    "purple": (160, 60, 210),
    "white": (240, 240, 240),
}
#: Shape name -> plural used in counting questions.
SHAPES: dict[str, str] = {
    "square": "squares",
    "circle": "circles",
    "triangle": "triangles",
    "cross": "crosses",
}
BACKGROUND: tuple[int, int, int] = (24, 24, 24)
QUESTION_TYPES: tuple[str, ...] = (
    "color_at",
    "shape_at",
    "count_color",
    "count_shape",
    "count_all",
    "relative",
    "exists",
)
SPLITS: tuple[str, ...] = ("train", "val", "test")
NUMBER_WORDS: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
)
DIRECTIONS: tuple[str, ...] = ("left", "right", "above", "below")
#: VisualRWKV's short-answer instruction (the same text as ``rwkv_vision.prompt.SHORT_ANSWER_INSTRUCTION``).
SHORT_ANSWER_INSTRUCTION = "Answer the question using a single word or phrase."

MIN_GRID, MAX_GRID = 2, 8
#: A cell must be at least this many pixels wide for its shape to be recognisable.
MIN_CELL_PIXELS = 8
MAX_OBJECTS = 10  # the largest count that has a number word
DEFAULT_MAX_OBJECTS = 5

# Jitter: a shape spans SCALE_RANGE of its cell and its centre moves by up to OFFSET_FRACTION of the
# room left in the cell, so a shape never crosses into a neighbour's cell.
SCALE_RANGE = (0.5, 0.8)
OFFSET_FRACTION = 0.9
# Anti-aliasing: coverage is sampled on SUPERSAMPLE x SUPERSAMPLE points per pixel; with 2 the coverage
# is a multiple of 1/4, exact in binary floating point, so blending stays bit-reproducible.
SUPERSAMPLE = 2

# Answer balance targets (probabilities of the drawn "plan" for a question).
P_COUNT_ZERO = 0.2  # count_color / count_shape about a colour or shape that is absent
P_RELATIVE_NOTHING = 0.3  # relative questions whose answer is "nothing"
P_EXISTS_YES = 0.5
P_EXISTS_HARD_NEGATIVE = 0.5  # a "no" that shares the colour or the shape of an object in the scene
MAX_ATTEMPTS = 10_000

_SPLIT_BUCKETS = {"train": range(0, 8), "val": range(8, 9), "test": range(9, 10)}


# ---- randomness -------------------------------------------------------------------------------------
# Only Random.random() is used: Python guarantees its sequence for a given int seed across versions,
# unlike randrange/choice/shuffle (whose algorithms have changed before) or numpy's Generator.


def _below(rng: random.Random, n: int) -> int:
    """An int in [0, n) (int(random() * n): a bias of at most n / 2**53, irrelevant here)."""
    return min(int(rng.random() * n), n - 1)


def _choice(rng: random.Random, items: Sequence[Any]) -> Any:
    return items[_below(rng, len(items))]


def _uniform(rng: random.Random, low: float, high: float) -> float:
    return low + (high - low) * rng.random()


def _sample(rng: random.Random, items: Sequence[Any], k: int) -> list[Any]:
    """k distinct items, in random order (partial Fisher-Yates)."""
    pool = list(items)
    for i in range(k):
        j = i + _below(rng, len(pool) - i)
        pool[i], pool[j] = pool[j], pool[i]
    return pool[:k]


def _stable_int(text: str) -> int:
    # Python's hash() is salted per process; BLAKE2 is the same everywhere.
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def sample_seed(*, seed: int, split: str, index: int) -> int:
    """The ``random.Random`` seed of sample ``index`` of ``split`` (a stable 64-bit hash)."""
    return _stable_int(f"ShapesVQA|{int(seed)}|{split}|{int(index)}")


# ---- scenes -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ShapeObject:
    """One shape in cell ``(row, col)`` (row 0 is the top, col 0 the left).

    ``scale`` is the shape's width as a fraction of the cell; ``dx``, ``dy`` move its centre, as a fraction
    of the cell, from the cell centre. They only affect rendering, never an answer.
    """

    color: str
    shape: str
    row: int
    col: int
    scale: float = 0.65
    dx: float = 0.0
    dy: float = 0.0

    @property
    def name(self) -> str:
        """``"red square"``: how answers and questions refer to it."""
        return f"{self.color} {self.shape}"


@dataclasses.dataclass(frozen=True)
class Scene:
    """Shapes on a ``grid x grid`` layout, at most one per cell."""

    grid: int
    objects: tuple[ShapeObject, ...]

    def __post_init__(self) -> None:
        cells = [(o.row, o.col) for o in self.objects]
        if len(set(cells)) != len(cells):
            raise ValueError(f"Scene: two objects share a cell: {sorted(cells)}")
        for o in self.objects:
            if not (0 <= o.row < self.grid and 0 <= o.col < self.grid):
                raise ValueError(f"Scene: object {o} is outside the {self.grid}x{self.grid} grid")
            if o.color not in COLORS or o.shape not in SHAPES:
                raise ValueError(f"Scene: unknown colour or shape in {o}")

    def at(self, row: int, col: int) -> ShapeObject | None:
        """The object in cell ``(row, col)``, or None."""
        for o in self.objects:
            if o.row == row and o.col == col:
                return o
        return None

    def count(self, *, color: str | None = None, shape: str | None = None) -> int:
        """How many objects have this colour and/or shape (None matches any)."""
        return sum(
            1 for o in self.objects if (color is None or o.color == color) and (shape is None or o.shape == shape)
        )

    def find(self, *, color: str, shape: str) -> list[ShapeObject]:
        """All objects of this colour and shape."""
        return [o for o in self.objects if o.color == color and o.shape == shape]

    def nearest(self, obj: ShapeObject, direction: str) -> ShapeObject | None:
        """The closest object to ``obj`` in ``direction`` along its own row (left/right) or column
        (above/below): what a ``relative`` question asks for."""
        step = {"left": (0, -1), "right": (0, 1), "above": (-1, 0), "below": (1, 0)}[direction]
        row, col = obj.row + step[0], obj.col + step[1]
        while 0 <= row < self.grid and 0 <= col < self.grid:
            found = self.at(row, col)
            if found is not None:
                return found
            row, col = row + step[0], col + step[1]
        return None

    def key(self) -> str:
        """The abstract scene (cells, colours, shapes; no jitter) as a canonical string."""
        parts = sorted(f"{o.row},{o.col},{o.color},{o.shape}" for o in self.objects)
        return f"{self.grid}|" + ";".join(parts)


def scene_split(scene: Scene) -> str:
    """The split (``"train"``, ``"val"`` or ``"test"``) that owns this abstract scene."""
    bucket = _stable_int(f"ShapesVQA-scene|{scene.key()}") % 10
    return next(name for name, buckets in _SPLIT_BUCKETS.items() if bucket in buckets)


def random_scene(
    rng: random.Random,
    *,
    grid: int = 3,
    min_objects: int = 1,
    max_objects: int | None = None,
    split: str | None = None,
) -> Scene:
    """A random scene: a uniform number of objects in [min_objects, max_objects] (None: ``min(5, grid**2)``),
    in distinct random cells,
    each with a uniform colour and shape and its own jitter. With ``split``, scenes of other splits are
    drawn again until one belongs to ``split``."""
    max_objects = _default_max_objects(grid, max_objects)
    _check_layout(grid=grid, min_objects=min_objects, max_objects=max_objects)
    if split is not None:
        _check_split(split)
    colors, shapes = list(COLORS), list(SHAPES)
    cells = [(r, c) for r in range(grid) for c in range(grid)]
    for _ in range(MAX_ATTEMPTS):
        n = min_objects + _below(rng, max_objects - min_objects + 1)
        objects = []
        for row, col in _sample(rng, cells, n):
            color, shape = _choice(rng, colors), _choice(rng, shapes)
            scale = _uniform(rng, *SCALE_RANGE)
            room = (1.0 - scale) / 2 * OFFSET_FRACTION
            dx, dy = _uniform(rng, -room, room), _uniform(rng, -room, room)
            objects.append(ShapeObject(color, shape, row, col, scale, dx, dy))
        scene = Scene(grid, tuple(sorted(objects, key=lambda o: (o.row, o.col))))
        if split is None or scene_split(scene) == split:
            return scene
    raise RuntimeError(f"random_scene: no {split} scene found in {MAX_ATTEMPTS} draws")


# ---- rendering ----------------------------------------------------------------------------------------


def _coverage(shape: str, x: np.ndarray, y: np.ndarray, half: float) -> np.ndarray:
    """Inside-test for a shape centred at 0 with half-width ``half``; ``x``, ``y`` broadcast."""
    ax, ay = np.abs(x), np.abs(y)
    if shape == "square":
        return (ax <= half) & (ay <= half)
    if shape == "circle":
        return x * x + y * y <= half * half
    if shape == "triangle":
        # Apex at the top (y = -half), base at y = +half; half-width grows linearly from 0 to half.
        return (y <= half) & (2.0 * ax <= y + half)
    if shape == "cross":
        arm = half / 3.0
        return ((ax <= half) & (ay <= arm)) | ((ay <= half) & (ax <= arm))
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, image_size: int = 64) -> Image.Image:
    """Draw ``scene`` as an ``image_size x image_size`` RGB image (anti-aliased, bit-reproducible)."""
    _check_image_size(image_size=image_size, grid=scene.grid)
    image = np.empty((image_size, image_size, 3), dtype=np.float64)
    image[...] = BACKGROUND
    cell = image_size / scene.grid
    ss = SUPERSAMPLE
    for o in scene.objects:
        cx, cy = (o.col + 0.5 + o.dx) * cell, (o.row + 0.5 + o.dy) * cell
        half = o.scale * cell / 2
        x0, x1 = max(int(np.floor(cx - half)), 0), min(int(np.ceil(cx + half)), image_size)
        y0, y1 = max(int(np.floor(cy - half)), 0), min(int(np.ceil(cy + half)), image_size)
        # Sub-pixel sample points, relative to the shape centre.
        xs = (np.arange(x0 * ss, x1 * ss) + 0.5) / ss - cx
        ys = (np.arange(y0 * ss, y1 * ss) + 0.5) / ss - cy
        inside = _coverage(o.shape, xs[None, :], ys[:, None], half)
        cover = inside.reshape(y1 - y0, ss, x1 - x0, ss).sum(axis=(1, 3)) / (ss * ss)
        region = image[y0:y1, x0:x1]
        region += cover[..., None] * (np.asarray(COLORS[o.color], dtype=np.float64) - region)
    return Image.fromarray(np.rint(image).astype(np.uint8), mode="RGB")


# ---- questions ----------------------------------------------------------------------------------------

_ROW_NAMES = {2: ("top", "bottom"), 3: ("top", "middle", "bottom")}
_COL_NAMES = {2: ("left", "right"), 3: ("left", "middle", "right")}


def position_phrase(row: int, col: int, grid: int) -> str:
    """How questions name a cell: ``"in the top left"``, ``"in the center"`` (grids 2 and 3), or
    ``"in row two, column three"`` (rows and columns counted from one, for larger grids)."""
    if grid in _ROW_NAMES:
        r, c = _ROW_NAMES[grid][row], _COL_NAMES[grid][col]
        return "in the center" if (r, c) == ("middle", "middle") else f"in the {r} {c}"
    return f"in row {NUMBER_WORDS[row + 1]}, column {NUMBER_WORDS[col + 1]}"


@dataclasses.dataclass(frozen=True)
class Sample:
    """One dataset item. ``answer`` is lower case, one or two words, without punctuation."""

    image: Image.Image
    question: str
    answer: str
    scene: Scene
    question_type: str

    def messages(self, *, instruction: bool = True) -> list[tuple[str, str]]:
        """The conversation as ``[("user", question), ("assistant", answer)]``, without ``<image>``
        (a :class:`rwkv_vision.prompt.PromptLayout` places it). ``instruction`` appends VisualRWKV's
        short-answer instruction on its own line, as in its VQA training data."""
        question = self.question + ("\n" + SHORT_ANSWER_INSTRUCTION if instruction else "")
        return [("user", question), ("assistant", self.answer)]


def _unique_objects(scene: Scene) -> list[ShapeObject]:
    # "the red square" only names one object if exactly one red square exists.
    return [o for o in scene.objects if scene.count(color=o.color, shape=o.shape) == 1]


def _ask(qtype: str, scene: Scene, rng: random.Random, plan: float) -> tuple[str, str] | None:
    """(question, answer) of type ``qtype`` about ``scene``, or None when this scene cannot give the
    answer kind that ``plan`` (a uniform draw made before the scene) asks for."""
    if qtype == "color_at":
        o = _choice(rng, scene.objects)
        return f"What color is the shape {position_phrase(o.row, o.col, scene.grid)}?", o.color
    if qtype == "shape_at":
        o = _choice(rng, scene.objects)
        return f"What shape is {position_phrase(o.row, o.col, scene.grid)}?", o.shape
    if qtype == "count_all":
        return "How many shapes are there?", NUMBER_WORDS[len(scene.objects)]
    if qtype in ("count_color", "count_shape"):
        attr = "color" if qtype == "count_color" else "shape"
        names = list(COLORS) if attr == "color" else list(SHAPES)
        if plan < P_COUNT_ZERO:
            absent = [v for v in names if scene.count(**{attr: v}) == 0]
            if not absent:
                return None
            value = _choice(rng, absent)
        else:
            # A present value, weighted by how often it occurs: answers spread over one..many.
            value = getattr(_choice(rng, scene.objects), attr)
        question = f"How many {value} shapes are there?" if attr == "color" else f"How many {SHAPES[value]} are there?"
        return question, NUMBER_WORDS[scene.count(**{attr: value})]
    if qtype == "relative":
        want_nothing = plan < P_RELATIVE_NOTHING
        pairs = [
            (o, d) for o in _unique_objects(scene) for d in DIRECTIONS if (scene.nearest(o, d) is None) == want_nothing
        ]
        if not pairs:
            return None
        o, d = _choice(rng, pairs)
        target = scene.nearest(o, d)
        relation = f"{d} of" if d in ("left", "right") else d
        return f"What is {relation} the {o.name}?", "nothing" if target is None else target.name
    if qtype == "exists":
        present = sorted({(o.color, o.shape) for o in scene.objects})
        if plan < P_EXISTS_YES:
            color, shape = _choice(rng, present)
            return f"Is there a {color} {shape}?", "yes"
        absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
        # Hard negatives share a colour or a shape with something in the scene, so "no" needs binding
        # colour to shape rather than spotting a colour or a shape alone.
        hard = [(c, s) for c, s in absent if any(c == pc or s == ps for pc, ps in present)]
        pool = hard if hard and rng.random() < P_EXISTS_HARD_NEGATIVE else absent
        if not pool:
            return None
        color, shape = _choice(rng, pool)
        return f"Is there a {color} {shape}?", "no"
    raise ValueError(f"unknown question type {qtype!r}; choose from {QUESTION_TYPES}")


def make_sample(
    rng: random.Random,
    *,
    split: str | None = None,
    image_size: int = 64,
    grid: int = 3,
    min_objects: int = 1,
    max_objects: int | None = None,
    question_types: Iterable[str] | None = None,
) -> Sample:
    """Draw one sample from ``rng`` (only ``rng.random()`` is called).

    The question type is uniform over ``question_types`` (default all of :data:`QUESTION_TYPES`); its
    answer kind (e.g. yes or no) is drawn next, and scenes are drawn until one can give it, so answer
    balance does not depend on how often scenes allow each kind. ``split`` restricts scenes to that
    split's part of scene space (None: any scene).
    """
    types = _check_question_types(question_types)
    max_objects = _default_max_objects(grid, max_objects)
    _check_layout(grid=grid, min_objects=min_objects, max_objects=max_objects)
    _check_image_size(image_size=image_size, grid=grid)
    if split is not None:
        _check_split(split)
    qtype = _choice(rng, types)
    plan = rng.random()
    if qtype == "relative" and max_objects == 1:
        plan = 0.0  # a lone shape has no neighbour: "nothing" is the only answer such scenes can give
    for _ in range(MAX_ATTEMPTS):
        scene = random_scene(rng, grid=grid, min_objects=min_objects, max_objects=max_objects, split=split)
        qa = _ask(qtype, scene, rng, plan)
        if qa is not None:
            question, answer = qa
            return Sample(render(scene, image_size), question, answer, scene, qtype)
    raise RuntimeError(
        f"make_sample: no scene with {min_objects}-{max_objects} objects on a {grid}x{grid} grid can ask a "
        f"{qtype!r} question of the drawn kind (tried {MAX_ATTEMPTS} scenes)"
    )


# ---- dataset ------------------------------------------------------------------------------------------


class ShapesVQA(Dataset):
    """A deterministic, generated-on-access VQA dataset: item ``i`` is ``make_sample`` with a
    ``random.Random(sample_seed(seed=seed, split=split, index=i))``.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``; the splits own disjoint sets of abstract scenes.
        size: number of samples.
        seed: dataset seed; another seed gives another sample stream over the same split of scenes.
        image_size: image width = height in pixels (at least 8 per grid cell).
        grid: cells per side, 2 to 8.
        min_objects, max_objects: objects per scene, drawn uniformly (1 <= min <= max <= min(grid**2, 10));
            ``max_objects=None`` means ``min(5, grid**2)``.
        question_types: a subset of :data:`QUESTION_TYPES` (default all), drawn uniformly.
        transform: if given, ``dataset[i]`` returns ``transform(sample)`` (e.g. to tensors for a DataLoader).

    Example::

        >>> ds = ShapesVQA(split="val", size=100, seed=0)
        >>> s = ds[0]
        >>> s.image.size, s.question, s.answer  # doctest: +SKIP
        ((64, 64), 'How many circles are there?', 'one')
    """

    def __init__(
        self,
        split: str = "train",
        *,
        size: int = 10_000,
        seed: int = 0,
        image_size: int = 64,
        grid: int = 3,
        min_objects: int = 1,
        max_objects: int | None = None,
        question_types: Iterable[str] | None = None,
        transform: Callable[[Sample], Any] | None = None,
    ):
        _check_split(split)
        if not _is_int(size) or size < 0:
            raise ValueError(f"ShapesVQA: size must be a non-negative int, got {size!r}")
        if not _is_int(seed):
            raise TypeError(f"ShapesVQA: seed must be an int, got {seed!r}")
        max_objects = _default_max_objects(grid, max_objects)
        _check_layout(grid=grid, min_objects=min_objects, max_objects=max_objects)
        _check_image_size(image_size=image_size, grid=grid)
        if transform is not None and not callable(transform):
            raise TypeError(f"ShapesVQA: transform must be callable or None, got {type(transform).__name__}")
        self.split, self.size, self.seed = split, size, seed
        self.image_size, self.grid = image_size, grid
        self.min_objects, self.max_objects = min_objects, max_objects
        self.question_types = _check_question_types(question_types)
        self.transform = transform

    def __len__(self) -> int:
        return self.size

    def sample(self, index: int) -> Sample:
        """Sample ``index`` (negative counts from the end), ignoring ``transform``."""
        if not _is_int(index):
            raise TypeError(f"ShapesVQA indices must be ints, got {type(index).__name__}")
        if not -self.size <= index < self.size:
            raise IndexError(f"ShapesVQA index {index} out of range for size {self.size}")
        index %= self.size
        rng = random.Random(sample_seed(seed=self.seed, split=self.split, index=index))
        return make_sample(
            rng,
            split=self.split,
            image_size=self.image_size,
            grid=self.grid,
            min_objects=self.min_objects,
            max_objects=self.max_objects,
            question_types=self.question_types,
        )

    def __getitem__(self, index: int) -> Any:
        s = self.sample(index)
        return self.transform(s) if self.transform is not None else s

    def __repr__(self) -> str:
        return (
            f"ShapesVQA(split={self.split!r}, size={self.size}, seed={self.seed}, image_size={self.image_size}, "
            f"grid={self.grid}, min_objects={self.min_objects}, max_objects={self.max_objects}, "
            f"question_types={self.question_types})"
        )


# ---- vocabulary and evaluation ------------------------------------------------------------------------

_WORD = re.compile(r"[^\W_]+")


def all_words() -> tuple[str, ...]:
    """Every word (case kept, punctuation excluded) of every question and answer, for any grid and object
    count this module allows, plus the short-answer instruction. Sorted."""
    texts = [
        "What color is the shape in the center?",
        "What shape is",
        "How many shapes are there?",
        "What is left of right of above below the?",
        "Is there a?",
        "nothing yes no",
        SHORT_ANSWER_INSTRUCTION,
        " ".join(COLORS),
        " ".join(SHAPES),
        " ".join(SHAPES.values()),
        " ".join(NUMBER_WORDS),
    ]
    for grid in range(MIN_GRID, MAX_GRID + 1):
        texts += [position_phrase(r, c, grid) for r in range(grid) for c in range(grid)]
    return tuple(sorted({w for t in texts for w in _WORD.findall(t)}))


_DIGITS = {str(i): w for i, w in enumerate(NUMBER_WORDS)}


def normalize_answer(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed, digits 0-10 spelled out ("2" -> "two")."""
    if not isinstance(text, str):
        raise TypeError(f"normalize_answer: expected a str, got {type(text).__name__}")
    words = _WORD.findall(text.lower())
    return " ".join(_DIGITS.get(w, w) for w in words)


def exact_match(prediction: str, answer: str) -> bool:
    """Whether ``prediction`` equals ``answer`` after :func:`normalize_answer` (so ``" Red.\\n\\n"``
    matches ``"red"``)."""
    return normalize_answer(prediction) == normalize_answer(answer)


# ---- argument checks ----------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_split(split: Any) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")


def _default_max_objects(grid: Any, max_objects: Any) -> Any:
    # None: five objects, or every cell of a smaller grid.
    if max_objects is None and _is_int(grid):
        return min(DEFAULT_MAX_OBJECTS, grid * grid)
    return max_objects


def _check_layout(*, grid: Any, min_objects: Any, max_objects: Any) -> None:
    if not _is_int(grid) or not MIN_GRID <= grid <= MAX_GRID:
        raise ValueError(f"grid must be an int in [{MIN_GRID}, {MAX_GRID}], got {grid!r}")
    most = min(grid * grid, MAX_OBJECTS)
    if not _is_int(min_objects) or not _is_int(max_objects) or not 1 <= min_objects <= max_objects <= most:
        raise ValueError(
            f"need ints 1 <= min_objects <= max_objects <= {most} (cells of a {grid}x{grid} grid, at most "
            f"{MAX_OBJECTS}), got min_objects={min_objects!r}, max_objects={max_objects!r}"
        )


def _check_image_size(*, image_size: Any, grid: int) -> None:
    if not _is_int(image_size) or image_size < MIN_CELL_PIXELS * grid:
        raise ValueError(
            f"image_size must be an int >= {MIN_CELL_PIXELS * grid} ({MIN_CELL_PIXELS} pixels per cell of a "
            f"{grid}x{grid} grid), got {image_size!r}"
        )


def _check_question_types(question_types: Iterable[str] | None) -> tuple[str, ...]:
    if question_types is None:
        return QUESTION_TYPES
    if isinstance(question_types, str):
        question_types = (question_types,)
    types = tuple(question_types)
    if not types:
        raise ValueError(f"question_types must not be empty; choose from {QUESTION_TYPES}")
    unknown = [t for t in types if t not in QUESTION_TYPES]
    if unknown:
        raise ValueError(f"unknown question type(s) {unknown}; choose from {QUESTION_TYPES}")
    # Keep the canonical order and drop repeats, so the draw does not depend on how the caller listed them.
    return tuple(t for t in QUESTION_TYPES if t in types)
