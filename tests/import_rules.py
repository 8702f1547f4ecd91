#!/usr/bin/env python3
"""Check optimem's import rules; print what is found, exit 1 on any violation.

    python tests/import_rules.py            # or: make import-rules

The rules:
  layers   optimem.memory.* never imports optimem.api.*; optimem.model.* and optimem.renderer.*
           never import optimem.memory.* or optimem.api.* (any import, in functions too).
  cycles   no import cycle among optimem's modules, imports inside functions included: a lazy
           import (for start-up time) is fine when it points down, never when it closes a circle.
           Only ``if TYPE_CHECKING:`` imports are left out (they never run).
  upward   no module imports a package it lives in (``from optimem import __version__`` in
           optimem.api.app runs the root package from below): import the module that holds it.
  cpu      the CPU path never loads torch, transformers or safetensors: the entry points below
           are imported (and the rapidocr backend built) in a fresh interpreter, which must not
           load them; on failure it names the project module whose import pulled them in.

Modules are found by walking the repository root (the package ``optimem``): every folder with an
``__init__.py`` under another package is a subpackage, whatever its depth. ``tests`` and ``bench``
are not part of the package. Standard library only.
"""
from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "optimem"
NOT_PACKAGED = {"tests", "bench", "docs", "build", "dist"}
# (importer prefix, forbidden prefixes): a module under the first may not import any of the rest.
LAYERS = (
    ("optimem.memory", ("optimem.api",)),
    ("optimem.model", ("optimem.memory", "optimem.api")),
    ("optimem.renderer", ("optimem.memory", "optimem.api")),
    ("optimem", ("optimem.integrations",)),   # the framework adapters import optimem; nothing imports them
)
HEAVY = ("torch", "transformers", "safetensors")
CPU_PATH = ("optimem", "optimem.settings", "optimem.api.app", "optimem.api.cli", "optimem.memory.service",
            "optimem.model.backends", "optimem.model.rapidocr_backend", "optimem.model.visual_tokens")


@dataclass
class Import:
    target: str      # the project module imported
    line: int
    loads: bool      # runs when the importing module loads (else: inside a function, lazily)
    typed: bool = False  # only under ``if TYPE_CHECKING:``: never runs


@dataclass
class Module:
    name: str
    path: Path
    imports: list[Import] = field(default_factory=list)


def discover(root: Path = ROOT) -> dict[str, Module]:
    """Every module of the package rooted at ``root``, by dotted name."""
    modules: dict[str, Module] = {}

    def walk(folder: Path, prefix: str) -> None:
        for path in sorted(folder.iterdir()):
            if path.is_dir():
                if (path / "__init__.py").is_file() and path.name.isidentifier() and not (
                        folder == root and path.name in NOT_PACKAGED):
                    walk(path, f"{prefix}.{path.name}")
            elif path.suffix == ".py" and path.stem.isidentifier():
                name = prefix if path.stem == "__init__" else f"{prefix}.{path.stem}"
                modules[name] = Module(name, path)

    walk(root, PACKAGE)
    for module in modules.values():
        module.imports = imports_of(module, modules)
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(body: list[ast.stmt], loads: bool, typed: bool = False):
    """(statement, runs-at-load, type-checking only) for every import statement in ``body``, at any depth."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, loads, typed
        elif isinstance(node, ast.If):
            yield from _statements(node.body, loads, typed or _is_type_checking(node.test))
            yield from _statements(node.orelse, loads, typed)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _statements(node.body, False, typed)
        else:   # try/with/for/while/match/class blocks: whatever of them runs at load runs with the module
            for name in ("body", "orelse", "finalbody", "handlers", "cases"):
                for child in getattr(node, name, None) or []:
                    yield from _statements(child.body if isinstance(child, (ast.ExceptHandler, ast.match_case))
                                           else [child], loads, typed)


def imports_of(module: Module, modules: dict[str, Module]) -> list[Import]:
    """The project modules ``module`` imports (third-party and stdlib imports are left out)."""
    tree = ast.parse(module.path.read_text(encoding="utf-8"), str(module.path))
    package = module.name if module.path.name == "__init__.py" else module.name.rpartition(".")[0]
    found = []
    for node, loads, typed in _statements(tree.body, True):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[:len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            # ``from pkg import sub`` imports the submodule when there is one, else a name from pkg
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for name in dict.fromkeys(names):
            target = _owner(name, modules)
            if target and target != module.name:
                found.append(Import(target, node.lineno, loads and not typed, typed))
    return found


def _owner(name: str, modules: dict[str, Module]) -> str | None:
    """The project module a dotted import name resolves to (None: not the project's)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_violations(modules: dict[str, Module]) -> list[str]:
    out = []
    for module in modules.values():
        for importer, forbidden in LAYERS:
            if not _under(module.name, importer):
                continue
            for imp in module.imports:
                if any(_under(imp.target, f) for f in forbidden):
                    where = module.path.relative_to(ROOT) if module.path.is_relative_to(ROOT) else module.path
                    out.append(f"{where}:{imp.line}: {module.name} imports {imp.target} "
                               f"({importer} must not depend on {', '.join(forbidden)})")
    return out


def upward(modules: dict[str, Module]) -> list[str]:
    """Imports of a package the importing module lives in (they run that package from below)."""
    out = []
    for module in modules.values():
        for imp in module.imports:
            if not imp.typed and module.name.startswith(imp.target + "."):   # an ancestor: always a package
                where = module.path.relative_to(ROOT) if module.path.is_relative_to(ROOT) else module.path
                out.append(f"{where}:{imp.line}: {module.name} imports {imp.target}, a package it lives in "
                           "(import the module that holds the name instead)")
    return out


def cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Each import cycle, lazy imports (in functions) included, as one closed path per strongly
    connected set; ``if TYPE_CHECKING:`` imports never run and are left out."""
    graph = {m.name: sorted({i.target for i in m.imports if not i.typed}) for m in modules.values()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:   # Tarjan; the module graph is small, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_closed_path(c, graph) for c in components]


def _closed_path(component: list[str], graph: dict[str, list[str]]) -> list[str]:
    """A shortest cycle through the component's first module (breadth first, inside the component)."""
    start, inside = component[0], set(component)
    previous: dict[str, str] = {}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in graph[v]:
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start]
            if w in inside and w not in previous:
                previous[w] = v
                queue.append(w)
    return [*component, component[0]]


_PROBE = r"""
import importlib, json, sys, traceback
HEAVY, ENTRY, ROOT = json.loads(sys.argv[1])
first = {}

class Watch:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in HEAVY and top not in first:
            frames = [f for f in traceback.extract_stack()[:-1] if f.filename.startswith(ROOT)
                      and "/tests/" not in f.filename]
            first[top] = [f"{f.filename[len(ROOT) + 1:]}:{f.lineno}: {f.line}" for f in frames]
        return None

sys.meta_path.insert(0, Watch())
errors = []
for name in ENTRY:
    try:
        importlib.import_module(name)
    except Exception as e:
        errors.append(f"{name}: {type(e).__name__}: {e}")
try:
    from optimem.model import backends
    from optimem.settings import Settings
    backends.load(Settings(backend="rapidocr"))
except Exception as e:
    errors.append(f"backends.load(Settings(backend='rapidocr')): {type(e).__name__}: {e}")
import optimem
print(json.dumps({"loaded": {m: first.get(m, []) for m in HEAVY if m in sys.modules}, "errors": errors,
                  "optimem": optimem.__file__}))
"""


def cpu_path(python: str = sys.executable) -> tuple[list[str], list[str]]:
    """(violations, notes) from importing the CPU path in a fresh interpreter."""
    with tempfile.TemporaryDirectory() as cwd:   # not the repo root: its api/, model/ are not packages
        r = subprocess.run([python, "-c", _PROBE, json.dumps([HEAVY, CPU_PATH, str(ROOT)])],
                           capture_output=True, text=True, cwd=cwd, timeout=300)
    if r.returncode != 0:
        return [f"the CPU-path probe failed:\n{r.stderr[-3000:]}"], []
    result = json.loads(r.stdout.strip().splitlines()[-1])
    out = [f"importing the CPU path failed: {e}" for e in result["errors"]]
    for name, frames in result["loaded"].items():
        chain = "\n      ".join(frames) or "(no project frame: a third-party package imported it)"
        out.append(f"the CPU path loads {name}; first imported via\n      {chain}")
    return out, [f"optimem from {result['optimem']}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU-path import probe")
    args = parser.parse_args(argv)

    modules = discover()
    edges = sum(len(m.imports) for m in modules.values())
    print(f"import rules: {len(modules)} modules, {edges} project imports")
    problems = 0
    layers = layer_violations(modules)
    for v in layers:
        print(f"  LAYER  {v}")
    found = cycles(modules)
    for c in found:
        print(f"  CYCLE  {' -> '.join(c)}")
    up = upward(modules)
    for v in up:
        print(f"  UPWARD {v}")
    problems += len(layers) + len(found) + len(up)
    if not args.no_cpu:
        violations, notes = cpu_path()
        for v in violations:
            print(f"  CPU    {v}")
        for n in notes:
            print(f"  (cpu path probe: {n})")
        problems += len(violations)
    print("import rules: ok" if not problems else f"import rules: {problems} violation(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
