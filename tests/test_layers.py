"""The import graph keeps its layers: no cycles, nothing in model/ or images/ reaching up, families apart."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "clip_service"
FAMILIES = ("embed", "zeroshot", "openai", "weaviate")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, *, top_level_only: bool) -> set[str]:
    """The clip_service modules ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("clip_service")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            if base.startswith("clip_service"):
                # "from . import current" names a module; "from .x import name" names x.
                found |= {f"{base}.{alias.name}" if module_exists(f"{base}.{alias.name}") else base
                          for alias in node.names}
    return found


def module_exists(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def graph(*, top_level_only: bool) -> dict[str, set[str]]:
    return {name: imports(path, top_level_only=top_level_only) for name, path in MODULES.items()}


@pytest.mark.parametrize("layer", ["model", "images", "cache"])
def test_lower_layers_never_import_the_web_or_ops(layer):
    for name, targets in graph(top_level_only=False).items():
        if name.startswith(f"clip_service.{layer}"):
            upward = {t for t in targets if t.startswith(("clip_service.web", "clip_service.ops", "clip_service.app",
                                                          "clip_service.bulk", "clip_service.cli"))}
            assert not upward, f"{name} imports {sorted(upward)}"


def test_no_import_cycles_at_module_level():
    edges = graph(top_level_only=True)
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target] if target in path else [node, target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def test_each_api_family_has_the_same_two_files_and_imports_no_other_family():
    for family in FAMILIES:
        folder = PACKAGE / "web" / family
        assert {p.name for p in folder.glob("*.py")} == {"__init__.py", "views.py", "schemas.py"}, family
    for name, targets in graph(top_level_only=False).items():
        for family in FAMILIES:
            if name.startswith(f"clip_service.web.{family}."):
                others = {t for t in targets for other in FAMILIES
                          if other != family and t.startswith(f"clip_service.web.{other}")}
                assert not others, f"{name} imports {sorted(others)}"


def test_the_web_reaches_the_embedder_and_the_fetcher_only_through_the_pipeline():
    # (An exception type such as model.batching.Overloaded may still be named, to render it.)
    for name, targets in graph(top_level_only=False).items():
        if name.startswith("clip_service.web."):
            direct = {t for t in targets if t in ("clip_service.model.embedder", "clip_service.images.fetcher")}
            assert not direct, f"{name} imports {sorted(direct)}"
