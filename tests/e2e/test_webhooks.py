"""Webhooks with real processes: the CLI, and kill -9 in the middle of a fan-out."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from standardwebhooks import Webhook

from tests.conftest import Site, country_html, index_html
from tests.e2e.test_cli import free_port, warnsvc
from tests.integration.webhook_helpers import Receiver

pytestmark = pytest.mark.slow

SECRET = "whsec_" + "c2VjcmV0LWZvci10aGUtZTJlLXRlc3Qtb2YtY3Jhc2hlcw=="
ENDPOINTS = 120
SITUATIONS = ("Mali", "Sudan")
BATCH, PARALLEL = 20, 2


def write_config(tmp_path: Path, *, site_url: str, receiver: str, port: int) -> Path:
    endpoints = "".join(
        f'    - {{id: e{n}, url: "{receiver}/hook/{n}", secret: "{SECRET}"}}\n'
        for n in range(ENDPOINTS)
    )
    path = tmp_path / "warnsvc.yaml"
    path.write_text(
        f"""service:
  base_url: http://127.0.0.1:{port}
  http: {{host: 127.0.0.1, port: {port}}}
  shutdown_timeout: 5s
storage: {{url: "sqlite+aiosqlite:///{tmp_path}/warnsvc.db"}}
detection: {{confirmations: 1, announce_initial: true}}
feeds: {{dir: "{tmp_path}/feeds"}}
sources:
  - id: gcr2p
    kind: gcr2p-index
    url: {site_url}
    interval: 1h
    jitter: 0s
    follow_pages: true
    page_delay: 0s
    fetch: {{timeout: 2s, retries: 0}}
webhooks:
  allow_networks: ["127.0.0.0/8"]
  concurrency: 8
  per_endpoint: 1
  batch: {BATCH}
  parallel_batches: {PARALLEL}
  timeout: 1s
  quick_retries: 0
  lease: 6s
  retry: {{initial: 1s, cap: 2s}}
  partners:
    - {{id: ngo-a, api_key: "partner-key-for-the-cli-test-0123"}}
  endpoints:
{endpoints}""",
        encoding="utf-8",
    )
    return path


async def start(config: Path, cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "warnsvc",
        "run",
        "-c",
        str(config),
        cwd=cwd,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def terminate(proc: asyncio.subprocess.Process) -> str:
    """SIGTERM, then its stderr once it exited with 0; what it printed is the failure's text
    otherwise (a stop that hangs is ended by the service's own watchdog, which prints stacks)."""
    proc.terminate()
    try:
        code = await asyncio.wait_for(proc.wait(), 40)
    except TimeoutError:
        proc.kill()
        code = await proc.wait()
    stderr = (await proc.stderr.read()).decode() if proc.stderr else ""
    assert code == 0, f"exit status {code} after SIGTERM; stderr:\n{stderr[-8000:]}"
    return stderr


async def wait_for(condition, limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def outbox_states(db: Path) -> Counter[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT status FROM outbox WHERE channel = 'webhooks'").fetchall()
    return Counter(status for (status,) in rows)


async def test_kill_9_mid_fan_out_loses_nothing_and_duplicates_are_bounded(
    tmp_path: Path, site: Site, aiohttp_server
) -> None:
    receiver = Receiver(delay=0.03)
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", receiver.handle)
    server = await aiohttp_server(app)
    receiver.base = str(server.make_url("")).rstrip("/")
    sections = {"Current Crisis": [(name.lower(), name) for name in SITUATIONS]}
    site.set("/populations-at-risk/", index_html(sections))
    for name in SITUATIONS:
        site.set(f"/countries/{name.lower()}/", country_html(name, level="Current Crisis"))
    config = write_config(
        tmp_path,
        site_url=site.url("/populations-at-risk/"),
        receiver=receiver.base,
        port=free_port(),
    )
    expected = {(f"/hook/{n}", s) for n in range(ENDPOINTS) for s in SITUATIONS}

    first = await start(config, tmp_path)
    try:
        await wait_for(lambda: len(receiver.received) >= 60, 30, "the fan-out to start")
        first.kill()  # SIGKILL: no shutdown code runs
        await first.wait()
    finally:
        if first.returncode is None:
            first.kill()
    before_restart = len(receiver.received)
    states = outbox_states(tmp_path / "warnsvc.db")
    assert sum(states.values()) == len(expected)  # every row was written with its event
    assert states["delivered"] < len(expected)  # the crash really was mid fan-out

    second = await start(config, tmp_path)
    try:
        await wait_for(
            lambda: {(r.path, _situation(r.body)) for r in receiver.received} >= expected,
            60,
            "every pending delivery after the restart",
        )
        await wait_for(
            lambda: outbox_states(tmp_path / "warnsvc.db") == Counter(delivered=len(expected)),
            15,
            "every row marked delivered",
        )
    finally:
        second.terminate()
        assert await asyncio.wait_for(second.wait(), 15) == 0

    counts = Counter((r.path, r.headers["webhook-id"]) for r in receiver.received)
    duplicates = sum(n - 1 for n in counts.values())
    assert len(counts) == len(expected)
    # only rows claimed (in flight) when the process died can be sent twice
    assert duplicates <= BATCH * PARALLEL, (duplicates, before_restart)
    sample = receiver.received[-1]
    Webhook(SECRET).verify(sample.body, sample.headers)


def _situation(body: bytes) -> str:
    return str(json.loads(body)["situation"]["name"])


async def test_sigterm_releases_rows_in_flight(tmp_path: Path, site: Site, aiohttp_server):
    receiver = Receiver(hang=True)
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", receiver.handle)
    server = await aiohttp_server(app)
    receiver.base = str(server.make_url("")).rstrip("/")
    site.set("/populations-at-risk/", index_html({"Current Crisis": [("mali", "Mali")]}))
    site.set("/countries/mali/", country_html("Mali", level="Current Crisis"))
    config = write_config(
        tmp_path,
        site_url=site.url("/populations-at-risk/"),
        receiver=receiver.base,
        port=free_port(),
    )
    proc = await start(config, tmp_path)
    try:
        await wait_for(lambda: len(receiver.received) >= 8, 30, "sends to hang")
        started = time.monotonic()
        await terminate(proc)
        assert time.monotonic() - started < 5 + 1  # within shutdown_timeout
    finally:
        if proc.returncode is None:
            proc.kill()
    with sqlite3.connect(tmp_path / "warnsvc.db") as conn:
        rows = conn.execute(
            "SELECT status, lease_until FROM outbox WHERE channel = 'webhooks'"
        ).fetchall()
    assert rows and {status for status, _ in rows} == {"pending"}  # none left in flight
    assert {lease for _, lease in rows} == {None}  # released, due again at once


def test_the_cli_adds_lists_redelivers_and_removes(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, site_url="https://example.org/", receiver="http://127.0.0.1:9", port=8080
    )
    added = warnsvc(
        "webhooks",
        "add",
        "http://127.0.0.1:9/cli",
        "--partner",
        "ngo-a",
        "--event-type",
        "risk.escalated",
        "--min-level",
        "imminent-risk",
        "-c",
        str(config),
        cwd=tmp_path,
    )
    assert added.returncode == 0, added.stderr
    created, secret = added.stdout.split()[1], added.stdout.split()[3]
    assert created.startswith("ep_") and secret.startswith("whsec_")

    listed = warnsvc("webhooks", "list", "--json", "-c", str(config), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert len(rows) == ENDPOINTS + 1
    [mine] = [r for r in rows if r["id"] == created]
    assert mine["partner"] == "ngo-a" and mine["filters"]["min_level"] == "imminent-risk"
    assert SECRET not in listed.stdout and secret not in listed.stdout

    refused = warnsvc("webhooks", "add", "http://10.0.0.1/x", "-c", str(config), cwd=tmp_path)
    assert refused.returncode == 2 and "not a public address" in refused.stderr
    static = warnsvc("webhooks", "rm", "cfg_e0", "-c", str(config), cwd=tmp_path)
    assert static.returncode == 2 and "config file" in static.stderr

    again = warnsvc(
        "webhooks", "redeliver", created, "--since", "2026-01-01", "-c", str(config), cwd=tmp_path
    )
    assert again.returncode == 0 and "queued 0" in again.stdout
    removed = warnsvc("webhooks", "rm", created, "-c", str(config), cwd=tmp_path)
    assert removed.returncode == 0, removed.stderr
    gone = warnsvc("webhooks", "rm", created, "-c", str(config), cwd=tmp_path)
    assert gone.returncode == 1


async def test_the_running_service_serves_the_api(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(
        tmp_path, site_url="https://example.org/", receiver="http://127.0.0.1:9", port=port
    )
    text = config.read_text().replace("  - id: gcr2p\n", "  - id: gcr2p\n    enabled: false\n")
    config.write_text(text)
    proc = await start(config, tmp_path)
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(f"{base}/openapi.json") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
            async with http.get(f"{base}/endpoints") as response:
                assert response.status == 401
            headers = {"Authorization": "Bearer partner-key-for-the-cli-test-0123"}
            async with http.get(f"{base}/endpoints", headers=headers) as response:
                assert response.status == 200 and (await response.json()) == {"data": []}
    finally:
        stderr = await terminate(proc)
    assert "partner-key-for-the-cli-test-0123" not in stderr  # keys are never logged
