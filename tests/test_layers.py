"""The import graph of ``jaxquant``: no circle, and each layer imports only the layers below it
(the table is the one in the README's layout section)."""

import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jaxquant")

# unit → its layer; a unit may import units of its own layer or lower ones only
LAYERS = {
    "checks": 0,
    "defaults": 0,
    "parallel": 0,
    "data": 0,
    "objectives": 1,
    "quant": 2,
    "models": 3,
    "curvature": 4,
    "methods": 5,
    "train": 6,
    "ptq": 7,
    "analyse": 7,
    "pipeline": 7,
    "export": 7,
    "modes": 8,
    "study": 9,
    "main": 9,
}


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def module_imports():
    """``{module: {imported jaxquant modules}}`` from every ``import`` in the package."""
    graph = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            module = os.path.relpath(path[:-3], os.path.dirname(PACKAGE)).replace(os.sep, ".")
            module = module.removesuffix(".__init__")
            targets = set()
            for node in ast.walk(ast.parse(open(path).read())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxquant"):
                    targets |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
                elif isinstance(node, ast.Import):
                    targets |= {a.name for a in node.names if a.name.startswith("jaxquant")}
            graph[module] = targets
    return {m: {t for t in targets if t in graph} for m, targets in graph.items()}


def test_every_unit_has_a_layer():
    assert {unit(m) for m in module_imports() if m != "jaxquant"} == set(LAYERS)


def test_no_layer_imports_a_higher_one():
    upward = sorted(
        (m, t)
        for m, targets in module_imports().items()
        for t in targets
        if m != "jaxquant" and t != "jaxquant" and LAYERS[unit(t)] > LAYERS[unit(m)]
    )
    assert upward == []


def test_the_units_import_no_circle():
    graph = module_imports()
    units = {}
    for module, targets in graph.items():
        if module != "jaxquant":
            units.setdefault(unit(module), set()).update(unit(t) for t in targets if t != "jaxquant")
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in units.get(node, ()):
            if nxt == node:
                continue
            assert state.get(nxt) != "open", f"import circle: {' -> '.join(path + [nxt])}"
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in units:
        if node not in state:
            visit(node, [node])
