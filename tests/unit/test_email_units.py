"""Email pieces without I/O: addresses, filters, subjects, message headers, rate limit."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser
from email.utils import formataddr

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warnsvc.addresses import check_name, normalize_address, parse_mailbox
from warnsvc.config import parse_config
from warnsvc.errors import ConfigError
from warnsvc.filters import Filter as Filters
from warnsvc.mail.compose import (
    _BOUNDARY,
    MailTemplates,
    Rendered,
    Sender,
    _address_header,
    build_message,
    safe_url,
)
from warnsvc.mail.smtp import RateLimiter, SendError, classify
from warnsvc.model import GCR2P_SCALE
from warnsvc.store.subscriptions import digest_boundary

SCALES = {"gcr2p": GCR2P_SCALE}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ana@example.org", "ana@example.org"),
        ("  Ana.B+alerts@Example.ORG ", "ana.b+alerts@example.org"),
        ("x@bücher.de", "x@xn--bcher-kva.de"),
    ],
)
def test_addresses_are_normalised(text: str, expected: str) -> None:
    assert normalize_address(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ana",
        "ana@localhost",
        "ana@example",
        "ana @example.org",
        "ana@example.org\r\nBcc: b@example.org",
        "ana@example.org,b@example.org",
        "<ana@example.org>",
        '"ana"@example.org',
        ".ana@example.org",
        "ana..b@example.org",
        "ana@-example.org",
        "ana@1.2.3.4",
        "a" * 65 + "@example.org",
        "a@" + "b" * 250 + ".org",
    ],
)
def test_bad_addresses_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        normalize_address(text)


def test_names_with_line_breaks_are_refused() -> None:
    assert check_name("  Ana   Lopez ") == "Ana Lopez"
    assert check_name("") is None
    for bad in ("Ana\r\nBcc: x@example.org", "Ana\nB", "Ana\x00", "Ana\u2028B"):
        with pytest.raises(ValueError, match="line breaks"):
            check_name(bad)
    assert parse_mailbox("Alerts Desk <alerts@example.org>") == (
        "Alerts Desk",
        "alerts@example.org",
    )
    with pytest.raises(ValueError):
        parse_mailbox("a@example.org, b@example.org")


def payload(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "type": "risk.escalated",
        "source": {"id": "gcr2p"},
        "situation": {"id": "gcr2p:sudan", "name": "Sudan"},
        "scale": "gcr2p",
        "level": {"id": "imminent-risk"},
        "previous_level": {"id": "serious-concern"},
    }
    return {**base, **changes}


@pytest.mark.parametrize(
    ("filters", "event", "expected"),
    [
        (Filters(), payload(), True),
        (Filters(), payload(type="webhook.test"), False),
        (Filters(min_level="imminent-risk"), payload(), True),
        (Filters(min_level="current-crisis"), payload(), False),
        (
            Filters(min_level="imminent-risk"),
            payload(
                type="risk.deescalated",
                level={"id": "serious-concern"},
                previous_level={"id": "imminent-risk"},
            ),
            True,
        ),
        (Filters(min_level="imminent-risk"), payload(scale="other"), False),
        (Filters(min_level="red"), payload(), False),
        (Filters(situations=("gcr2p:sudan",)), payload(), True),
        (Filters(situations=("gcr2p:ukraine",)), payload(), False),
        (Filters(sources=("gcr2p",)), payload(), True),
        (Filters(sources=("gdacs",)), payload(), False),
        (Filters(event_types=("situation.listed",)), payload(), False),
        (Filters(event_types=("risk.escalated",)), payload(), True),
        (
            Filters(min_level="serious-concern"),
            payload(type="situation.delisted", level=None),
            True,
        ),
    ],
)
def test_filters(filters: Filters, event: dict[str, object], expected: bool) -> None:
    assert filters.matches(event, SCALES) is expected
    assert Filters.from_json(filters.to_json()) == filters


def test_only_http_links_survive() -> None:
    assert safe_url("https://example.org/a?b=c") == "https://example.org/a?b=c"
    for bad in (
        "javascript:alert(1)",
        "data:text/html,x",
        "https://exa mple.org",
        " https://x.org",
        7,
    ):
        assert safe_url(bad) is None


def message(rendered: Rendered) -> bytes:
    sender = Sender(from_header="Alerts <a@example.org>", envelope="a@example.org")
    return build_message(
        sender=sender,
        to_address="r@example.org",
        to_name="Zoë, the reader",
        rendered=rendered,
        message_id="evt_1.2",
        unsubscribe_url="https://alerts.example.org/email/unsubscribe?token=abc",
        date=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
    ).data


def test_headers_are_encoded_and_never_folded_into_a_leading_space() -> None:
    subject = "[Imminent Risk, updated analysis] Nagorno-Karabakh (Armenia/Azerbaijan) " * 2
    data = message(Rendered(subject=subject.strip(), text="tëxt", html="<p>x</p>"))
    head = data.split(b"\r\n\r\n")[0].decode("ascii")  # 7-bit clean
    assert all(len(line) <= 998 for line in head.split("\r\n"))
    msg = BytesParser(policy=policy.default).parsebytes(data)
    assert msg["Subject"] == subject.strip()
    assert msg["To"] == '"Zoë, the reader" <r@example.org>'
    assert "\r\nDate: Tue, 02 Jan 2024 03:04:05 GMT\r\n" in head
    assert msg["Message-ID"] == "<evt_1.2@example.org>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")


NAME_CHARS = st.sampled_from([*"Ana ZoëB.,\"\\()<>@:;[]=?_'!#~-", " ", "  ", "\u00e9", "\u4e2d"])


@given(name=st.lists(NAME_CHARS, max_size=12).map("".join))
def test_the_to_header_writes_a_name_as_formataddr_does(name: str) -> None:
    address = "r@example.org"
    assert _address_header(name, address) == (
        formataddr((name, address), charset="utf-8") if name else address
    )


PART_TEXT = st.lists(
    st.sampled_from(["--", "=", "_", "=_", "--=_warnsvc_alternative", "\n", " ", "a", "é", "=3D"]),
    max_size=30,
).map("".join)


@given(text=PART_TEXT, html=PART_TEXT)
def test_the_boundary_never_occurs_in_a_part(text: str, html: str) -> None:
    """Even text that carries the boundary itself: quoted-printable writes its '=' as '=3D'."""
    data = message(Rendered(subject="s", text=text, html=html))
    body = data.split(b"\r\n\r\n", 1)[1]
    assert body.count(b"--" + _BOUNDARY.encode("ascii")) == 3  # two openings and the close
    msg = BytesParser(policy=policy.default).parsebytes(data)
    parts = list(msg.iter_parts())
    assert [part.get_content().replace("\r\n", "\n").rstrip("\n") for part in parts] == [
        text.rstrip("\n"),
        html.rstrip("\n"),
    ]


def test_templates_escape_html_but_not_text() -> None:
    templates = MailTemplates()
    view = {
        "id": "evt_1",
        "tag": "Imminent Risk ↑",
        "situation_name": "<b>Sudan</b>",
        "change": "A → B",
        "date": "",
        "source_name": "S",
        "summary": ["<script>x</script>"],
        "risk_factors": [],
        "url": None,
    }
    context = {
        "event": view,
        "service_name": "warnsvc",
        "recipient": {"address": "r@example.org"},
        "unsubscribe_url": "https://x.org/u?token=t&a=b",
    }
    mail = templates.mail("event", context)
    assert mail.subject == "[Imminent Risk ↑] <b>Sudan</b>"
    assert "<script>x</script>" in mail.text
    assert "&lt;script&gt;x&lt;/script&gt;" in mail.html and "<script>" not in mail.html
    assert 'href="https://x.org/u?token=t&amp;a=b"' in mail.html


def test_smtp_errors_are_classified() -> None:
    import aiosmtplib

    hard = classify(
        aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(550, "no", "a")])
    )
    assert hard.permanent and hard.recipient_rejected and hard.code == 550
    soft = classify(
        aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(451, "later", "a")])
    )
    assert not soft.permanent and not soft.recipient_rejected
    assert classify(aiosmtplib.SMTPDataError(554, "spam")).permanent
    assert not classify(aiosmtplib.SMTPDataError(421, "busy")).permanent
    assert not classify(aiosmtplib.SMTPSenderRefused(550, "bad sender", "a")).permanent
    assert not classify(aiosmtplib.SMTPAuthenticationError(535, "bad login")).permanent
    assert not classify(ConnectionRefusedError()).permanent
    assert not classify(TimeoutError()).permanent
    assert isinstance(classify(OSError("x")), SendError)


async def test_the_rate_limiter_spaces_sends() -> None:
    now = [0.0]
    limiter = RateLimiter(10, clock=lambda: now[0])
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(seconds: float) -> None:
        slept.append(round(seconds, 3))
        await real_sleep(0)

    asyncio.sleep = fake_sleep  # type: ignore[assignment]
    try:
        for _ in range(3):
            await limiter.acquire()
    finally:
        asyncio.sleep = real_sleep
    assert slept == [0.1, 0.2]
    assert RateLimiter(0).interval == 0


def test_the_digest_hour_boundary() -> None:
    at = datetime(2024, 5, 2, 6, 59, tzinfo=UTC)
    assert digest_boundary(at, 7) == datetime(2024, 5, 1, 7, tzinfo=UTC)
    assert digest_boundary(at.replace(hour=7, minute=0), 7) == datetime(2024, 5, 2, 7, tzinfo=UTC)


def email_config(extra: str) -> str:
    return "email:\n  from_address: alerts@example.org\n" + extra


def test_email_config_defaults_and_problems() -> None:
    settings = parse_config(email_config(""), filename="f.yaml", environ={})
    assert settings.email is not None and settings.email.smtp.port_or_default() == 587
    assert parse_config("email:\n", filename="f.yaml", environ={}).email is None
    with pytest.raises(ConfigError) as info:
        parse_config(
            email_config(
                "  smtp: {user: bob}\n"
                "  subscribers:\n"
                "    - address: 'a@example.org'\n"
                '      name: "A\\nBcc: x@example.org"\n'
                "    - {address: nobody}\n"
            ),
            filename="f.yaml",
            environ={},
        )
    lines = [str(p) for p in info.value.problems]
    assert any("email.smtp.password: give both user and password" in line for line in lines)
    assert any("email.subscribers[0].name: must not contain line breaks" in line for line in lines)
    assert any("email.subscribers[1].address:" in line for line in lines)
    with pytest.raises(ConfigError, match=r"email\.smtp\.security: must be one of"):
        parse_config(email_config("  smtp: {security: ssl}\n"), filename="f.yaml", environ={})
    with pytest.raises(ConfigError, match="duplicate address"):
        parse_config(
            email_config("  subscribers: [{address: a@example.org}, {address: A@example.org}]\n"),
            filename="f.yaml",
            environ={},
        )
