"""Rooms: every import inside krllm/ goes one way, from a higher room to a lower one, without loops.

Why: a loop between two modules (or two rooms) means neither can be read, tested or replaced alone,
and a lower room that reaches up (eval importing the pipeline) drags the whole stack into every
import. The layer order below is the one docs/architecture.md ("Rooms") describes; change both
together, and only when the code needs it.

Counted: module-level and function-level `import` / `from ... import` statements (relative ones
resolved), and — for the room order only — string references that name a krllm module, e.g.
`importlib.import_module("krllm.commands.data")` or `schema="krllm.train.pretrain_config:X"`,
since those are imports made later.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "krllm"

# Lowest first. A room may import rooms of its own layer or of lower layers, never a higher one.
# `krllm` is the package's own __init__ (the version string); it imports nothing.
LAYERS: list[tuple[str, ...]] = [
    ("krllm", "errors", "config", "runs", "device", "tracking"),  # base: no stage knowledge
    ("data",),  # source reader, cleaning job, record schemas, generated sets, token shards
    ("tokenizer",),  # reads its corpus through data's source reader
    ("model",),  # config, registry, Llama, HF directories
    ("infer",),  # engine, runner, server (train's RL rollouts will use it)
    ("train",),  # pretrain loop, TRL/PEFT trainers
    ("eval",),  # metrics over models, uses infer for generations
    ("export",),  # merge and future gguf / mlx writers
    ("pipeline",),  # chains the stages above; the report card reads its state files
    ("commands",),  # one module per CLI subcommand
    ("cli", "__main__"),  # the dispatcher
]
LAYER = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}
MODULE_REF = re.compile(r"krllm(\.\w+)+(:[\w.]+)?")


@dataclass(frozen=True)
class Edge:
    src: str  # importing module (dotted)
    dst: str  # imported module (dotted, an existing krllm module)
    where: str  # file:line of the import
    dynamic: bool  # a string reference (import_module, schema=..., `python -m`), not an import statement


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "krllm"


def _resolve(name: str) -> str | None:
    """The deepest existing krllm module that `name` (a dotted path, maybe ending in an attribute) names."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def _docstring_nodes(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            for stmt in body:
                if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
                    out.add(id(stmt.value))
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """Nodes under `if TYPE_CHECKING:`: imports for annotations only, never run."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            out.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return out


def edges_of(module: str) -> list[Edge]:
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    where = lambda node: f"{path.relative_to(ROOT)}:{node.lineno}"  # noqa: E731
    out: list[Edge] = []
    docstrings = _docstring_nodes(tree)
    annotations_only = _type_checking_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in annotations_only:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # `from a.b import c` imports the module a.b.c when it exists, else the names of a.b
            targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in MODULES else origin for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if MODULE_REF.fullmatch(node.value):
                dst = _resolve(node.value.partition(":")[0])
                if dst and dst != module:
                    out.append(Edge(module, dst, where(node), dynamic=True))
            continue
        for t in targets:
            if t == "krllm" or t.startswith("krllm."):
                dst = _resolve(t)
                if dst and dst != module:
                    out.append(Edge(module, dst, where(node), dynamic=False))
    return out


EDGES = sorted({e for m in MODULES for e in edges_of(m)}, key=lambda e: (e.where, e.dst))


def room_imports(edges: list[Edge]) -> dict[str, set[str]]:
    """room -> the other rooms it imports (what the closing note of a refactor lists)."""
    out: dict[str, set[str]] = {}
    for e in edges:
        if room(e.src) != room(e.dst):
            out.setdefault(room(e.src), set()).add(room(e.dst))
    return out


def _cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    graph: dict[str, list[str]] = {m: [] for m in MODULES}
    for e in edges:
        graph[e.src].append(e.dst)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                found.append(sorted(comp))

    for m in graph:
        if m not in index:
            visit(m)
    return found


def test_every_module_is_in_a_known_room():
    unknown = sorted({room(m) for m in MODULES} - set(LAYER))
    assert not unknown, (f"rooms {unknown} are not in tests/test_rooms.py LAYERS: add them at the layer "
                         "they belong to (and to docs/architecture.md)")


def test_the_scan_sees_imports_of_every_kind():
    """Guards the parser itself: a relative, a function-level and a string import are all found."""
    probe = {(e.src, e.dst, e.dynamic) for e in EDGES}
    assert ("krllm.cli", "krllm.commands.data", True) in probe  # importlib.import_module("krllm.commands.data")
    assert ("krllm.__main__", "krllm.cli", False) in probe
    assert any(e.src.startswith("krllm.commands.") and not e.dynamic for e in EDGES)
    assert any(e.src == "krllm.runs" and e.dst == "krllm" for e in EDGES)  # `from krllm import __version__`, in a function


def test_no_module_imports_a_module_that_imports_it_back():
    statements = [e for e in EDGES if not e.dynamic]
    problems = []
    for comp in _cycles(statements):
        inside = set(comp)
        lines = [f"    {e.where}: {e.src} -> {e.dst}" for e in statements if e.src in inside and e.dst in inside]
        problems.append(f"import loop between {', '.join(comp)}:\n" + "\n".join(sorted(lines)))
    assert not problems, "\n".join(problems)


def test_no_lower_room_imports_a_higher_one():
    bad = [f"{e.where}: {e.src} ({room(e.src)}, layer {LAYER.get(room(e.src))}) imports {e.dst} "
           f"({room(e.dst)}, layer {LAYER.get(room(e.dst))})" + (" by name" if e.dynamic else "")
           for e in EDGES
           if room(e.src) in LAYER and room(e.dst) in LAYER and LAYER[room(e.dst)] > LAYER[room(e.src)]]
    assert not bad, "a lower room imports a higher one (see LAYERS in tests/test_rooms.py):\n" + "\n".join(bad)


def test_the_package_init_imports_nothing():
    assert [e for e in EDGES if e.src == "krllm"] == []  # every submodule may read krllm.__version__


if __name__ == "__main__":  # print the room graph: python tests/test_rooms.py
    for src, dsts in sorted(room_imports(EDGES).items(), key=lambda kv: LAYER.get(kv[0], 99)):
        print(f"{src} -> {', '.join(sorted(dsts, key=lambda r: (LAYER.get(r, 99), r)))}")
