"""Operator alerts: once per change of state, by webhook and by mail, never to subscribers."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from tests.conftest import Site, country_html
from tests.smtp_sink import Sink, free_port, start_sink
from warnsvc.config import parse_config
from warnsvc.service import Components, build_components
from warnsvc.store import schema
from warnsvc.store.notices import Notice

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class Receiver:
    """The operators' webhook receiver on loopback: keeps every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.requests]


@pytest.fixture
async def receiver(aiohttp_server) -> AsyncIterator[tuple[Receiver, str]]:
    state = Receiver()
    app = web.Application()
    app.router.add_post("/ops", state.handle)
    server = await aiohttp_server(app)
    yield state, str(server.make_url("/ops"))


@pytest.fixture
def smtp() -> Iterator[tuple[Sink, int]]:
    port = free_port()
    sink = Sink()
    controller = start_sink(sink, port)
    try:
        yield sink, port
    finally:
        controller.stop()


async def make_parts(tmp_path: Path, site: Site, hook: str, smtp_port: int) -> Components:
    text = f"""
storage: {{url: "sqlite+aiosqlite:///{tmp_path}/t.db"}}
detection: {{failure_threshold: 3}}
feeds: {{dir: "{tmp_path}/feeds"}}
webhooks: {{allow_networks: ["127.0.0.0/8"]}}
email:
  from_address: warnsvc@example.org
  smtp: {{host: 127.0.0.1, port: {smtp_port}, security: none}}
operators:
  emails: [ops@example.org]
  webhooks: [{{url: "{hook}", secret: "{SECRET}"}}]
  dead_letters: 3
sources:
  - id: mali
    kind: gcr2p-page
    url: {site.url("/countries/mali/")}
    fetch: {{timeout: 1s, retries: 0}}
"""
    return await build_components(parse_config(text, filename="t.yaml"))


async def recorded(parts: Components) -> list[Notice]:
    """Every notice, oldest first."""
    return list(reversed(await parts.store.notices.recent(limit=1000)))


async def notices(parts: Components) -> list[str]:
    return [n.kind for n in await recorded(parts)]


async def test_a_failing_source_is_reported_once_and_its_recovery_once(
    tmp_path: Path, site: Site, receiver: tuple[Receiver, str], smtp: tuple[Sink, int]
) -> None:
    hook, url = receiver
    sink, port = smtp
    parts = await make_parts(tmp_path, site, url, port)
    try:
        site.set("/countries/mali/", country_html("Mali", level="Imminent Risk"))
        await parts.poller.poll("mali")
        site.set("/countries/mali/", "down", status=500)
        for _ in range(5):  # five failed polls: one notice, at the third
            await parts.poller.poll("mali")
            await parts.forward_notices()
        assert await notices(parts) == ["source.unhealthy"]
        site.set("/countries/mali/", country_html("Mali", level="Imminent Risk"))
        await parts.poller.poll("mali")
        await parts.poller.poll("mali")
        assert await notices(parts) == ["source.unhealthy", "source.recovered"]

        assert await parts.forward_notices() == 1
        assert await parts.forward_notices() == 0  # each notice is queued once
        await parts.dispatcher.drain()

        # Both notices go out in one batch, sent side by side (webhooks to the endpoint, mails
        # over two pool connections), so either may arrive first: each arrives once, and each
        # says what it is about.
        bodies = hook.bodies()
        assert sorted(b["kind"] for b in bodies) == ["source.recovered", "source.unhealthy"]
        failing = next(b for b in bodies if b["kind"] == "source.unhealthy")
        assert failing["subject"] == "source mali is failing: 3 polls in a row"
        assert "HTTP 500" in failing["detail"]["error"]
        for headers, body in hook.requests:
            verified = Webhook(SECRET).verify(body, {k.lower(): v for k, v in headers.items()})
            assert verified["id"] in {b["id"] for b in bodies}

        subjects = sorted(r.message()["Subject"] for r in sink.received)
        assert subjects == [
            "[warnsvc] source mali is failing: 3 polls in a row",
            "[warnsvc] source mali recovered after 5 failed polls",
        ]
        assert [r.rcpt_tos for r in sink.received] == [["ops@example.org"]] * 2

        # Subscribers never see these: no event for the feeds, none listed as an event.
        assert await parts.store.count_events() == 0
        assert await parts.store.recent_events() == []
        counts = await parts.outbox.counts()  # through the webhooks and email channels
        assert counts == {("webhooks", "delivered"): 2, ("email", "delivered"): 2}
    finally:
        await parts.close()


async def test_a_level_word_outside_the_scale_is_reported_once_per_word(
    tmp_path: Path, site: Site, receiver: tuple[Receiver, str], smtp: tuple[Sink, int]
) -> None:
    parts = await make_parts(tmp_path, site, receiver[1], smtp[1])
    try:
        site.set("/countries/mali/", country_html("Mali", level="Imminent Risk"))
        await parts.poller.poll("mali")
        site.set("/countries/mali/", country_html("Mali", level="Extreme Danger"))
        await parts.poller.poll("mali")
        await parts.poller.poll("mali")
        assert await notices(parts) == ["source.unknown_level"]
        site.set("/countries/mali/", country_html("Mali", level="Total Catastrophe"))
        await parts.poller.poll("mali")
        assert await notices(parts) == [
            "source.unknown_level",
            "source.unhealthy",
            "source.unknown_level",
        ]
        details = [n.detail for n in await recorded(parts)]
        assert [d.get("level") for d in details] == ["Extreme Danger", None, "Total Catastrophe"]
    finally:
        await parts.close()


async def test_dead_letters_piling_up_are_reported_per_step(
    tmp_path: Path, site: Site, receiver: tuple[Receiver, str], smtp: tuple[Sink, int]
) -> None:
    parts = await make_parts(tmp_path, site, receiver[1], smtp[1])
    now = datetime.now(UTC)
    try:
        async with parts.store.engine.begin() as conn:
            await conn.execute(
                schema.events.insert().values(
                    id="evt_x",
                    type="risk.escalated",
                    source_id="mali",
                    situation_id="gcr2p:mali",
                    occurred_at=now,
                    detected_at=now,
                    payload={"id": "evt_x"},
                )
            )

        async def dead(count: int, offset: int) -> None:
            async with parts.store.engine.begin() as conn:
                await conn.execute(
                    schema.outbox.insert(),
                    [
                        {
                            "event_id": "evt_x",
                            "channel": "webhooks",
                            "recipient": f"ep{offset + n}",
                            "status": "dead",
                            "attempts": 20,
                            "next_attempt_at": now,
                            "created_at": now,
                            "updated_at": now - timedelta(seconds=1),
                        }
                        for n in range(count)
                    ],
                )

        assert parts.notices is not None
        await dead(2, 0)
        assert await parts.notices.check_dead_letters(now=now) == 0
        await dead(1, 2)
        assert await parts.notices.check_dead_letters(now=now) == 1
        assert await parts.notices.check_dead_letters(now=now) == 0  # not once per check
        await dead(3, 3)
        assert await parts.notices.check_dead_letters(now=now) == 1
        assert await notices(parts) == ["outbox.dead_letters", "outbox.dead_letters"]
    finally:
        await parts.close()


def test_operator_mail_needs_the_email_section() -> None:
    from warnsvc.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        parse_config("operators:\n  emails: [ops@example.org]\n", filename="t.yaml")
    assert str(info.value) == (
        "t.yaml:1: operators: operators.emails are sent through the email section's SMTP "
        "server; add it"
    )


async def test_a_disabled_webhook_endpoint_reaches_operators_and_the_partner_contact(
    tmp_path: Path, site: Site, receiver: tuple[Receiver, str], smtp: tuple[Sink, int]
) -> None:
    from warnsvc.store.webhooks import OPERATORS

    hook, url = receiver
    sink, port = smtp
    parts = await make_parts(tmp_path, site, url, port)
    now = datetime.now(UTC)
    try:
        endpoint, _ = await parts.store.endpoints.create(
            url="https://hooks.ngo.example.org/warnsvc",
            partner_id="ngo",
            endpoint_id="whep_1",
            now=now,
        )
        disabled = await parts.store.endpoints.disable(
            endpoint, reason="HTTP 410", notify=(OPERATORS, "it@ngo.example.org"), now=now
        )
        assert disabled
        told = await recorded(parts)
        assert [(n.kind, n.recipient) for n in told] == [
            ("webhook.endpoint_disabled", None),  # None: the operators
            ("webhook.endpoint_disabled", "it@ngo.example.org"),
        ]
        assert all(n.detail == {"endpoint": "whep_1", "partner": "ngo"} for n in told)
        await parts.forward_notices()
        await parts.forward_notices()
        await parts.dispatcher.drain()
        assert [b["kind"] for b in hook.bodies()] == ["webhook.endpoint_disabled"]
        assert sorted(r.rcpt_tos[0] for r in sink.received) == [
            "it@ngo.example.org",
            "ops@example.org",
        ]
    finally:
        await parts.close()


async def test_notices_go_through_the_channels_mail_builder_signer_guard_and_apprise(
    tmp_path: Path, site: Site, receiver: tuple[Receiver, str], smtp: tuple[Sink, int]
) -> None:
    """The subscribers' mail builder, the webhooks channel (its SSRF guard too: a loopback URL
    that is not allowed is refused), and an Apprise URL under ``operators.notify``."""
    hook, url = receiver
    sink, port = smtp
    text = f"""
storage: {{url: "sqlite+aiosqlite:///{tmp_path}/t.db"}}
feeds: {{dir: "{tmp_path}/feeds"}}
email:
  from_address: warnsvc@example.org
  smtp: {{host: 127.0.0.1, port: {port}, security: none}}
notify: {{allow_networks: ["127.0.0.0/8"], timeout: 5s}}
operators:
  emails: [ops@example.org]
  webhooks: [{{url: "{url}"}}]
  notify: ["json://{url.removeprefix("http://")}"]
sources: []
"""
    parts = await build_components(parse_config(text, filename="t.yaml"))
    try:
        now = datetime.now(UTC)
        await parts.store.notices.record(
            kind="source.unhealthy",
            subject="source mali is failing: 3 polls in a row",
            detail={"source": "mali", "failures": 3, "error": "HTTP 500 <b>"},
            now=now,
        )
        assert await parts.forward_notices() == 1
        await parts.dispatcher.drain()

        [mail] = sink.received
        message = mail.message()
        assert message["Subject"] == "[warnsvc] source mali is failing: 3 polls in a row"
        assert message["Auto-Submitted"] == "auto-generated"  # the subscribers' builder
        text_part = next(p for p in message.walk() if p.get_content_type() == "text/plain")
        assert "failures: 3" in text_part.get_content()
        html_part = next(p for p in message.walk() if p.get_content_type() == "text/html")
        assert "HTTP 500 &lt;b&gt;" in html_part.get_content()

        [(headers, body)] = hook.requests  # one POST: Apprise's json:// to the same receiver
        assert json.loads(body)["title"]  # Apprise's JSON shape, not the webhook payload
        assert "webhook-signature" not in {k.lower() for k in headers}

        counts = await parts.outbox.counts()
        assert counts[("email", "delivered")] == 1
        assert counts[("notify", "delivered")] == 1
        assert ("webhooks", "delivered") not in counts  # 127.0.0.1 is not allowed for webhooks
    finally:
        await parts.close()
