"""Benchmark: one event to many webhook endpoints through the real outbox and dispatcher.

A loopback aiohttp receiver runs in a child process (so it does not share the client's GIL)
and answers 204 to ``POST /hook/<n>``. Two runs send the same number of requests to it:

- ``throughput``: warnsvc. N endpoints (distinct paths) are registered in the store (SQLite,
  or PostgreSQL with ``--store postgresql``); the clock
  starts when one event is written with its outbox rows (routing reads and filters every
  endpoint on the event's transaction) and stops when the dispatcher has claimed every row,
  signed it (Standard Webhooks HMAC), sent it through the SSRF-guarded keep-alive pool and
  marked it delivered;
- ``baseline``: a bare aiohttp client with the same connection limit, keep-alive, posting the
  same bodies to the same paths (no database, no signing): what this machine can do.

The last line is one JSON object: throughput and baseline (requests/s), ratio, peak_rss_mb
of this process, and the parts of the warnsvc run. ``cpu_us_per_delivery`` and
``baseline_cpu_us_per_request`` are the CPU time this process (every thread, every
dispatching replica, and on PostgreSQL the local server's processes too) spent per request in
each, and ``cpu_ratio`` the second over the first: on a machine shared with other jobs the
rates swing with the load, the CPU cost much less.

``durable_us_per_delivery`` is what one delivery's durable part costs with no request at all: a
second event is written for the same endpoints, and its rows claimed, their endpoints read,
each body signed and the rows completed, batch by batch, as the dispatcher does (its parts:
``durable_parts_us``; on PostgreSQL ``server`` is the server's share). ``cpu_ratio_ceiling``
is the bare client's CPU per request over that plus the durable part: the CPU ratio warnsvc
would reach if its request cost no more than the bare client's and nothing else (scheduling,
retries, health) cost anything: a CPU ratio above it cannot be met by one process keeping a
row per delivery (the rate ratio can run a little higher, as the database's thread works on
another core).

    python bench/webhook_fanout.py --endpoints 10000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from loopback import free_port, serve_forever
from warnsvc.channels.webhooks import encode_payload, sign_payload
from warnsvc.config import parse_config
from warnsvc.model import GCR2P_SCALE, Event, EventType
from warnsvc.outbox import DELIVERED, IN_FLIGHT, PENDING
from warnsvc.service import Components, build_components
from warnsvc.store import schema
from warnsvc.store.webhooks import generate_secret


def _serve(port: int, count: Any, ready: Any) -> None:  # runs in the child process
    from aiohttp import web

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        with count.get_lock():
            count.value += 1
        return web.Response(status=204)

    serve_forever(port, [("POST", "/hook/{n}", hook)], ready)


async def add_endpoints(parts: Components, base: str, count: int) -> None:
    """Register ``count`` endpoints ``{base}/hook/<n>``, each with its own secret."""
    now = datetime.now(UTC)
    rows = [
        {
            "id": f"ep_{n:08d}",
            "partner_id": "bench",
            "url": f"{base}/hook/{n}",
            "description": "",
            "enabled": True,
            "static": False,
            "filters": {},
            "secret": generate_secret(),
            "consecutive_failures": 0,
            "created_at": now,
            "updated_at": now,
        }
        for n in range(count)
    ]
    async with parts.store.engine.begin() as conn:
        for start in range(0, len(rows), 5000):
            await conn.execute(schema.webhook_endpoints.insert(), rows[start : start + 5000])


def _event(suffix: str = "") -> Event:
    now = datetime.now(UTC)
    return Event(
        id=f"evt_bench{int(now.timestamp() * 1000):x}{suffix}",
        type=EventType.ESCALATED,
        source_id="gcr2p",
        source_name="Global Centre for the Responsibility to Protect",
        situation="gcr2p:nagorno-karabakh",
        situation_name="Nagorno-Karabakh (Armenia/Azerbaijan)",
        situation_url="https://www.globalr2p.org/countries/nagorno-karabakh/",
        scale="gcr2p",
        level=GCR2P_SCALE.get("imminent-risk"),
        previous_level=GCR2P_SCALE.get("serious-concern"),
        occurred_at=now,
        detected_at=now,
        summary="The ongoing blockade of the Lachin corridor has created a humanitarian crisis. "
        * 4,
        risk_factors=tuple(f"Risk factor number {n} with a sentence of text." for n in range(5)),
    )


async def baseline(
    base: str, endpoints: int, concurrency: int, body: bytes, cpu: list[float] | None = None
) -> float:
    """Requests/s of a bare aiohttp keep-alive client posting ``body`` to every path.

    The CPU seconds this process spent are appended to ``cpu`` when given.
    """
    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {"Content-Type": "application/json"}
    queue = iter(range(endpoints))
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for n in queue:
                async with session.post(f"{base}/hook/{n}", data=body, headers=headers) as r:
                    await r.read()
                    assert r.status == 204

        started, cpu_started = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        if cpu is not None:
            cpu.append(time.process_time() - cpu_started)
        return endpoints / elapsed


def _settings_text(
    database: str, workdir: Path, concurrency: int, batch: int, parallel: int
) -> str:
    return f"""
storage: {{url: "{database}"}}
feeds: {{dir: "{workdir}/feeds"}}
webhooks:
  allow_networks: ["127.0.0.0/8"]
  concurrency: {concurrency}
  per_endpoint: 4
  batch: {batch}
  parallel_batches: {parallel}
"""


async def _dispatch_until_done(parts: Components) -> int:
    """Drain until no webhook row is pending or in flight anywhere (other replicas too)."""
    tried = 0
    while True:
        tried += await parts.dispatcher.drain()
        counts = await parts.store.outbox.counts()
        if not any(counts.get(("webhooks", state), 0) for state in (PENDING, IN_FLIGHT)):
            return tried
        await asyncio.sleep(0.005)  # rows another replica holds: look again


def _server_cpu() -> float:
    """CPU seconds (user + system) of the PostgreSQL server processes on this machine (Linux)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended
            continue
        name, _, rest = text.partition("(")[2].rpartition(")")
        if name == "postgres":
            fields = rest.split()
            total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


async def durable_part(parts: Components, endpoints: int, batch: int) -> dict[str, float]:
    """CPU per delivery of the durable part alone, no request: write a second event for the
    same endpoints, then claim, read the endpoints, sign and complete its rows by batches.

    On PostgreSQL, ``server_us`` is what the server's processes on this machine spent meanwhile
    (included in the total: on a two-core machine they take their CPU from the same cores)."""
    event = _event("d")
    postgres = parts.store.engine.dialect.name == "postgresql"
    server_started = _server_cpu() if postgres else 0.0
    times = [time.process_time()]
    await parts.store.record_event(event, parts.poller.recipients, now=datetime.now(UTC))
    times.append(time.process_time())
    parts_cpu = {"claim": 0.0, "endpoints": 0.0, "sign": 0.0, "complete": 0.0}
    body, done = encode_payload(event.payload()), 0
    while True:
        started = time.process_time()
        rows = await parts.store.outbox.claim("webhooks", now=datetime.now(UTC), limit=batch)
        claimed = time.process_time()
        parts_cpu["claim"] += claimed - started
        if not rows:
            break
        targets = await parts.store.endpoints.targets(d.recipient for d in rows)
        read = time.process_time()
        timestamp = int(time.time())
        for delivery in rows:
            sign_payload(delivery.event_id, timestamp, body, targets[delivery.recipient].keys)
        signed = time.process_time()
        await parts.store.outbox.complete([d.id for d in rows], now=datetime.now(UTC), status=204)
        parts_cpu["endpoints"] += read - claimed
        parts_cpu["sign"] += signed - read
        parts_cpu["complete"] += time.process_time() - signed
        done += len(rows)
    times.append(time.process_time())
    server = _server_cpu() - server_started if postgres else 0.0
    assert done == endpoints, f"claimed {done} of {endpoints}"
    return {
        "durable_us_per_delivery": (times[2] - times[0] + server) / endpoints * 1e6,
        "write_us": (times[1] - times[0]) / endpoints * 1e6,
        **{f"{k}_us": v / endpoints * 1e6 for k, v in parts_cpu.items()},
        **({"server_us": server / endpoints * 1e6} if postgres else {}),
    }


def _replica(text: str, ready: Any, go: Any, results: Any) -> None:  # a child process
    async def run() -> None:
        parts = await build_components(
            parse_config(text, filename="bench.yaml"), with_sources=False
        )
        try:
            ready.set()
            await asyncio.to_thread(go.wait)
            cpu_started = time.process_time()
            tried = await _dispatch_until_done(parts)
            results.put((tried, time.process_time() - cpu_started))
        finally:
            await parts.close()

    asyncio.run(run())


async def warnsvc_run(
    base: str,
    endpoints: int,
    concurrency: int,
    workdir: Path,
    batch: int = 1000,
    parallel: int = 3,
    *,
    database: str | None = None,
    replicas: int = 1,
) -> dict[str, Any]:
    """Write one event for ``endpoints`` endpoints and deliver it with ``replicas`` dispatching
    replicas: this process and ``replicas - 1`` child processes on the same database."""
    text = _settings_text(
        database or f"sqlite+aiosqlite:///{workdir}/bench.db", workdir, concurrency, batch, parallel
    )
    parts = await build_components(parse_config(text, filename="bench.yaml"))
    context = multiprocessing.get_context("spawn")
    go, results = context.Event(), context.Queue()
    children = []
    try:
        await add_endpoints(parts, base, endpoints)
        for _ in range(replicas - 1):
            ready = context.Event()
            child = context.Process(target=_replica, args=(text, ready, go, results), daemon=True)
            child.start()
            children.append(child)
            if not await asyncio.to_thread(ready.wait, 60):
                raise RuntimeError("a dispatching replica did not start")

        postgres = parts.store.engine.dialect.name == "postgresql"
        server_started = _server_cpu() if postgres else 0.0
        started, cpu_started = time.perf_counter(), time.process_time()
        await parts.store.record_event(_event(), parts.poller.recipients, now=datetime.now(UTC))
        written = time.perf_counter()
        go.set()
        tried = await _dispatch_until_done(parts)
        finished, cpu_finished = time.perf_counter(), time.process_time()
        server = _server_cpu() - server_started if postgres else 0.0
        others = [await asyncio.to_thread(results.get, True, 60) for _ in children]

        delivered = (await parts.store.outbox.counts()).get(("webhooks", DELIVERED), 0)
        assert delivered == endpoints, f"only {delivered} of {endpoints} delivered"
        assert tried + sum(t for t, _ in others) == endpoints + 1  # and the feeds row
        durable = await durable_part(parts, endpoints, batch)
        return {
            "durable": durable,
            "throughput": endpoints / (finished - started),
            "write_seconds": written - started,
            "dispatch_seconds": finished - written,
            "dispatch_throughput": endpoints / (finished - written),
            "cpu_seconds": cpu_finished - cpu_started + sum(c for _, c in others) + server,
            "server_cpu_seconds": server,
            "shares": [tried, *(t for t, _ in others)],
        }
    finally:
        for child in children:
            child.join(10)
            if child.is_alive():
                child.terminate()
        await parts.close()


@contextlib.contextmanager
def _database(store: str, url: str | None) -> Iterator[str | None]:
    """The database URL to measure on: SQLite (None: a file in the work folder), the given
    PostgreSQL URL, or a throw-away PostgreSQL server (the tests' own, tests/pgserver.py)."""
    if store == "sqlite" or url:
        yield url
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.pgserver import PostgresServer

    with PostgresServer.start() as server:
        yield server.url


async def main(
    endpoints: int,
    concurrency: int,
    batch: int,
    parallel: int,
    *,
    store: str = "sqlite",
    database: str | None = None,
    replicas: int = 1,
) -> dict[str, Any]:
    port = free_port()
    context = multiprocessing.get_context("spawn")
    count = context.Value("q", 0)
    ready = context.Event()
    child = context.Process(target=_serve, args=(port, count, ready), daemon=True)
    child.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the receiver did not start")
        base = f"http://127.0.0.1:{port}"
        body = _event().payload_json().encode()
        await baseline(base, min(endpoints, 1000), concurrency, body)  # warm up both sides
        cpu: list[float] = []
        first = await baseline(base, endpoints, concurrency, body, cpu)
        with tempfile.TemporaryDirectory() as tmp, _database(store, database) as url:
            ours = await warnsvc_run(
                base,
                endpoints,
                concurrency,
                Path(tmp),
                batch,
                parallel,
                database=url,
                replicas=replicas,
            )
        second = await baseline(base, endpoints, concurrency, body, cpu)
        best = max(first, second)
        received = count.value
    finally:
        child.terminate()
        child.join(5)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    key = "durable_us_per_delivery"
    durable = ours["durable"][key]
    return {
        "store": store,
        "replicas": replicas,
        "endpoints": endpoints,
        "concurrency": concurrency,
        "throughput": round(ours["throughput"], 1),
        "baseline": round(best, 1),
        "ratio": round(ours["throughput"] / best, 3),
        "peak_rss_mb": round(peak, 1),
        "dispatch_throughput": round(ours["dispatch_throughput"], 1),
        "write_seconds": round(ours["write_seconds"], 3),
        "dispatch_seconds": round(ours["dispatch_seconds"], 3),
        "baseline_runs": [round(first, 1), round(second, 1)],
        "rows_per_replica": ours["shares"],
        # CPU spent per request (every dispatching replica): steadier than rates on a busy machine
        "cpu_us_per_delivery": round(ours["cpu_seconds"] / endpoints * 1e6, 1),
        "baseline_cpu_us_per_request": round(min(cpu) / endpoints * 1e6, 1),
        "cpu_ratio": round(min(cpu) / ours["cpu_seconds"], 3),
        "durable_us_per_delivery": round(durable, 1),
        "durable_parts_us": {
            k.removesuffix("_us"): round(v, 1) for k, v in ours["durable"].items() if k != key
        },
        "cpu_ratio_ceiling": round(min(cpu) / (min(cpu) + durable * endpoints / 1e6), 3),
        # on PostgreSQL: the local server's share of cpu_us_per_delivery
        "server_cpu_us_per_delivery": round(ours["server_cpu_seconds"] / endpoints * 1e6, 1),
        "requests_received": received,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1000, help="webhooks.batch")
    parser.add_argument("--parallel", type=int, default=3, help="webhooks.parallel_batches")
    parser.add_argument(
        "--store",
        choices=["sqlite", "postgresql"],
        default="sqlite",
        help="the engine (postgresql: a throw-away server unless --database-url)",
    )
    parser.add_argument("--database-url", help="a postgresql+asyncpg:// URL to measure on")
    parser.add_argument(
        "--replicas", type=int, default=1, help="dispatching replicas (processes) on the database"
    )
    args = parser.parse_args()
    result = asyncio.run(
        main(
            args.endpoints,
            args.concurrency,
            args.batch,
            args.parallel,
            store=args.store,
            database=args.database_url,
            replicas=args.replicas,
        )
    )
    print(
        f"{result['endpoints']} endpoints on {result['store']} with {result['replicas']} "
        f"replica(s): warnsvc {result['throughput']}/s (write {result['write_seconds']}s, "
        f"dispatch {result['dispatch_seconds']}s), bare aiohttp {result['baseline']}/s; "
        f"durable part alone {result['durable_us_per_delivery']} us/delivery, "
        f"CPU ratio ceiling {result['cpu_ratio_ceiling']}"
    )
    print(json.dumps(result))
