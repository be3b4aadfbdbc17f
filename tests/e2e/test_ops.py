"""Operating a real `warnsvc run` process: reload on SIGHUP and on file change, metrics, status."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Site, country_html, index_html
from tests.e2e.test_cli import awarnsvc, free_port

pytestmark = pytest.mark.slow


def config_text(
    tmp_path: Path, site: Site, port: int, *, second: bool = False, watch: bool = False
) -> str:
    text = f"""service:
  http: {{host: 127.0.0.1, port: {port}}}
  shutdown_timeout: 5s
  pid_file: {tmp_path}/warnsvc.pid
  watch_config: {str(watch).lower()}
storage: {{url: "sqlite+aiosqlite:///{tmp_path}/warnsvc.db"}}
detection: {{confirm_delay: 1s}}
feeds: {{dir: "{tmp_path}/feeds"}}
sources:
  - id: gcr2p
    kind: gcr2p-index
    url: {site.url("/populations-at-risk/")}
    interval: 1h
    jitter: 0s
    page_delay: 0s
    fetch: {{timeout: 2s, retries: 0}}
"""
    if second:
        text += f"""  - id: second
    kind: gcr2p-page
    url: {site.url("/countries/mali/")}
    interval: 1h
    jitter: 0s
    fetch: {{timeout: 2s, retries: 0}}
"""
    return text


class Running:
    def __init__(self, proc: asyncio.subprocess.Process, base: str, config: Path) -> None:
        self.proc, self.base, self.config = proc, base, config

    async def get_json(self, path: str) -> Any:
        async with aiohttp.ClientSession() as http, http.get(self.base + path) as resp:
            return await resp.json()

    async def metric(self, name: str, **labels: str) -> float:
        async with aiohttp.ClientSession() as http, http.get(self.base + "/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return 0.0

    async def until(self, check, what: str, limit: float = 15.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                if await check():
                    return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
async def running(tmp_path: Path, site: Site, request) -> AsyncIterator[Running]:
    site.set("/populations-at-risk/", index_html({"Imminent Risk": [("mali", "Mali")]}))
    site.set("/countries/mali/", country_html("Mali", level="Imminent Risk"))
    port = free_port()
    watch = getattr(request, "param", False)
    config = tmp_path / "warnsvc.yaml"
    config.write_text(config_text(tmp_path, site, port, watch=watch))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "warnsvc",
        "run",
        "-c",
        str(config),
        cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    run = Running(proc, f"http://127.0.0.1:{port}", config)

    async def polled() -> bool:
        return await run.metric("warnsvc_polls_total", source="gcr2p", result="ok") >= 1

    try:
        await run.until(polled, "the first poll")
        yield run
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout=15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def test_sighup_applies_a_valid_edit_and_refuses_a_broken_one(
    running: Running, tmp_path: Path, site: Site
):
    assert await running.metric("warnsvc_source_healthy", source="gcr2p") == 1
    assert (tmp_path / "warnsvc.pid").read_text().strip() == str(running.proc.pid)

    port = int(running.base.rsplit(":", 1)[1])
    running.config.write_text(config_text(tmp_path, site, port, second=True))
    running.proc.send_signal(signal.SIGHUP)

    async def second_polled() -> bool:
        return await running.metric("warnsvc_polls_total", source="second", result="ok") >= 1

    await running.until(second_polled, "the added source to be polled")
    assert await running.metric("warnsvc_config_reloads_total", result="ok") == 1

    good = running.config.read_text()
    running.config.write_text(good.replace("  - id: second\n", "  - id: second\n    colour: red\n"))
    running.proc.send_signal(signal.SIGHUP)

    async def refused() -> bool:
        return await running.metric("warnsvc_config_reloads_total", result="failed") == 1

    await running.until(refused, "the broken edit to be refused")
    ready = await running.get_json("/readyz")
    problems = ready["checks"]["config"]["last_reload_error"]
    assert problems == [
        f"{running.config}:18: sources[1].colour: unknown key 'colour'; allowed keys: "
        "cap_category, critical, enabled, fetch, id, interval, jitter, kind, name, namespace, "
        "parse, scale, url"
    ]
    assert ready["checks"]["config"]["last_reload"] == "failed"
    assert set(ready["checks"]["next_polls"]) == {"gcr2p", "second"}  # still the old config

    (tmp_path / "ok.yaml").write_text(good)
    code, out, err = await awarnsvc(
        "status", "--json", "-c", str(tmp_path / "ok.yaml"), cwd=tmp_path
    )
    assert code == 0, err
    status = json.loads(out)
    assert status["service"]["reachable"] is True
    assert status["service"]["checks"]["config"]["last_reload"] == "failed"
    assert {s["id"]: s["health"] for s in status["sources"]} == {
        "gcr2p": "healthy",
        "second": "healthy",
    }
    assert [s["id"] for s in status["situations"]] == ["gcr2p:mali"]

    code, out, err = await awarnsvc("status", "-c", str(tmp_path / "ok.yaml"), cwd=tmp_path)
    assert code == 0, err
    assert "last reload FAILED" in out and "SOURCES" in out and "gcr2p:mali" in out

    running.config.write_text(good)
    code, out, err = await awarnsvc("reload", "-c", str(running.config), cwd=tmp_path)
    assert code == 0, err
    assert f"process {running.proc.pid}" in out

    async def recovered() -> bool:
        return await running.metric("warnsvc_config_reloads_total", result="ok") == 2

    await running.until(recovered, "`warnsvc reload` to apply the fixed file")
    assert (await running.get_json("/readyz"))["checks"]["config"]["last_reload_error"] == []


@pytest.mark.parametrize("running", [True], indirect=True)
async def test_a_burst_of_edits_on_disk_gives_one_reload(
    running: Running, tmp_path: Path, site: Site
):
    port = int(running.base.rsplit(":", 1)[1])
    for n in range(20):  # an editor saving many times a second
        running.config.write_text(config_text(tmp_path, site, port, second=n % 2 == 1) + f"# {n}\n")
        await asyncio.sleep(0.02)

    async def reloaded() -> bool:
        return await running.metric("warnsvc_config_reloads_total", result="ok") >= 1

    await running.until(reloaded, "the debounced reload")
    await asyncio.sleep(2.5)  # long enough for a second reload, if the watcher were to do one
    assert await running.metric("warnsvc_config_reloads_total", result="ok") == 1
    ready = await running.get_json("/readyz")
    assert set(ready["checks"]["next_polls"]) == {"gcr2p", "second"}  # the last write won


async def test_metrics_follow_an_escalation_to_the_feeds(
    running: Running, tmp_path: Path, site: Site
):
    assert await running.metric("warnsvc_fetch_seconds_count") >= 2
    assert await running.metric("warnsvc_events_total", type="risk.escalated") == 0
    site.set("/populations-at-risk/", index_html({"Current Crisis": [("mali", "Mali")]}))
    site.set("/countries/mali/", country_html("Mali", level="Current Crisis"))
    # Re-timing the source reschedules it, and a rescheduled source polls at once.
    port = int(running.base.rsplit(":", 1)[1])
    running.config.write_text(
        config_text(tmp_path, site, port).replace("interval: 1h", "interval: 2h", 1)
    )
    os.kill(running.proc.pid, signal.SIGHUP)

    async def escalated() -> bool:
        return await running.metric("warnsvc_events_total", type="risk.escalated") == 1

    await running.until(escalated, "the confirmed escalation")

    async def delivered() -> bool:
        return await running.metric("warnsvc_outbox_pending", channel="feeds") == 0

    await running.until(delivered, "the feed rebuild")
    async with (
        aiohttp.ClientSession() as http,
        http.get(running.base + "/feeds/alerts.atom") as resp,
    ):
        assert "Mali: Imminent Risk -&gt; Current Crisis" in await resp.text()
    assert await running.metric("warnsvc_outbox_oldest_pending_seconds", channel="feeds") == 0
    assert await running.metric("warnsvc_source_healthy", source="gcr2p") == 1
    count = await running.metric("warnsvc_deliveries_total", channel="feeds", result="delivered")
    assert count == 1
    assert await running.metric("warnsvc_delivery_latency_seconds_count", channel="feeds") == 1
