"""Replay a GCR2P country page's history through the real poll path and assert the exact events.

Each test serves one page's history, a poll at a time, from an aiohttp server on loopback: the
real :class:`~warnsvc.pipeline.Poller` fetches it (redirects, conditional GET and all), parses
it, detects changes against the real store (SQLite in ``tmp_path``) and records them. A
:class:`Step` says what the site serves for one poll and everything that poll must give: the
events, whether a change awaits confirmation, whether the poll failed (and the source turned
unhealthy), and where the situation's stored link points. The whole history is compared at once,
so a failure shows every poll.

The pages are the real captures in ``tests/fixtures/gcr2p`` (``MANIFEST.tsv`` gives each one's
address, date and level) and versions of them made here, named for what was changed: another
date or level line, another breadcrumb, the older layout moved to the current one. The
situations' histories are made up for the tests; only the captures are real.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from warnsvc.config import parse_config
from warnsvc.service import Components, build_components

GCR2P = Path(__file__).parents[1] / "fixtures" / "gcr2p"


def capture(name: str) -> str:
    return (GCR2P / name).read_text(encoding="utf-8")


INDEX = capture("03-index-populations-at-risk-new.txt")  # a real page without a risk line
VENEZUELA_PSS = capture("16-venezuela-regions-old-pss.txt")  # old layout, previously studied
SOUTH_SUDAN_OLD = capture("23-south-sudan-regions-old-v1.txt")  # old layout, undated
UKRAINE = capture("25-ukraine-2022-04-05.txt")  # current layout, no title line in the capture
ISRAEL_OPT = capture("29-israel-opt-2024-12-01.txt")  # current layout, titled, 1 December 2024


def redated(page: str, old: tuple[str, str], new: tuple[str, str]) -> str:
    """A current-layout page with another date line and risk level: ``(date, level)`` pairs."""
    (old_date, old_level), (new_date, new_level) = old, new
    assert f"{old_date}\nRisk Level: {old_level}\n" in page
    return page.replace(
        f"{old_date}\nRisk Level: {old_level}\n", f"{new_date}\nRisk Level: {new_level}\n", 1
    )


def israel_opt(day: str, level: str) -> str:
    return redated(ISRAEL_OPT, ("1 December 2024", "Current Crisis"), (day, level))


def ukraine(day: str, level: str) -> str:
    return redated(UKRAINE, ("5 April 2022", "Current Crisis"), (day, level))


def venezuela(level: str) -> str:
    """The old-layout Venezuela page with another breadcrumb level."""
    crumb = "Populations at Risk Previously Studied Situations"
    assert VENEZUELA_PSS.startswith(crumb)
    return VENEZUELA_PSS.replace(crumb, f"Populations at Risk {level}", 1)


def south_sudan_current(day: str, level: str) -> str:
    """The South Sudan page moved to the current layout: title, date, risk line, same text."""
    crumb = "Populations at Risk Current Crisis\n\nSouth Sudan\n"
    assert SOUTH_SUDAN_OLD.startswith(crumb)
    return SOUTH_SUDAN_OLD.replace(crumb, f"South Sudan\n\n{day}\nRisk Level: {level}\n", 1)


# -- the site ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    body: str = ""
    status: int = 200
    content_type: str = "text/plain"
    location: str | None = None
    """The path a redirect points to (sent as an absolute URL, as sites do)."""
    etag: str | None = None


def page(body: str, *, etag: str | None = None) -> Reply:
    return Reply(body=body, etag=etag)


def moved(path: str) -> Reply:
    return Reply(status=301, location=path)


GONE = Reply(status=404, body="Not Found")
SERVER_ERROR = Reply(status=500, body="Internal Server Error", content_type="text/html")
EMPTY = Reply(body="", content_type="text/html")


class ReplaySite:
    """Replies by path; a step replaces some of them. Conditional GET honours ``etag``."""

    def __init__(self) -> None:
        self.replies: dict[str, Reply] = {}
        self.base = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        reply = self.replies.get(request.path)
        if reply is None:
            raise web.HTTPNotFound()
        if reply.location is not None:
            target = str(request.url.with_path(reply.location))
            return web.Response(status=reply.status, headers={"Location": target})
        headers = {"ETag": reply.etag} if reply.etag else {}
        if reply.etag and request.headers.get("If-None-Match") == reply.etag:
            return web.Response(status=304, headers=headers)
        return web.Response(
            text=reply.body,
            status=reply.status,
            headers=headers,
            content_type=reply.content_type,
            charset="utf-8",
        )


@pytest.fixture
async def replay_site(aiohttp_server: Any) -> ReplaySite:
    site = ReplaySite()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", site.handle)
    server = await aiohttp_server(app)
    site.base = str(server.make_url("")).rstrip("/")
    return site


# -- the harness -------------------------------------------------------------------------------

Ev = tuple[str, str, str | None, str | None]
"""An event as ``(type, situation, previous level, level)``."""
Seen = tuple[str, str | None, bool, tuple[Ev, ...], bool, str | None]
"""One poll as ``(note, error, healthy, events, pending, link)``."""


@dataclass(frozen=True)
class Step:
    """One poll: what the site serves, and what the poll must give."""

    note: str
    serve: Mapping[str, Reply]
    events: tuple[Ev, ...] = ()
    pending: bool = False
    """A change awaits confirmation after this poll."""
    failed: str | None = None
    """The poll fails (the source is unhealthy, nothing is written); its error says this."""
    link: str | None = None
    """The path the situation's stored link points to after this poll, when checked."""


def history(steps: Sequence[Step]) -> list[Seen]:
    """What each step expects, in the form :func:`replay` reports."""
    return [(s.note, s.failed, s.failed is None, s.events, s.pending, s.link) for s in steps]


async def replay(
    parts: Components, site: ReplaySite, steps: Sequence[Step], situation: str
) -> list[Seen]:
    """Serve and poll each step; report what each poll gave, in the form of :func:`history`."""
    seen: list[Seen] = []
    for step in steps:
        site.replies.update(step.serve)
        report = await parts.poller.poll("page")
        error = report.error
        if error is not None and step.failed is not None and step.failed in error:
            error = step.failed
        health = await parts.store.source_health("page")
        events = tuple(
            (
                e.type.value,
                e.situation,
                e.previous_level.id if e.previous_level else None,
                e.level.id if e.level else None,
            )
            for e in report.events
        )
        link = None
        if step.link is not None:
            state = (await parts.store.situation_states("gcr2p")).get(situation)
            link = state.url.removeprefix(site.base) if state and state.url else None
        healthy = health is not None and health.healthy
        seen.append((step.note, error, healthy, events, bool(report.pending), link))
    return seen


async def page_source(tmp_path: Path, site: ReplaySite, path: str) -> Components:
    """The real components with one ``gcr2p-page`` source (id ``page``) watching ``path``."""
    text = f"""
storage: {{url: "sqlite+aiosqlite:///{tmp_path}/replay.db"}}
detection: {{confirmations: 2, confirm_delay: 1s}}
feeds: {{dir: "{tmp_path}/feeds"}}
sources:
  - id: page
    kind: gcr2p-page
    url: {site.base}{path}
    fetch: {{timeout: 2s, retries: 0}}
"""
    return await build_components(parse_config(text, filename="replay.yaml", environ={}))


async def check(
    tmp_path: Path, site: ReplaySite, path: str, situation: str, steps: Sequence[Step]
) -> None:
    parts = await page_source(tmp_path, site, path)
    try:
        assert await replay(parts, site, steps, situation) == history(steps)
        stored = await parts.store.recent_events(limit=1000)
        expected = [e for s in steps for e in s.events]
        assert [(p["type"], p["situation"]["id"]) for p in reversed(stored)] == [
            (e[0], e[1]) for e in expected
        ]
    finally:
        await parts.close()


# -- histories ---------------------------------------------------------------------------------

OPT = "/countries/israel-and-the-occupied-palestinian-territory"
OPT_ID = "gcr2p:israel-and-the-occupied-palestinian-territory"


async def test_dated_versions_glitches_and_failures_of_one_page(
    tmp_path: Path, replay_site: ReplaySite
) -> None:
    steps = [
        Step("baseline at Imminent Risk", {OPT: page(israel_opt("1 March 2024", "Imminent Risk"))}),
        Step("the same page again", {}),
        Step(
            "a newer date at the same level",
            {OPT: page(israel_opt("1 June 2024", "Imminent Risk"))},
            events=(("situation.updated", OPT_ID, "imminent-risk", "imminent-risk"),),
        ),
        Step("the real page, Current Crisis", {OPT: page(ISRAEL_OPT)}, pending=True),
        Step(
            "confirmed",
            {},
            events=(("risk.escalated", OPT_ID, "imminent-risk", "current-crisis"),),
            link=OPT,
        ),
        Step(
            "a stale copy at the older level, once",
            {OPT: page(israel_opt("1 June 2024", "Imminent Risk"))},
            pending=True,
        ),
        Step("the current page again", {OPT: page(ISRAEL_OPT)}),
        Step("the current page once more", {}),
        Step("a server error", {OPT: SERVER_ERROR}, failed="HTTP 500"),
        Step("an empty page", {OPT: EMPTY}, failed="no 'Risk Level:' line"),
        Step("a real page without a risk line", {OPT: page(INDEX)}, failed="no 'Risk Level:'"),
        Step("a page that is gone", {OPT: GONE}, failed="HTTP 404"),
        Step("back, unchanged", {OPT: page(ISRAEL_OPT)}),
    ]
    await check(tmp_path, replay_site, OPT, OPT_ID, steps)


async def test_a_failed_poll_in_the_middle_of_a_confirmation_does_not_confirm_it(
    tmp_path: Path, replay_site: ReplaySite
) -> None:
    steps = [
        Step("baseline", {OPT: page(israel_opt("1 March 2024", "Imminent Risk"))}),
        Step("Current Crisis, once", {OPT: page(ISRAEL_OPT)}, pending=True),
        Step("a server error", {OPT: SERVER_ERROR}, failed="HTTP 500"),
        Step("the old level again", {OPT: page(israel_opt("1 March 2024", "Imminent Risk"))}),
        Step("Current Crisis", {OPT: page(ISRAEL_OPT)}, pending=True),
        Step(
            "confirmed",
            {},
            events=(("risk.escalated", OPT_ID, "imminent-risk", "current-crisis"),),
        ),
    ]
    await check(tmp_path, replay_site, OPT, OPT_ID, steps)


SOUTH_SUDAN_OLD_PATH = "/regions/south_sudan"
SOUTH_SUDAN_NEW_PATH = "/countries/south-sudan/"
SOUTH_SUDAN = "gcr2p:south-sudan"


async def test_the_sites_move_is_followed_and_is_no_news(
    tmp_path: Path, replay_site: ReplaySite
) -> None:
    """The site moved from ``/regions/<slug>`` (old layout) to ``/countries/<slug>/`` and
    answers the old address with a 301: the source follows it, the situation stays the same,
    and its link becomes the new address."""
    moves = {SOUTH_SUDAN_OLD_PATH: moved(SOUTH_SUDAN_NEW_PATH)}
    steps = [
        Step(
            "the old layout, undated",
            {SOUTH_SUDAN_OLD_PATH: page(SOUTH_SUDAN_OLD)},
            link=SOUTH_SUDAN_OLD_PATH,
        ),
        Step(
            "moved: 301 to the current layout, same level",
            {
                **moves,
                SOUTH_SUDAN_NEW_PATH: page(south_sudan_current("1 June 2022", "Current Crisis")),
            },
            link=SOUTH_SUDAN_NEW_PATH,
        ),
        Step(
            "a newer date behind the redirect",
            {SOUTH_SUDAN_NEW_PATH: page(south_sudan_current("1 September 2022", "Current Crisis"))},
            events=(("situation.updated", SOUTH_SUDAN, "current-crisis", "current-crisis"),),
            link=SOUTH_SUDAN_NEW_PATH,
        ),
        Step(
            "Imminent Risk behind the redirect",
            {SOUTH_SUDAN_NEW_PATH: page(south_sudan_current("1 December 2022", "Imminent Risk"))},
            pending=True,
        ),
        Step(
            "confirmed",
            {},
            events=(("risk.deescalated", SOUTH_SUDAN, "current-crisis", "imminent-risk"),),
            link=SOUTH_SUDAN_NEW_PATH,
        ),
    ]
    await check(tmp_path, replay_site, SOUTH_SUDAN_OLD_PATH, SOUTH_SUDAN, steps)


OPT_RENAMED = "/countries/israel-and-the-occupied-palestinian-territories/"
UKRAINE_PATH = "/countries/ukraine/"
UKRAINE_RENAMED = "/countries/russia-ukraine/"
UKRAINE_ID = "gcr2p:ukraine"


async def test_a_renamed_slug_is_the_same_situation(
    tmp_path: Path, replay_site: ReplaySite
) -> None:
    """A situation is keyed on its name, not its address (docs/sources.md): the site renaming
    the page's slug, and redirecting the old one, is no event; the link follows the page."""
    steps = [
        Step("baseline", {OPT: page(ISRAEL_OPT)}, link=OPT),
        Step(
            "the slug renamed, the old one redirected",
            {OPT: moved(OPT_RENAMED), OPT_RENAMED: page(ISRAEL_OPT, etag='"v1"')},
            link=OPT_RENAMED,
        ),
        Step("not modified since", {}, link=OPT_RENAMED),
        Step(
            "a newer analysis at the new address",
            {OPT_RENAMED: page(israel_opt("1 March 2025", "Current Crisis"), etag='"v2"')},
            events=(("situation.updated", OPT_ID, "current-crisis", "current-crisis"),),
            link=OPT_RENAMED,
        ),
    ]
    await check(tmp_path, replay_site, OPT, OPT_ID, steps)


async def test_a_renamed_slug_of_a_page_without_a_title_is_the_same_situation(
    tmp_path: Path, replay_site: ReplaySite
) -> None:
    """The Ukraine capture has no title line: its name comes from the address. A renamed slug
    must not turn it into another situation ("Russia Ukraine", listed anew)."""
    steps = [
        Step("baseline", {UKRAINE_PATH: page(UKRAINE)}, link=UKRAINE_PATH),
        Step(
            "the slug renamed, the old one redirected",
            {UKRAINE_PATH: moved(UKRAINE_RENAMED), UKRAINE_RENAMED: page(UKRAINE, etag='"v1"')},
            link=UKRAINE_RENAMED,
        ),
        Step("again", {}, link=UKRAINE_RENAMED),
        Step("not modified", {}, link=UKRAINE_RENAMED),
        Step(
            "Imminent Risk at the new address",
            {UKRAINE_RENAMED: page(ukraine("1 June 2022", "Imminent Risk"), etag='"v2"')},
            pending=True,
        ),
        Step(
            "confirmed",
            {},
            events=(("risk.deescalated", UKRAINE_ID, "current-crisis", "imminent-risk"),),
            link=UKRAINE_RENAMED,
        ),
    ]
    await check(tmp_path, replay_site, UKRAINE_PATH, UKRAINE_ID, steps)


VENEZUELA_PATH = "/regions/venezuela"
VENEZUELA = "gcr2p:venezuela"


async def test_a_page_that_says_previously_studied_delists_and_its_return_lists(
    tmp_path: Path, replay_site: ReplaySite
) -> None:
    """Issue 11, item 1: a single page's "Previously Studied Situations" is a delisting from a
    ``gcr2p-page`` source too, and the page's return at Serious Concern is a listing, not a
    de-escalation from Imminent Risk."""
    steps = [
        Step("assessed at Imminent Risk", {VENEZUELA_PATH: page(venezuela("Imminent Risk"))}),
        Step(
            "previously studied (the real page)",
            {VENEZUELA_PATH: page(VENEZUELA_PSS)},
            pending=True,
        ),
        Step(
            "confirmed",
            {},
            events=(("situation.delisted", VENEZUELA, "imminent-risk", None),),
        ),
        Step("still previously studied", {}),
        Step("a server error", {VENEZUELA_PATH: SERVER_ERROR}, failed="HTTP 500"),
        Step("still previously studied", {VENEZUELA_PATH: page(VENEZUELA_PSS)}),
        Step(
            "back at Serious Concern",
            {VENEZUELA_PATH: page(venezuela("Serious Concern"))},
            pending=True,
        ),
        Step(
            "confirmed",
            {},
            events=(("situation.listed", VENEZUELA, None, "serious-concern"),),
        ),
    ]
    await check(tmp_path, replay_site, VENEZUELA_PATH, VENEZUELA, steps)


async def test_a_previously_studied_page_for_one_poll_is_no_event(
    tmp_path: Path, replay_site: ReplaySite
) -> None:
    steps = [
        Step("assessed", {VENEZUELA_PATH: page(venezuela("Imminent Risk"))}),
        Step("previously studied, once", {VENEZUELA_PATH: page(VENEZUELA_PSS)}, pending=True),
        Step("assessed again", {VENEZUELA_PATH: page(venezuela("Imminent Risk"))}),
        Step("and again", {}),
    ]
    await check(tmp_path, replay_site, VENEZUELA_PATH, VENEZUELA, steps)
