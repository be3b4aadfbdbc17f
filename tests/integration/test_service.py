"""The running service in-process: scheduler, confirmation re-fetch, web app, readiness."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import feedparser

from tests.conftest import Site, country_html, index_html
from warnsvc.config import parse_config
from warnsvc.service import Service


def publish(site: Site, level: str) -> None:
    site.set("/populations-at-risk/", index_html({level: [("mali", "Mali")]}))
    site.set("/countries/mali/", country_html("Mali", level=level))


def service_for(tmp_path: Path, site: Site) -> Service:
    text = f"""
service: {{http: {{host: 127.0.0.1, port: 0}}, shutdown_timeout: 5s}}
storage: {{url: "sqlite+aiosqlite:///{tmp_path}/s.db"}}
detection: {{confirmations: 2, confirm_delay: 1s, failure_threshold: 2}}
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
    return Service(parse_config(text, filename="test.yaml"))


async def wait_for(predicate, limit: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_a_change_is_confirmed_by_the_scheduled_refetch_and_served(
    tmp_path: Path, site: Site
):
    publish(site, "Imminent Risk")
    service = service_for(tmp_path, site)
    await service.start()
    try:
        assert service.parts is not None
        store = service.parts.store

        async def baseline_done() -> bool:
            health = await store.source_health("gcr2p")
            return health is not None and health.baseline_done

        await wait_for(baseline_done)  # the first poll runs at start
        publish(site, "Current Crisis")
        report = await service.poll_job("gcr2p")  # as the interval job would
        assert report.pending == ["gcr2p:mali"] and report.events == []
        assert service.scheduler is not None
        assert service.scheduler.get_job("confirm:gcr2p") is not None

        async def one_event() -> bool:
            return await store.count_events() == 1

        await wait_for(one_event)  # the confirmation job fired about a second later
        base = f"http://127.0.0.1:{service.port}"

        async def feed_has_entry() -> bool:
            # the situation's feed: a rebuild writes it after alerts.atom (one file at a time)
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"{base}/feeds/situations/gcr2p:mali.atom") as r,
            ):
                return "Imminent Risk -&gt; Current Crisis" in await r.text()

        await wait_for(feed_has_entry)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/feeds/alerts.atom") as resp:
                assert "Imminent Risk -&gt; Current Crisis" in await resp.text()
            async with http.get(f"{base}/feeds/situations/gcr2p:mali.atom") as resp:
                feed = feedparser.parse(await resp.text())
                assert [e.title for e in feed.entries] == ["Mali: Imminent Risk -> Current Crisis"]
            async with http.get(f"{base}/feeds/levels/current-crisis.atom") as resp:
                assert resp.status == 200
            async with http.get(f"{base}/readyz") as resp:
                body = await resp.json()
                assert resp.status == 200 and body["checks"]["sources_failing"] == {}
    finally:
        await service.stop()


async def test_readiness_reports_a_source_past_its_failure_threshold(tmp_path: Path, site: Site):
    site.set("/populations-at-risk/", "down", status=500)
    service = service_for(tmp_path, site)
    await service.start()
    try:

        async def leading() -> bool:
            return service.leading

        await wait_for(leading)  # only the leader polls; on SQLite it leads from its first check
        await service.poll_job("gcr2p")
        await service.poll_job("gcr2p")
        ready, checks = await service.readiness()
        assert not ready
        assert set(checks["sources_failing"]) == {"gcr2p"}
        assert "HTTP 500" in checks["sources_failing"]["gcr2p"]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{service.port}/readyz") as resp:
                assert resp.status == 503
                assert (await resp.json())["status"] == "not ready"
            async with http.get(f"http://127.0.0.1:{service.port}/healthz") as resp:
                assert resp.status == 200
    finally:
        await service.stop()


async def test_a_failing_source_is_retried_within_minutes_not_an_interval(
    tmp_path: Path, site: Site
):
    """interval 1h: after a failure the next try comes after about a minute, then two, ...;
    a good poll puts the source back on its interval."""
    site.set("/populations-at-risk/", "down", status=500)
    service = service_for(tmp_path, site)
    await service.start()
    try:
        scheduler, parts = service.scheduler, service.parts
        assert scheduler is not None and parts is not None

        async def polled(times: int) -> None:
            async def done() -> bool:
                health = await parts.store.source_health("gcr2p")
                return (
                    health is not None
                    and health.last_poll_at is not None
                    and (health.consecutive_failures >= times or health.healthy)
                )

            await wait_for(done)
            await asyncio.sleep(0.2)  # the job reschedules itself after recording

        def next_try() -> float:
            job = scheduler.get_job("poll:gcr2p")
            assert job is not None and job.next_run_time is not None
            seconds: float = (job.next_run_time - datetime.now(UTC)).total_seconds()
            return seconds

        def run_now() -> None:  # as if the scheduled time had come
            scheduler.modify_job("poll:gcr2p", next_run_time=datetime.now(UTC))

        await polled(1)  # the first poll runs at start
        assert 50 <= next_try() <= 61  # about a minute, not an hour
        run_now()
        await polled(2)
        assert 100 <= next_try() <= 121  # doubled
        _, checks = await service.readiness()  # what warnsvc status shows as the next try
        shown = datetime.fromisoformat(checks["next_polls"]["gcr2p"])
        assert 100 <= (shown - datetime.now(UTC)).total_seconds() <= 121
        publish(site, "Imminent Risk")
        run_now()
        await polled(99)  # until healthy
        assert 3500 <= next_try() <= 3600  # back on its interval
    finally:
        await service.stop()


def database_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "_connection_worker_thread" in t.name]


async def test_a_stop_during_the_retention_job_waits_for_it_and_closes_every_connection(
    tmp_path: Path, site: Site, caplog
):
    """The retention job runs when a replica takes the lead; a stop then must not cut it off
    mid-query: a connection it held would keep its database thread, and the process, alive."""
    publish(site, "Imminent Risk")
    before = set(database_threads())
    service = service_for(tmp_path, site)
    await service.start()
    assert service.scheduler is not None and service.parts is not None
    store = service.parts.store

    async def baseline_done() -> bool:
        health = await store.source_health("gcr2p")
        return health is not None and health.baseline_done

    await wait_for(baseline_done)
    lock = sqlite3.connect(tmp_path / "s.db", timeout=10)
    lock.execute("BEGIN IMMEDIATE")  # the next write (the job's DELETE) waits on this lock
    service.scheduler.modify_job("retention", next_run_time=datetime.now(UTC))
    await asyncio.sleep(0.5)  # the job has started and waits for the lock
    release = asyncio.get_running_loop().call_later(0.5, lock.rollback)
    try:
        await asyncio.wait_for(service.stop(), 30)
    finally:
        release.cancel()
        lock.close()
    assert set(database_threads()) <= before, "a database thread outlived the stop"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
