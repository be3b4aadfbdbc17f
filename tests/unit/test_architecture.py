"""The store is the one door to the database: no module outside ``warnsvc.store`` holds SQL.

Checked on the source text with :mod:`ast`, so a new module that reaches past the store's
interface (imports SQLAlchemy or the schema, or uses a store's ``engine``) fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "warnsvc"
OUTSIDE = sorted(p for p in PACKAGE.rglob("*.py") if PACKAGE / "store" not in p.parents)
URL_PARSING = {("config.py", "sqlalchemy.engine"), ("config.py", "sqlalchemy.exc")}
"""config.py parses ``storage.url`` with SQLAlchemy's URL parser: no connection, no SQL."""


def imported(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", OUTSIDE, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_sql_outside_the_store(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    name = str(path.relative_to(PACKAGE))
    reached = {
        module
        for module in imported(tree)
        if module.split(".")[0] == "sqlalchemy" or module == "warnsvc.store.schema"
    }
    allowed = {module for file, module in URL_PARSING if file == name}
    reached = {m for m in reached if not any(m == a or m.startswith(f"{a}.") for a in allowed)}
    assert reached == set(), f"{name} reaches the database past the store: {sorted(reached)}"
    engines = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in ("engine", "sync_engine")
    ]
    assert engines == [], f"{name} uses a store's engine at line(s) {engines}"


def test_the_check_sees_what_it_looks_for() -> None:
    """The two probes above find a violation when there is one."""
    tree = ast.parse("from warnsvc.store import schema\nimport sqlalchemy\nx = store.engine\n")
    assert {"warnsvc.store.schema", "sqlalchemy"} <= imported(tree)
    assert any(isinstance(n, ast.Attribute) and n.attr == "engine" for n in ast.walk(tree))
