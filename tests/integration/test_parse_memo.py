"""An unchanged document is not parsed twice: the sources' parse memo, through the real
pipeline, against a real loopback site with and without validators."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Site, country_html, index_html
from warnsvc.config import parse_config
from warnsvc.service import Components, build_components
from warnsvc.sources.base import RulesSource
from warnsvc.sources.gcr2p import IndexSource


def page_html(name: str, level: str, filler: str = "") -> str:
    return f"<html><body><h1>{name}</h1><p>{filler}</p><p>Risk Level: {level}</p></body></html>"


async def components(tmp_path: Path, sources: str) -> Components:
    text = f"""
storage: {{url: "sqlite+aiosqlite:///{tmp_path}/t.db"}}
detection: {{confirmations: 2, confirm_delay: 1s}}
feeds: {{dir: "{tmp_path}/feeds"}}
sources:
{sources}"""
    return await build_components(parse_config(text, filename="test.yaml"))


@pytest.fixture
async def page_parts(tmp_path: Path, site: Site) -> AsyncIterator[Components]:
    parts = await components(
        tmp_path,
        f"""  - id: mali
    kind: page
    url: {site.url("/mali")}
    scale: gcr2p
    fields:
      title: {{css: h1}}
      level: {{regex: "Risk Level: (.+)"}}
    fetch: {{timeout: 5s, retries: 0}}
""",
    )
    yield parts
    await parts.close()


def count_parses(source: RulesSource[Any]) -> list[int]:
    """Count the calls of the source's own parse function (which still does the work)."""
    calls = [0]
    parse = source.parse

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return parse(*args, **kwargs)

    source.parse = counted
    return calls


async def test_a_304_reuses_what_the_page_said(page_parts: Components, site: Site) -> None:
    site.set("/mali", page_html("Mali", "Imminent Risk"), etag='"v1"')
    source = page_parts.sources["mali"]
    assert isinstance(source, RulesSource)
    calls = count_parses(source)

    first = await page_parts.poller.poll("mali")
    second = await page_parts.poller.poll("mali")
    assert first.ok and second.ok
    assert site.hits["/mali"] == 2  # fetched twice, the second answered 304
    assert calls == [1]
    assert second.observations == first.observations
    assert [o.level for o in second.observations] == ["imminent-risk"]


async def test_a_changed_page_is_parsed_again(page_parts: Components, site: Site) -> None:
    site.set("/mali", page_html("Mali", "Imminent Risk"), etag='"v1"')
    source = page_parts.sources["mali"]
    assert isinstance(source, RulesSource)
    calls = count_parses(source)
    await page_parts.poller.poll("mali")

    site.set("/mali", page_html("Mali", "Current Crisis"), etag='"v2"')
    report = await page_parts.poller.poll("mali")
    assert calls == [2]
    assert [o.level for o in report.observations] == ["current-crisis"]
    assert report.pending  # the escalation awaits its confirming fetch, as ever


async def test_the_same_bytes_without_validators_are_not_parsed_again(
    page_parts: Components, site: Site
) -> None:
    site.set("/mali", page_html("Mali", "Serious Concern"))  # no ETag: every answer a 200
    source = page_parts.sources["mali"]
    assert isinstance(source, RulesSource)
    calls = count_parses(source)
    for _ in range(3):
        report = await page_parts.poller.poll("mali")
        assert report.ok and [o.level for o in report.observations] == ["serious-concern"]
    assert site.hits["/mali"] == 3 and calls == [1]

    site.set("/mali", page_html("Mali", "Serious Concern", filler="A new paragraph."))
    await page_parts.poller.poll("mali")
    assert calls == [2]


async def test_a_failed_parse_is_not_kept(page_parts: Components, site: Site) -> None:
    site.set("/mali", "<html><body><h1>Mali</h1><p>No level here.</p></body></html>")
    source = page_parts.sources["mali"]
    assert isinstance(source, RulesSource)
    calls = count_parses(source)
    assert not (await page_parts.poller.poll("mali")).ok
    assert not (await page_parts.poller.poll("mali")).ok
    assert calls == [2]  # each broken read is read again, and reported again


async def test_what_a_poll_returns_is_its_own(page_parts: Components, site: Site) -> None:
    site.set("/mali", page_html("Mali", "Imminent Risk"), etag='"v1"')
    source = page_parts.sources["mali"]
    first = await source.poll()
    first.clear()  # a caller changing its list changes nothing kept
    assert [o.level for o in await source.poll()] == ["imminent-risk"]


async def test_the_index_forgets_pages_it_no_longer_links(tmp_path: Path, site: Site) -> None:
    parts = await components(
        tmp_path,
        f"""  - id: gcr2p
    kind: gcr2p-index
    url: {site.url("/populations-at-risk/")}
    follow_pages: true
    page_delay: 0s
    fetch: {{timeout: 5s, retries: 0}}
""",
    )
    try:
        site.set("/countries/mali/", country_html("Mali", level="Imminent Risk"), etag='"m"')
        site.set("/countries/sudan/", country_html("Sudan", level="Current Crisis"), etag='"s"')
        site.set(
            "/populations-at-risk/",
            index_html(
                {"Imminent Risk": [("mali", "Mali")], "Current Crisis": [("sudan", "Sudan")]}
            ),
            etag='"i1"',
        )
        source = parts.sources["gcr2p"]
        assert isinstance(source, IndexSource)
        first = await parts.poller.poll("gcr2p")
        again = await parts.poller.poll("gcr2p")  # every document answered 304
        assert again.ok and again.observations == first.observations
        assert len(source.memo) == 3  # the index and both pages

        site.set(
            "/populations-at-risk/",
            index_html({"Imminent Risk": [("mali", "Mali")]}),
            etag='"i2"',
        )
        report = await parts.poller.poll("gcr2p")
        assert report.ok and len(source.memo) == 2  # Sudan's page is no longer kept
        assert [o.situation for o in report.observations] == ["gcr2p:mali"]
    finally:
        await parts.close()
