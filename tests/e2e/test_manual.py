"""`warnsvc publish` and `warnsvc retract`: operators' announcements and corrections."""

from __future__ import annotations

import json
from pathlib import Path

import feedparser
import pytest

from tests.conftest import Site, country_html, index_html
from tests.e2e.test_cli import awarnsvc, write_config

pytestmark = pytest.mark.slow


def publish_page(site: Site, level: str) -> None:
    site.set("/populations-at-risk/", index_html({level: [("mali", "Mali")]}))
    site.set("/countries/mali/", country_html("Mali", level=level))


async def test_publish_then_retract_reach_the_feeds_and_the_state(tmp_path: Path, site: Site):
    publish_page(site, "Imminent Risk")
    config = str(write_config(tmp_path, site.url("/populations-at-risk/")))
    assert (await awarnsvc("poll", "--once", "-c", config, cwd=tmp_path))[0] == 0

    code, out, err = await awarnsvc(
        "publish",
        "--situation",
        "gcr2p:mali",
        "--level",
        "Current Crisis",
        "--note",
        "Field reports confirm mass killings.",
        "-c",
        config,
        cwd=tmp_path,
    )
    assert code == 0, err
    assert out.split()[:2] == ["risk.escalated", "gcr2p:mali"]
    published = out.split()[-1]

    # The page catches up: no second alert, because the state already says Current Crisis.
    publish_page(site, "Current Crisis")
    code, out, err = await awarnsvc("poll", "--once", "-c", config, cwd=tmp_path)
    assert code == 0 and out == "", err
    feed = feedparser.parse(tmp_path / "feeds" / "alerts.atom")
    assert [e.title for e in feed.entries] == ["[manual] Mali: Imminent Risk -> Current Crisis"]
    item = json.loads((tmp_path / "feeds" / "alerts.json").read_text())["items"][0]
    assert item["_warnsvc"]["manual"] is True
    assert item["_warnsvc"]["note"] == "Field reports confirm mass killings."

    code, out, err = await awarnsvc(
        "retract", published, "--note", "Reports were false.", "-c", config, cwd=tmp_path
    )
    assert code == 0, err
    assert out.split()[:2] == ["event.retracted", "gcr2p:mali"]
    code, out, err = await awarnsvc("feeds", "rebuild", "-c", config, cwd=tmp_path)
    assert code == 0, err
    titles = [e.title for e in feedparser.parse(tmp_path / "feeds" / "alerts.atom").entries]
    assert titles[0] == f"[manual] Mali: correction: event {published} is retracted"
    code, out, err = await awarnsvc("events", "--json", "-c", config, cwd=tmp_path)
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["type"] for e in events] == ["event.retracted", "risk.escalated"]
    assert events[0]["retracts"] == published
    code, out, err = await awarnsvc("status", "--json", "-c", config, cwd=tmp_path)
    [mali] = json.loads(out)["situations"]
    assert mali["level"] == "imminent-risk"  # the operator's own announcement was undone


async def test_publish_with_unknown_names_lists_the_choices(tmp_path: Path, site: Site):
    publish_page(site, "Imminent Risk")
    config = str(write_config(tmp_path, site.url("/populations-at-risk/")))
    await awarnsvc("poll", "--once", "-c", config, cwd=tmp_path)
    code, out, err = await awarnsvc(
        "publish",
        "--situation",
        "gcr2p:atlantis",
        "--level",
        "current-crisis",
        "--note",
        "x",
        "-c",
        config,
        cwd=tmp_path,
    )
    assert code == 2 and out == ""
    assert "unknown situation 'gcr2p:atlantis'; known: gcr2p:mali" in err
    code, out, err = await awarnsvc(
        "publish",
        "--situation",
        "gcr2p:mali",
        "--level",
        "apocalypse",
        "--note",
        "x",
        "-c",
        config,
        cwd=tmp_path,
    )
    assert code == 2
    assert "choose one of: serious-concern, imminent-risk, current-crisis" in err
    code, out, err = await awarnsvc("retract", "evt_nope", "-c", config, cwd=tmp_path)
    assert code == 2 and "no event 'evt_nope'" in err
    code, out, err = await awarnsvc("events", "-c", config, cwd=tmp_path)
    assert out.strip() == "no events yet"
