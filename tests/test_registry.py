"""The name registries: the generic Registry, and each component kind named once and read everywhere
(get_* / create_* helpers, config.json, the rwkv-vision command's choices)."""

from __future__ import annotations

import json

import pytest

from rwkv_vision import VisualRWKV
from rwkv_vision.checkpoint.config_json import (
    CheckpointError,
    layout_from_config,
    layout_to_config,
    projector_from_config,
    projector_to_config,
    scan_from_config,
    scan_to_config,
    tokenizer_from_config,
    tokenizer_to_config,
)
from rwkv_vision.cli import build_parser
from rwkv_vision.prompt import LAYOUTS, ImageFirst, ImageFirstRun, ImageLast, Sandwich, get_layout
from rwkv_vision.registry import Registry, UnknownNameError
from rwkv_vision.scan import SCANS, BiDir, Custom, MultiDir, ScanPolicy, Snake, UniDir, Zigzag, get_scan_policy
from rwkv_vision.tokenizers import TOKENIZERS, WordTokenizer, WorldTokenizer
from rwkv_vision.vision import ENCODERS, PROJECTORS, create_encoder, list_encoders, register_encoder, tiny_clip
from rwkv_vision.vision.projector import (
    ContextGatingProjector,
    GatedMLPProjector,
    LinearProjector,
    MLPProjector,
    create_projector,
)
from rwkv_vision.vision.relu_projector import ReLUProjector

# --- the generic registry ---------------------------------------------------------------------------------


def test_register_decorator_aliases_and_lookup():
    reg = Registry("widget")

    @reg.register("round", aliases=("circle",))
    class Round:
        pass

    class Square:
        pass

    assert reg.register("square", Square) is Square  # direct call returns the object
    assert reg.get("round") is Round and reg.get("CIRCLE") is Round and reg["Square"] is Square
    assert reg.names() == ["round", "square"] and reg.names(aliases=True) == ["round", "square", "circle"]
    assert reg.aliases("round") == ["circle"] and reg.canonical("circle") == "round"
    assert "circle" in reg and "triangle" not in reg and len(reg) == 3
    assert dict(reg) == {"round": Round, "square": Square, "circle": Round}
    assert reg.get("triangle", None) is None
    with pytest.raises(UnknownNameError, match="unknown widget 'triangle'; known: round, square, circle"):
        reg.get("triangle")
    assert isinstance(UnknownNameError("x"), ValueError)


def test_name_of_is_exact_type():
    reg = Registry("widget")

    @reg.register("base")
    class Base:
        pass

    class Sub(Base):
        pass

    def builder():
        return Base()

    reg.register("built", builder)
    assert reg.name_of(Base) == "base" and reg.name_of(Base()) == "base"
    assert reg.name_of(Sub()) is None and reg.name_of(Sub) is None  # a subclass is not "base"
    assert reg.name_of(builder) == "built" and reg.name_of(object()) is None


def test_taken_names_override_and_unregister():
    reg = Registry("widget", normalize=None)
    reg.register("A", int)
    reg.register("A", int)  # the same object again: no-op
    with pytest.raises(ValueError, match="widget 'A' is already registered"):
        reg.register("A", float)
    assert "a" not in reg  # normalize=None: exact names
    reg.register("A", float, override=True)
    assert reg.get("A") is float
    reg.register("B", str, aliases=("b2",))
    assert reg.unregister("B") is str and "b2" not in reg and reg.names() == ["A"]
    with pytest.raises(UnknownNameError):
        reg.unregister("B")
    with pytest.raises(TypeError, match="class or callable"):
        reg.register("C", 3)
    with pytest.raises(ValueError, match="non-empty str"):
        reg.register("", int)


# --- each component kind is registered next to its class -------------------------------------------------


def test_the_library_components_are_registered():
    assert dict(SCANS) == {
        "unidir": UniDir,
        "bidir": BiDir,
        "multidir": MultiDir,
        "snake": Snake,
        "zigzag": Zigzag,
        "custom": Custom,
    }
    assert dict(LAYOUTS) == {
        "image_first": ImageFirst,
        "image_last": ImageLast,
        "sandwich": Sandwich,
        "first": ImageFirst,
        "last": ImageLast,
        "middle": Sandwich,
        "image_first_run": ImageFirstRun,
        "visualrwkv7": ImageFirstRun,
    }
    assert dict(PROJECTORS) == {
        "linear": LinearProjector,
        "mlp": MLPProjector,
        "gated_mlp": GatedMLPProjector,
        "mlp2x_gelu": MLPProjector,
        "context_gating": ContextGatingProjector,
        "mlp_with_context_gating": ContextGatingProjector,
        "relu_mlp": ReLUProjector,
        "uhd_mlp": ReLUProjector,
    }
    assert dict(TOKENIZERS) == {"world": WorldTokenizer, "word": WordTokenizer}
    assert {"clip-vit-l14-336", "tiny-clip"} <= set(ENCODERS.names()) and ENCODERS.get("tiny-clip") is tiny_clip
    assert list_encoders() == ENCODERS.names()


def test_lookups_read_the_registries():
    assert get_scan_policy("MultiDir") == MultiDir() and get_layout("last") == ImageLast()
    assert isinstance(create_projector("mlp2x-gelu", in_features=4, out_features=6), MLPProjector)
    with pytest.raises(ValueError, match=r"'custom' needs arguments: construct Custom\(\.\.\.\)"):
        get_scan_policy("custom")
    with pytest.raises(ValueError, match=r"one of \['bidir', 'multidir', 'snake', 'unidir', 'zigzag'\]"):
        get_scan_policy("diagonal")


def test_register_encoder_uses_the_encoder_registry():
    register_encoder("test-tiny-56", lambda **kw: tiny_clip(image_size=56, **kw))
    try:
        assert "test-tiny-56" in ENCODERS and create_encoder("test-tiny-56", device="meta").grid == (4, 4)
        register_encoder("test-tiny-56", tiny_clip)  # replacing a builder is allowed, as before
        assert create_encoder("test-tiny-56", device="meta").grid == (2, 2)
    finally:
        ENCODERS.unregister("test-tiny-56")


# --- a user's scan policy is accepted everywhere once registered ------------------------------------------


class Diagonal(ScanPolicy):
    """Row-major on even layers, column-major on odd ones (a policy the library does not ship)."""

    period = 2

    def order(self, layer_index, rows, cols):
        return None if layer_index % 2 == 0 else [r * cols + c for c in range(cols) for r in range(rows)]


@pytest.fixture
def diagonal():
    SCANS.register("diagonal", Diagonal)
    yield Diagonal
    SCANS.unregister("diagonal")


def _choices(parser, command, option):
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return next(a for a in sub._actions if option in a.option_strings).choices


def test_a_registered_scan_policy_is_accepted_everywhere(diagonal, tmp_path):
    # get_scan_policy, and so `model.scan = "diagonal"`
    assert isinstance(get_scan_policy("diagonal"), Diagonal) and isinstance(get_scan_policy("Diagonal"), Diagonal)
    # config.json: the scan section round-trips, and so does a whole saved model
    assert scan_to_config(Diagonal()) == {"name": "diagonal"}
    assert scan_from_config({"name": "diagonal"}) == Diagonal()
    from rwkv_vision import RWKV6

    rwkv = RWKV6(n_layer=2, n_embd=32, head_size=16, d_mix=4, d_decay=8, vocab_size=40)
    model = VisualRWKV(rwkv=rwkv, encoder=tiny_clip(image_size=28), scan="diagonal")
    saved = model.save_pretrained(tmp_path / "m")
    assert json.loads((saved / "config.json").read_text())["scan"] == {"name": "diagonal"}
    assert isinstance(VisualRWKV.from_pretrained(saved).scan, Diagonal)
    # the command line: build_parser reads the registry when called
    parser = build_parser()
    for command in ("chat", "convert"):
        assert "diagonal" in _choices(parser, command, "--scan")
    assert parser.parse_args(["convert", "a", "b", "--scan", "diagonal"]).scan == "diagonal"


def test_unregistered_policies_are_refused_everywhere():
    assert "diagonal" not in SCANS
    with pytest.raises(ValueError, match="scan policy must be"):
        get_scan_policy("diagonal")
    with pytest.raises(ValueError, match="scan: a Diagonal policy has no config.json form"):
        scan_to_config(Diagonal())
    with pytest.raises(CheckpointError, match="scan.name must be one of"):
        scan_from_config({"name": "diagonal"})
    assert "diagonal" not in _choices(build_parser(), "chat", "--scan")
    assert _choices(build_parser(), "chat", "--scan") == ["bidir", "multidir", "snake", "unidir", "zigzag"]


def test_a_registered_policy_with_options_is_not_silently_saved_without_them():
    class Striped(ScanPolicy):
        def __init__(self, *, width: int = 2):
            self.width = width

        def order(self, layer_index, rows, cols):
            return None

        def _key(self):
            return (self.width,)

    SCANS.register("striped", Striped)
    try:
        with pytest.raises(ValueError, match="scan: a Striped policy has no config.json form"):
            scan_to_config(Striped(width=3))
    finally:
        SCANS.unregister("striped")


# --- the config.json sections keep their exact format ------------------------------------------------------


def test_config_sections_keep_their_format():
    assert layout_to_config(ImageFirst()) == {"name": "image_first", "user_role": "User", "assistant_role": "Assistant"}
    assert layout_from_config({"name": "image_last", "user_role": "U", "assistant_role": "A"}) == ImageLast(
        user_role="U", assistant_role="A"
    )
    with pytest.raises(
        CheckpointError,
        match=r"layout.name must be one of \['image_first', 'image_first_run', 'image_last', 'sandwich'\]",
    ):
        layout_from_config({"name": "first", "user_role": "U", "assistant_role": "A"})  # aliases are not written
    data = projector_to_config(MLPProjector(4, 6, hidden_features=5))
    assert data == {"type": "mlp", "in_features": 4, "out_features": 6, "hidden_features": 5, "bias": True}
    assert isinstance(projector_from_config(data), MLPProjector)
    with pytest.raises(
        CheckpointError,
        match=r"projector.type must be one of \['context_gating', 'gated_mlp', 'linear', 'mlp', 'relu_mlp'\]",
    ):
        projector_from_config(dict(data, type="mlp2x_gelu"))
    word = WordTokenizer()
    assert tokenizer_to_config(word, vocab_size=1) == ({"type": "word", "file": "tokenizer.json"}, word)
    assert tokenizer_to_config(WorldTokenizer(), vocab_size=1) == ({"type": "world"}, None)
    assert isinstance(tokenizer_from_config({"type": "world"}), WorldTokenizer)
    with pytest.raises(CheckpointError, match="tokenizer.type must be 'word', 'world', 'class' or null, got 'bpe'"):
        tokenizer_from_config({"type": "bpe"})
    with pytest.raises(CheckpointError, match=r"tokenizer.file is missing"):
        tokenizer_from_config({"type": "word"}, directory=".")
