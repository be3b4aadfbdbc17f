"""The failover drill: three real replicas on one PostgreSQL database, kill -9 the leader.

A loopback GCR2P site lists one situation; 300 webhook endpoints sit on a slow loopback
receiver. The three ``warnsvc run`` processes start together (one migration, one sync of the
YAML's endpoints), one of them leads and detects the listing, all three fan it out. The leader
is killed with SIGKILL mid fan-out. Then: every delivery arrives (duplicates only for rows the
dead replica had in flight), a survivor leads within the failover time, the next change is
detected and delivered, each change is exactly one event, and both survivors serve the same
feed.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import Site, country_html, index_html
from tests.e2e.test_cli import free_port
from tests.integration.webhook_helpers import Receiver
from warnsvc.store.db import Store

pytestmark = pytest.mark.slow

SECRET = "whsec_" + "c2VjcmV0LWZvci10aGUtZmFpbG92ZXItZHJpbGwtdGVzdA=="
ENDPOINTS = 300
BATCH, PARALLEL = 20, 2
FAILOVER = 30.0  # the default storage.failover: the drill runs on the shipped default


def write_config(tmp_path: Path, *, database: str, site_url: str, receiver: str) -> Path:
    endpoints = "".join(
        f'    - {{id: e{n}, url: "{receiver}/hook/{n}", secret: "{SECRET}"}}\n'
        for n in range(ENDPOINTS)
    )
    path = tmp_path / "warnsvc.yaml"
    path.write_text(
        f"""service:
  base_url: http://127.0.0.1:8080
  http: {{host: 127.0.0.1, port: 8080}}
  shutdown_timeout: 5s
storage: {{url: "{database}"}}
detection: {{confirmations: 1, announce_initial: true}}
feeds: {{dir: feeds}}
sources:
  - id: gcr2p
    kind: gcr2p-index
    url: {site_url}
    interval: 10s
    jitter: 0s
    follow_pages: true
    page_delay: 0s
    fetch: {{timeout: 2s, retries: 0}}
webhooks:
  allow_networks: ["127.0.0.0/8"]
  concurrency: 4
  per_endpoint: 1
  batch: {BATCH}
  parallel_batches: {PARALLEL}
  timeout: 2s
  quick_retries: 0
  lease: 8s
  retry: {{initial: 1s, cap: 2s}}
  endpoints:
{endpoints}""",
        encoding="utf-8",
    )
    return path


async def start(config: Path, cwd: Path, port: int) -> asyncio.subprocess.Process:
    """A replica in its own folder (its feeds are its own), logging to ``cwd/stderr.log``."""
    await asyncio.to_thread(cwd.mkdir, parents=True, exist_ok=True)
    with (cwd / "stderr.log").open("wb") as log:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "warnsvc",
            "run",
            "-c",
            str(config),
            "--port",
            str(port),
            cwd=cwd,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,  # the child keeps its own copy of the descriptor
        )


async def wait_for(condition: Callable[[], object], limit: float, what: str) -> float:
    """Poll ``condition`` (sync or async) until true; returns the seconds it took."""
    began = time.monotonic()
    while time.monotonic() - began < limit:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return time.monotonic() - began
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {limit:.0f}s waiting for {what}")


async def role(session: aiohttp.ClientSession, port: int) -> str | None:
    try:
        async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
            return str((await response.json())["role"])
    except (aiohttp.ClientError, OSError):
        return None


async def feed_ids(session: aiohttp.ClientSession, port: int) -> list[str]:
    async with session.get(f"http://127.0.0.1:{port}/feeds/alerts.atom") as response:
        text = await response.text()
    return re.findall(r"<entry>.*?<id>([^<]+)</id>", text, flags=re.S)


def event_of(body: bytes) -> str:
    return str(json.loads(body)["id"])


async def test_kill_9_the_leader_of_three_replicas(
    tmp_path: Path, site: Site, aiohttp_server, pg_url: str
) -> None:
    receiver = Receiver(delay=0.1)
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", receiver.handle)
    server = await aiohttp_server(app)
    receiver.base = str(server.make_url("")).rstrip("/")
    site.set("/populations-at-risk/", index_html({"Current Crisis": [("mali", "Mali")]}))
    site.set("/countries/mali/", country_html("Mali", level="Current Crisis"))
    config = write_config(
        tmp_path,
        database=pg_url,
        site_url=site.url("/populations-at-risk/"),
        receiver=receiver.base,
    )
    ports = [free_port() for _ in range(3)]
    procs = dict(
        zip(
            ports,
            await asyncio.gather(*(start(config, tmp_path / f"r{p}", p) for p in ports)),
            strict=True,
        )
    )
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
    try:
        await wait_for(
            lambda: all_answer(session, ports), 60, "the three replicas to start together"
        )
        await wait_for(lambda: len(receiver.received) >= 40, 60, "the fan-out to start")
        roles = {p: await role(session, p) for p in ports}
        [leader] = [p for p, r in roles.items() if r == "leader"]
        assert sorted(r for r in roles.values() if r) == ["follower", "follower", "leader"]
        procs[leader].send_signal(signal.SIGKILL)
        await procs[leader].wait()
        survivors = [p for p in ports if p != leader]

        async def new_leader() -> bool:
            return "leader" in [await role(session, p) for p in survivors]

        took = await wait_for(new_leader, FAILOVER + 10, "a survivor to lead")
        assert took < FAILOVER, f"failover took {took:.1f}s"
        [listing] = {event_of(r.body) for r in receiver.received}
        first = {(f"/hook/{n}", listing) for n in range(ENDPOINTS)}
        await wait_for(
            lambda: {(r.path, event_of(r.body)) for r in receiver.received} >= first,
            60,
            "every delivery of the listing (the dead replica's rows after their lease)",
        )

        site.set("/populations-at-risk/", index_html({"Imminent Risk": [("mali", "Mali")]}))
        site.set("/countries/mali/", country_html("Mali", level="Imminent Risk"))
        await wait_for(
            lambda: len({event_of(r.body) for r in receiver.received}) == 2,
            40,
            "the next change to be detected by the new leader",
        )
        [change] = {event_of(r.body) for r in receiver.received} - {listing}
        second = {(f"/hook/{n}", change) for n in range(ENDPOINTS)}
        await wait_for(
            lambda: {(r.path, event_of(r.body)) for r in receiver.received} >= second,
            60,
            "every delivery of the change",
        )

        store = await Store.open(pg_url, migrate=False)
        try:
            events = await store.recent_events()
            outbox = await store.outbox.counts()
        finally:
            await store.close()
        assert [e["type"] for e in events] == ["risk.deescalated", "situation.listed"]
        assert [e["id"] for e in events] == [change, listing]  # one event per change

        async def same_feeds() -> bool:
            a, b = [await feed_ids(session, p) for p in survivors]
            return a == b and len(a) == 2

        await wait_for(same_feeds, 15, "both survivors to serve the same two entries")
    finally:
        await session.close()
        for proc in procs.values():
            if proc.returncode is None:
                proc.terminate()
        exits = [await asyncio.wait_for(p.wait(), 20) for p in procs.values()]

    assert exits.count(-signal.SIGKILL) == 1 and exits.count(0) == 2  # survivors stop cleanly
    counts = Counter((r.path, event_of(r.body)) for r in receiver.received)
    assert set(counts) == first | second  # nothing lost, nothing unexpected
    duplicates = sum(n - 1 for n in counts.values())
    assert duplicates <= BATCH * PARALLEL  # only what the dead replica had in flight
    assert outbox.get(("webhooks", "delivered"), 0) >= ENDPOINTS  # rows recorded as sent


async def all_answer(session: aiohttp.ClientSession, ports: list[int]) -> bool:
    return all([await role(session, p) is not None for p in ports])
