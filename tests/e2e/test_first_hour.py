"""An operator's first hour, as a real process: `warnsvc init` from the wheel, the demo's next
step, `warnsvc events` without partners' test pings, and `warnsvc status` telling the truth
(the whole last error; its own service, not another one on the same port)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import feedparser
import pytest

from tests.conftest import ROOT, Site, country_html, index_html
from tests.e2e.test_cli import awarnsvc, free_port, warnsvc, write_config
from tests.unit.test_packaging import dockerfile
from warnsvc.model import GCR2P_SCALE, Event, EventType
from warnsvc.store.db import Store
from warnsvc.store.webhooks import test_event as webhook_test_event

pytestmark = pytest.mark.slow

SHIPPED = (ROOT / "config" / "warnsvc.yaml").read_text(encoding="utf-8")


@asynccontextmanager
async def serving(
    command: Sequence[str], cwd: Path, port: int
) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """Run ``command`` (a `warnsvc run`) until its /readyz answers; stop it with SIGTERM."""
    proc = await asyncio.create_subprocess_exec(
        *command, cwd=cwd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        async with aiohttp.ClientSession() as http:
            while True:
                if proc.returncode is not None:
                    err = (await proc.stderr.read()).decode() if proc.stderr else ""
                    raise AssertionError(f"{shlex.join(command)} exited {proc.returncode}: {err}")
                try:
                    async with http.get(f"{base}/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, f"{shlex.join(command)} not ready in 20s"
                await asyncio.sleep(0.2)
        yield base, proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout=15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def run_command(words: list[str]) -> list[str]:
    """A printed `warnsvc ...` command as argv (`warnsvc` itself may not be on PATH here)."""
    if words[0] == "warnsvc" and shutil.which("warnsvc") is None:
        return [sys.executable, "-m", "warnsvc", *words[1:]]
    return words


# -- 11: warnsvc init ------------------------------------------------------------------------


def test_init_writes_the_starter_config_where_run_looks_for_it(tmp_path: Path) -> None:
    result = warnsvc("init", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = tmp_path / "config" / "warnsvc.yaml"
    assert written.read_text(encoding="utf-8") == SHIPPED
    assert "config/warnsvc.yaml" in result.stdout
    assert "next: warnsvc run" in result.stdout
    checked = warnsvc("check-config", cwd=tmp_path)  # the default -c: what `run` reads
    assert checked.returncode == 0, checked.stderr


def test_init_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    first = warnsvc("init", "site", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "next: cd site && warnsvc run" in first.stdout
    written = tmp_path / "site" / "config" / "warnsvc.yaml"
    written.write_text("# my edits\n", encoding="utf-8")

    again = warnsvc("init", "site", cwd=tmp_path)
    assert again.returncode == 2
    assert again.stdout == ""
    [line] = again.stderr.splitlines()
    assert "site/config/warnsvc.yaml exists" in line and "--force" in line
    assert written.read_text(encoding="utf-8") == "# my edits\n"

    forced = warnsvc("init", "--force", "site", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert written.read_text(encoding="utf-8") == SHIPPED


def test_run_without_a_config_says_how_to_make_one(tmp_path: Path) -> None:
    result = warnsvc("run", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "config/warnsvc.yaml: file not found",
        "hint: `warnsvc init` writes a starter config",
    ]


def test_the_wheel_the_image_builds_ships_the_starter_config_and_the_license(
    tmp_path: Path,
) -> None:
    """`pip install` of the wheel, then `warnsvc init`: the wheel is built from exactly what
    the Dockerfile's build stage copies, and warnsvc is imported from it, not the checkout."""
    context = tmp_path / "context"
    rows = dockerfile()
    second_from = [n for n, (i, _) in enumerate(rows) if i == "FROM"][1]
    for instruction, args in rows[:second_from]:
        if instruction == "COPY":
            *sources, _dest = args.split()
            for source in sources:
                target = context / source
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("*.pyc"))
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(ROOT / source, target)
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"),
            *("--no-build-isolation", "--no-index", "--wheel-dir", str(wheels), str(context)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    [wheel] = wheels.glob("warnsvc-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(site)
    assert "warnsvc/starter/warnsvc.yaml" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import warnsvc; print(warnsvc.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(site)
    init = subprocess.run(
        [sys.executable, "-m", "warnsvc", "init", "app"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert init.returncode == 0, init.stderr
    assert (tmp_path / "app" / "config" / "warnsvc.yaml").read_text(encoding="utf-8") == SHIPPED


# -- 12: the demo's next step ----------------------------------------------------------------


async def test_the_command_the_demo_prints_serves_its_feeds_and_events(tmp_path: Path) -> None:
    code, out, err = await awarnsvc("demo", "--confirm-delay", "0.2", cwd=tmp_path)
    assert code == 0, err
    found = re.search(r"^Serve them over HTTP with: (.+?)\s{2,}\(then open", out, re.MULTILINE)
    assert found, out
    command = run_command(shlex.split(found.group(1)))
    port = free_port()
    async with (
        serving([*command, "--port", str(port)], tmp_path, port) as (base, _),
        aiohttp.ClientSession() as http,
    ):
        async with http.get(f"{base}/feeds/alerts.atom") as resp:
            assert resp.status == 200
            feed = feedparser.parse(await resp.read())
        assert [e.title for e in feed.entries] == [
            "Nagorno-Karabakh (Armenia/Azerbaijan): Imminent Risk -> Serious Concern",
            "Nagorno-Karabakh (Armenia/Azerbaijan): Serious Concern -> Imminent Risk",
            "Nagorno-Karabakh (Armenia/Azerbaijan): listed at Serious Concern",
        ]
        async with http.get(f"{base}/feeds/situations/gcr2p:nagorno-karabakh.atom") as resp:
            assert resp.status == 200
    config = command[command.index("-c") + 1]
    code, out, err = await awarnsvc("events", "--json", "-c", config, cwd=tmp_path)
    assert code == 0, err
    assert [json.loads(line)["type"] for line in out.splitlines()] == [
        "risk.deescalated",
        "risk.escalated",
        "situation.listed",
    ]
    # Played again, the demo starts from an empty database: the same three events, no more.
    code, out, err = await awarnsvc("demo", "--confirm-delay", "0.2", cwd=tmp_path)
    assert code == 0, err
    assert "baseline recorded" in out and "no alert sent" in out
    code, out, err = await awarnsvc("events", "--json", "-c", config, cwd=tmp_path)
    assert len(out.splitlines()) == 3, out


# -- 14: events without test pings; status: the whole error, its own service -----------------


def escalation(event_id: str, at: datetime) -> Event:
    return Event(
        id=event_id,
        type=EventType.ESCALATED,
        source_id="gcr2p",
        source_name="Global Centre for the Responsibility to Protect",
        situation="gcr2p:mali",
        situation_name="Mali",
        situation_url=None,
        scale="gcr2p",
        level=GCR2P_SCALE.get("current-crisis"),
        previous_level=GCR2P_SCALE.get("imminent-risk"),
        occurred_at=at,
        detected_at=at,
    )


async def test_events_leave_out_partner_test_pings_unless_asked(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/populations-at-risk/")
    t0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/warnsvc.db")
    try:
        await store.record_event(escalation("evt_real", t0), {})
        for n in range(5):  # a partner checking its endpoint, after the real event
            ping = webhook_test_event(
                service="warnsvc", now=t0 + timedelta(minutes=n + 1), event_id=f"evt_ping{n}"
            )
            await store.record_event(ping, {})
    finally:
        await store.close()

    code, out, err = await awarnsvc("events", "--limit", "3", "-c", str(config), cwd=tmp_path)
    assert code == 0, err
    assert "evt_real" in out and "webhook.test" not in out
    code, out, err = await awarnsvc(
        "events", "--limit", "3", "--json", "-c", str(config), cwd=tmp_path
    )
    assert code == 0, err
    assert [json.loads(line)["id"] for line in out.splitlines()] == ["evt_real"]
    code, out, err = await awarnsvc(
        "events", "--all", "--limit", "3", "--json", "-c", str(config), cwd=tmp_path
    )
    assert code == 0, err
    assert [json.loads(line)["id"] for line in out.splitlines()] == [
        "evt_ping4",
        "evt_ping3",
        "evt_ping2",
    ]


async def test_status_shows_the_last_error_whole(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/populations-at-risk/")
    error = (
        "connection failed: http://127.0.0.1:9/populations-at-risk/: Cannot connect to host "
        "127.0.0.1:9 ssl:default [Errno 111] Connect call failed ('127.0.0.1', 9)"
    )
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/warnsvc.db")
    try:
        await store.record_failure("gcr2p", error, now=datetime.now(UTC))
    finally:
        await store.close()
    code, out, err = await awarnsvc("status", "-c", str(config), cwd=tmp_path)
    assert code == 0, err
    assert f"  gcr2p: last error: {error}" in out.splitlines(), out


async def test_status_does_not_take_another_service_on_its_port_for_its_own(
    tmp_path: Path, site: Site
) -> None:
    site.set("/populations-at-risk/", index_html({"Imminent Risk": [("mali", "Mali")]}))
    site.set("/countries/mali/", country_html("Mali", level="Imminent Risk"))
    port = free_port()
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir()
    theirs.mkdir()
    ours_config = write_config(ours, site.url("/populations-at-risk/"), port=port)
    theirs_config = write_config(theirs, site.url("/populations-at-risk/"), port=port)
    command = [sys.executable, "-m", "warnsvc", "run", "-c", str(theirs_config)]
    async with serving(command, theirs, port) as (base, proc), aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as resp:
            health = await resp.json()
        assert health["instance"] == f"{socket.gethostname()}:{proc.pid}"  # this process

        # The service that answers is the one this config's database knows.
        code, out, err = await awarnsvc("status", "--json", "-c", str(theirs_config), cwd=theirs)
        assert code == 0, err
        service = json.loads(out)["service"]
        assert (service["reachable"], service["same_service"]) == (True, True)
        assert (service["status"], service["instance"]) == ("ready", health["instance"])

        # Another config on the same port, another database: that service is not ours.
        code, out, err = await awarnsvc("status", "--json", "-c", str(ours_config), cwd=ours)
        assert code == 0, err
        service = json.loads(out)["service"]
        assert service == {
            "reachable": True,
            "url": f"{base}/readyz",
            "instance": health["instance"],
            "same_service": False,
        }
        code, out, err = await awarnsvc("status", "-c", str(ours_config), cwd=ours)
        assert code == 0, err
        first = out.splitlines()[0]
        assert first.startswith(f"service: not running here: process {health['instance']}")
        assert "service: ready" not in out


async def test_status_does_not_take_any_http_server_for_its_service(
    tmp_path: Path, site: Site
) -> None:
    ready = json.dumps({"status": "ready", "checks": {}})
    site.set("/readyz", ready, content_type="application/json")
    site.set("/healthz", json.dumps({"status": "ok"}), content_type="application/json")
    port = int(site.url("/").rsplit(":", 1)[1].rstrip("/"))
    config = write_config(tmp_path, "http://127.0.0.1:9/populations-at-risk/", port=port)
    code, out, err = await awarnsvc("status", "-c", str(config), cwd=tmp_path)
    assert code == 0, err
    assert out.splitlines()[0].startswith("service: not running here: something answers")
