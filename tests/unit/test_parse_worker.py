"""Parsing in worker processes: results, errors, limits, and recovery after a stopped parse.

These run real worker processes (no fakes): a parse that overruns is really killed.
"""

from __future__ import annotations

import asyncio

import pytest

from warnsvc.errors import SourceParseError, UnknownLevelError
from warnsvc.model import BUILTIN_SCALES, GCR2P_SCALE, Observation, Scale
from warnsvc.sources.feed import parse_feed
from warnsvc.sources.gcr2p import parse_country_page
from warnsvc.sources.worker import (
    DEFAULT_LIMITS,
    INLINE_MAX,
    ParseLimitError,
    ParseLimits,
    parse_bounded,
    parse_bounded_sync,
)
from warnsvc.sources.xmlsafe import MAX_DEPTH

pytestmark = pytest.mark.slow

GDACS: Scale = {scale.id: scale for scale in BUILTIN_SCALES}["gdacs"]


def feed(entries: int) -> str:
    """An RSS feed of ``entries`` GDACS-like items: feedparser needs seconds for 8,000."""
    items = "".join(
        f"<item><title>Situation {n}</title><guid>urn:s:{n}</guid><category>Orange</category>"
        f"<description>Flooding in district {n}; several thousand people moved.</description>"
        "</item>"
        for n in range(entries)
    )
    return (
        f'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>{items}</channel></rss>'
    )


def read_feed(body: str, limits: ParseLimits = DEFAULT_LIMITS) -> list[Observation]:
    return parse_bounded_sync(parse_feed, body, limits=limits, scale=GDACS, namespace="f")


def test_a_large_document_parses_in_a_worker_as_it_does_in_process() -> None:
    body = feed(400)
    assert len(body) > INLINE_MAX  # so it goes to a worker
    assert read_feed(body) == parse_feed(body, scale=GDACS, namespace="f")


def test_a_parser_error_comes_back_as_itself_with_its_details() -> None:
    filler = "<p>" + "Background paragraph about the situation. " * 2000 + "</p>"
    page = f"<html><body><h1>Mali</h1><p>Risk Level: Somewhat Worried</p>{filler}</body></html>"
    assert len(page) > INLINE_MAX
    with pytest.raises(UnknownLevelError) as caught:
        parse_bounded_sync(parse_country_page, page, content_type="text/html", scale=GCR2P_SCALE)
    assert caught.value.name == "Somewhat Worried"
    assert caught.value.scale == "gcr2p"


def test_a_parse_past_its_time_limit_is_stopped_and_the_next_parse_works() -> None:
    big = feed(8000)  # feedparser needs seconds for this
    with pytest.raises(ParseLimitError, match=r"parse\.timeout"):
        read_feed(big, ParseLimits(timeout=0.2))
    assert len(read_feed(feed(400))) == 400


def test_a_parse_past_its_memory_limit_is_stopped_and_the_next_parse_works() -> None:
    big = feed(8000)
    with pytest.raises(ParseLimitError, match=r"parse\.max_memory"):
        read_feed(big, ParseLimits(max_memory=4 * 1024 * 1024))
    assert len(read_feed(feed(400))) == 400


async def test_a_cancelled_parse_kills_its_worker_and_the_pool_recovers() -> None:
    task = asyncio.create_task(parse_bounded(parse_feed, feed(8000), scale=GDACS, namespace="f"))
    await asyncio.sleep(0.3)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # both workers of the pool are free again: two parses at once succeed
    results = await asyncio.gather(
        parse_bounded(parse_feed, feed(400), scale=GDACS, namespace="f"),
        parse_bounded(parse_feed, feed(401), scale=GDACS, namespace="f"),
    )
    assert [len(r) for r in results] == [400, 401]


def test_a_depth_bomb_is_refused_naming_the_limit() -> None:
    depth = 400_000
    body = (
        '<?xml version="1.0"?><rss version="2.0"><channel><item><guid>a</guid>'
        + "<x>" * depth
        + "y"
        + "</x>" * depth
        + "</item></channel></rss>"
    )
    with pytest.raises(SourceParseError, match=f"nested deeper than {MAX_DEPTH}"):
        read_feed(body)


def test_nesting_up_to_the_limit_is_read() -> None:
    depth = MAX_DEPTH - 3  # under rss, channel and item: the deepest element is at the limit
    inner = "<x>" * depth + "deep" + "</x>" * depth
    body = (
        '<?xml version="1.0"?><rss version="2.0"><channel><item><guid>a</guid>'
        f"<title>A</title><category>Orange</category>{inner}</item></channel></rss>"
    )
    [observation] = parse_feed(body, scale=GDACS, namespace="f")
    assert observation.situation == "f:a"
