"""The layers import downward only: adapters (the OpenAI contract and the pipeline's
shared types, at the bottom) import neither the engines nor the gateway, and the engines
do not import the gateway. Read from the source (every import statement, including those
inside functions), so a new upward import fails here, not in a review."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

FORBIDDEN = {"adapters": ("engines", "gateway"), "engines": ("gateway",)}


def imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(layer):
    above = FORBIDDEN[layer]
    sources = sorted((ROOT / layer).rglob("*.py"))
    assert sources, f"no sources under {layer}/"
    upward = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in sources
        for line, module in imports(path)
        if module.split(".")[0] in above
    ]
    assert upward == []
