"""Replicas as an operator meets them: a wrong database URL, the database going away, roles in
/healthz and /metrics, ``warnsvc status``, and a replica whose config disagrees.

Real ``warnsvc run`` processes on real PostgreSQL servers; the outage test has a server of its
own, stopped and started again on the same port.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Site, country_html, index_html
from tests.e2e.test_cli import free_port, warnsvc
from tests.e2e.test_replicas import start, wait_for
from tests.integration.webhook_helpers import Receiver, serve_receiver
from tests.pgserver import PostgresServer
from warnsvc.store.db import Store

pytestmark = pytest.mark.slow

SECRET = "whsec_" + "c2VjcmV0LWZvci10aGUtb3BlcmF0aW9ucy10ZXN0cw=="


def config_text(database: str, site_url: str, receiver: str, *, interval: str = "10s") -> str:
    return f"""service:
  base_url: http://127.0.0.1:8080
  http: {{host: 127.0.0.1, port: 8080}}
  shutdown_timeout: 5s
storage: {{url: "{database}", failover: 6s}}
detection: {{confirmations: 1, announce_initial: true}}
feeds: {{dir: feeds}}
sources:
  - id: gcr2p
    kind: gcr2p-index
    url: {site_url}
    interval: {interval}
    jitter: 0s
    follow_pages: true
    page_delay: 0s
    fetch: {{timeout: 2s, retries: 0}}
webhooks:
  allow_networks: ["127.0.0.0/8"]
  timeout: 2s
  quick_retries: 0
  lease: 8s
  retry: {{initial: 1s, cap: 2s}}
  endpoints:
    - {{id: e1, url: "{receiver}/hook/1", secret: "{SECRET}"}}
"""


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    try:
        async with session.get(url) as response:
            return response.status, await response.json()
    except (aiohttp.ClientError, OSError):
        return 0, {}


@pytest.fixture
async def receiver(aiohttp_server) -> Receiver:
    return await serve_receiver(aiohttp_server, "POST")


def serve_mali(site: Site, level: str) -> None:
    site.set("/populations-at-risk/", index_html({level: [("mali", "Mali")]}))
    site.set("/countries/mali/", country_html("Mali", level=level))


def test_a_database_that_cannot_be_reached_is_one_line_and_exit_2(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    url = postgres.url_for("no_such_database").replace("warnsvc@", "warnsvc:hunter2@")
    config = tmp_path / "warnsvc.yaml"
    config.write_text(f'storage: {{url: "{url}"}}\nfeeds: {{dir: "{tmp_path}/feeds"}}\n')
    result = warnsvc("run", "-c", str(config), "--port", str(free_port()))
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("warnsvc: storage.url: cannot connect: ")
    assert "no_such_database" in line and "hunter2" not in line


async def test_the_database_going_away_pauses_work_and_loses_nothing(
    tmp_path: Path, site: Site, receiver: Receiver
) -> None:
    server = await asyncio.to_thread(PostgresServer.start)
    try:
        serve_mali(site, "Current Crisis")
        config = tmp_path / "warnsvc.yaml"
        config.write_text(config_text(server.url, site.url("/populations-at-risk/"), receiver.base))
        port = free_port()
        proc = await start(config, tmp_path / "replica", port)
        ready = f"http://127.0.0.1:{port}/readyz"
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3))
        try:

            async def answer(expected: int) -> bool:
                return (await get_json(session, ready))[0] == expected

            await wait_for(lambda: answer(200), 60, "the replica to be ready")
            await wait_for(lambda: len(receiver.received) == 1, 30, "the listing's delivery")

            await asyncio.to_thread(server.pause)
            serve_mali(site, "Imminent Risk")  # changes while nothing can be recorded
            await wait_for(lambda: answer(503), 20, "/readyz to say the store is away")
            status, health = await get_json(session, f"http://127.0.0.1:{port}/healthz")
            assert (status, health["status"]) == (200, "ok")  # the process itself answers
            await asyncio.sleep(3)
            assert len(receiver.received) == 1  # no false alarm, nothing half-recorded

            await asyncio.to_thread(server.resume)
            await wait_for(lambda: answer(200), 60, "readiness after the database returns")
            await wait_for(lambda: len(receiver.received) == 2, 60, "the change to arrive")
        finally:
            await session.close()
            proc.terminate()
            assert await asyncio.wait_for(proc.wait(), 20) == 0
        types = [json.loads(r.body)["type"] for r in receiver.received]
        assert types == ["situation.listed", "risk.deescalated"]
        store = await Store.open(server.url, migrate=False)
        try:
            assert len(await store.recent_events()) == 2  # one event per change
        finally:
            await store.close()
    finally:
        await asyncio.to_thread(server.stop)


async def test_replicas_show_their_roles_and_the_odd_config_is_not_ready(
    tmp_path: Path, site: Site, receiver: Receiver, pg_url: str
) -> None:
    serve_mali(site, "Current Crisis")
    same = config_text(pg_url, site.url("/populations-at-risk/"), receiver.base)
    odd = config_text(pg_url, site.url("/populations-at-risk/"), receiver.base, interval="20s")
    (tmp_path / "same.yaml").write_text(same)
    (tmp_path / "odd.yaml").write_text(odd)
    first_port, odd_port = free_port(), free_port()
    first = await start(tmp_path / "same.yaml", tmp_path / "first", first_port)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3))
    procs = [first]
    try:
        base = f"http://127.0.0.1:{first_port}"

        async def leads() -> bool:
            return (await get_json(session, f"{base}/healthz"))[1].get("role") == "leader"

        await wait_for(leads, 30, "the first replica to lead")
        odd_proc = await start(tmp_path / "odd.yaml", tmp_path / "odd", odd_port)
        procs.append(odd_proc)
        odd_base = f"http://127.0.0.1:{odd_port}"

        async def mismatch_seen() -> bool:
            status, body = await get_json(session, f"{odd_base}/readyz")
            replica = body.get("checks", {}).get("replica", {})
            return status == 503 and bool(replica.get("config_mismatch"))

        await wait_for(mismatch_seen, 30, "the odd replica to report its config")
        assert (await get_json(session, f"{base}/readyz"))[0] == 200
        assert (await get_json(session, f"{base}/readyz?scope=replica"))[0] == 200
        assert (await get_json(session, f"{odd_base}/readyz?scope=replica"))[0] == 503
        status, body = await get_json(session, f"{base}/readyz?scope=everything")
        assert (status, body["error"]["status"]) == (400, 400)
        assert (await get_json(session, f"{odd_base}/healthz"))[1]["role"] == "follower"
        async with session.get(f"{base}/metrics") as response:
            assert "warnsvc_leader 1.0" in await response.text()
        async with session.get(f"{odd_base}/metrics") as response:
            assert "warnsvc_leader 0.0" in await response.text()

        result = await asyncio.to_thread(
            warnsvc, "status", "-c", str(tmp_path / "same.yaml"), cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr
        section = result.stdout.split("REPLICAS", 1)[1].split("OUTBOX", 1)[0]
        assert f":{first_port}  leader" in section
        assert f":{odd_port}  follower" in section
    finally:
        await session.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            assert await asyncio.wait_for(proc.wait(), 20) == 0
