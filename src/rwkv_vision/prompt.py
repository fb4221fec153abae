"""Prompt layouts: where the image goes in a conversation, and where its tokens land in the sequence.

VisualRWKV's prompt (reference section "Prompt"): roles ``User`` / ``Assistant``, each turn
``"{Role}: {text}\\n\\n"``, the generation stub ``"Assistant:"``; message text is stripped and runs of
blank lines collapse to one ``"\\n"``. A layout places the ``<image>`` placeholder in the user's message:

* :class:`ImageFirst` — ``"<image>\\n{question}"``
* :class:`ImageLast` — ``"{question}\\n<image>"``
* :class:`Sandwich` — ``"{question'}\\n<image>\\n{question}"``, where ``question'`` is the question
  without ``<image>`` and without "Answer the question using a single word or phrase." (released weights).
* :class:`ImageFirstRun` — VisualRWKV v7.00: ``"<image>\\n{question}"`` like :class:`ImageFirst`, but each
  image is written as a *run* of ``image_tokens`` ids :data:`V7_IMAGE_TOKEN_ID` (65535, a vocabulary id) whose
  embeddings are overwritten in order (:func:`fill_image_runs`).

Each turn is tokenised separately, the image turn split at ``<image>``; every placeholder becomes one
:data:`~rwkv_vision.image_tokens.IMAGE_TOKEN_INDEX` id, which :func:`expand_image_embeddings` replaces by the
image's embeddings (``layout.image_tokens`` of them, 577 for CLIP ViT-L/14-336 with CLS last). The layout also
reports the :class:`~rwkv_vision.image_tokens.ImageSpan` of every image in the *expanded* sequence; scan
policies consume those spans, and nothing else recomputes where images are. (``IMAGE_TOKEN_INDEX`` and
``ImageSpan`` are defined in :mod:`rwkv_vision.image_tokens` and re-exported here.)

Layouts are registered by name in :data:`LAYOUTS` (``"image_first"``/``"first"``, ``"image_last"``/``"last"``,
``"sandwich"``/``"middle"``, ``"image_first_run"``/``"visualrwkv7"``), which :func:`get_layout`, ``config.json`` and the ``rwkv-vision`` command read.
Any tokenizer with ``encode``/``decode`` works (see :class:`rwkv_vision.tokenizers.Tokenizer`).

Shape legend: b batch, t time (positions; ``t`` before expansion, ``T`` after), c channels.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .image_tokens import IMAGE_TOKEN_INDEX, ClsPosition, ImageSpan
from .registry import Registry
from .tokenizers.base import Tokenizer

__all__ = [
    "IMAGE_TOKEN_INDEX",
    "IMAGE_PLACEHOLDER",
    "SHORT_ANSWER_INSTRUCTION",
    "Message",
    "PromptIds",
    "PromptLayout",
    "ImageFirst",
    "ImageLast",
    "Sandwich",
    "ImageFirstRun",
    "V7_IMAGE_TOKEN_ID",
    "fill_image_runs",
    "LAYOUTS",
    "get_layout",
    "clean_text",
    "normalize_conversation",
    "expand_image_embeddings",
]

IMAGE_PLACEHOLDER: str = "<image>"
#: VisualRWKV v7.00's image placeholder id (``IMAGE_TOKEN_INDEX = 65535`` in its dataset.py), repeated once
#: per image token; it is the World vocabulary's last id, so it is embedded like text before being replaced.
V7_IMAGE_TOKEN_ID: int = 65535
SHORT_ANSWER_INSTRUCTION: str = "Answer the question using a single word or phrase."

_ROLE_ALIASES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "bot": "assistant",
}
_BLANK_RUNS = re.compile(r"\n(\s*\n)+")


def __getattr__(name: str) -> Any:
    # TextTokenizer was merged into the one tokenizer protocol (kept importable for one release).
    if name == "TextTokenizer":
        warnings.warn(
            "rwkv_vision.prompt.TextTokenizer is deprecated; use rwkv_vision.tokenizers.Tokenizer",
            DeprecationWarning,
            stacklevel=2,
        )
        return Tokenizer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def clean_text(text: str) -> str:
    """Strip, and collapse every run of blank lines (newlines with only whitespace between) to one ``\\n``."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return _BLANK_RUNS.sub("\n", text.strip())


@dataclasses.dataclass(frozen=True)
class Message:
    """One turn: ``role`` is ``"user"`` or ``"assistant"``; ``text`` may contain ``<image>``."""

    role: str
    text: str


def normalize_conversation(conversation: Any) -> list[Message]:
    """Accepts a question string, or a list of turns given as ``Message``, ``(role, text)`` pairs,
    ``{"role", "content"}`` dicts (OpenAI style) or ``{"from", "value"}`` dicts (LLaVA data style).
    Roles ``user``/``human`` and ``assistant``/``gpt`` (any case)."""
    if isinstance(conversation, str):
        return [Message("user", conversation)]
    if not isinstance(conversation, Sequence) or not conversation:
        raise TypeError(
            "conversation must be a question string or a non-empty list of turns, got "
            f"{type(conversation).__name__ if not isinstance(conversation, Sequence) else 'an empty list'}"
        )
    out = []
    for j, turn in enumerate(conversation):
        if isinstance(turn, Message):
            role, text = turn.role, turn.text
        elif isinstance(turn, Mapping):
            role = turn.get("role", turn.get("from"))
            text = turn.get("content", turn.get("value"))
        elif isinstance(turn, (tuple, list)) and len(turn) == 2:
            role, text = turn
        else:
            raise TypeError(f"conversation[{j}] must be a Message, (role, text) or a dict, got {turn!r}")
        if not isinstance(role, str) or role.lower() not in _ROLE_ALIASES:
            raise ValueError(f"conversation[{j}] role must be one of {sorted(_ROLE_ALIASES)}, got {role!r}")
        if not isinstance(text, str):
            raise TypeError(f"conversation[{j}] text must be a str, got {type(text).__name__}")
        role = _ROLE_ALIASES[role.lower()]
        if role == "assistant" and IMAGE_PLACEHOLDER in text:
            raise ValueError(f"conversation[{j}]: an assistant turn cannot contain {IMAGE_PLACEHOLDER}")
        out.append(Message(role, text))
    return out


@dataclasses.dataclass
class PromptIds:
    """A tokenised prompt.

    Attributes:
        input_ids: token ids with one :data:`IMAGE_TOKEN_INDEX` per image (length t), or, when ``expanded``,
            a run of ``num_tokens`` placeholder ids per image (length T).
        spans: one :class:`ImageSpan` per image, in positions of the *expanded* sequence (length T).
        text: the rendered prompt with ``<image>`` placeholders.
        turns: the rendered turn strings, each tokenised on its own.
        expanded: whether ``input_ids`` already hold one id per image token (:class:`ImageFirstRun`).
    """

    input_ids: list[int]
    spans: list[ImageSpan]
    text: str
    turns: list[str]
    expanded: bool = False

    @property
    def num_images(self) -> int:
        return len(self.spans)

    @property
    def expanded_length(self) -> int:
        """T: the length of the sequence once every placeholder is replaced by its image tokens."""
        if self.expanded:
            return len(self.input_ids)
        return len(self.input_ids) + sum(s.num_tokens - 1 for s in self.spans)

    def to_tensor(self, *, device=None) -> torch.Tensor:
        """``input_ids`` as a LongTensor ``[1, t]``."""
        return torch.tensor([self.input_ids], dtype=torch.long, device=device)


@dataclasses.dataclass(frozen=True)
class PromptLayout:
    """Base layout. Subclasses define :meth:`place_image`.

    Args:
        image_grid: ``(rows, cols)`` patch grid of the encoder (24 x 24 for CLIP ViT-L/14 at 336 px).
        cls: where the encoder's CLS token is in its output (``"last"`` for v6.0, ``"first"``, ``None``).
        user_role, assistant_role: role names written in the prompt.
    """

    image_grid: tuple[int, int] = (24, 24)
    cls: ClsPosition = "last"
    user_role: str = "User"
    assistant_role: str = "Assistant"

    def __post_init__(self) -> None:
        g = self.image_grid
        if (
            not isinstance(g, (tuple, list))
            or len(g) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in g)
        ):
            raise ValueError(f"image_grid must be (rows, cols) of positive ints, got {g!r}")
        object.__setattr__(self, "image_grid", tuple(g))
        if self.cls not in ("first", "last", None):
            raise ValueError(f"cls must be 'first', 'last' or None, got {self.cls!r}")

    # ---- geometry -------------------------------------------------------------------------------
    @property
    def image_tokens(self) -> int:
        """How many embeddings each ``<image>`` placeholder expands to (577 for 24 x 24 + CLS)."""
        return self.image_grid[0] * self.image_grid[1] + (self.cls is not None)

    def with_grid(self, rows: int, cols: int, *, cls: ClsPosition | str = "keep") -> PromptLayout:
        """The same layout for another encoder geometry."""
        return dataclasses.replace(self, image_grid=(rows, cols), cls=self.cls if cls == "keep" else cls)

    # ---- text -------------------------------------------------------------------------------------
    def place_image(self, text: str, num_images: int = 1) -> str:
        """The user message with ``num_images`` placeholders at this layout's position (any
        ``<image>`` already in ``text`` is removed first)."""
        raise NotImplementedError

    def _question(self, text: str) -> str:
        return text.replace(IMAGE_PLACEHOLDER, "").strip()

    def format_message(self, text: str, *, num_images: int = 0) -> str:
        """The cleaned message text, with images placed if ``num_images > 0``."""
        if num_images:
            text = self.place_image(text, num_images)
        return clean_text(text)

    def format_turn(self, role: str, text: str) -> str:
        """``"{Role}: {text}\\n\\n"``; ``text`` is used as given (already formatted)."""
        name = self.user_role if _ROLE_ALIASES.get(role.lower(), role) == "user" else self.assistant_role
        return f"{name}: {text}\n\n"

    @property
    def generation_prompt(self) -> str:
        """The stub the model continues: ``"Assistant:"`` (no trailing space)."""
        return f"{self.assistant_role}:"

    def render_turns(
        self, conversation: Any, *, num_images: int | None = None, add_generation_prompt: bool = True
    ) -> list[str]:
        """The turn strings of a conversation (each to be tokenised on its own).

        Images: every user message containing ``<image>`` gets as many images as it has placeholders,
        placed by this layout. If no message has one and ``num_images`` is given, the first user message
        gets them. ``num_images`` that disagrees with the placeholders is an error.
        """
        messages = normalize_conversation(conversation)
        counts = [m.text.count(IMAGE_PLACEHOLDER) for m in messages]
        total = sum(counts)
        if num_images is not None:
            if not isinstance(num_images, int) or num_images < 0:
                raise ValueError(f"num_images must be a non-negative int, got {num_images!r}")
            if total == 0 and num_images > 0:
                first_user = next((j for j, m in enumerate(messages) if m.role == "user"), None)
                if first_user is None:
                    raise ValueError("num_images > 0 but the conversation has no user turn to hold the images")
                counts[first_user] = num_images
            elif total != num_images:
                raise ValueError(
                    f"num_images={num_images} but the conversation has {total} {IMAGE_PLACEHOLDER} placeholders"
                )
        turns = [self.format_turn(m.role, self.format_message(m.text, num_images=n)) for m, n in zip(messages, counts)]
        if add_generation_prompt:
            turns.append(self.generation_prompt)
        return turns

    def render(self, conversation: Any, *, num_images: int | None = None, add_generation_prompt: bool = True) -> str:
        """The whole prompt as one string (placeholders kept as ``<image>``)."""
        return "".join(
            self.render_turns(conversation, num_images=num_images, add_generation_prompt=add_generation_prompt)
        )

    # ---- ids --------------------------------------------------------------------------------------
    def tokenize(
        self,
        conversation: Any,
        tokenizer: Tokenizer,
        *,
        num_images: int | None = None,
        add_generation_prompt: bool = True,
    ) -> PromptIds:
        """Tokenise turn by turn, the image turn split at ``<image>``; each placeholder becomes one
        :data:`IMAGE_TOKEN_INDEX`. Returns ids plus the image spans in the expanded sequence."""
        if not callable(getattr(tokenizer, "encode", None)):
            raise TypeError(f"tokenizer must have an encode(str) -> list[int] method, got {type(tokenizer).__name__}")
        turns = self.render_turns(conversation, num_images=num_images, add_generation_prompt=add_generation_prompt)
        ids: list[int] = []
        spans: list[ImageSpan] = []
        expanded = 0
        rows, cols = self.image_grid
        for turn in turns:
            pieces = turn.split(IMAGE_PLACEHOLDER)
            for j, piece in enumerate(pieces):
                if j > 0:
                    spans.append(ImageSpan(expanded, rows, cols, self.cls))
                    ids.extend(self._placeholder_ids())
                    expanded += self.image_tokens
                if piece:
                    piece_ids = [int(i) for i in tokenizer.encode(piece)]
                    if any(i < 0 for i in piece_ids):
                        raise ValueError(f"tokenizer returned a negative id for {piece!r}")
                    ids.extend(piece_ids)
                    expanded += len(piece_ids)
        return PromptIds(
            input_ids=ids, spans=spans, text="".join(turns), turns=turns, expanded=len(self._placeholder_ids()) > 1
        )

    def _placeholder_ids(self) -> list[int]:
        """The ids one ``<image>`` becomes in ``input_ids``."""
        return [IMAGE_TOKEN_INDEX]

    def expand(
        self,
        input_ids: torch.Tensor,
        image_embeds: torch.Tensor | Sequence[torch.Tensor],
        embed_fn: Callable[[torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, list[list[ImageSpan]]]:
        """:func:`expand_image_embeddings` with this layout's grid and CLS position."""
        return expand_image_embeddings(input_ids, image_embeds, embed_fn, grids=self.image_grid, cls=self.cls)


#: Prompt layouts by name (``@LAYOUTS.register("name")`` next to each class); names are case-insensitive.
LAYOUTS: Registry[type[PromptLayout]] = Registry("prompt layout")


@LAYOUTS.register("image_first", aliases=("first",))
@dataclasses.dataclass(frozen=True)
class ImageFirst(PromptLayout):
    """``"<image>\\n{question}"``."""

    def place_image(self, text: str, num_images: int = 1) -> str:
        return "\n".join([IMAGE_PLACEHOLDER] * num_images + [q for q in [self._question(text)] if q])


@LAYOUTS.register("image_last", aliases=("last",))
@dataclasses.dataclass(frozen=True)
class ImageLast(PromptLayout):
    """``"{question}\\n<image>"``."""

    def place_image(self, text: str, num_images: int = 1) -> str:
        return "\n".join([q for q in [self._question(text)] if q] + [IMAGE_PLACEHOLDER] * num_images)


@LAYOUTS.register("sandwich", aliases=("middle",))
@dataclasses.dataclass(frozen=True)
class Sandwich(PromptLayout):
    """``"{question'}\\n<image>\\n{question}"`` — the layout of the released v6.0 weights.

    ``question'`` is the question without ``<image>`` and without
    ``"Answer the question using a single word or phrase."``; empty parts are left out (no stray newline).
    """

    instruction: str = SHORT_ANSWER_INSTRUCTION

    def place_image(self, text: str, num_images: int = 1) -> str:
        question = self._question(text)
        head = question.replace(self.instruction, "").strip() if self.instruction else question
        parts = [p for p in [head] if p] + [IMAGE_PLACEHOLDER] * num_images + [p for p in [question] if p]
        return "\n".join(parts)


@LAYOUTS.register("image_first_run", aliases=("visualrwkv7",))
@dataclasses.dataclass(frozen=True)
class ImageFirstRun(ImageFirst):
    """VisualRWKV v7.00's prompt: ``"User: <image>\\n{question}\\n\\nAssistant:"``, each image a run of
    ``image_tokens`` ids ``image_token_id``.

    As the official ``preprocess`` does: each turn is tokenised on its own and the user turn is split at
    every ``<image>``, so ``"User: "`` is tokenised alone (its trailing space is the lone id 33 before the
    run) and the text after the image starts with ``"\\n"``; several images are ``"<image>\\n<image>\\n..."``.
    The stop string is ``"\\n\\n"`` (id 261). ``input_ids`` come out expanded (``PromptIds.expanded``).

    Args (besides :class:`PromptLayout`'s): ``image_grid`` defaults to (32, 32) (1024 tokens, no pooling),
    ``cls`` to None; ``image_token_id`` is the placeholder id (65535).
    """

    image_grid: tuple[int, int] = (32, 32)
    cls: ClsPosition = None
    image_token_id: int = V7_IMAGE_TOKEN_ID

    def __post_init__(self) -> None:
        super().__post_init__()
        tid = self.image_token_id
        if not isinstance(tid, int) or isinstance(tid, bool) or tid < 0:
            raise ValueError(f"image_token_id must be a non-negative int (a vocabulary id), got {tid!r}")

    def _placeholder_ids(self) -> list[int]:
        return [self.image_token_id] * self.image_tokens

    def format_turn(self, role: str, text: str) -> str:
        """``"{Role}: {text}\\n\\n"``; an empty turn is the bare ``"{Role}:"``, as the official code writes
        its generation turn (``("gpt", "")`` -> ``"Assistant:"``)."""
        if not text:
            name = self.user_role if _ROLE_ALIASES.get(role.lower(), role) == "user" else self.assistant_role
            return f"{name}:"
        return super().format_turn(role, text)

    def render_turns(
        self, conversation: Any, *, num_images: int | None = None, add_generation_prompt: bool = True
    ) -> list[str]:
        """As :meth:`PromptLayout.render_turns`; a conversation that already ends with an empty assistant turn
        (the official evaluate.py form) gets no second ``"Assistant:"``."""
        messages = normalize_conversation(conversation)
        open_end = messages[-1].role == "assistant" and not clean_text(messages[-1].text)
        return super().render_turns(
            messages, num_images=num_images, add_generation_prompt=add_generation_prompt and not open_end
        )

    def expand(
        self,
        input_ids: torch.Tensor,
        image_embeds: torch.Tensor | Sequence[torch.Tensor],
        embed_fn: Callable[[torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, list[list[ImageSpan]]]:
        """:func:`fill_image_runs` with this layout's placeholder id, grid and CLS position."""
        return fill_image_runs(
            input_ids, image_embeds, embed_fn, image_token_id=self.image_token_id, grid=self.image_grid, cls=self.cls
        )


def fill_image_runs(
    input_ids: torch.Tensor | Sequence[Sequence[int]],
    image_embeds: torch.Tensor | Sequence[torch.Tensor],
    embed_fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    image_token_id: int = V7_IMAGE_TOKEN_ID,
    grid: tuple[int, int] = (32, 32),
    cls: ClsPosition = None,
) -> tuple[torch.Tensor, list[list[ImageSpan]]]:
    """VisualRWKV v7.00's image insertion: embed every id (the placeholders too), then overwrite the
    placeholder positions, in order (row 0 first), with the images' embeddings.

    Args:
        input_ids: ``[b, t]`` ids holding one run of ``k = rows*cols (+1 with cls)`` ``image_token_id`` per image.
        image_embeds: ``[n, k, c]`` or a list of ``n`` tensors ``[k, c]``, already projected to the LM width.
        embed_fn: ids ``[b, t]`` -> ``[b, t, c]`` (e.g. ``model.emb``); ``image_token_id`` must be a valid id.
        grid, cls: each image's token grid and CLS position (for the spans).
    Returns:
        ``(embeds [b, t, c], spans)``: the length does not change; ``spans[r]`` lists the images of row ``r``.

    The official code truncates (with a warning) when the counts disagree; here that is an error, as is a run
    that is not ``k`` consecutive positions of one row.
    """
    if not isinstance(input_ids, torch.Tensor):
        input_ids = torch.as_tensor(input_ids, dtype=torch.long)
    if input_ids.dim() != 2 or input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must be an integer tensor [b, t], got {input_ids.dtype} {tuple(input_ids.shape)}")
    rows, cols = grid
    k = rows * cols + (cls is not None)
    if isinstance(image_embeds, torch.Tensor):
        if image_embeds.dim() != 3:
            raise ValueError(f"image_embeds must be [n, k, c] or a list of [k, c], got {tuple(image_embeds.shape)}")
        images = image_embeds
    else:
        images = list(image_embeds)
        for j, im in enumerate(images):
            if not isinstance(im, torch.Tensor) or im.dim() != 2:
                raise ValueError(f"image_embeds[{j}] must be a [k, c] tensor, got {getattr(im, 'shape', im)!r}")
        images = torch.stack(images) if images else None
    n = 0 if images is None else images.shape[0]
    if images is not None and images.shape[1] != k:
        raise ValueError(f"image_embeds have {images.shape[1]} tokens per image; a {rows}x{cols} grid needs {k}")
    is_image = input_ids == image_token_id
    found = int(is_image.sum())
    if found != n * k:
        raise ValueError(
            f"input_ids hold {found} image placeholder ids ({image_token_id}) but {n} image(s) of {k} tokens "
            f"need {n * k}"
        )
    spans: list[list[ImageSpan]] = [[] for _ in range(input_ids.shape[0])]
    positions = is_image.nonzero().tolist()  # row-major, as the official flattened view
    for j in range(n):
        run = positions[j * k : (j + 1) * k]
        r, start = run[0]
        if any(p != [r, start + i] for i, p in enumerate(run)):
            raise ValueError(f"image {j}: its {k} placeholder ids are not one run of consecutive positions in one row")
        spans[r].append(ImageSpan(start, rows, cols, cls))
    text = embed_fn(input_ids)
    if text.dim() != 3 or text.shape[:2] != input_ids.shape:
        raise ValueError(f"embed_fn must map [b, t] ids to [b, t, c], got {tuple(text.shape)}")
    if n == 0:
        return text, spans
    if images.shape[-1] != text.shape[-1]:
        raise ValueError(f"image_embeds have width {images.shape[-1]}, text embeddings have {text.shape[-1]}")
    flat = images.reshape(n * k, -1).to(device=text.device, dtype=text.dtype)
    return text.masked_scatter(is_image.unsqueeze(-1), flat), spans


def get_layout(layout: PromptLayout | str | None, **kwargs: Any) -> PromptLayout:
    """A layout from an object or a name registered in :data:`LAYOUTS` (``"image_first"``/``"first"``,
    ``"image_last"``/``"last"``, ``"sandwich"``/``"middle"``, or your own); ``None`` gives :class:`Sandwich`
    (the released weights). ``kwargs`` go to the constructor."""
    if layout is None:
        return Sandwich(**kwargs)
    if isinstance(layout, PromptLayout):
        return dataclasses.replace(layout, **kwargs) if kwargs else layout
    if isinstance(layout, str) and layout in LAYOUTS:
        return LAYOUTS.get(layout)(**kwargs)
    raise ValueError(f"layout must be a PromptLayout or one of {sorted(LAYOUTS)}, got {layout!r}")


def _grid_for(k: int, cls: ClsPosition, j: int) -> tuple[int, int]:
    n = k - (cls is not None)
    s = math.isqrt(max(n, 0))
    if n < 1 or s * s != n:
        raise ValueError(
            f"image_embeds[{j}] has {k} tokens, which is not a square grid{' plus CLS' if cls else ''}; "
            "pass grids=(rows, cols)"
        )
    return s, s


def expand_image_embeddings(
    input_ids: torch.Tensor | Sequence[Sequence[int]],
    image_embeds: torch.Tensor | Sequence[torch.Tensor],
    embed_fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    grids: tuple[int, int] | Sequence[tuple[int, int]] | None = None,
    cls: ClsPosition = "last",
) -> tuple[torch.Tensor, list[list[ImageSpan]]]:
    """Replace each :data:`IMAGE_TOKEN_INDEX` in ``input_ids`` by one image's embeddings.

    Args:
        input_ids: ``[b, t]`` ids; placeholders are taken in order, row 0 first.
        image_embeds: ``[n, k, c]`` tensor or a list of ``n`` tensors ``[k_i, c]`` (one per placeholder),
            already projected to the LM width; cast to the text embeddings' dtype and device.
        embed_fn: maps a LongTensor of text ids (any shape) to embeddings (that shape + ``[c]``),
            e.g. ``model.emb``.
        grids: ``(rows, cols)`` for all images or one per image; ``None`` infers a square grid from ``k``.
        cls: CLS position in each image's tokens (``"last"``, ``"first"``, ``None``).
    Returns:
        ``(embeds [b, T, c], spans)``, ``spans[r]`` the :class:`ImageSpan` list of batch row ``r``.
        All rows must expand to the same length ``T``.
    """
    if not isinstance(input_ids, torch.Tensor):
        input_ids = torch.as_tensor(input_ids, dtype=torch.long)
    if input_ids.dim() != 2 or input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must be an integer tensor [b, t], got {input_ids.dtype} {tuple(input_ids.shape)}")
    if isinstance(image_embeds, torch.Tensor):
        if image_embeds.dim() != 3:
            raise ValueError(
                f"image_embeds must be [n, k, c] or a list of [k, c], got shape {tuple(image_embeds.shape)}"
            )
        images = list(image_embeds.unbind(0))
    elif image_embeds is None:
        images = []
    else:
        images = list(image_embeds)
        for j, im in enumerate(images):
            if not isinstance(im, torch.Tensor) or im.dim() != 2:
                raise ValueError(
                    f"image_embeds[{j}] must be a [k, c] tensor, got {getattr(im, 'shape', type(im).__name__)}"
                )
    is_image = input_ids == IMAGE_TOKEN_INDEX
    per_row = is_image.sum(1).tolist()
    n_placeholders = sum(per_row)
    if n_placeholders != len(images):
        raise ValueError(
            f"input_ids hold {n_placeholders} image placeholders (IMAGE_TOKEN_INDEX={IMAGE_TOKEN_INDEX}; per row "
            f"{per_row}) but {len(images)} image embeddings were given"
        )
    if grids is None:
        grid_list = [_grid_for(im.shape[0], cls, j) for j, im in enumerate(images)]
    elif len(grids) == 2 and all(isinstance(v, int) for v in grids):
        grid_list = [tuple(grids)] * len(images)
    else:
        grid_list = [tuple(g) for g in grids]
        if len(grid_list) != len(images):
            raise ValueError(f"grids: got {len(grid_list)} grids for {len(images)} images")
    for j, (im, (r, c_)) in enumerate(zip(images, grid_list)):
        want = r * c_ + (cls is not None)
        if im.shape[0] != want:
            raise ValueError(
                f"image_embeds[{j}] has {im.shape[0]} tokens; a {r} x {c_} grid with cls={cls!r} needs {want}"
            )
    bad = (input_ids < 0) & ~is_image
    if bad.any():
        raise ValueError(
            f"input_ids contain negative ids other than IMAGE_TOKEN_INDEX: {input_ids[bad].unique().tolist()}"
        )

    text = embed_fn(input_ids.masked_fill(is_image, 0))
    if text.dim() != 3 or text.shape[:2] != input_ids.shape:
        raise ValueError(f"embed_fn must map [b, t] ids to [b, t, c], got {tuple(text.shape)}")
    width = text.shape[-1]
    rows_out: list[torch.Tensor] = []
    spans: list[list[ImageSpan]] = []
    j = 0
    for r in range(input_ids.shape[0]):
        pieces, row_spans, pos, last = [], [], 0, 0
        for p in is_image[r].nonzero().flatten().tolist():
            if p > last:
                pieces.append(text[r, last:p])
                pos += p - last
            im = images[j]
            if im.shape[-1] != width:
                raise ValueError(f"image_embeds[{j}] has width {im.shape[-1]}, text embeddings have {width}")
            pieces.append(im.to(device=text.device, dtype=text.dtype))
            row_spans.append(ImageSpan(pos, grid_list[j][0], grid_list[j][1], cls))
            pos += im.shape[0]
            last = p + 1
            j += 1
        if last < input_ids.shape[1]:
            pieces.append(text[r, last:])
        rows_out.append(torch.cat(pieces, 0) if pieces else text[r, :0])
        spans.append(row_spans)
    lengths = [x.shape[0] for x in rows_out]
    if len(set(lengths)) != 1:
        raise ValueError(
            f"batch rows expand to different lengths {lengths}; give every row the same number of images "
            "and text tokens (or run rows separately)"
        )
    return torch.stack(rows_out, 0), spans
