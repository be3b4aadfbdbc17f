"""The notify channel (Apprise) end to end, against loopback receivers.

A real escalation goes through the real pipeline (a loopback source page) and is delivered by
Apprise to ``json://`` and ``form://`` targets served by a loopback aiohttp app, with each
target's filter applied; an unreachable target retries then dead-letters without holding up
the others; a hanging one hits the per-attempt timeout; the SSRF guard refuses loopback targets
unless allow-listed; secrets never reach the log; ``warnsvc notify test`` as a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import select

from tests.conftest import Site
from tests.integration.test_sources_pipeline import THREE_LEVELS, gdacs_source
from tests.integration.webhook_helpers import make_event
from warnsvc.channels.notify import enable
from warnsvc.config import Settings, parse_config
from warnsvc.errors import ConfigError
from warnsvc.service import Components, build_components
from warnsvc.store import schema

SECRET = "s3cr3t-Pa55word-0f-the-target"


@dataclass
class Chat:
    """A loopback service that Apprise's json://, form:// and xml:// targets post to."""

    got: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    hang: set[str] = field(default_factory=set)
    fail: set[str] = field(default_factory=set)
    server: TestServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None and self.server.port is not None
        return self.server.port

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if request.content_type == "application/json":
            body = await request.json()
        else:
            body = dict(await request.post())
        body["authorization"] = request.headers.get("Authorization")
        self.got.setdefault(name, []).append(body)
        if name in self.hang:
            await asyncio.sleep(60)
        if name in self.fail:
            return web.Response(status=500)
        return web.Response(status=200)


@pytest.fixture
async def chat(aiohttp_server: Any) -> Chat:
    state = Chat()
    app = web.Application()
    app.router.add_post("/{name}", state.handle)
    state.server = await aiohttp_server(app)
    return state


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def settings_for(
    tmp_path: Path,
    targets: str,
    *,
    sources: str = "",
    notify: str = "",
    env: Any = None,
    allow: str = "[127.0.0.0/8]",
    timeout: str = "2s",
) -> Settings:
    text = f"""
storage: {{url: "sqlite+aiosqlite:///{tmp_path}/t.db"}}
detection: {{confirmations: 2, confirm_delay: 1s}}
feeds: {{dir: "{tmp_path}/feeds"}}
notify:
  allow_networks: {allow}
  timeout: {timeout}
  quick_retries: 0
  retry: {{initial: 0.1s, max_attempts: 2}}
{notify}  targets:
{targets}
sources:
{sources}
"""
    return parse_config(text, filename="test.yaml", environ=env or {})


@pytest.fixture
async def parts_of() -> AsyncIterator[list[Components]]:
    made: list[Components] = []
    yield made
    for parts in made:
        await parts.close()


async def _outbox(parts: Components) -> dict[str, tuple[str, str | None]]:
    """Notify rows: recipient -> (status, last error)."""
    table = schema.outbox
    async with parts.store.engine.connect() as conn:
        rows = await conn.execute(
            select(table.c.recipient, table.c.status, table.c.last_error).where(
                table.c.channel == "notify"
            )
        )
        return {r.recipient: (r.status, r.last_error) for r in rows}


async def _drain_until_settled(parts: Components, rounds: int = 40) -> None:
    """Drain until no notify row is pending (retries fall due 0.05-0.1 s later)."""
    for _ in range(rounds):
        await parts.dispatcher.drain()
        if all(status != "pending" for status, _ in (await _outbox(parts)).values()):
            return
        await asyncio.sleep(0.1)


async def test_an_escalation_reaches_the_json_and_form_targets_whose_filters_match(
    tmp_path: Path, site: Site, chat: Chat, parts_of: list[Components]
) -> None:
    port = chat.port
    targets = f"""
    - {{url: "json://127.0.0.1:{port}/orange", min_level: orange}}
    - {{id: sudan-desk, url: "form://127.0.0.1:{port}/eq", situations: ["gdacs:eq1221830"]}}
    - {{url: "json://127.0.0.1:{port}/red", min_level: red}}
    - {{url: "xml://127.0.0.1:{port}/other", situations: ["gdacs:dr1012728"]}}
    - {{url: "json://127.0.0.1:{port}/listed", event_types: [situation.listed]}}
"""
    settings = settings_for(tmp_path, targets, sources=gdacs_source(site.url("/rss.xml")))
    parts = await build_components(settings)
    parts_of.append(parts)
    site.set("/rss.xml", THREE_LEVELS, content_type="application/rss+xml")
    assert (await parts.poller.poll("gdacs")).baseline
    site.set("/rss.xml", THREE_LEVELS.replace(">Green<", ">Orange<"))
    await parts.poller.poll("gdacs")
    [event] = (await parts.poller.poll("gdacs")).events
    await parts.dispatcher.drain()

    assert sorted(chat.got) == ["eq", "orange"]
    [json_message] = chat.got["orange"]
    [form_message] = chat.got["eq"]
    for message in (json_message, form_message):
        assert "risk up from Green to Orange" in message["title"]
        assert message["title"] in message["message"]
    assert event.situation_url and event.situation_url in json_message["message"]
    assert await _outbox(parts) == {
        "target-1": ("delivered", None),
        "sudan-desk": ("delivered", None),
    }


async def test_an_unreachable_target_dead_letters_and_the_other_is_unaffected(
    tmp_path: Path, chat: Chat, parts_of: list[Components], caplog: pytest.LogCaptureFixture
) -> None:
    targets = f"""
    - {{id: down, url: "json://bot:{SECRET}@127.0.0.1:{closed_port()}/down"}}
    - {{id: up, url: "json://127.0.0.1:{chat.port}/up"}}
"""
    settings = settings_for(tmp_path, targets)
    settings_for_down = settings.notify
    parts = await build_components(settings)
    parts_of.append(parts)
    caplog.set_level(logging.DEBUG)
    await parts.store.record_event(make_event(), {"notify": ["down", "up"]})
    await _drain_until_settled(parts)

    rows = await _outbox(parts)
    assert rows["up"] == ("delivered", None)
    status, error = rows["down"]
    assert status == "dead"
    assert error and "connection error" in error.lower()
    assert len(chat.got["up"]) == 1
    assert SECRET not in caplog.text and SECRET not in (error or "")
    assert "json://bot:****@127.0.0.1" in caplog.text  # the masked URL, logged at start

    # a whole retry schedule without a success: disabled, with an operator notice
    [notice] = await parts.store.notices.recent(kind="notify.target_disabled")
    assert notice.detail["target"] == "down" and SECRET not in notice.subject
    assert "json://bot:****@127.0.0.1" in notice.subject
    await parts.store.record_event(make_event("evt_0000000000002"), {"notify": ["down"]})
    await parts.dispatcher.drain()
    assert await parts.store.notices.recent(kind="notify.target_disabled") == [notice]
    table = schema.outbox
    async with parts.store.engine.connect() as conn:
        query = select(table.c.status, table.c.last_error, table.c.attempts).where(
            table.c.event_id == "evt_0000000000002"
        )
        [(status, error, attempts)] = (await conn.execute(query)).all()
    assert (status, attempts) == ("dead", 1) and "target disabled" in error

    assert settings_for_down is not None
    assert await enable(parts.store.notices, settings_for_down, "down")
    assert not await enable(parts.store.notices, settings_for_down, "no-such-target")
    assert await parts.plugged["notify"].channels[0].disabled() == {}  # type: ignore[attr-defined]


async def test_a_hanging_target_times_out_per_attempt(
    tmp_path: Path, chat: Chat, parts_of: list[Components]
) -> None:
    chat.hang.add("slow")
    targets = f"""
    - {{id: slow, url: "json://127.0.0.1:{chat.port}/slow"}}
    - {{id: fast, url: "json://127.0.0.1:{chat.port}/fast"}}
"""
    parts = await build_components(settings_for(tmp_path, targets, timeout="0.5s"))
    parts_of.append(parts)
    await parts.store.record_event(make_event(), {"notify": ["slow", "fast"]})
    await parts.dispatcher.drain()

    rows = await _outbox(parts)
    assert rows["fast"] == ("delivered", None)
    assert rows["slow"][0] == "pending"  # retried later on the persisted schedule
    assert "timed out after 0.5s" in (rows["slow"][1] or "")


async def test_the_ssrf_guard_refuses_a_loopback_target_unless_allow_listed(
    tmp_path: Path, chat: Chat, parts_of: list[Components]
) -> None:
    targets = f"""
    - {{id: tls, url: "jsons://localhost:{chat.port}/tls"}}
    - {{id: plain, url: "json://127.0.0.1:{chat.port}/plain"}}
"""
    parts = await build_components(settings_for(tmp_path, targets, allow="[]"))
    parts_of.append(parts)
    await parts.store.record_event(make_event(), {"notify": ["tls", "plain"]})
    await parts.dispatcher.drain()
    rows = await _outbox(parts)
    assert chat.got == {}
    assert "refused by the SSRF guard" in (rows["tls"][1] or "")
    assert "127.0.0.1" in (rows["tls"][1] or "")
    assert "refused by the SSRF guard" in (rows["plain"][1] or "")


async def test_check_config_names_the_key_and_the_scheme_of_a_url_apprise_does_not_know(
    tmp_path: Path,
) -> None:
    targets = """
    - {url: "json://127.0.0.1/ok"}
    - {url: "telegrm://123456:ABCDEF/42", min_level: very-high}
"""
    with pytest.raises(ConfigError) as caught:
        settings_for(tmp_path, targets)
    shown = [str(p) for p in caught.value.problems]
    [scheme] = [p for p in shown if "notify.targets[1].url" in p]
    assert "'telegrm'" in scheme and "ABCDEF" not in scheme
    assert scheme.startswith("test.yaml:")
    with pytest.raises(ConfigError) as caught:
        settings_for(tmp_path, targets.replace("telegrm://123456:ABCDEF/42", "json://h/p"))
    [level] = [str(p) for p in caught.value.problems]
    assert "notify.targets[1].min_level: unknown level 'very-high'" in level


async def test_a_secret_from_the_environment_is_used_and_never_shown(
    tmp_path: Path, chat: Chat, parts_of: list[Components], caplog: pytest.LogCaptureFixture
) -> None:
    chat.fail.add("auth")
    targets = f"""
    - {{id: auth, url: "json://bot:${{CHAT_PASSWORD}}@127.0.0.1:{chat.port}/auth"}}
"""
    settings = settings_for(tmp_path, targets, env={"CHAT_PASSWORD": SECRET})
    caplog.set_level(logging.DEBUG)
    parts = await build_components(settings)
    parts_of.append(parts)
    await parts.store.record_event(make_event(), {"notify": ["auth"]})
    await _drain_until_settled(parts)
    [first, *_] = chat.got["auth"]
    assert first["authorization"] and first["authorization"].startswith("Basic ")
    rows = await _outbox(parts)
    assert rows["auth"][0] == "dead"
    assert SECRET not in caplog.text
    assert SECRET not in repr(settings)
    assert "500" in (rows["auth"][1] or "")


@pytest.mark.slow
async def test_warnsvc_notify_test_as_a_subprocess(tmp_path: Path, chat: Chat) -> None:
    config = tmp_path / "warnsvc.yaml"
    config.write_text("notify: {allow_networks: [127.0.0.0/8]}\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}

    async def run(url: str, *config_args: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "warnsvc",
            "notify",
            "test",
            url,
            *config_args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        out, err = await process.communicate()
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    url = f"json://bot:{SECRET}@127.0.0.1:{chat.port}/cli"
    code, out, err = await run(url, "-c", str(config))
    assert code == 0, err
    assert f"target: json://bot:****@127.0.0.1:{chat.port}/cli" in out
    assert "result: sent" in out and SECRET not in out + err
    [message] = chat.got["cli"]
    assert message["title"] == "warnsvc test message"

    chat.fail.add("broken")
    code, out, err = await run(f"json://127.0.0.1:{chat.port}/broken", "-c", str(config))
    assert code == 1 and "result: failed" in out

    code, out, err = await run(f"json://127.0.0.1:{chat.port}/refused")  # no allow-list
    assert code == 1 and "refused by the SSRF guard" in out
    assert "refused" not in chat.got

    code, out, err = await run("nosuch://host/path")
    assert code == 2 and "'nosuch'" in err


def test_the_message_is_short_and_names_the_levels_and_the_link() -> None:
    from warnsvc.channels.notify import message_for

    title, body = message_for(make_event().payload())
    assert title == "Sudan: risk up from Imminent Risk to Current Crisis"
    assert body.splitlines()[-1] == "https://www.globalr2p.org/countries/sudan/"
    assert len(body) < 300
    assert json.dumps(body)


@pytest.mark.slow
def test_apprise_is_loaded_only_when_notify_is_configured(tmp_path: Path) -> None:
    script = """
import asyncio, sys
from warnsvc.config import parse_config
from warnsvc.service import build_components

async def main(text):
    parts = await build_components(parse_config(text, filename="t.yaml", environ={}))
    await parts.close()

here = sys.argv[1]
base = f'storage: {{url: "sqlite+aiosqlite:///{here}/t.db"}}\\nfeeds: {{dir: "{here}/feeds"}}\\n'
asyncio.run(main(base))
print("without", "apprise" in sys.modules)
asyncio.run(main(base + 'notify: {targets: [{url: "jsons://example.org/x"}]}\\n'))
print("with", "apprise" in sys.modules)
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert done.stdout.split() == ["without", "False", "with", "True"]


async def test_dead_letters_of_a_target_are_queued_again_by_warnsvc_notify_redeliver(
    tmp_path: Path, chat: Chat, parts_of: list[Components]
) -> None:
    chat.fail.add("flaky")
    text = f"""
storage: {{url: "sqlite+aiosqlite:///{tmp_path}/t.db"}}
feeds: {{dir: "{tmp_path}/feeds"}}
notify:
  allow_networks: [127.0.0.0/8]
  quick_retries: 0
  retry: {{initial: 0.1s, max_attempts: 1}}
  targets:
    - {{id: flaky, url: "json://127.0.0.1:{chat.port}/flaky"}}
"""
    config = tmp_path / "warnsvc.yaml"
    config.write_text(text, encoding="utf-8")
    parts = await build_components(parse_config(text, filename=str(config)))
    parts_of.append(parts)
    await parts.store.record_event(make_event(), {"notify": ["flaky"]})
    await _drain_until_settled(parts)
    assert (await _outbox(parts))["flaky"][0] == "dead"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}

    def notify(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "warnsvc", "notify", *args, "-c", str(config)]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)

    def redeliver(*args: str) -> subprocess.CompletedProcess[str]:
        return notify("redeliver", *args)

    later = redeliver("flaky", "--since", "2999-01-01")
    assert later.returncode == 0 and "0 notify deliveries" in later.stdout
    unknown = redeliver("nobody")
    assert unknown.returncode == 2 and "no notify target 'nobody'" in unknown.stderr
    done = redeliver("flaky")
    assert done.returncode == 0, done.stderr
    assert "1 notify deliveries to flaky queued again" in done.stdout
    assert (await _outbox(parts))["flaky"][0] == "pending"

    chat.fail.discard("flaky")  # the service is back, and the disabled target enabled again:
    assert notify("enable", "flaky").returncode == 0  # the queued row now arrives
    await _drain_until_settled(parts)
    assert (await _outbox(parts))["flaky"] == ("delivered", None)
    assert len(chat.got["flaky"]) == 2
