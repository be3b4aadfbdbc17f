"""The operator docs say what the code does about notices.

The kinds of notice the code records (every ``kind="..."`` given to a notice call) are exactly
the kinds docs/operations.md lists, and no page says operators cannot be alerted.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "warnsvc"
NOTICE_CALLS = {"record", "add_notice"}


def recorded_kinds() -> set[str]:
    """Every literal ``kind=`` passed to ``record(...)`` or ``add_notice(...)`` in the package."""
    kinds = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name not in NOTICE_CALLS:
                continue
            for keyword in node.keywords:
                if keyword.arg == "kind" and isinstance(keyword.value, ast.Constant):
                    kinds.add(str(keyword.value.value))
    return kinds


def documented_kinds() -> set[str]:
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    return set(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", text, flags=re.M))


def test_the_notice_kinds_in_the_docs_are_the_ones_the_code_records() -> None:
    kinds = recorded_kinds()
    assert {"source.unhealthy", "webhook.endpoint_disabled"} <= kinds  # the probe finds them
    assert documented_kinds() == kinds


def test_no_page_says_operators_cannot_be_alerted() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        text = " ".join(page.read_text(encoding="utf-8").split())
        assert "no channel that alerts operators" not in text, page.name
