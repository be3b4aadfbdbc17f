"""Benchmark: one event to many webhook endpoints through the real outbox and dispatcher.

A loopback aiohttp receiver runs in a child process (so it does not share the client's GIL)
and answers 204 to ``POST /hook/<n>``. Two runs send the same number of requests to it:

- ``throughput``: warnsvc. N endpoints (distinct paths) are registered in SQLite; the clock
  starts when one event is written with its outbox rows (routing reads and filters every
  endpoint on the event's transaction) and stops when the dispatcher has claimed every row,
  signed it (Standard Webhooks HMAC), sent it through the SSRF-guarded keep-alive pool and
  marked it delivered;
- ``baseline``: a bare aiohttp client with the same connection limit, keep-alive, posting the
  same bodies to the same paths (no database, no signing): what this machine can do.

The last line is one JSON object: throughput and baseline (requests/s), ratio, peak_rss_mb
of this process, and the parts of the warnsvc run. ``cpu_us_per_delivery`` and
``baseline_cpu_us_per_request`` are the CPU time this process (every thread) spent per request
in each, and ``cpu_ratio`` the second over the first: on a machine shared with other jobs the
rates swing with the load, the CPU cost much less.

    python bench/webhook_fanout.py --endpoints 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import resource
import socket
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from warnsvc.config import parse_config
from warnsvc.model import GCR2P_SCALE, Event, EventType
from warnsvc.outbox import DELIVERED
from warnsvc.service import build_components
from warnsvc.store import schema
from warnsvc.store.webhooks import generate_secret


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(port: int, count: Any, ready: Any) -> None:  # runs in the child process
    from aiohttp import web

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        with count.get_lock():
            count.value += 1
        return web.Response(status=204)

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/hook/{n}", hook)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def _event() -> Event:
    now = datetime.now(UTC)
    return Event(
        id=f"evt_bench{int(now.timestamp() * 1000):x}",
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


async def warnsvc_run(
    base: str, endpoints: int, concurrency: int, workdir: Path, batch: int = 1000, parallel: int = 3
) -> dict[str, float]:
    settings = parse_config(
        f"""
storage: {{url: "sqlite+aiosqlite:///{workdir}/bench.db"}}
feeds: {{dir: "{workdir}/feeds"}}
webhooks:
  allow_networks: ["127.0.0.0/8"]
  concurrency: {concurrency}
  per_endpoint: 4
  batch: {batch}
  parallel_batches: {parallel}
""",
        filename="bench.yaml",
    )
    parts = await build_components(settings)
    try:
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
            for n in range(endpoints)
        ]
        async with parts.store.engine.begin() as conn:
            await conn.execute(schema.webhook_endpoints.insert(), rows)

        started, cpu_started = time.perf_counter(), time.process_time()
        await parts.store.record_event(_event(), parts.poller.recipients, now=datetime.now(UTC))
        written = time.perf_counter()
        tried = await parts.dispatcher.drain()
        finished, cpu_finished = time.perf_counter(), time.process_time()

        delivered = (await parts.store.outbox.counts()).get(("webhooks", DELIVERED), 0)
        assert delivered == endpoints, f"only {delivered} of {endpoints} delivered"
        assert tried == endpoints + 1  # and the feeds row
        return {
            "throughput": endpoints / (finished - started),
            "write_seconds": written - started,
            "dispatch_seconds": finished - written,
            "dispatch_throughput": endpoints / (finished - written),
            "cpu_seconds": cpu_finished - cpu_started,
        }
    finally:
        await parts.close()


async def main(endpoints: int, concurrency: int, batch: int, parallel: int) -> dict[str, Any]:
    port = _free_port()
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
        with tempfile.TemporaryDirectory() as tmp:
            ours = await warnsvc_run(base, endpoints, concurrency, Path(tmp), batch, parallel)
        second = await baseline(base, endpoints, concurrency, body, cpu)
        best = max(first, second)
        received = count.value
    finally:
        child.terminate()
        child.join(5)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
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
        # CPU this process spent per request: steadier than rates on a shared, busy machine
        "cpu_us_per_delivery": round(ours["cpu_seconds"] / endpoints * 1e6, 1),
        "baseline_cpu_us_per_request": round(min(cpu) / endpoints * 1e6, 1),
        "cpu_ratio": round(min(cpu) / ours["cpu_seconds"], 3),
        "requests_received": received,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1000, help="webhooks.batch")
    parser.add_argument("--parallel", type=int, default=3, help="webhooks.parallel_batches")
    args = parser.parse_args()
    result = asyncio.run(main(args.endpoints, args.concurrency, args.batch, args.parallel))
    print(
        f"{result['endpoints']} endpoints: warnsvc {result['throughput']}/s "
        f"(write {result['write_seconds']}s, dispatch {result['dispatch_seconds']}s), "
        f"bare aiohttp {result['baseline']}/s"
    )
    print(json.dumps(result))
