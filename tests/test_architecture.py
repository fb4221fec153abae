"""The shape of the package: no import cycle, lower layers never import higher ones, old names still work.

The import graph is read from the source (every ``import``/``from ... import``, at module level and inside
functions), so a cycle that only shows up when some function runs is caught too. The one kind of upward edge
allowed is a model's loading entry point (``VisualRWKV.from_pretrained`` and the like) calling into
``rwkv_vision.checkpoint`` from inside the method: the checkpoint package depends on the models, and the
method is a thin door to it, not a dependency of the model's code.
"""

from __future__ import annotations

import ast
import importlib
import sys
import warnings
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "rwkv_vision"

#: (importing package prefix, imported package prefix): deferred imports allowed inside functions only.
#: Besides loading, a model's ``processor`` property and ``chat`` method are such doors (to the processor
#: and the chat loop, which sit above the models).
ENTRY_POINT_EDGES = (("rwkv_vision.models", "rwkv_vision.checkpoint"),)
#: Layers, from the bottom: a module may import its own layer and the layers below it (module level).
LAYERS = [
    ("rwkv_vision.errors", "rwkv_vision.registry", "rwkv_vision.ops", "rwkv_vision.image_tokens"),
    (
        "rwkv_vision.state",
        "rwkv_vision.layers",
        "rwkv_vision.scan",
        "rwkv_vision.vision",
        "rwkv_vision.tokenizers",
        "rwkv_vision.tokenizer",
        "rwkv_vision.prompt",
        "rwkv_vision.data",
        "rwkv_vision.sections",
        "rwkv_vision.processor",
    ),
    ("rwkv_vision.models", "rwkv_vision.generation", "rwkv_vision.chat", "rwkv_vision.collate"),
    ("rwkv_vision.decoding", "rwkv_vision.checkpoint"),
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_edges() -> list[tuple[str, str, bool]]:
    """(importer, imported, at module level) for every import of an rwkv_vision module inside the package."""
    modules = {_module_name(p) for p in SRC.rglob("*.py")}
    edges = []
    for path in SRC.rglob("*.py"):
        module = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top_level = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(module, path.name == "__init__.py", node)
                # `from pkg import sub` imports the submodule when there is one
                names = [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names]
            for name in names:
                while name and name not in modules:
                    name = name.rpartition(".")[0]
                if name.startswith("rwkv_vision") and name != module:
                    edges.append((module, name, id(node) in top_level))
    return edges


def _allowed_deferred(src: str, dst: str) -> bool:
    return any(src.startswith(a) and dst.startswith(b) for a, b in ENTRY_POINT_EDGES)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycle():
    graph: dict[str, set[str]] = {}
    for src, dst, top in import_edges():
        if top or not _allowed_deferred(src, dst):
            graph.setdefault(src, set()).add(dst)
    # The package root imports everything to re-export it; nothing inside may import the root back.
    assert not [s for s, d in ((s, d) for s, ds in graph.items() for d in ds) if d == "rwkv_vision"]
    graph.pop("rwkv_vision", None)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _layer_of(module: str) -> int | None:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return None


def test_lower_layers_never_import_higher_ones():
    upward = []
    for src, dst, top in import_edges():
        a, b = _layer_of(src), _layer_of(dst)
        if a is not None and b is not None and b > a and not (not top and _allowed_deferred(src, dst)):
            upward.append((src, dst))
    assert upward == []


def test_models_import_no_loader_at_module_level():
    assert not [
        (s, d)
        for s, d, top in import_edges()
        if top and s.startswith("rwkv_vision.models") and d.startswith("rwkv_vision.checkpoint")
    ]


@pytest.mark.parametrize(
    "old, attribute, new",
    [
        ("rwkv_vision.inference", "Decoder", "rwkv_vision.decoding"),
        ("rwkv_vision.hub", "from_pretrained", "rwkv_vision.checkpoint"),
        ("rwkv_vision.model_config", "model_from_config", "rwkv_vision.checkpoint.config_json"),
    ],
)
def test_old_module_paths_warn_and_give_the_same_objects(old, attribute, new):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert getattr(module, attribute) is getattr(importlib.import_module(new), attribute)


def test_importing_the_package_uses_no_deprecated_path():
    import subprocess

    code = "import warnings; warnings.simplefilter('error', DeprecationWarning); import rwkv_vision"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_old_models_name_for_the_official_config_reader_warns():
    import rwkv_vision.models as models
    from rwkv_vision.checkpoint.official import config_from_official_state_dict

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert models.config_from_official_state_dict is config_from_official_state_dict
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)


def test_every_exception_class_is_defined_in_errors():
    defined = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(b, ast.Name) and (b.id.endswith("Error") or b.id.endswith("Exception")) for b in node.bases
            ):
                defined.append((_module_name(path), node.name))
    assert {m for m, _ in defined} == {"rwkv_vision.errors"}, defined
