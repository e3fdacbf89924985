"""Reading launch files as syntax trees, for tests that must run without ``launch`` installed."""

from __future__ import annotations

import ast
from pathlib import Path


def parse(path: Path) -> ast.Module:
    return ast.parse(Path(path).read_text(), filename=str(path))


def calls(tree: ast.AST, name: str) -> list[ast.Call]:
    """Every call of a function or method named ``name`` in ``tree``."""
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", getattr(node.func, "attr", None)) == name
    ]


def keyword(call: ast.Call, name: str):
    """The expression passed as ``name=`` to ``call``, or None."""
    return next((k.value for k in call.keywords if k.arg == name), None)
