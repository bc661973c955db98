"""The package's layers, read from its import graph (local imports included): no module imports one
of a layer above its own, and no import circle. docs/architecture.md says the same in words."""
import ast
import os

import enformer_train

SRC = os.path.dirname(os.path.dirname(enformer_train.__file__))

# lowest first; a module belongs to the longest prefix that names it
LAYERS = [
    ["enformer_train.errors", "enformer_train.files", "enformer_train.codes", "enformer_train.progress"],
    ["enformer_train.distributed"],
    ["enformer_train.model"],
    ["enformer_train.config", "enformer_train.compiling"],
    ["enformer_train.data.formats"],
    ["enformer_train.data.store"],
    ["enformer_train.data.augment", "enformer_train.data.loader", "enformer_train.data.producers"],
    ["enformer_train.saved"],
    ["enformer_train.infer", "enformer_train.chunks"],
    ["enformer_train.train"],
    ["enformer_train.plots"],
    ["enformer_train.predict", "enformer_train.evaluate", "enformer_train.attribute", "enformer_train.variants",
     "enformer_train.plot_command", "enformer_train.demo"],
    ["enformer_train.cli", "enformer_train.__main__", "enformer_train"],
]


def _module(path: str) -> str:
    name = os.path.relpath(path, SRC)[:-3].replace(os.sep, ".")
    return name[:-len(".__init__")] if name.endswith(".__init__") else name


def _exists(name: str) -> bool:
    path = os.path.join(SRC, *name.split("."))
    return os.path.exists(path + ".py") or os.path.isdir(path)


def import_graph() -> dict[str, set[str]]:
    """{module: the project's modules it imports}, at module level or inside functions."""
    graph = {}
    for folder, _, files in os.walk(os.path.dirname(enformer_train.__file__)):
        for file in files:
            if not file.endswith(".py"):
                continue
            path = os.path.join(folder, file)
            module = _module(path)
            package = module if file == "__init__.py" else module.rsplit(".", 1)[0]
            deps = set()
            with open(path) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    if node.level:
                        parts = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                        target = ".".join(parts + ([node.module] if node.module else []))
                    else:
                        target = node.module or ""
                    if target.startswith("enformer_train"):
                        deps.update(f"{target}.{a.name}" if _exists(f"{target}.{a.name}") else target
                                    for a in node.names)
                elif isinstance(node, ast.Import):
                    deps.update(a.name for a in node.names if a.name.startswith("enformer_train"))
            graph[module] = deps - {module}
    return graph


def layer(module: str) -> int:
    found = [(len(name), i) for i, names in enumerate(LAYERS) for name in names
             if module == name or module.startswith(name + ".")]
    assert found, f"{module} is in no layer: add it to LAYERS (and to docs/architecture.md)"
    return max(found)[1]


def upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((m, d) for m, deps in graph.items() if m != "enformer_train" for d in deps if layer(d) > layer(m))


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    seen, on_path, found = set(), [], []

    def visit(module):
        if module in on_path:
            found.append(on_path[on_path.index(module):] + [module])
            return
        if module in seen or module not in graph:
            return
        seen.add(module)
        on_path.append(module)
        for dep in sorted(graph[module]):
            visit(dep)
        on_path.pop()

    for module in sorted(graph):
        visit(module)
    return found


def test_no_module_imports_a_layer_above_its_own():
    graph = import_graph()
    assert len(graph) > 60
    assert upward(graph) == []


def test_no_import_circle():
    assert circles(import_graph()) == []


def test_the_checks_see_an_upward_import_and_a_circle():
    graph = import_graph()
    graph["enformer_train.model.enformer"] = graph["enformer_train.model.enformer"] | {"enformer_train.train.trainer"}
    assert upward(graph) == [("enformer_train.model.enformer", "enformer_train.train.trainer")]
    assert any("enformer_train.model.enformer" in c for c in circles(graph))
