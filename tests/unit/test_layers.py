"""The package imports downhill: no import loops (lazy imports inside
functions count), and none of the pairs that run against the layers."""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import voiceos_switch

ROOT = Path(voiceos_switch.__file__).parent

#: (importer prefix, imported prefix) that must never appear
FORBIDDEN = [
    ("voiceos_switch.protocols", "voiceos_switch."),
    ("voiceos_switch.audio", "voiceos_switch.conversation"),
    ("voiceos_switch.audio", "voiceos_switch.providers"),
    ("voiceos_switch.providers", "voiceos_switch.conversation"),
    ("voiceos_switch.providers", "voiceos_switch.agent"),
    ("voiceos_switch.transports", "voiceos_switch.control"),
    ("voiceos_switch.transports", "voiceos_switch.conversation"),
    ("voiceos_switch.control", "voiceos_switch.transports"),
    ("voiceos_switch.conversation", "voiceos_switch.transports"),
    ("voiceos_switch.conversation", "voiceos_switch.agent"),
    ("voiceos_switch.call", "voiceos_switch.agent"),
    ("voiceos_switch.records", "voiceos_switch.agent"),
    ("voiceos_switch.tools", "voiceos_switch."),
    ("voiceos_switch.errors", "voiceos_switch."),
    # the dashboard sits on top: it reads records and events, nothing imports it
    ("voiceos_switch.dashboard", "voiceos_switch.agent"),
    ("voiceos_switch.dashboard", "voiceos_switch.conversation"),
    ("voiceos_switch.conversation", "voiceos_switch.dashboard"),
    ("voiceos_switch.records", "voiceos_switch.dashboard"),
    ("voiceos_switch.variants", "voiceos_switch."),
    ("voiceos_switch.tracing", "voiceos_switch.agent"),
    # the runtime serves the SDK's agent through an interface, never the SDK itself
    ("voiceos_switch.runtime", "voiceos_switch.agent"),
    ("voiceos_switch.runtime", "voiceos_switch.conversation"),
    # the lab drives the system from outside, as a person would: only the CLI imports it
    ("voiceos_switch.lab", "voiceos_switch.agent"),
    ("voiceos_switch.lab", "voiceos_switch.runtime"),
    ("voiceos_switch.agent", "voiceos_switch.lab"),
    ("voiceos_switch.runtime", "voiceos_switch.lab"),
    ("voiceos_switch.dashboard", "voiceos_switch.lab"),
    ("voiceos_switch.pbx", "voiceos_switch.lab"),
]


def modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ("voiceos_switch", *path.relative_to(ROOT).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports() -> dict[str, set[str]]:
    """Each module's imports of the package's own modules; ``from . import
    log`` is an import of ``log``, not of the package."""
    mods = modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith("voiceos_switch"):
                    continue
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods]
                if len(subs) == len(node.names):
                    graph[name].update(subs)
                elif target in mods:
                    graph[name].add(target)
            elif isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name in mods)
        graph[name].discard(name)
    return graph


def loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    sys.setrecursionlimit(10_000)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_loops() -> None:
    assert loops(imports()) == []


def test_the_checker_finds_a_loop() -> None:
    assert loops({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_runs_against_the_layers() -> None:
    graph = imports()
    wrong = [
        f"{importer} -> {imported}"
        for importer, targets in graph.items()
        for imported in targets
        for low, high in FORBIDDEN
        if (importer == low or importer.startswith(low + "."))
        and (imported.startswith(high) if high.endswith(".") else
             imported == high or imported.startswith(high + "."))
    ]  # fmt: skip
    assert wrong == []
