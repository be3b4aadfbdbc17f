"""Benchmark: one event mailed to many subscribers through the real outbox.

An aiosmtpd sink runs on loopback in a child process (so it does not share the client's GIL)
and counts the messages it accepts. Three runs send the same number of messages to it:

- ``throughput``: warnsvc: subscribers in SQLite, one event written with one outbox row per
  subscriber (routing on the event's transaction), then the dispatcher claims batches and the
  email channel makes each personalised mail (own address, name, unsubscribe link and
  Message-ID: the event's templates rendered once, each subscriber's parts filled in, see
  ``warnsvc.mail.personal``) and sends it over the SMTP pool (8 reused connections),
  recording every outcome in the outbox;
- ``baseline``: a bare aiosmtplib client, 8 reused connections, sending the same messages
  (built ahead by rendering the templates in full for each subscriber, so it pays for neither
  the database nor composing), run before and after warnsvc's run and averaged, since a
  shared machine drifts;
- ``smtplib``: the standard library's smtplib over one reused connection, for reference.

The last line is one JSON object: throughput, baseline and smtplib (messages/s), ratio
(throughput / baseline) and peak_rss_mb of this process. ``cpu_us_per_message`` and
``baseline_cpu_us_per_message`` are the CPU time this process (every thread; the sink is
another process) spent per message in warnsvc's run and in the cheaper of the two baseline
runs, and ``cpu_ratio`` the second over the first: on a machine shared with other jobs the
rates swing with the load, the CPU cost much less.

    python bench/email_fanout.py --recipients 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import resource
import smtplib
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosmtplib

from loopback import free_port
from warnsvc.channels.base import Channel
from warnsvc.channels.email import (
    DIGEST_CHANNEL,
    EMAIL_CHANNEL,
    DigestChannel,
    EmailChannel,
    EmailOptions,
    Mailer,
    sender_from,
)
from warnsvc.dispatch import Dispatcher
from warnsvc.mail.compose import event_view
from warnsvc.mail.smtp import SmtpConfig
from warnsvc.model import GCR2P_SCALE, Event, EventType
from warnsvc.outbox import DELIVERED, RetryPolicy
from warnsvc.pipeline import Routing
from warnsvc.store import schema
from warnsvc.store import subscriptions as mailstore
from warnsvc.store.db import Store

CONNECTIONS = 8
WARM_UP = 500
BASE_URL = "https://alerts.example.org"


# --------------------------------------------------------------------------- the sink


def _serve(port: int, count: Any, ready: Any, stop: Any) -> None:
    from aiosmtpd.controller import Controller

    class Counter:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            with count.get_lock():
                count.value += 1
            return "250 OK"

    controller = Controller(Counter(), hostname="127.0.0.1", port=port)
    controller.start()
    ready.set()
    stop.wait()
    controller.stop()


# --------------------------------------------------------------------------- the runs


def event() -> Event:
    return Event(
        id="evt_bench",
        type=EventType.ESCALATED,
        source_id="gcr2p",
        source_name="Global Centre for the Responsibility to Protect",
        situation="gcr2p:nagorno-karabakh",
        situation_name="Nagorno-Karabakh (Armenia/Azerbaijan)",
        situation_url="https://www.globalr2p.org/countries/nagorno-karabakh/",
        scale="gcr2p",
        level=GCR2P_SCALE.get("imminent-risk"),
        previous_level=GCR2P_SCALE.get("serious-concern"),
        occurred_at=datetime(2023, 8, 31, tzinfo=UTC),
        detected_at=datetime.now(UTC),
        summary="The ongoing blockade of the Lachin corridor has cut off the only road. " * 4,
        risk_factors=("Blockade of the only road.", "Shelling of civilians.", "Hate speech."),
    )


async def add_subscribers(store: Store, count: int) -> None:
    now = datetime.now(UTC)
    rows = [
        {
            "address": f"reader{n}@example.org",
            "name": f"Reader {n}",
            "origin": "config",
            "status": mailstore.ACTIVE,
            "mode": mailstore.IMMEDIATE,
            "filters": {},
            "unsubscribe_token": mailstore.new_token(),
            "hard_failures": 0,
            "created_at": now,
            "updated_at": now,
            "confirmed_at": now,
        }
        for n in range(count)
    ]
    async with store.engine.begin() as conn:
        await conn.execute(schema.email_subscribers.insert(), rows)


def options(port: int) -> EmailOptions:
    return EmailOptions(
        service_name="warnsvc",
        base_url=BASE_URL,
        sender=sender_from("warnsvc alerts <alerts@example.org>", None, BASE_URL),
        smtp=SmtpConfig(
            host="127.0.0.1",
            port=port,
            security="none",
            connections=CONNECTIONS,
            messages_per_connection=1_000_000,
            rate=0,
        ),
    )


async def run_pipeline(store: Store, port: int) -> tuple[float, float, int]:
    """Seconds from writing the event to the last outcome recorded, CPU seconds; rows delivered."""
    mailer = Mailer(options(port))
    scales = {GCR2P_SCALE.id: GCR2P_SCALE}
    channels: dict[str, Channel] = {
        EMAIL_CHANNEL: EmailChannel(store.subscribers, mailer, scales),
        DIGEST_CHANNEL: DigestChannel(store.subscribers, mailer, scales),
    }
    dispatcher = Dispatcher(store.outbox, channels, RetryPolicy())
    start, cpu_start = time.perf_counter(), time.process_time()
    await store.record_event(event(), Routing(channels), now=datetime.now(UTC))
    await dispatcher.drain()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    await mailer.close()
    counts = await store.outbox.counts()
    delivered = sum(n for (_, status), n in counts.items() if status == DELIVERED)
    return elapsed, cpu, delivered


async def messages(store: Store, port: int) -> list[tuple[str, bytes]]:
    """The same personalised messages the pipeline sends, built ahead for the baselines."""
    mailer = Mailer(options(port))
    view = event_view(event().payload())
    async with store.engine.connect() as conn:
        subscribers = await mailstore.active_subscribers(conn, mailstore.IMMEDIATE)
    now = datetime.now(UTC)
    built = []
    for sub in subscribers:
        envelope = mailer.event_mail(view, sub, now=now)
        built.append((envelope.recipient, envelope.data))
    return built


async def run_baseline(
    port: int, mails: list[tuple[str, bytes]], cpu: list[float] | None = None
) -> float:
    """Seconds to send ``mails``; the CPU seconds this process spent are appended to ``cpu``."""
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    for item in mails:
        queue.put_nowait(item)

    async def worker() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await client.connect()
        while not queue.empty():
            recipient, data = queue.get_nowait()
            await client.sendmail("alerts@example.org", [recipient], data)
        await client.quit()

    start, cpu_start = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    elapsed = time.perf_counter() - start
    if cpu is not None:
        cpu.append(time.process_time() - cpu_start)
    return elapsed


def run_smtplib(port: int, mails: list[tuple[str, bytes]]) -> float:
    start = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port) as client:
        for recipient, data in mails:
            client.sendmail("alerts@example.org", [recipient], data)
    return time.perf_counter() - start


def wait_count(count: Any, expected: int, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while count.value < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    if count.value != expected:
        raise SystemExit(f"the sink received {count.value} messages, expected {expected}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=10_000)
    args = parser.parse_args()
    n = args.recipients

    port = free_port()
    context = multiprocessing.get_context("spawn")
    count, ready, stop = context.Value("i", 0), context.Event(), context.Event()
    server = context.Process(target=_serve, args=(port, count, ready, stop), daemon=True)
    server.start()
    if not ready.wait(60):  # a busy machine can take a while to start a Python process
        raise SystemExit("the SMTP sink did not start")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            figures = asyncio.run(measure(n, port, count, Path(tmp)))
    finally:
        stop.set()
        server.join(10)
    throughput, baseline, stdlib, cpu, baseline_cpu = figures
    print(f"warnsvc:  {throughput:8.0f} messages/s (outbox, render, pool of {CONNECTIONS})")
    print(f"baseline: {baseline:8.0f} messages/s (bare aiosmtplib, {CONNECTIONS} connections)")
    print(f"smtplib:  {stdlib:8.0f} messages/s (one connection)")
    result = {
        "recipients": n,
        "throughput": round(throughput, 1),
        "baseline": round(baseline, 1),
        "ratio": round(throughput / baseline, 3),
        "smtplib": round(stdlib, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "cpu_us_per_message": round(cpu / n * 1e6, 1),
        "baseline_cpu_us_per_message": round(baseline_cpu / n * 1e6, 1),
        "cpu_ratio": round(baseline_cpu / cpu, 3),
    }
    print(json.dumps(result))


async def measure(
    n: int, port: int, count: Any, tmp: Path
) -> tuple[float, float, float, float, float]:
    """Messages/s of warnsvc, the baseline and smtplib; CPU seconds of warnsvc and baseline."""
    store = await Store.open(f"sqlite+aiosqlite:///{tmp / 'bench.db'}")
    try:
        await add_subscribers(store, n)
        mails = await messages(store, port)

        warm = mails[:WARM_UP]
        await run_baseline(port, warm)  # the sink's first messages are slow: not measured
        wait_count(count, len(warm))
        count.value = 0

        baseline_cpu: list[float] = []
        before = await run_baseline(port, mails, baseline_cpu)
        wait_count(count, n)

        pipeline_seconds, pipeline_cpu, delivered = await run_pipeline(store, port)
        if delivered != n:
            raise SystemExit(f"{delivered} of {n} outbox rows delivered")
        wait_count(count, 2 * n)

        # before and after: drift on a busy machine
        after = await run_baseline(port, mails, baseline_cpu)
        wait_count(count, 3 * n)

        stdlib_seconds = await asyncio.to_thread(run_smtplib, port, mails)
        wait_count(count, 4 * n)
    finally:
        await store.close()
    return (
        n / pipeline_seconds,
        2 * n / (before + after),
        n / stdlib_seconds,
        pipeline_cpu,
        min(baseline_cpu),
    )


if __name__ == "__main__":
    main()
