"""Benchmark: the memory and CPU of an idle ``warnsvc run``.

Each round starts ``warnsvc run`` as a child process on a fresh config (SQLite in a temporary
directory, HTTP on a free loopback port, a few ``page`` sources on a loopback aiohttp site that
this script serves, a long interval), waits until ``/readyz`` answers 200 and every source has
been fetched once, lets it settle, then samples its resident memory (``VmRSS`` in
``/proc/<pid>/status``) and CPU time (``utime + stime`` in ``/proc/<pid>/stat``) over the idle
window. It then stops it with SIGTERM.

The baseline, in the same round: a bare Python process that imports aiohttp and serves one
route on a loopback port, idle: what any aiohttp service costs before doing anything. Rounds
alternate the two; figures are medians over the rounds.

The last line is one JSON object: ``rss_mb`` (median over rounds of the median sample),
``cpu_seconds_idle`` (CPU time spent over the idle window), the same for the baseline,
``rss_ratio`` (warnsvc over baseline), the target (< 80 MB) and whether it is met.

    python bench/idle_run.py [--rounds 3] [--idle 10] [--sources 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from loopback import free_port

TARGET_RSS_MB = 80.0
PAGE = """<!doctype html>
<html><head><title>Watch list</title></head><body><main>
<article class="situation"><h2>Mali</h2><p class="risk">Risk: Imminent Risk</p></article>
<article class="situation"><h2>Sudan</h2><p class="risk">Risk: Current Crisis</p></article>
</main></body></html>
"""
BASELINE = """
import asyncio, sys
from aiohttp import web

async def main() -> None:
    app = web.Application()
    app.router.add_get("/readyz", lambda request: web.json_response({"ready": True}))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(sys.argv[1])).start()
    await asyncio.Event().wait()

asyncio.run(main())
"""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    rss_mb: float
    peak_rss_mb: float
    cpu_seconds: float
    start_seconds: float


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


def write_config(folder: Path, site: str, port: int, sources: int) -> Path:
    lines = [
        "service:",
        "  name: warnsvc idle bench",
        f"  base_url: http://127.0.0.1:{port}",
        "  http:",
        "    host: 127.0.0.1",
        f"    port: {port}",
        "  log_level: warning",
        f"  pid_file: {json.dumps(str(folder / 'warnsvc.pid'))}",
        "storage:",
        f"  url: {json.dumps('sqlite+aiosqlite:///' + str(folder / 'warnsvc.db'))}",
        "feeds:",
        f"  dir: {json.dumps(str(folder / 'feeds'))}",
        "sources:",
    ]
    for n in range(sources):
        lines += [
            f"  - id: page-{n}",
            "    kind: page",
            f"    url: {site}/page/{n}",
            "    scale: gcr2p",
            "    interval: 6h",
            "    jitter: 0s",
            "    block: article.situation",
            "    fields:",
            "      title: {css: h2}",
            '      level: {css: ".risk", regex: "Risk: (.+)"}',
        ]
    path = folder / "warnsvc.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@contextlib.asynccontextmanager
async def serve_pages() -> AsyncIterator[tuple[str, dict[str, int]]]:
    hits: dict[str, int] = {}

    async def page(request: web.Request) -> web.Response:
        hits[request.path] = hits.get(request.path, 0) + 1
        return web.Response(text=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/page/{n}", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", hits
    finally:
        await runner.cleanup()


async def wait_ready(
    http: aiohttp.ClientSession, url: str, proc: asyncio.subprocess.Process
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"the process exited with {proc.returncode} before it was ready")
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(url) as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not answer 200 within 60s")


async def sample_idle(pid: int, idle: float) -> tuple[float, float, float]:
    """Median and peak RSS (MB) and the CPU seconds spent, over ``idle`` seconds."""
    rss: list[float] = []
    cpu_start = cpu_seconds(pid)
    end = time.monotonic() + idle
    while time.monotonic() < end:
        rss.append(rss_mb(pid))
        await asyncio.sleep(0.25)
    return statistics.median(rss), max(rss), cpu_seconds(pid) - cpu_start


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=20)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def run_warnsvc(sources: int, idle: float, settle: float) -> Sample:
    with tempfile.TemporaryDirectory(prefix="warnsvc-idle-") as tmp:
        folder = Path(tmp)
        async with serve_pages() as (site, hits), aiohttp.ClientSession() as http:
            port = free_port()
            config = write_config(folder, site, port, sources)
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "warnsvc",
                "run",
                "-c",
                str(config),
                cwd=folder,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=(folder / "stderr.txt").open("wb"),
            )
            try:
                await wait_ready(http, f"http://127.0.0.1:{port}/readyz", proc)
                while len(hits) < sources:  # the first poll of every source runs at start
                    if time.monotonic() - started > 60:
                        raise RuntimeError(f"only {len(hits)} of {sources} sources polled")
                    await asyncio.sleep(0.05)
                start_seconds = time.monotonic() - started
                await asyncio.sleep(settle)  # the poll's writes, the feeds, the dispatcher
                median, peak, cpu = await sample_idle(proc.pid, idle)
            finally:
                await stop(proc)
            errors = (folder / "stderr.txt").read_text(errors="replace").strip()
            if proc.returncode not in (0, -signal.SIGTERM):
                raise RuntimeError(f"warnsvc run exited with {proc.returncode}: {errors}")
            return Sample(median, peak, cpu, start_seconds)


async def run_baseline(idle: float, settle: float) -> Sample:
    port = free_port()
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", BASELINE, str(port))
    try:
        async with aiohttp.ClientSession() as http:
            await wait_ready(http, f"http://127.0.0.1:{port}/readyz", proc)
        start_seconds = time.monotonic() - started
        await asyncio.sleep(settle)
        median, peak, cpu = await sample_idle(proc.pid, idle)
    finally:
        await stop(proc)
    return Sample(median, peak, cpu, start_seconds)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds sampled (default 10)")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before sampling")
    parser.add_argument("--sources", type=int, default=3)
    args = parser.parse_args()

    runs: list[Sample] = []
    bases: list[Sample] = []
    for n in range(args.rounds):
        first, second = (run_warnsvc, run_baseline) if n % 2 == 0 else (run_baseline, run_warnsvc)
        for which in (first, second):
            if which is run_warnsvc:
                sample = await run_warnsvc(args.sources, args.idle, args.settle)
                runs.append(sample)
                name = "warnsvc run"
            else:
                sample = await run_baseline(args.idle, args.settle)
                bases.append(sample)
                name = "baseline   "
            print(
                f"round {n + 1}: {name}  rss {sample.rss_mb:6.1f} MB"
                f" (peak {sample.peak_rss_mb:.1f})"
                f"  cpu {sample.cpu_seconds:.3f} s over {args.idle:.0f} s idle"
                f"  ready after {sample.start_seconds:.2f} s",
                flush=True,
            )

    rss = statistics.median(s.rss_mb for s in runs)
    base_rss = statistics.median(s.rss_mb for s in bases)
    cpu = statistics.median(s.cpu_seconds for s in runs)
    base_cpu = statistics.median(s.cpu_seconds for s in bases)
    print(
        f"warnsvc run: {rss:.1f} MB resident, {cpu:.3f} s CPU in {args.idle:.0f} s idle; "
        f"baseline (bare aiohttp server): {base_rss:.1f} MB, {base_cpu:.3f} s; "
        f"target < {TARGET_RSS_MB:.0f} MB: {'met' if rss < TARGET_RSS_MB else 'NOT met'}"
    )
    result = {
        "rss_mb": round(rss, 1),
        "peak_rss_mb": round(max(s.peak_rss_mb for s in runs), 1),
        "cpu_seconds_idle": round(cpu, 3),
        "idle_seconds": args.idle,
        "ready_seconds": round(statistics.median(s.start_seconds for s in runs), 2),
        "baseline_rss_mb": round(base_rss, 1),
        "baseline_cpu_seconds_idle": round(base_cpu, 3),
        "rss_ratio": round(rss / base_rss, 2),
        "sources": args.sources,
        "rounds": args.rounds,
        "target_rss_mb": TARGET_RSS_MB,
        "target_met": rss < TARGET_RSS_MB,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
