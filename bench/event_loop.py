"""Benchmark: does ``/healthz`` stay fast while the service reads large documents?

A loopback aiohttp server in a child process serves two documents, each either large (about
5 MB) or tiny, as the bench switches it:

- ``/feed``: an RSS 2.0 feed. Large: about 380 entries whose descriptions are about 13 KB of
  escaped HTML each. This is the worst realistic case found: feedparser sanitises every
  description in pure Python, about 8-9 s per document on a quiet core (a 5 MB feed of 13,000
  short entries takes as long to parse, but then gives 13,000 situations, which measures the
  store, not the parser);
- ``/page``: a GCR2P country page (``gcr2p-page`` kind). Large: 5 MB of HTML blocks (about
  2.5 s in the GCR2P parser, also pure Python).

``warnsvc run`` starts as a subprocess with a temp config (SQLite in the temp dir, HTTP on a
free loopback port) and two sources on those documents, polled every ``--interval`` seconds.
The bench then alternates phases, tiny (the baseline) then large, ``--rounds`` times: it
switches the documents, waits ``--settle`` seconds for polls of the previous phase to finish,
then for ``--seconds`` sends ``GET /healthz`` every ``--every`` seconds and records each
answer's latency. Requests go out on schedule whether or not earlier ones were answered (open
loop, keep-alive connections reused when free), so a frozen event loop shows as all the answers
it delays, not as one slow sample. The server counts the documents served, so the
figures show how many large documents were fetched (and parsed) during the large phases.

Prints each phase, then one JSON object as the last line: p50/p99/max latency (ms) under load
and at baseline (all rounds pooled, and the median of the rounds' p99), the ratio of the p99s,
the number of large documents served while sampling, the sources' state at the end, and
whether the target (p99 under load < 100 ms) is met.

    python bench/event_loop.py [--rounds 2] [--seconds 20]
    python bench/event_loop.py --src OTHER/src   # run another checkout's warnsvc
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from loopback import free_port

TARGET_P99_MS = 100.0


# -- the documents -------------------------------------------------------------------------


def large_feed(target: int = 4_950_000) -> bytes:
    """An RSS feed of about ``target`` bytes: entries with long HTML descriptions."""
    paragraph = (
        "<p>Flooding in the district has displaced several thousand people; <b>the situation"
        "</b> is monitored by <a href='http://127.0.0.1/x'>the authorities</a>.</p>"
    )
    description = html.escape(paragraph * (10_000 // len(paragraph)))
    parts = [_feed_head()]
    size, n = len(parts[0]), 0
    while size < target:
        item = _feed_item(n, description)
        parts.append(item)
        size, n = size + len(item), n + 1
    parts.append("</channel></rss>\n")
    return "".join(parts).encode()


def tiny_feed() -> bytes:
    items = "".join(_feed_item(n, "A short description.") for n in range(3))
    return (_feed_head() + items + "</channel></rss>\n").encode()


def _feed_head() -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0"><channel><title>Load'
        "</title><link>http://127.0.0.1/</link><description>bench</description>\n"
    )


def _feed_item(n: int, description: str) -> str:
    return (
        f"<item><title>Situation {n}</title><link>http://127.0.0.1/s/{n}</link>"
        f"<guid>urn:bench:{n}</guid><category>Orange</category>"
        f"<pubDate>Mon, 30 Dec 2019 10:00:00 GMT</pubDate>"
        f"<description>{description}</description></item>\n"
    )


def large_page(target: int = 4_950_000) -> bytes:
    """A GCR2P country page of about ``target`` bytes of HTML."""
    parts = [_page_head()]
    size, n = 0, 0
    while size < target:
        block = (
            f"<div class='block'><h3>Section {n}</h3><p>Populations in place {n} face atrocity "
            f"crimes amid conflict; <a href='/countries/x-{n}/'>more</a> reports say the "
            f"situation worsens.</p><ul><li>Risk factor one for {n}.</li><li>Another factor "
            f"{n}.</li></ul></div>"
        )
        parts.append(block)
        size, n = size + len(block), n + 1
    parts.append("</main></body></html>")
    return "".join(parts).encode()


def tiny_page() -> bytes:
    summary = "<p>A short summary of the situation today.</p>"
    return (_page_head() + summary + "</main></body></html>").encode()


def _page_head() -> str:
    return (
        "<html><head><title>Sudan - Global Centre for the Responsibility to Protect</title>"
        "</head><body><main><h1>Sudan</h1><p>31 August 2023</p><p>Risk Level: Current Crisis</p>"
    )


# -- the document server (child process) ---------------------------------------------------


def serve_documents(port_pipe: Any) -> None:
    documents = {
        "large": {"feed": large_feed(), "page": large_page()},
        "tiny": {"feed": tiny_feed(), "page": tiny_page()},
    }
    state: dict[str, Any] = {"mode": "tiny", "served": {"large": 0, "tiny": 0}}

    async def document(request: web.Request) -> web.Response:
        name = "feed" if request.path == "/feed" else "page"
        mode = state["mode"]
        state["served"][mode] += 1
        kind = "application/rss+xml" if name == "feed" else "text/html"
        return web.Response(body=documents[mode][name], content_type=kind)

    async def switch(request: web.Request) -> web.Response:
        state["mode"] = request.match_info["mode"]
        return web.json_response(state["served"])

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(state["served"])

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/feed", document)
        app.router.add_get("/countries/sudan/", document)
        app.router.add_post("/mode/{mode}", switch)
        app.router.add_get("/stats", stats)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port_pipe.send(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        await asyncio.Event().wait()

    asyncio.run(main())


# -- the service -------------------------------------------------------------------------------


def write_config(folder: Path, docs: str, port: int, interval: float) -> Path:
    text = f"""\
service:
  name: warnsvc bench
  base_url: http://127.0.0.1:{port}
  log_level: warning
  http: {{host: 127.0.0.1, port: {port}}}
storage: {{url: "sqlite+aiosqlite:///{folder}/warnsvc.db"}}
feeds: {{dir: "{folder}/feeds"}}
sources:
  - id: big-feed
    kind: feed
    url: {docs}/feed
    scale: gdacs
    interval: {interval}s
    jitter: 1s
    levels: {{Orange: orange}}
  - id: big-page
    kind: gcr2p-page
    url: {docs}/countries/sudan/
    interval: {interval}s
    jitter: 1s
"""
    path = folder / "warnsvc.yaml"
    path.write_text(text, encoding="utf-8")
    return path


async def wait_healthy(
    http: aiohttp.ClientSession, base: str, proc: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"warnsvc run exited with {proc.returncode}")
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with http.get(base + "/healthz") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.2)
    raise RuntimeError("warnsvc run did not answer /healthz within 60 s")


async def sample(
    http: aiohttp.ClientSession, url: str, seconds: float, every: float
) -> list[float]:
    """Latencies (ms) of GET ``url`` sent every ``every`` seconds for ``seconds``, open loop:
    a request is sent on schedule whether or not the previous ones were answered, so a frozen
    service shows as many slow answers, not as one (no coordinated omission)."""
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[float]] = []
    end = next_at = loop.time()
    end += seconds
    while loop.time() < end:
        tasks.append(asyncio.create_task(one_request(http, url)))
        next_at += every
        await asyncio.sleep(max(0.0, next_at - loop.time()))
    return list(await asyncio.gather(*tasks))


async def one_request(http: aiohttp.ClientSession, url: str) -> float:
    started = time.perf_counter()
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=60)) as resp:
            await resp.read()
    except (TimeoutError, aiohttp.ClientError):
        pass  # counted with its full time: a frozen loop must show
    return (time.perf_counter() - started) * 1000


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(values, 0.50), 2),
        "p99_ms": round(percentile(values, 0.99), 2),
        "max_ms": round(max(values), 2),
        "samples": len(values),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    receive, send = multiprocessing.get_context("spawn").Pipe(duplex=False)
    server = multiprocessing.get_context("spawn").Process(
        target=serve_documents, args=(send,), daemon=True
    )
    server.start()
    docs = f"http://127.0.0.1:{receive.recv()}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = service_env(args.src)
    with tempfile.TemporaryDirectory(prefix="warnsvc-bench-") as tmp:
        folder = Path(tmp)
        config = write_config(folder, docs, port, args.interval)
        proc = start_service(config, env)
        try:
            connector = aiohttp.TCPConnector(limit=1000)
            async with aiohttp.ClientSession(connector=connector) as http:
                await wait_healthy(http, base, proc)
                phases = await run_phases(http, base, docs, args)
            sources = await asyncio.to_thread(source_states, config, env)
        finally:
            stop_service(proc)
            server.kill()
        log_tail = (folder / "stderr.log").read_text(errors="replace")[-2000:]
    return report(phases, sources, log_tail)


def service_env(src: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = str(Path(src).resolve())
    return env


def start_service(config: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with (config.parent / "stderr.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "warnsvc", "run", "-c", str(config)],
            env=env,
            cwd=config.parent,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def stop_service(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def source_states(config: Path, env: dict[str, str]) -> dict[str, Any]:
    """Each source's health and last error, and how many situations are known."""
    result = subprocess.run(
        [sys.executable, "-m", "warnsvc", "status", "--json", "-c", str(config)],
        env=env,
        cwd=config.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        status = json.loads(result.stdout)
    except ValueError:
        return {"error": result.stderr.strip()[-500:]}
    return {
        "sources": {
            s["id"]: {"health": s["health"], "last_error": s["last_error"]}
            for s in status.get("sources", [])
        },
        "situations": len(status.get("situations", [])),
    }


async def run_phases(
    http: aiohttp.ClientSession, base: str, docs: str, args: argparse.Namespace
) -> list[dict[str, Any]]:
    phases: list[dict[str, Any]] = []
    for round_no in range(1, args.rounds + 1):
        for mode in ("tiny", "large"):
            async with http.post(f"{docs}/mode/{mode}") as resp:
                await resp.read()
            await asyncio.sleep(args.settle)
            async with http.get(f"{docs}/stats") as resp:
                before = await resp.json()
            latencies = await sample(http, base + "/healthz", args.seconds, args.every)
            async with http.get(f"{docs}/stats") as resp:
                after = await resp.json()
            served = after[mode] - before[mode]
            figures = summary(latencies)
            phases.append({"round": round_no, "mode": mode, "served": served, **figures})
            print(
                f"round {round_no} {mode:5}: p50 {figures['p50_ms']:8.2f} ms  "
                f"p99 {figures['p99_ms']:8.2f} ms  max {figures['max_ms']:8.2f} ms  "
                f"({figures['samples']} samples, {served} documents served)",
                flush=True,
            )
            phases[-1]["latencies"] = latencies
    return phases


def report(phases: list[dict[str, Any]], sources: dict[str, Any], log_tail: str) -> dict[str, Any]:
    def pooled(mode: str) -> list[float]:
        return [v for p in phases if p["mode"] == mode for v in p["latencies"]]

    def round_p99(mode: str) -> float:
        return round(float(statistics.median(p["p99_ms"] for p in phases if p["mode"] == mode)), 2)

    load, base = summary(pooled("large")), summary(pooled("tiny"))
    if log_tail.strip():
        print("warnsvc stderr (tail):\n" + log_tail, file=sys.stderr)
    return {
        "bench": "event_loop",
        "load": {**load, "median_round_p99_ms": round_p99("large")},
        "baseline": {**base, "median_round_p99_ms": round_p99("tiny")},
        "ratio_p99": round(load["p99_ms"] / base["p99_ms"], 2) if base["p99_ms"] else None,
        "large_documents_served": sum(p["served"] for p in phases if p["mode"] == "large"),
        "sources": sources,
        "target_p99_ms": TARGET_P99_MS,
        "target_met": load["p99_ms"] < TARGET_P99_MS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="tiny/large phase pairs")
    parser.add_argument("--seconds", type=float, default=20.0, help="sampling per phase")
    parser.add_argument("--settle", type=float, default=10.0, help="wait after a switch")
    parser.add_argument("--every", type=float, default=0.015, help="seconds between samples")
    parser.add_argument("--interval", type=float, default=10.0, help="sources' poll interval")
    parser.add_argument("--src", help="a checkout's src/ directory to run instead")
    args = parser.parse_args()
    result = asyncio.run(run(args), debug=False)  # PYTHONASYNCIODEBUG is for the service
    print(json.dumps(result))


if __name__ == "__main__":
    main()
