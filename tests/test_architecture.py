"""The package's shape: layered subpackages, no import cycle, no upward import, no module over 500 lines.

The import graph is read from the sources with ``ast`` and holds every import, at module level and inside
functions alike (an import inside a function is still a dependency; it only hides a cycle until run time).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "mfutils"

# Bottom to top: a module may import from its own layer and the layers below it, never from above.
LAYERS = ("core", "data", "model", "measure", "study", "present", "run")
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The mfutils module that an import of ``name`` loads (the longest known prefix)."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in MODULES:
            return cand
        parts = parts[:-1]
    return None


def _package_of(mod: str, path: Path) -> str:
    return mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]


def imports_of(mod: str, source: str | None = None) -> set[str]:
    """Every mfutils module that ``mod`` imports anywhere in its source (or in ``source``, read as ``mod``'s)."""
    path = MODULES[mod]
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = _package_of(mod, path).split(".")
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            # ``from pkg import sub`` imports the submodule (a package's own __init__ runs first, as for every
            # import, and is not counted as a dependency); ``from mod import name`` imports mod itself
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
            others = [a.name for a in node.names if f"{base}.{a.name}" not in MODULES]
            names = subs + ([base] if others else [])
        else:
            continue
        for n in names:
            r = _resolve(n)
            if r is not None and r != mod:
                found.add(r)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def layer_of(mod: str) -> int | None:
    parts = mod.split(".")
    if len(parts) < 2 or parts[1] not in LAYERS:
        return None
    return LAYERS.index(parts[1])


def test_every_module_sits_in_a_layer() -> None:
    loose = [m for m in MODULES if layer_of(m) is None and m not in ("mfutils", "mfutils.__main__")]
    assert not loose, f"modules outside the layer folders {LAYERS}: {loose}"


def test_no_upward_import() -> None:
    bad = []
    for src, dsts in GRAPH.items():
        ls = layer_of(src)
        for dst in dsts:
            ld = layer_of(dst)
            if src == "mfutils":
                ls = 0  # the package root may only re-export the floor
            if src == "mfutils.__main__" or ld is None and dst == "mfutils" and ls is not None:
                continue
            if ls is not None and ld is not None and ld > ls:
                bad.append(f"{src} ({LAYERS[ls]}) imports {dst} ({LAYERS[ld]})")
            if src == "mfutils" and ld is not None and ld > 0:
                bad.append(f"mfutils/__init__ imports {dst}")
    assert not bad, "imports against the layer order " + " < ".join(LAYERS) + ":\n" + "\n".join(sorted(bad))


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_no_import_cycle() -> None:
    cycle = _find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_cycle_finder_finds_a_cycle() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_graph_sees_function_level_imports() -> None:
    src = "import os\n\ndef f():\n    from mfutils.model.loading import load_model\n    from . import prompts\n"
    assert imports_of("mfutils.data.world", src) == {"mfutils.model.loading", "mfutils.data.prompts"}


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_module_size(mod: str) -> None:
    n = len(MODULES[mod].read_text().splitlines())
    assert n <= MAX_LINES, f"{MODULES[mod].relative_to(PKG.parent)} has {n} lines (at most {MAX_LINES}): split it"


def test_import_in_a_fresh_interpreter() -> None:
    proc = subprocess.run([sys.executable, "-c", "import mfutils, importlib, pkgutil\n"
                           "for m in pkgutil.walk_packages(mfutils.__path__, 'mfutils.'):\n"
                           "    if m.name != 'mfutils.__main__':\n"
                           "        importlib.import_module(m.name)"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_subpackage_docstrings_list_their_api() -> None:
    for layer in LAYERS:
        init = PKG / layer / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        mods = sorted(p.stem for p in (PKG / layer).glob("*.py") if p.stem != "__init__")
        missing = [m for m in mods if m not in doc]
        assert not missing, f"mfutils/{layer}/__init__.py's docstring does not name {missing}"
