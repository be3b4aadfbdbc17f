"""The ``warnsvc`` command as users run it: a real process, real files, a real loopback site."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import feedparser
import pytest

from tests.conftest import FIXTURES, ROOT, SEED, Site, country_html, index_html

pytestmark = pytest.mark.slow


def warnsvc(
    *args: str, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "warnsvc", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def awarnsvc(*args: str, cwd: Path, limit: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "warnsvc",
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=limit)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def write_config(tmp_path: Path, url: str, *, port: int = 8080, kind: str = "gcr2p-index") -> Path:
    follow = "    follow_pages: true\n    page_delay: 0s\n" if kind == "gcr2p-index" else ""
    path = tmp_path / "warnsvc.yaml"
    path.write_text(
        f"""service:
  base_url: http://127.0.0.1:{port}
  http: {{host: 127.0.0.1, port: {port}}}
  shutdown_timeout: 5s
storage: {{url: "sqlite+aiosqlite:///{tmp_path}/warnsvc.db"}}
detection: {{confirmations: 2, confirm_delay: 1s}}
feeds: {{dir: "{tmp_path}/feeds"}}
sources:
  - id: gcr2p
    kind: {kind}
    url: {url}
    interval: 1h
    jitter: 0s
{follow}    fetch: {{timeout: 2s, retries: 0}}
""",
        encoding="utf-8",
    )
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- parse ---------------------------------------------------------------------------------------


def test_parse_the_seed_page_as_text() -> None:
    result = warnsvc("parse", "--kind", "gcr2p-page", str(SEED))
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    obs = json.loads(line)
    assert obs["situation"] == "gcr2p:nagorno-karabakh"
    assert obs["name"] == "Nagorno-Karabakh (Armenia/Azerbaijan)"
    assert (obs["level"], obs["status"], obs["date"]) == ("imminent-risk", "assessed", "2023-08-31")
    assert obs["summary"].startswith("The ongoing blockade of the Lachin corridor")
    assert len(obs["risk_factors"]) == 5


def test_parse_the_index_sample() -> None:
    sample = FIXTURES / "gcr2p" / "03-index-populations-at-risk-new.txt"
    result = warnsvc("parse", "--kind", "gcr2p-index", str(sample))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 6
    assert {r["level"] for r in rows} == {"current-crisis"}
    named = [r["situation"] for r in rows if r["situation"]]
    assert "gcr2p:central-sahel" in named and "gcr2p:democratic-republic-of-the-congo" in named


def test_parse_a_page_without_risk_information_exits_1(tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    page.write_text("<html><head><title>About us</title></head><body><p>Hello</p></body></html>")
    result = warnsvc("parse", "--kind", "gcr2p-page", str(page))
    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "risk" in result.stderr.lower()


def test_parse_unknown_kind_is_a_usage_error() -> None:
    result = warnsvc("parse", "--kind", "nope", str(SEED))
    assert result.returncode == 2
    assert "gcr2p-index" in result.stderr


# -- check-config ------------------------------------------------------------------------------


def test_check_config_accepts_the_shipped_file() -> None:
    result = warnsvc("check-config", "-c", "config/warnsvc.yaml")
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_check_config_names_file_line_and_key_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "sources:\n"
        "  - id: gcr2p\n"
        "    kind: gcr2p-index\n"
        "    url: https://example.org/\n"
        "    interval: often\n"
        "    colour: red\n"
    )
    result = warnsvc("check-config", "-c", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert any(line.startswith(f"{bad}:5: sources[0].interval: ") for line in lines), lines
    assert any(line.startswith(f"{bad}:6: sources[0].colour: ") for line in lines), lines
    assert len(lines) == 2


def test_run_refuses_a_bad_config_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("servce: {}\n")
    result = warnsvc("run", "-c", str(bad))
    assert result.returncode == 2
    assert result.stderr.startswith(f"{bad}:1: servce: unknown key")


# -- poll --------------------------------------------------------------------------------------


def _publish(site: Site, level: str) -> None:
    site.set("/populations-at-risk/", index_html({level: [("mali", "Mali")]}))
    site.set("/countries/mali/", country_html("Mali", level=level))


async def test_poll_once_dry_run_then_confirmed(tmp_path: Path, site: Site) -> None:
    config = write_config(tmp_path, site.url("/populations-at-risk/"))
    _publish(site, "Imminent Risk")
    code, out, err = await awarnsvc("poll", "--once", "-c", str(config), cwd=tmp_path)
    assert code == 0, err
    assert "baseline recorded" in err and out == ""

    _publish(site, "Current Crisis")
    code, out, err = await awarnsvc("poll", "--once", "--dry-run", "-c", str(config), cwd=tmp_path)
    assert code == 0, err
    [line] = out.splitlines()
    assert line.split()[:5] == ["risk.escalated", "gcr2p:mali", "Imminent", "Risk", "->"]
    assert "would emit 1 event" in err
    assert not (tmp_path / "feeds" / "alerts.atom").exists()  # a dry run writes nothing

    code, out, err = await awarnsvc("poll", "--once", "--json", "-c", str(config), cwd=tmp_path)
    assert code == 0, err
    assert "await confirmation" in err
    [payload] = [json.loads(x) for x in out.splitlines()]
    assert payload["type"] == "risk.escalated"
    assert payload["level"] == {"id": "current-crisis", "name": "Current Crisis", "rank": 3}
    feed = feedparser.parse(tmp_path / "feeds" / "alerts.atom")
    assert [e.title for e in feed.entries] == ["Mali: Imminent Risk -> Current Crisis"]


async def test_poll_once_reports_a_failing_source(tmp_path: Path, site: Site) -> None:
    config = write_config(tmp_path, site.url("/populations-at-risk/"))
    site.set("/populations-at-risk/", "down", status=500)
    code, out, err = await awarnsvc("poll", "--once", "-c", str(config), cwd=tmp_path)
    assert code == 1
    assert "gcr2p: FAILED: HTTP 500" in err and out == ""


# -- demo --------------------------------------------------------------------------------------


def test_demo_leaves_one_feed_entry_per_confirmed_change(tmp_path: Path) -> None:
    started = time.monotonic()
    result = warnsvc("demo", "--confirm-delay", "0.2", cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 60
    assert "no alert sent" in result.stdout  # the one-poll glitch was filtered out
    feeds = tmp_path / "data" / "demo" / "feeds"  # beside the demo's database and config
    feed = feedparser.parse(feeds / "alerts.atom")
    assert feed.bozo == 0
    assert [e.title for e in feed.entries] == [
        "Nagorno-Karabakh (Armenia/Azerbaijan): Imminent Risk -> Serious Concern",
        "Nagorno-Karabakh (Armenia/Azerbaijan): Serious Concern -> Imminent Risk",
        "Nagorno-Karabakh (Armenia/Azerbaijan): listed at Serious Concern",
    ]
    rss = feedparser.parse(feeds / "alerts.rss")
    assert len(rss.entries) == 3
    items = json.loads((feeds / "alerts.json").read_text())["items"]
    assert [i["_warnsvc"]["type"] for i in items] == [
        "risk.deescalated",
        "risk.escalated",
        "situation.listed",
    ]
    assert (feeds / "situations" / "gcr2p:nagorno-karabakh.atom").is_file()
    assert not (tmp_path / "feeds").exists()


# -- run ---------------------------------------------------------------------------------------


async def test_run_serves_feeds_and_health_and_stops_on_sigterm(tmp_path: Path, site: Site) -> None:
    _publish(site, "Imminent Risk")
    port = free_port()
    config = write_config(tmp_path, site.url("/populations-at-risk/"), port=port)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "warnsvc",
        "run",
        "-c",
        str(config),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            await _wait_ready(http, base)
            async with http.get(f"{base}/healthz") as resp:
                assert resp.status == 200 and (await resp.json())["status"] == "ok"
            async with http.get(f"{base}/feeds/alerts.atom") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("application/atom+xml")
                etag = resp.headers["ETag"]
                assert "Last-Modified" in resp.headers
            async with http.get(
                f"{base}/feeds/alerts.atom", headers={"If-None-Match": etag}
            ) as resp:
                assert resp.status == 304
            async with http.get(f"{base}/feeds/../warnsvc.yaml") as resp:
                assert resp.status == 404
            async with http.get(f"{base}/feeds/nope.atom") as resp:
                assert resp.status == 404
                assert (await resp.json())["error"]["status"] == 404
        for _ in range(100):  # the first poll runs at start
            if site.hits.get("/countries/mali/"):
                break
            await asyncio.sleep(0.1)
        assert site.hits.get("/countries/mali/", 0) >= 1
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), timeout=15)
        assert code == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    stderr = (await proc.stderr.read()).decode() if proc.stderr else ""
    assert "shutting down" in stderr and "stopped" in stderr


async def _wait_ready(http: aiohttp.ClientSession, base: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            async with http.get(f"{base}/readyz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise AssertionError("warnsvc run did not become ready within 20s")
