"""``warnsvc parse`` with the generic kinds, as a real process on real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, Site
from tests.e2e.test_cli import awarnsvc, warnsvc

pytestmark = pytest.mark.slow

CAP_FIELDS = {"msg_type", "urgency", "certainty", "expires", "references"}


def lines(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_parse_kind_cap_prints_the_documented_fields() -> None:
    result = warnsvc("parse", "--kind", "cap", str(FIXTURES / "cap" / "v1dot2_appendix_adot3.xml"))
    assert result.returncode == 0, result.stderr
    [alert] = lines(result.stdout)
    assert {"situation", "name", "level", "status", "date", "url"} | CAP_FIELDS <= alert.keys()
    assert (alert["situation"], alert["level"], alert["status"]) == (
        "cap:tri13970876-1",
        "minor",
        "assessed",
    )
    assert (alert["msg_type"], alert["urgency"], alert["certainty"]) == (
        "update",
        "Past",
        "Observed",
    )
    assert alert["references"] == ["trinet@caltech.edu,TRI13970876.1,2003-06-11T20:30:00-07:00"]


def test_parse_kind_cap_on_a_cap_1_1_cancel() -> None:
    result = warnsvc("parse", "--kind", "cap", str(FIXTURES / "cap" / "written-cap-1.1-cancel.xml"))
    assert result.returncode == 0, result.stderr
    [cancel] = lines(result.stdout)
    assert (cancel["level"], cancel["status"], cancel["msg_type"]) == (None, "cancelled", "cancel")


def test_parse_source_gdacs_prints_green_orange_red() -> None:
    path = FIXTURES / "gdacs" / "written-rss-three-levels.xml"
    result = warnsvc("parse", "--source", "gdacs", str(path))
    assert result.returncode == 0, result.stderr
    assert [(o["situation"], o["level"]) for o in lines(result.stdout)] == [
        ("gdacs:eq1221830", "green"),
        ("gdacs:dr1012728", "orange"),
        ("gdacs:tc1000641", "red"),
    ]


def test_parse_source_gdacs_on_the_real_capture() -> None:
    completed = warnsvc(
        "parse", "--source", "gdacs", str(FIXTURES / "gdacs" / "completed-rss-24h_2019-12-30.xml")
    )
    assert completed.returncode == 0, completed.stderr
    assert [(o["situation"], o["level"]) for o in lines(completed.stdout)] == [
        ("gdacs:dr1012728", "orange")
    ]
    truncated = warnsvc(
        "parse",
        "--source",
        "gdacs",
        str(FIXTURES / "gdacs" / "exxamalte_gdacs-rss-24h_2019-12-30.prefix.xml"),
    )
    assert truncated.returncode == 1 and truncated.stdout == ""
    [message] = truncated.stderr.splitlines()
    assert "not well-formed XML" in message and "truncated?" in message


def test_parse_reports_a_skipped_item_on_stderr(tmp_path: Path) -> None:
    body = (FIXTURES / "gdacs" / "written-rss-three-levels.xml").read_text(encoding="utf-8")
    path = tmp_path / "rss.xml"
    path.write_text(body.replace(">Red</gdacs", ">Purple</gdacs"), encoding="utf-8")
    result = warnsvc("parse", "--source", "gdacs", str(path))
    assert result.returncode == 0
    assert [o["level"] for o in lines(result.stdout)] == ["green", "orange"]
    assert "skipped: item 'TC1000641': level word 'Purple'" in result.stderr


async def test_parse_a_page_whose_selector_matches_nothing_says_so(
    tmp_path: Path, site: Site
) -> None:
    config = tmp_path / "warnsvc.yaml"
    config.write_text(
        """sources:
  - id: watch
    kind: page
    url: https://example.org/watch
    scale: gcr2p
    block: article.situation
    fields: {title: {css: h2}, level: {css: .risk}}
""",
        encoding="utf-8",
    )
    site.set("/watch", "<html><body><div><h2>Mali</h2></div></body></html>")
    code, out, err = await awarnsvc(
        "parse", "-c", str(config), "--source", "watch", site.url("/watch"), cwd=tmp_path
    )
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"warnsvc: {site.url('/watch')}: block selector 'article.situation' matched nothing"
    ]


def test_parse_refuses_an_entity_bomb(tmp_path: Path) -> None:
    path = tmp_path / "bomb.xml"
    path.write_text(
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
        "<alert>&b;</alert>",
        encoding="utf-8",
    )
    result = warnsvc("parse", "--kind", "cap", str(path))
    assert result.returncode == 1 and result.stdout == ""
    assert "document type declaration" in result.stderr and "refused" in result.stderr
