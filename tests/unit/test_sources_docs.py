"""docs/sources.md: every YAML example loads, and parses its sample document as documented."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from warnsvc.config import parse_config
from warnsvc.sources.registry import get_kind

DOCS = Path(__file__).parents[2] / "docs" / "sources.md"


def blocks() -> list[tuple[str, str]]:
    return re.findall(r"^```(\w*)\n(.*?)^```", DOCS.read_text(encoding="utf-8"), re.M | re.S)


def examples() -> list[tuple[str, str, str]]:
    """(yaml, document, expected JSON lines) for every worked example."""
    found = []
    all_blocks = blocks()
    for index, (lang, body) in enumerate(all_blocks):
        if lang == "yaml" and "# example: full" in body:
            (_, document), (out_lang, expected) = all_blocks[index + 1 : index + 3]
            assert out_lang == "jsonl", f"example {index} is not followed by its output"
            found.append((body, document, expected))
    return found


def test_every_kind_has_a_worked_example() -> None:
    kinds = {
        source.kind
        for body, _, _ in examples()
        for source in parse_config(body, filename="sources.md").sources
    }
    assert kinds == {"feed", "cap", "page", "json"}


@pytest.mark.parametrize("example", examples(), ids=lambda e: e[0].split("kind: ")[1].split()[0])
def test_example_parses_its_document_as_documented(example: tuple[str, str, str]) -> None:
    text, document, expected = example
    settings = parse_config(text, filename="sources.md", environ={})
    [source] = settings.sources
    kind = get_kind(source.kind)
    assert kind.parse_with is not None
    parse = kind.parse_with(source)
    observations = parse(
        document,
        url=source.url,
        content_type=None,
        scale=settings.scale_map()[source.scale],
        namespace=source.namespace,
    )
    printed = [o.to_json() for o in observations if o.problem is None]
    assert printed == [json.loads(line) for line in expected.splitlines() if line.strip()]
