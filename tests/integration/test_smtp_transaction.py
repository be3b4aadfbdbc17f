"""One mail's SMTP transaction (``warnsvc.mail.smtp.transaction``) against aiosmtpd on loopback.

The transaction replaces ``aiosmtplib.SMTP.sendmail`` on the hot path of a fan-out, so these
tests hold it to what sendmail guaranteed: the SIZE the server is told, addresses that cannot
smuggle a command, the replies it raises on, and a connection left usable after a refusal.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterator

import aiosmtplib
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.smtp_sink import Sink, free_port, start_sink
from warnsvc.mail.smtp import SendError, SmtpConfig, SmtpPool, transaction, wire_length

MESSAGE = (
    b"From: alerts@example.org\r\nTo: ana@example.org\r\nSubject: Escalated\r\n\r\n"
    b"Mali: Imminent Risk.\r\n.A line that starts with a dot.\r\n"
)

Serve = Callable[[bool], tuple[Sink, int]]
"""Start a sink (offering SMTPUTF8 or not): the sink and its port."""


@pytest.fixture
def serve() -> Iterator[Serve]:
    controllers = []

    def start(smtputf8: bool = False) -> tuple[Sink, int]:
        sink, port = Sink(), free_port()
        controllers.append(start_sink(sink, port, smtputf8=smtputf8))
        return sink, port

    yield start
    for controller in controllers:
        controller.stop()


@pytest.fixture
async def client(serve: Serve) -> AsyncIterator[tuple[aiosmtplib.SMTP, Sink]]:
    sink, port = serve(False)
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=10)
    await smtp.connect()
    yield smtp, sink
    if smtp.is_connected:
        await smtp.quit()


async def test_a_mail_goes_out_with_the_size_it_has_on_the_wire(
    client: tuple[aiosmtplib.SMTP, Sink],
) -> None:
    smtp, sink = client
    bare = MESSAGE.replace(b"\r\n", b"\n")  # as a template might write it

    await transaction(smtp, "alerts@example.org", "ana@example.org", MESSAGE)
    await transaction(smtp, "alerts@example.org", "ben@example.org", bare)

    assert [r.rcpt_tos for r in sink.received] == [["ana@example.org"], ["ben@example.org"]]
    assert all(r.mail_from == "alerts@example.org" for r in sink.received)
    # both go out CRLF, so the server is told the CRLF size both times (RFC 1870)
    assert [r.mail_options for r in sink.received] == [[f"SIZE={len(MESSAGE)}"]] * 2
    # dot-stuffing is undone by the server: the text arrives as written
    assert b"\r\n.A line that starts with a dot.\r\n" in sink.received[0].data


@pytest.mark.parametrize(
    "address",
    [
        "ana@example.org>\r\nRCPT TO:<eve@example.org",
        "ana@example.org\nDATA",
        "ana@example.org> SIZE=1",
        "ana @example.org",
        "<ana@example.org>",
        "ana@example.org\x00",
    ],
)
async def test_an_address_that_could_break_the_command_line_sends_nothing(
    client: tuple[aiosmtplib.SMTP, Sink], address: str
) -> None:
    smtp, sink = client
    with pytest.raises(ValueError, match="cannot be sent"):
        await transaction(smtp, "alerts@example.org", address, MESSAGE)
    with pytest.raises(ValueError, match="cannot be sent"):
        await transaction(smtp, address, "ana@example.org", MESSAGE)

    # nothing was started: the same connection sends the next mail as usual
    await transaction(smtp, "alerts@example.org", "ana@example.org", MESSAGE)
    assert [r.rcpt_tos for r in sink.received] == [["ana@example.org"]]


async def test_a_refused_sender_or_recipient_leaves_the_connection_usable(
    client: tuple[aiosmtplib.SMTP, Sink],
) -> None:
    smtp, sink = client
    sink.refuse_from["bounce@example.org"] = "553 5.7.1 sender not allowed"
    sink.refuse["gone@example.org"] = "550 5.1.1 no such user"

    with pytest.raises(aiosmtplib.SMTPSenderRefused) as sender:
        await transaction(smtp, "bounce@example.org", "ana@example.org", MESSAGE)
    assert sender.value.code == 553
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as recipient:
        await transaction(smtp, "alerts@example.org", "gone@example.org", MESSAGE)
    assert [r.code for r in recipient.value.recipients] == [550]

    await transaction(smtp, "alerts@example.org", "ana@example.org", MESSAGE)
    assert [(r.mail_from, r.rcpt_tos) for r in sink.received] == [
        ("alerts@example.org", ["ana@example.org"])
    ]


async def test_a_refused_message_raises_the_data_reply(
    client: tuple[aiosmtplib.SMTP, Sink],
) -> None:
    smtp, sink = client
    sink.data_reply = "554 5.7.1 rejected as spam"
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await transaction(smtp, "alerts@example.org", "ana@example.org", MESSAGE)
    assert refused.value.code == 554
    sink.data_reply = None
    await transaction(smtp, "alerts@example.org", "ana@example.org", MESSAGE)
    assert len(sink.received) == 1


async def test_an_international_address_goes_only_to_a_server_that_offers_smtputf8(
    serve: Serve,
) -> None:
    for offered in (True, False):
        sink, port = serve(offered)
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=10)
        await smtp.connect()
        try:
            if offered:
                await transaction(smtp, "alerts@example.org", "zoë@example.org", MESSAGE)
                assert sink.received[0].rcpt_tos == ["zoë@example.org"]
                assert "SMTPUTF8" in sink.received[0].mail_options
            else:
                with pytest.raises(ValueError, match="SMTPUTF8"):
                    await transaction(smtp, "alerts@example.org", "zoë@example.org", MESSAGE)
                assert sink.received == []
        finally:
            await smtp.quit()


async def test_the_pool_makes_an_unsendable_address_a_permanent_failure(serve: Serve) -> None:
    sink, port = serve(False)
    pool = SmtpPool(SmtpConfig(host="127.0.0.1", port=port, security="none", quick_retries=0))
    try:
        with pytest.raises(SendError) as failed:
            await pool.send("alerts@example.org", "ana@example.org\r\nDATA", MESSAGE)
        assert failed.value.permanent
        await pool.send("alerts@example.org", "ana@example.org", MESSAGE)
    finally:
        await pool.close()
    assert [r.rcpt_tos for r in sink.received] == [["ana@example.org"]]


@given(st.binary(max_size=200).map(lambda b: b.replace(b"x", b"\r").replace(b"y", b"\n")))
def test_the_wire_length_is_that_of_the_message_with_crlf_line_endings(message: bytes) -> None:
    as_sent = b"\r\n".join(re.split(rb"\r\n|\r|\n", message))
    assert wire_length(message) == len(as_sent)
