"""Batches in flight take turns on the SMTP pool, so recording one overlaps sending the next."""

from __future__ import annotations

import asyncio
from typing import Any

from warnsvc.channels.base import Outcome
from warnsvc.channels.email import EmailChannel, EmailOptions, Mailer, _Job, sender_from
from warnsvc.filters import Filter as Filters
from warnsvc.mail.compose import Envelope
from warnsvc.mail.smtp import SmtpConfig
from warnsvc.outbox import Delivery
from warnsvc.store import subscriptions as mailstore

BASE_URL = "https://alerts.example.org"


class SlowPool:
    """Records the order mails start in; each send takes a moment."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.in_flight: set[str] = set()
        self.overlap: set[str] | None = None

    async def send(self, sender: str, recipient: str, message: bytes) -> None:
        if recipient.startswith("b") and self.overlap is None:
            self.overlap = set(self.in_flight)  # what was still sending when b started
        self.started.append(recipient)
        self.in_flight.add(recipient)
        await asyncio.sleep(0.001)
        self.in_flight.discard(recipient)

    async def close(self) -> None:
        pass


def job(batch: str, n: int) -> _Job:
    address = f"{batch}{n}@example.org"
    sub = mailstore.Subscriber(
        id=n,
        address=address,
        name=None,
        origin="self",
        status=mailstore.ACTIVE,
        mode=mailstore.IMMEDIATE,
        filters=Filters(),
        unsubscribe_token="t",
        hard_failures=0,
    )
    delivery = Delivery(
        id=n, event_id="evt", channel="email", recipient=f"sub:{n}", attempts=0, payload={}
    )
    envelope = Envelope(sender="alerts@example.org", recipient=address, data=b"x")
    return _Job(delivery, sub, lambda: envelope)


async def test_a_second_batch_starts_sending_once_the_first_has_started_all_its_mails() -> None:
    pool: Any = SlowPool()
    options = EmailOptions(
        service_name="warnsvc",
        base_url=BASE_URL,
        sender=sender_from("alerts@example.org", None, BASE_URL),
        smtp=SmtpConfig(host="127.0.0.1", port=1, connections=2),
    )
    channel = EmailChannel(None, Mailer(options, pool=pool), {})  # type: ignore[arg-type]
    assert channel.parallel_batches == 2
    first = [job("a", n) for n in range(20)]
    second = [job("b", n) for n in range(100, 120)]

    async def batch(jobs: list[_Job]) -> list[Outcome]:
        async with channel.turn() as turn:
            await asyncio.sleep(0)  # reading subscribers happens here
            return await channel._send_jobs(jobs, [], deadline=channel._deadline(), turn=turn)

    done = await asyncio.gather(batch(first), batch(second))
    assert all(o.ok for outcomes in done for o in outcomes)
    assert [len(outcomes) for outcomes in done] == [20, 20]
    order = [r[0] for r in pool.started]
    assert order == ["a"] * 20 + ["b"] * 20
    # the turn passed on when the first batch's last mails were started, not when they ended
    assert pool.overlap and all(r.startswith("a") for r in pool.overlap)
    assert not channel._turn.locked()
