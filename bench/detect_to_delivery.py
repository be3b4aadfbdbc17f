"""Benchmark: from the fetch that confirms a change to its delivery at every webhook endpoint.

A child process serves two loopback apps (so they do not share warnsvc's GIL):

- the **source**: a ``page`` document whose one situation's risk level the benchmark sets, and
  the wall-clock time at which it answered each request;
- the **receiver**: ``POST /hook/<n>`` for N endpoints, noting when each request arrived.

warnsvc runs in this process as ``warnsvc run`` wires it (``build_components``), its
dispatcher running: the benchmark polls the source as a scheduled poll does (poll, then wake
the dispatcher when events were written). Each trial moves the level on the page and polls
until the change is confirmed (``detection.confirmations`` polls that agree); the clock starts
when the source answered that confirming fetch and stops when each endpoint's request arrives.
Trials alternate escalation and de-escalation.

The baseline, in the same run: a bare aiohttp client with the same connection limit posting
the same body to the N endpoints; its latencies run from the moment it starts.

The last line is one JSON object: p50, p99 and max of warnsvc's latencies over every endpoint
of every trial (seconds), the first delivery of each trial, the baseline's p50/p99, and
``ratio`` = baseline p99 / warnsvc p99 (1.0: as quick as a bare client that has nothing to
detect or record). The target is ``p99 < 1 s`` for 1,000 endpoints.

    python bench/detect_to_delivery.py --endpoints 1000 [--store postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from loopback import free_port
from warnsvc.config import parse_config
from warnsvc.service import build_components
from webhook_fanout import _database, add_endpoints

LEVELS = ("Serious Concern", "Imminent Risk", "Current Crisis")


def _serve(source_port: int, hook_port: int, control: Any, arrivals: Any, ready: Any) -> None:
    """The child process: the source page and the webhook receiver."""
    from aiohttp import web

    state = {"level": LEVELS[0], "served": 0.0}

    async def page(request: web.Request) -> web.Response:
        state["served"] = time.time()
        body = (
            "<!doctype html><html lang=en><body><main>"
            '<article class="situation"><h2>Nagorno-Karabakh</h2>'
            f'<p class="risk">Risk: {state["level"]}</p>'
            '<p class="summary">Civilians face attacks.</p></article>'
            "</main></body></html>"
        )
        return web.Response(text=body, content_type="text/html")

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        arrivals.put((int(request.match_info["n"]), time.time()))
        return web.Response(status=204)

    async def commands() -> None:
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, control.get)
            if command == "served?":
                control_reply.put(state["served"])
            else:
                state["level"] = command
                control_reply.put("ok")

    control_reply = arrivals  # replies share the arrivals queue, tagged by type

    async def main() -> None:
        for port, route in ((source_port, ("GET", "/page", page)), (hook_port, None)):
            app = web.Application()
            if route is None:
                app.router.add_post("/hook/{n}", hook)
            else:
                app.router.add_route(*route)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        ready.set()
        await commands()

    asyncio.run(main())


class _Child:
    """Talks to the child process: set the level, read when the page was last served, and
    collect arrivals."""

    def __init__(self, control: Any, arrivals: Any) -> None:
        self.control = control
        self.arrivals = arrivals
        self.pending: list[tuple[int, float]] = []

    async def _ask(self, command: str) -> Any:
        self.control.put(command)
        while True:
            item = await asyncio.to_thread(self.arrivals.get, True, 30)
            if isinstance(item, tuple):
                self.pending.append(item)
            else:
                return item

    async def set_level(self, level: str) -> None:
        await self._ask(level)

    async def served_at(self) -> float:
        served: float = await self._ask("served?")
        return served

    async def collect(self, count: int, within: float = 60.0) -> list[tuple[int, float]]:
        """The next ``count`` arrivals."""
        got, self.pending = self.pending[:count], self.pending[count:]
        deadline = time.monotonic() + within
        while len(got) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"only {len(got)} of {count} deliveries arrived")
            item = await asyncio.to_thread(self.arrivals.get, True, left)
            if isinstance(item, tuple):
                got.append(item)
        return got


def _config(database: str, workdir: Path, source_port: int, confirmations: int) -> str:
    return f"""
storage: {{url: "{database}"}}
feeds: {{dir: "{workdir}/feeds"}}
detection: {{confirmations: {confirmations}}}
webhooks:
  allow_networks: ["127.0.0.0/8"]
  concurrency: 64
sources:
  - id: watch
    kind: page
    url: http://127.0.0.1:{source_port}/page
    scale: gcr2p
    block: "article.situation"
    fields:
      title: {{css: h2}}
      level: {{css: ".risk", regex: "Risk: (.+)"}}
      summary: {{css: p.summary}}
"""


async def _warnsvc(
    child: _Child,
    hook_base: str,
    source_port: int,
    endpoints: int,
    trials: int,
    confirmations: int,
    database: str | None,
    workdir: Path,
) -> tuple[list[float], list[float]]:
    """Latencies of every delivery of every trial, and the first delivery's of each trial."""
    text = _config(
        database or f"sqlite+aiosqlite:///{workdir}/bench.db", workdir, source_port, confirmations
    )
    parts = await build_components(parse_config(text, filename="bench.yaml"))
    dispatcher = asyncio.create_task(parts.dispatcher.run())
    latencies: list[float] = []
    firsts: list[float] = []
    try:
        await add_endpoints(parts, hook_base, endpoints)

        async def poll() -> int:
            report = await parts.poller.poll("watch")
            assert report.ok, report.error
            if report.events:  # what a scheduled poll does (Service.poll_job)
                parts.dispatcher.wake()
            return len(report.events)

        await child.set_level(LEVELS[0])
        await poll()  # the baseline state: no event
        for trial in range(trials):
            await child.set_level(LEVELS[1] if trial % 2 == 0 else LEVELS[0])
            for _ in range(confirmations):
                events = await poll()
            assert events == 1, f"trial {trial}: {events} events"
            confirmed_at = await child.served_at()
            arrived = [at for _, at in await child.collect(endpoints)]
            latencies += [at - confirmed_at for at in arrived]
            firsts.append(min(arrived) - confirmed_at)
    finally:
        parts.dispatcher.stop()
        dispatcher.cancel()
        await asyncio.gather(dispatcher, return_exceptions=True)
        await parts.close()
    return latencies, firsts


async def _baseline(child: _Child, hook_base: str, endpoints: int, body: bytes) -> list[float]:
    connector = aiohttp.TCPConnector(limit=64)
    queue = iter(range(endpoints))
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for n in queue:
                async with session.post(f"{hook_base}/hook/{n}", data=body, headers=headers) as r:
                    await r.read()

        started = time.time()
        await asyncio.gather(*(worker() for _ in range(64)))
    return [at - started for _, at in await child.collect(endpoints)]


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(
    endpoints: int, trials: int, confirmations: int, store: str, database: str | None
) -> dict[str, Any]:
    source_port, hook_port = free_port(), free_port()
    context = multiprocessing.get_context("spawn")
    control, arrivals, ready = context.Queue(), context.Queue(), context.Event()
    process = context.Process(
        target=_serve, args=(source_port, hook_port, control, arrivals, ready), daemon=True
    )
    process.start()
    child = _Child(control, arrivals)
    hook_base = f"http://127.0.0.1:{hook_port}"
    try:
        if not ready.wait(30):
            raise RuntimeError("the child servers did not start")
        body = b'{"type":"situation.escalated","data":{}}' * 20
        await _baseline(child, hook_base, min(endpoints, 200), body)  # warm up
        before = await _baseline(child, hook_base, endpoints, body)
        with tempfile.TemporaryDirectory() as tmp, _database(store, database) as url:
            ours, firsts = await _warnsvc(
                child, hook_base, source_port, endpoints, trials, confirmations, url, Path(tmp)
            )
        after = await _baseline(child, hook_base, endpoints, body)
    finally:
        process.terminate()
        process.join(5)
    base_p99 = min(_quantile(before, 0.99), _quantile(after, 0.99))
    p99 = _quantile(ours, 0.99)
    return {
        "store": store,
        "endpoints": endpoints,
        "trials": trials,
        "confirmations": confirmations,
        "p50": round(statistics.median(ours), 3),
        "p99": round(p99, 3),
        "max": round(max(ours), 3),
        "first_delivery": [round(f, 3) for f in firsts],
        "baseline_p50": round(statistics.median(before + after), 3),
        "baseline_p99": round(base_p99, 3),
        "ratio": round(base_p99 / p99, 3),
        "target_p99_seconds": 1.0,
        "met": p99 < 1.0,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--confirmations", type=int, default=2, help="detection.confirmations")
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--database-url", help="a postgresql+asyncpg:// URL to measure on")
    args = parser.parse_args()
    result = asyncio.run(
        main(args.endpoints, args.trials, args.confirmations, args.store, args.database_url)
    )
    print(
        f"{result['endpoints']} endpoints on {result['store']}, {result['trials']} changes: "
        f"p50 {result['p50']}s p99 {result['p99']}s max {result['max']}s after the confirming "
        f"fetch (bare client p99 {result['baseline_p99']}s)"
    )
    print(json.dumps(result))
