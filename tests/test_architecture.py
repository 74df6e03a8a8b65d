"""The layering rules of docs/architecture.md, checked on the source itself."""

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PARTS = ("pipeline", "model", "preprocessing", "serving")
# What each part may import from the others (pipeline → model → preprocessing, pipeline → serving).
ALLOWED = {
    "pipeline": {"model", "preprocessing", "serving"},
    "model": {"preprocessing"},
    "preprocessing": set(),
    "serving": set(),
}
MAX_LINES = 600

pytestmark = pytest.mark.unit


def _sources(part: str) -> list[Path]:
    return sorted((REPO_ROOT / part).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text("utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("part", PARTS)
def test_imports_only_point_down(part):
    broken = [
        f"{path.relative_to(REPO_ROOT)} imports {name}"
        for path in _sources(part)
        for name in _imports(path)
        if name.split(".")[0] in PARTS and name.split(".")[0] not in ALLOWED[part] | {part}
    ]
    assert not broken, broken


@pytest.mark.parametrize("part", PARTS)
def test_no_source_file_over_the_limit(part):
    long = {
        str(path.relative_to(REPO_ROOT)): n
        for path in _sources(part)
        if (n := len(path.read_text("utf-8").splitlines())) > MAX_LINES
    }
    assert not long, long


def test_no_import_circles_between_modules():
    modules = {
        ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__"): path
        for part in PARTS
        for path in _sources(part)
    }
    graph = {
        name: {i for i in _imports(path) if i in modules and i != name} for name, path in modules.items()
    }

    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return [*trail, start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
        return None

    circles = [c for name in graph if (c := cycle_from(name))]
    assert not circles, circles[0]
