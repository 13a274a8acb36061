"""The layers, read from the imports of every module (no code is run): the framework
imports no layer above it, nor IPython or Jupyter, and no module imports in a cycle.

    framework/  the command framework         may import: itself, mpi_kernel.errors
    parallel/   the ipyparallel-style API     may import: framework, errors
    jupyter/    kernel, installer, supervisor may import: framework, parallel, errors
    ipython_ext the magics                    may import anything of mpi_kernel
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("mpi_kernel", "ipython_ext")
# What the framework may not import, at any depth of a module (a function's import too).
NOT_IN_FRAMEWORK = ("mpi_kernel.parallel", "mpi_kernel.jupyter", "ipython_ext", "IPython", "ipykernel",
                    "jupyter_client", "zmq", "ipywidgets", "matplotlib")
NOT_IN_PARALLEL = ("mpi_kernel.jupyter", "ipython_ext")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, source: str | None = None) -> list[tuple[str, bool]]:
    """(absolute module name, at module level) for each import in the file (or in
    `source`, read as that file); one in a function or under `if TYPE_CHECKING:` counts too."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text() if source is None else source, str(path))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[:len(base) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            submodules = [f"{module}.{a.name}" for a in node.names
                          if (ROOT / Path(*module.split("."), a.name)).with_suffix(".py").exists()]
            # `from . import x` of submodules imports them, not the package's own code
            if node.module or len(submodules) < len(node.names):
                found.append((module, id(node) in top))
            found += [(m, id(node) in top) for m in submodules]
    return found


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def violations(layer: str, banned: tuple[str, ...]) -> list[str]:
    return [f"{name} imports {imported}" for name, path in modules().items() if name.startswith(layer)
            for imported, _ in imports(path) if imported.startswith(banned)]


def test_the_framework_imports_no_layer_above_it_nor_ipython_or_jupyter():
    assert violations("mpi_kernel.framework", NOT_IN_FRAMEWORK) == []


def test_the_parallel_api_does_not_import_the_jupyter_side():
    assert violations("mpi_kernel.parallel", NOT_IN_PARALLEL) == []


def test_no_import_cycles_between_modules():
    known = modules()
    # Imports inside functions count: a lazy import hides a cycle, it does not remove it.
    graph = {name: {m for m, _ in imports(path) if m in known and m != name} for name, path in known.items()}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in trail:
                cycles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]))
            elif nxt not in done:
                visit(nxt, trail + [nxt])
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start])
    assert cycles == []


def test_the_check_sees_a_violation():
    # The reader itself: a framework module that imported the kernel would be caught.
    found = imports(ROOT / "mpi_kernel" / "framework" / "client.py", "from ..jupyter import kernel\n")
    assert ("mpi_kernel.jupyter.kernel", True) in found
