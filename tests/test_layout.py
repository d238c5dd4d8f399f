"""The import graph keeps its shape: data flows one way (data_prep -> unet_jax, never back) and no module of the
package imports itself round a circle, so each module can be read after the ones it uses."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _modules(package: str) -> dict[str, pathlib.Path]:
    out = {}
    for path in (ROOT / package).rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(name: str, path: pathlib.Path) -> set[str]:
    """Every module name `name`'s file imports, at any depth (function-level imports count too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {**_modules("unet_jax"), **_modules("data_prep")}

    def owner(name: str) -> str | None:  # the project module a dotted name lives in
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    return {m: {o for n in _imports(m, p) if (o := owner(n)) and o != m and not m.startswith(o + ".")}
            for m, p in modules.items()}


def test_unet_jax_never_imports_data_prep():
    graph = _graph()
    assert not sorted((m, t) for m, ts in graph.items() if m.startswith("unet_jax") for t in ts
                      if t.startswith("data_prep"))


def test_no_import_circles():
    graph, state, circles = _graph(), {}, []

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                circles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not circles
