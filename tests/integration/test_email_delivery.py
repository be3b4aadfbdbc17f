"""Email delivery against aiosmtpd on loopback: messages parsed back, TLS, AUTH, outages."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from sqlalchemy import select, update

from tests.integration.email_harness import (
    BASE_URL,
    NK_NAME,
    NK_URL,
    Harness,
    make_event,
    options,
)
from tests.smtp_sink import Sink, free_port, make_certificate, server_tls_context, start_sink
from warnsvc.channels.email import DIGEST_CHANNEL
from warnsvc.filters import Filter as Filters
from warnsvc.model import EventType
from warnsvc.store import schema
from warnsvc.store import subscriptions as mailstore
from warnsvc.store.db import Store

pytestmark = pytest.mark.filterwarnings(
    "ignore:Session.login_data is deprecated:DeprecationWarning"
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'warnsvc.db'}")
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def sink(port: int) -> Iterator[Sink]:
    handler = Sink()
    controller = start_sink(handler, port)
    try:
        yield handler
    finally:
        controller.stop()


@pytest.fixture
async def harness(store: Store, port: int) -> AsyncIterator[Harness]:
    built = Harness.build(store, options(port))
    try:
        yield built
    finally:
        await built.mailer.close()


# --------------------------------------------------------------------------- the message


async def test_an_escalation_reaches_each_subscriber_as_a_proper_multipart_mail(
    harness: Harness, sink: Sink
) -> None:
    await harness.subscribe("ana@example.org", "ben@example.org")
    await harness.emit(make_event("evt_1"))

    assert await harness.dispatcher.drain() == 2

    assert sorted(r.rcpt_tos[0] for r in sink.received) == ["ana@example.org", "ben@example.org"]
    [received] = [r for r in sink.received if r.rcpt_tos == ["ana@example.org"]]
    assert received.mail_from == "alerts@example.org"
    msg = received.message()
    assert msg["Subject"] == f"[Imminent Risk ↑] {NK_NAME}"
    assert "=?utf-8?" in received.data.decode("ascii").split("\r\n\r\n")[0]  # RFC 2047
    assert msg["From"] == "warnsvc alerts <alerts@example.org>"
    assert msg["To"] == "Reader ana <ana@example.org>"
    assert msg["Reply-To"] == "ops@example.org"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["X-Warnsvc-Event"] == "evt_1"
    sub = await harness.subscriber("ana@example.org")
    assert msg["Message-ID"] == f"<evt_1.{sub.id}@example.org>"
    sent_at = parsedate_to_datetime(msg["Date"])
    assert abs(sent_at - datetime.now(UTC)) < timedelta(minutes=1)
    unsubscribe = f"{BASE_URL}/email/unsubscribe?token={sub.unsubscribe_token}"
    assert msg["List-Unsubscribe"] == f"<{unsubscribe}>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg.get_content_type() == "multipart/alternative"
    text_part, html_part = msg.iter_parts()
    assert text_part.get_content_type() == "text/plain"
    assert html_part.get_content_type() == "text/html"
    assert text_part.get_content_charset() == "utf-8"
    assert text_part["Content-Transfer-Encoding"] == "quoted-printable"
    text = text_part.get_content()
    assert f"{NK_NAME}: Serious Concern → Imminent Risk" in text
    assert "Date: 31 August 2023" in text
    assert "The ongoing blockade of the Lachin corridor." in text
    assert "- Blockade of the only road." in text
    assert f"Read more: {NK_URL}" in text
    assert unsubscribe in text
    html = html_part.get_content()
    assert "<li>Shelling of civilians.</li>" in html
    assert f'<a href="{NK_URL}">Global Centre for the Responsibility to Protect</a>' in html
    assert f'<a href="{unsubscribe}">Unsubscribe</a>' in html
    assert [r["status"] for r in await harness.rows()] == ["delivered", "delivered"]


async def test_text_from_the_source_is_escaped_and_cannot_inject_headers(
    harness: Harness, sink: Sink
) -> None:
    await harness.subscribe("ana@example.org")
    await harness.emit(
        make_event(
            "evt_x",
            name="Evil\r\nBcc: victim@example.org <b>",
            summary='<script>alert("x")</script> & <img src=x onerror=alert(1)>',
            factors=("<a href='javascript:alert(1)'>click</a>",),
            url="javascript:alert(1)",
        )
    )
    await harness.dispatcher.drain()

    [received] = sink.received
    assert received.rcpt_tos == ["ana@example.org"]
    msg = received.message()
    assert msg["Bcc"] is None
    assert msg["Subject"] == "[Imminent Risk ↑] Evil Bcc: victim@example.org <b>"
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "<script" not in html and "<img" not in html and "<a href='javascript" not in html
    assert 'href="javascript' not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;img" in html
    assert "Read more" not in msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("type_", "new", "old", "tag"),
    [
        (EventType.DEESCALATED, "serious-concern", "imminent-risk", "Serious Concern ↓"),
        (EventType.LISTED, "serious-concern", None, "Serious Concern, newly listed"),
        (EventType.DELISTED, None, "current-crisis", "Delisted"),
        (EventType.UPDATED, "imminent-risk", "imminent-risk", "Imminent Risk, updated analysis"),
    ],
)
async def test_subjects_say_what_changed(
    harness: Harness, sink: Sink, type_: EventType, new: str | None, old: str | None, tag: str
) -> None:
    await harness.subscribe("ana@example.org")
    await harness.emit(make_event("evt_t", type_=type_, new=new, old=old))
    await harness.dispatcher.drain()
    assert sink.received[0].message()["Subject"] == f"[{tag}] {NK_NAME}"


async def test_operators_override_a_template_from_their_directory(
    store: Store, port: int, sink: Sink, tmp_path: Path
) -> None:
    (tmp_path / "email").mkdir()
    (tmp_path / "email" / "event_subject.txt").write_text("ALERT {{ event.situation_name }}\n")
    harness = Harness.build(store, options(port, templates_dir=tmp_path))
    try:
        await harness.subscribe("ana@example.org")
        await harness.emit(make_event("evt_o"))
        await harness.dispatcher.drain()
    finally:
        await harness.mailer.close()
    msg = sink.received[0].message()
    assert msg["Subject"] == f"ALERT {NK_NAME}"
    assert "Risk factors" in msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]


# --------------------------------------------------------------------------- filters, pool


async def test_filters_choose_who_gets_an_event(harness: Harness, sink: Sink) -> None:
    await harness.subscribe("all@example.org")
    await harness.subscribe("crisis@example.org", min_level="current-crisis")
    await harness.subscribe("risk@example.org", min_level="imminent-risk")
    await harness.subscribe("sudan@example.org", situations=("gcr2p:sudan",))
    await harness.subscribe("delist@example.org", event_types=("situation.delisted",))
    await harness.subscribe("other@example.org", sources=("another-source",))
    await harness.emit(make_event("evt_f"))
    await harness.dispatcher.drain()
    assert sorted(r.rcpt_tos[0] for r in sink.received) == ["all@example.org", "risk@example.org"]


async def test_connections_are_reused_for_many_messages(harness: Harness, sink: Sink) -> None:
    addresses = [f"reader{n}@example.org" for n in range(30)]
    await harness.subscribe(*addresses)
    await harness.emit(make_event("evt_many"))
    await harness.dispatcher.drain()
    assert len(sink.received) == 30
    assert harness.mailer.pool.connects <= 2  # the pool has two connections


async def test_an_unsubscribed_reader_is_skipped_even_with_a_queued_row(
    harness: Harness, sink: Sink
) -> None:
    await harness.subscribe("ana@example.org", "ben@example.org")
    await harness.emit(make_event("evt_u"))
    ben = await harness.subscriber("ben@example.org")
    result = await harness.store.subscribers.unsubscribe(
        ben.unsubscribe_token, now=datetime.now(UTC)
    )
    assert result is mailstore.UnsubscribeResult.UNSUBSCRIBED
    await harness.dispatcher.drain()
    assert [r.rcpt_tos[0] for r in sink.received] == ["ana@example.org"]
    assert {r["status"] for r in await harness.rows()} == {"delivered"}


# --------------------------------------------------------------------------- failures


async def test_a_4xx_blip_is_retried_in_process(harness: Harness, sink: Sink) -> None:
    sink.data_failures = 1
    await harness.subscribe("ana@example.org")
    await harness.emit(make_event("evt_b"))
    await harness.dispatcher.drain()
    assert len(sink.received) == 1
    [row] = await harness.rows()
    assert row["status"] == "delivered"


async def test_a_5xx_recipient_fails_permanently_and_repeated_ones_suppress_it(
    harness: Harness, sink: Sink
) -> None:
    sink.refuse["gone@example.org"] = "550 5.1.1 no such user"
    await harness.subscribe("gone@example.org", "ana@example.org")
    for n in range(3):
        await harness.emit(make_event(f"evt_{n}"))
        await harness.dispatcher.drain()

    rows = await harness.rows()
    gone = await harness.subscriber("gone@example.org")
    dead = [r for r in rows if r["recipient"] == gone.key]
    assert [r["status"] for r in dead] == ["dead"] * 3
    assert dead[0]["last_status"] == 550 and "no such user" in dead[0]["last_error"]
    assert gone.status == mailstore.SUPPRESSED
    assert (await harness.subscriber("ana@example.org")).status == mailstore.ACTIVE
    [notice] = await harness.store.notices.recent()
    assert notice.kind == "email.address_suppressed"
    assert notice.detail["address"] == "gone@example.org"

    await harness.emit(make_event("evt_after"))
    assert gone.key not in {
        r["recipient"] for r in await harness.rows() if r["event_id"] == "evt_after"
    }


async def test_a_4xx_recipient_is_retried_on_the_schedule(harness: Harness, sink: Sink) -> None:
    sink.refuse["busy@example.org"] = "452 4.2.2 mailbox full"
    await harness.subscribe("busy@example.org")
    await harness.emit(make_event("evt_4"))
    await harness.dispatcher.drain()
    [row] = await harness.rows()
    assert row["status"] == "pending" and row["attempts"] == 1 and row["last_status"] == 452
    assert row["next_attempt_at"] > datetime.now(UTC)
    assert (await harness.subscriber("busy@example.org")).hard_failures == 0


async def test_an_smtp_outage_delays_mail_and_loses_none(harness: Harness, port: int) -> None:
    addresses = [f"reader{n}@example.org" for n in range(12)]
    await harness.subscribe(*addresses)
    await harness.emit(make_event("evt_down"))

    await harness.dispatcher.drain()  # nobody listens on the port
    rows = await harness.rows()
    assert {r["status"] for r in rows} == {"pending"} and len(rows) == 12
    assert all(r["attempts"] == 1 and "SMTP unavailable" in r["last_error"] for r in rows)
    assert all(r["next_attempt_at"] > datetime.now(UTC) for r in rows)
    assert await harness.dispatcher.drain() == 0  # nothing due before the retry time

    sink = Sink()
    controller = start_sink(sink, port)
    try:
        await harness.make_due()
        await asyncio_sleep_past_breaker(harness)
        await harness.dispatcher.drain()
    finally:
        controller.stop()
    assert sorted(r.rcpt_tos[0] for r in sink.received) == sorted(addresses)
    assert {r["status"] for r in await harness.rows()} == {"delivered"}


async def asyncio_sleep_past_breaker(harness: Harness) -> None:
    import asyncio

    await asyncio.sleep(harness.mailer.pool.breaker + 0.05)


async def test_starttls_with_auth_on_a_throwaway_certificate(
    store: Store, port: int, tmp_path: Path
) -> None:
    cert, key = make_certificate(tmp_path)
    sink = Sink()
    controller = start_sink(
        sink, port, tls_context=server_tls_context(cert, key), auth=("warnsvc", "s3cret")
    )
    good = Harness.build(
        store,
        options(port, security="starttls", ca_file=cert, user="warnsvc", password="s3cret"),
    )
    bad = Harness.build(
        store,
        options(port, security="starttls", ca_file=cert, user="warnsvc", password="wrong"),
    )
    untrusted = Harness.build(store, options(port, security="starttls"))
    try:
        await good.subscribe("ana@example.org")
        await good.emit(make_event("evt_tls"))
        await bad.dispatcher.drain()
        await untrusted.make_due()
        await untrusted.dispatcher.drain()
        assert sink.received == []
        [row] = await good.rows()
        assert row["status"] == "pending" and row["attempts"] == 2
        await good.make_due()
        await good.dispatcher.drain()
    finally:
        for h in (good, bad, untrusted):
            await h.mailer.close()
        controller.stop()
    [received] = sink.received
    assert received.tls and received.authenticated
    assert received.message()["Subject"] == f"[Imminent Risk ↑] {NK_NAME}"
    [row] = await good.rows()
    assert row["status"] == "delivered"


async def test_implicit_tls(store: Store, port: int, tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    sink = Sink()
    controller = start_sink(
        sink, port, tls_context=server_tls_context(cert, key), implicit_tls=True
    )
    harness = Harness.build(store, options(port, security="tls", ca_file=cert))
    try:
        await harness.subscribe("ana@example.org")
        await harness.emit(make_event("evt_tls"))
        await harness.dispatcher.drain()
    finally:
        await harness.mailer.close()
        controller.stop()
    assert len(sink.received) == 1 and sink.received[0].tls


# --------------------------------------------------------------------------- digests


async def test_a_digest_collects_the_day_in_one_mail(harness: Harness, sink: Sink) -> None:
    await harness.subscribe("daily@example.org", mode="digest")
    await harness.subscribe("now@example.org")
    await harness.emit(make_event("evt_d1"))
    await harness.emit(
        make_event("evt_d2", situation="gcr2p:sudan", name="Sudan", new="current-crisis")
    )
    await harness.dispatcher.drain()
    assert [r.rcpt_tos[0] for r in sink.received] == ["now@example.org"] * 2
    assert await harness.rows(DIGEST_CHANNEL) == []

    hour = harness.mailer.options.digest_hour
    due = datetime.now(UTC).replace(hour=hour, minute=5) + timedelta(days=1)
    [digest_id] = await harness.store.subscribers.build_digests(now=due, hour=hour)
    assert await harness.store.subscribers.build_digests(now=due, hour=hour) == []
    [row] = await harness.rows(DIGEST_CHANNEL)
    assert row["recipient"] == digest_id and row["event_id"] == "evt_d2"

    sink.received.clear()
    await harness.make_due()  # the row is due at the (future) digest time
    await harness.dispatcher.drain()
    [received] = sink.received
    assert received.rcpt_tos == ["daily@example.org"]
    msg = received.message()
    assert msg["Subject"] == f"warnsvc daily digest: 2 changes, {NK_NAME} and more"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert f"* [Imminent Risk ↑] {NK_NAME}" in text and "* [Current Crisis ↑] Sudan" in text
    assert text.index(NK_NAME) < text.index("Sudan")
    # the next day without events: no digest
    later = due + timedelta(days=1)
    assert await harness.store.subscribers.build_digests(now=later, hour=hour) == []


async def test_confirmation_mails_wait_out_an_outage(harness: Harness, port: int) -> None:
    now = datetime.now(UTC)
    result = await harness.store.subscribers.request_confirmation(
        address="new@example.org",
        name=None,
        mode="immediate",
        filters=Filters(),
        now=now,
        valid_for=3600,
        resend_after=600,
    )
    assert result is mailstore.RequestResult.QUEUED
    assert await harness.worker.send_confirmations() == 1  # server down
    table = schema.email_confirmations
    async with harness.store.engine.begin() as conn:
        row = (await conn.execute(select(table))).mappings().one()
        assert row["status"] == "pending" and row["token"] is not None
        await conn.execute(update(table).values(next_attempt_at=now))
    sink = Sink()
    controller = start_sink(sink, port)
    try:
        await asyncio_sleep_past_breaker(harness)
        assert await harness.worker.send_confirmations() == 1
    finally:
        controller.stop()
    [received] = sink.received
    body = received.message().get_body(("plain",))
    assert body is not None
    token = re.search(r"confirm\?token=([\w-]+)", body.get_content())
    assert token is not None
    async with harness.store.engine.connect() as conn:
        row = (await conn.execute(select(table))).mappings().one()
    assert row["status"] == "sent" and row["token"] is None
    assert row["token_hash"] == mailstore.hash_token(token.group(1))
