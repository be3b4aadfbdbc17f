"""``warnsvc demo``: the whole flow offline, in a few seconds.

A replay server on loopback serves GCR2P pages built from the bundled fixtures and changes them
stage by stage: a baseline, a new situation listed, a one-poll glitch that confirmation
filters out, an escalation and a de-escalation. The real pipeline polls it (fetch, parse,
detect, confirm, store, outbox, feeds) and leaves Atom, RSS and JSON feeds on disk.

Everything it leaves is in one directory (``data/demo`` by default): the feeds, the database
they were built from (``demo.db``) and a config (``warnsvc.yaml``) that serves them with
``warnsvc run -c DIR/warnsvc.yaml``, the command the demo prints last. That config keeps the
demo's source, disabled: the replay server stops with the demo.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from warnsvc.config import load_config, parse_config
from warnsvc.pipeline import PollReport
from warnsvc.service import Components, build_components

FIXTURES = Path(__file__).parent / "fixtures"
_DATE_LINE = re.compile(r"^\d{1,2} [A-Z][a-z]+ \d{4}$")
_RISK_LINE = re.compile(r"^Risk Level:.*$")


@dataclass(frozen=True, slots=True)
class DemoPage:
    slug: str
    name: str
    level: str
    date: str


@dataclass(frozen=True, slots=True)
class Stage:
    title: str
    pages: tuple[DemoPage, ...]
    glitch: bool = False
    """The change lasts one poll only: the confirming re-fetch sees the previous stage."""


UKRAINE = DemoPage("ukraine", "Ukraine", "Current Crisis", "5 April 2022")
OPT = DemoPage(
    "israel-and-the-occupied-palestinian-territory",
    "Israel and the Occupied Palestinian Territory",
    "Current Crisis",
    "1 December 2024",
)
NK = "nagorno-karabakh", "Nagorno-Karabakh (Armenia/Azerbaijan)"

STAGES = (
    Stage("baseline: Ukraine and Israel/OPT at Current Crisis", (UKRAINE, OPT)),
    Stage(
        "Nagorno-Karabakh appears on the list at Serious Concern",
        (UKRAINE, OPT, DemoPage(*NK, "Serious Concern", "31 May 2023")),
    ),
    Stage(
        "a glitch: Ukraine shows Imminent Risk for one poll only",
        (
            DemoPage("ukraine", "Ukraine", "Imminent Risk", "5 April 2022"),
            OPT,
            DemoPage(*NK, "Serious Concern", "31 May 2023"),
        ),
        glitch=True,
    ),
    Stage(
        "Nagorno-Karabakh escalates to Imminent Risk (the page of 31 August 2023)",
        (UKRAINE, OPT, DemoPage(*NK, "Imminent Risk", "31 August 2023")),
    ),
    Stage(
        "Nagorno-Karabakh de-escalates to Serious Concern",
        (UKRAINE, OPT, DemoPage(*NK, "Serious Concern", "1 December 2023")),
    ),
)


def render_country_page(page: DemoPage) -> str:
    """An ordinary HTML page from a fixture's text, with the stage's level and date."""
    lines = (FIXTURES / f"{page.slug}.txt").read_text(encoding="utf-8").splitlines()
    parts = [f"<h1>{html.escape(page.name)}</h1>"]
    bullets: list[str] = []
    for raw in lines:
        line = raw.strip()
        if not line or line == page.name:
            continue
        if _DATE_LINE.match(line):
            line = page.date
        elif _RISK_LINE.match(line):
            line = f"Risk Level: {page.level}"
        if line.startswith("•"):
            bullets.append(f"<li>{html.escape(line.lstrip('• '))}</li>")
            continue
        if bullets:
            parts.append(f"<ul>{''.join(bullets)}</ul>")
            bullets = []
        parts.append(f"<p>{html.escape(line)}</p>")
    if bullets:
        parts.append(f"<ul>{''.join(bullets)}</ul>")
    return _document(page.name, "".join(parts))


def render_index(stage: Stage, summaries: dict[str, str]) -> str:
    sections = []
    for level in ("Current Crisis", "Imminent Risk", "Serious Concern"):
        cards = [
            f"<div class='card'><h3>{html.escape(p.name)}</h3>"
            f"<p>{html.escape(summaries.get(p.slug, ''))}</p>"
            f"<a href='/countries/{p.slug}/'>Continue Reading</a></div>"
            for p in stage.pages
            if p.level == level
        ]
        if cards:
            sections.append(f"<h2>{level}</h2>{''.join(cards)}")
    body = "<h1>Populations At Risk</h1>" + "".join(sections)
    return _document("Populations At Risk", body)


def _document(title: str, main: str) -> str:
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)} - Global Centre for the Responsibility to Protect</title>"
        "</head><body><header><nav><ul><li><a href='/'>Home</a></li>"
        "<li><a href='/populations-at-risk/'>Populations at Risk</a></li>"
        "<li>Current Crisis</li><li>Imminent Risk</li></ul></nav></header>"
        f"<main>{main}</main><footer><p>warnsvc demo replay</p></footer></body></html>"
    )


class ReplayServer:
    """Serves the current stage; answers conditional GETs with 304 like a real site."""

    def __init__(self) -> None:
        self.stage = STAGES[0]
        self.summaries = {
            slug: _summary(slug) for slug in {p.slug for s in STAGES for p in s.pages}
        }
        self.hits = 0
        self.runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/populations-at-risk/", self._index)
        app.router.add_get("/countries/{slug}/", self._country)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _index(self, request: web.Request) -> web.Response:
        return self._answer(request, render_index(self.stage, self.summaries))

    async def _country(self, request: web.Request) -> web.Response:
        page = next((p for p in self.stage.pages if p.slug == request.match_info["slug"]), None)
        if page is None:
            raise web.HTTPNotFound()
        return self._answer(request, render_country_page(page))

    def _answer(self, request: web.Request, text: str) -> web.Response:
        self.hits += 1
        etag = '"' + hashlib.sha256(text.encode()).hexdigest()[:16] + '"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(text=text, content_type="text/html", headers={"ETag": etag})


def _summary(slug: str) -> str:
    from warnsvc.sources.gcr2p import parse_country_page

    text = (FIXTURES / f"{slug}.txt").read_text(encoding="utf-8")
    return parse_country_page(text).summary


DATABASE = "demo.db"
CONFIG = "warnsvc.yaml"


def _demo_config(
    base_url: str, out_dir: Path, feeds_dir: Path, confirm_delay: float, *, polling: bool
) -> str:
    """The demo's config: ``polling`` while the demo runs; after it, the one that serves what
    it left (its paths absolute, so that it works from any directory)."""

    def path(p: Path) -> str:
        return json.dumps(str(p if polling else p.resolve()))

    database = json.dumps(f"sqlite+aiosqlite:///{json.loads(path(out_dir / DATABASE))}")
    head = (
        f"detection: {{confirmations: 2, confirm_delay: {confirm_delay}}}\n"
        if polling
        else "# Written by `warnsvc demo`: serves the feeds and events the demo left here:\n"
        f"#     warnsvc run -c {out_dir / CONFIG}\n"
        "# The demo's source is kept, disabled: its replay server stopped with the demo.\n"
    )
    return f"""{head}service:
  name: warnsvc demo
  pid_file: {path(out_dir / "warnsvc.pid")}
storage: {{url: {database}}}
feeds: {{dir: {path(feeds_dir)}, title: "warnsvc demo (replayed GCR2P pages)"}}
sources:
  - id: gcr2p
    kind: gcr2p-index
    name: Global Centre for the Responsibility to Protect (demo replay)
    url: {base_url}/populations-at-risk/
    enabled: {"true" if polling else "false"}
    follow_pages: true
    page_delay: 0s
    fetch: {{timeout: 5s, retries: 0}}
"""


def _program() -> str:
    """How to start warnsvc again, as this process was started (for the printed command)."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "__main__.py":  # python -m warnsvc
        return f"{shlex.quote(sys.executable)} -m warnsvc"
    on_path = shutil.which("warnsvc")
    if argv0.name == "warnsvc" and not (on_path and Path(on_path).samefile(argv0)):
        return shlex.quote(str(argv0))  # e.g. .venv/bin/warnsvc
    return "warnsvc"


def _fresh(out_dir: Path) -> None:
    """Make ``out_dir``, without the database a previous demo left: the replay starts from an
    empty one."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (DATABASE, f"{DATABASE}-wal", f"{DATABASE}-shm", f"{DATABASE}-journal"):
        (out_dir / name).unlink(missing_ok=True)


def _write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    load_config(path)  # what the printed command reads: it must be valid
    return path


def _say(text: str) -> None:
    print(text, flush=True)  # noqa: T201 - the demo's whole point is to narrate


def _describe(report: PollReport) -> str:
    if not report.ok:
        return f"poll failed: {report.error}"
    text = f"{len(report.observations)} situation(s) observed"
    if report.baseline:
        return text + "; first poll: baseline recorded, no events"
    if report.pending:
        text += f"; {len(report.pending)} change(s) seen, awaiting confirmation"
    for event in report.events:
        before = event.previous_level.name if event.previous_level else "not listed"
        after = event.level.name if event.level else event.status.value
        text += f"\n      CONFIRMED {event.type.value}: {event.situation_name}: {before} -> {after}"
    if not report.pending and not report.events:
        text += "; nothing changed"
    return text


async def run_demo(
    *, out_dir: Path = Path("data/demo"), feeds_dir: Path | None = None, confirm_delay: float = 1.0
) -> int:
    """Play the stages; leave the feeds (default ``out_dir/feeds``), their database and a
    config that serves them in ``out_dir``."""
    started = time.monotonic()
    feeds_dir = feeds_dir or out_dir / "feeds"
    _fresh(out_dir)
    server = ReplayServer()
    base_url = await server.start()
    text = _demo_config(base_url, out_dir, feeds_dir, confirm_delay, polling=True)
    settings = parse_config(text, filename="<demo>")
    parts = await build_components(settings)
    _say(f"warnsvc demo: replaying GCR2P pages from {base_url}/populations-at-risk/")
    _say("  (the level changes below are invented for the demo; the pages are real text)")
    events = 0
    try:
        for number, stage in enumerate(STAGES, start=1):
            events += await _play(stage, number, server, parts, confirm_delay)
        await parts.dispatcher.drain()
    finally:
        await parts.close()
        await server.stop()
    config = _write_config(
        out_dir / CONFIG, _demo_config(base_url, out_dir, feeds_dir, confirm_delay, polling=False)
    )
    _say(
        f"\nDone in {time.monotonic() - started:.1f}s: {events} event(s), "
        f"{server.hits} page fetches. Feeds written under {feeds_dir}/:"
    )
    for name in ("alerts.atom", "alerts.rss", "alerts.json"):
        _say(f"  {feeds_dir / name}")
    _say(f"  {feeds_dir}/situations/*.atom, {feeds_dir}/levels/*.atom")
    _say(f"The events are kept in {out_dir / DATABASE}, and {config} serves them.")
    command = f"{_program()} run -c {shlex.quote(str(config))}"
    _say(f"Serve them over HTTP with: {command}   (then open http://127.0.0.1:8080/)")
    _say(f"List the events with:      {_program()} events -c {shlex.quote(str(config))}")
    return 0


async def _play(
    stage: Stage, number: int, server: ReplayServer, parts: Components, confirm_delay: float
) -> int:
    previous = server.stage
    server.stage = stage
    _say(f"\n[{number}/{len(STAGES)}] {stage.title}")
    report = await parts.poller.poll("gcr2p")
    _say(f"    poll: {_describe(report)}")
    count = len(report.events)
    while report.ok and report.pending:
        if stage.glitch:
            server.stage = previous
        _say(f"    re-fetching in {confirm_delay:g}s to confirm ...")
        await asyncio.sleep(confirm_delay)
        report = await parts.poller.poll("gcr2p")
        _say(f"    poll: {_describe(report)}")
        count += len(report.events)
        if stage.glitch and not report.events:
            _say("    the change did not hold on the re-fetch: no alert sent")
    if count:
        await parts.dispatcher.drain()
        _say(f"    feeds rebuilt under {parts.settings.feeds.dir}/")
    sys.stdout.flush()
    return count
