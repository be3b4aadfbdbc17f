"""Benchmark: one steady-state poll cycle over many pages, warnsvc against urlwatch.

A loopback aiohttp server runs in a child process and serves N HTML pages (``/page/<n>``),
each 10-30 KB of filler around one ``Risk Level: <level>`` line, with an ``ETag`` and ``304
Not Modified`` for a matching ``If-None-Match`` (``--no-etag``: no validators, every fetch is a
full 200). Nothing on the pages changes during the run.

- **warnsvc**: a config with N ``page`` sources (title from ``h1``, level from the
  ``Risk Level:`` line) is written in a temp dir; ``warnsvc poll --once`` runs once to record
  the baseline and fill the fetch cache, then each timed run is a whole ``warnsvc poll --once``
  process (wall clock, start to exit): load the config, open the store, poll every source,
  record the cycle, exit.
- **urlwatch** (when installed: ``pip install -e '.[bench]'``): a ``urls.yaml`` with the same N
  URLs (each job keeps the ``Risk Level:`` line), a config and a cache in the temp dir; it runs
  once to fill its cache, then each timed run is a whole ``urlwatch`` process.

The timed runs are interleaved (warnsvc, urlwatch, warnsvc, ...) and their medians reported,
with the CPU time of each process (user + system) beside the wall clock: on a shared machine
the wall clock swings with the load, the CPU time much less. ``config_load_seconds`` is the
median time to load the warnsvc config of N sources in one process, and
``warnsvc_one_source_seconds`` that of ``warnsvc poll --once --source page-0`` (start-up, the
config, one page): what a process costs before the cycle, and ``cycle_seconds`` the
difference, the cycle itself. ``core_imports_seconds`` is the median time of a process that
only imports the libraries warnsvc is built on (aiohttp, SQLAlchemy's asyncio engine,
pydantic, aiosqlite, selectolax, PyYAML): the floor of any warnsvc process. None of these is
part of the ratio: all are already in the whole-process time. ``warm_cycle_seconds`` is the
median of steady cycles over every source inside one process that stays up, as ``warnsvc
run`` polls (imports, config and store paid once; unchanged pages not parsed again), and
``warm_ratio`` urlwatch's whole run over it. ``ratio_ceiling`` is urlwatch's run over the
core imports plus that warm cycle: the best whole-process ratio if warnsvc's own imports,
config and store cost nothing and its first cycle were as quick as a cycle in a process that
has polled before.

The last line is one JSON object: warnsvc_seconds, urlwatch_seconds (null when urlwatch is
not installed), ratio (urlwatch / warnsvc; target >= 2), budget_seconds (the warnsvc time the
target allows: half of urlwatch's), store, and the other figures.

    python bench/poll_cycle.py                     # 500 pages, SQLite
    python bench/poll_cycle.py --store postgresql  # a throw-away server (tests/pgserver.py)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import multiprocessing
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loopback import free_port, serve_forever

ROOT = Path(__file__).resolve().parents[1]
LEVELS = ("Serious Concern", "Imminent Risk", "Current Crisis")
WORDS = [
    *["civilians", "population", "armed", "groups", "attacks", "displacement", "access"],
    *["ceasefire", "violations", "reports", "monitoring", "council", "resolution", "protection"],
    *["obligations", "government", "forces", "militia", "villages", "region", "accountability"],
    *["sanctions", "mission", "mandate", "refugees", "border", "humanitarian"],
]


def page_body(n: int) -> bytes:
    """Page ``n``: a title, one ``Risk Level:`` line and 10-30 KB of paragraphs (stable)."""
    rng = random.Random(n)
    level = LEVELS[n % len(LEVELS)]
    paragraphs: list[str] = []
    target = rng.randint(10_000, 30_000)
    size = 0
    while size < target:
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 90)))
        paragraphs.append(f"<p>{text.capitalize()}.</p>")
        size += len(paragraphs[-1]) + 1
    nav = "".join(f'<li><a href="/page/{(n + k) % 997}">Situation {k}</a></li>' for k in range(20))
    html = (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>Situation {n} | Risk watch</title>"
        '<link rel=stylesheet href="/static/site.css"></head>\n<body>\n'
        f'<header><nav><ul class="menu">{nav}</ul></nav></header>\n<main>\n'
        f"<h1>Situation {n}</h1>\n<p class=meta>Updated 3 February 2025</p>\n"
        f'<p class="risk">Risk Level: {level}</p>\n'
        + "\n".join(paragraphs)
        + "\n</main>\n<footer><p>Risk watch, a bench page.</p></footer>\n</body></html>\n"
    )
    return html.encode()


def _serve(port: int, pages: int, etag: bool, ready: Any) -> None:  # runs in the child process

    from aiohttp import web

    bodies = [page_body(n) for n in range(pages)]
    tags = [f'"{hashlib.sha1(b).hexdigest()[:16]}"' for b in bodies]

    async def page(request: web.Request) -> web.StreamResponse:
        try:
            n = int(request.match_info["n"])
            body = bodies[n]
        except (ValueError, IndexError):
            raise web.HTTPNotFound() from None
        if etag:
            tag = tags[n]
            if request.headers.get("If-None-Match") == tag:
                return web.Response(status=304, headers={"ETag": tag})
            return web.Response(body=body, content_type="text/html", headers={"ETag": tag})
        return web.Response(body=body, content_type="text/html")

    serve_forever(port, [("GET", "/page/{n}", page)], ready)


def warnsvc_config(base: str, pages: int, database: str, feeds: Path) -> str:
    lines = [
        "service:",
        "  name: warnsvc bench",
        "  base_url: http://127.0.0.1:8080",
        "  log_level: warning",
        "storage:",
        f"  url: {json.dumps(database)}",
        "feeds:",
        f"  dir: {json.dumps(str(feeds))}",
        "sources:",
    ]
    for n in range(pages):
        lines += [
            f"  - id: page-{n}",
            "    kind: page",
            f"    url: {base}/page/{n}",
            "    scale: gcr2p",
            "    interval: 1h",
            "    fields:",
            "      title: {css: h1}",
            '      level: {regex: "Risk Level: (.+)"}',
        ]
    return "\n".join(lines) + "\n"


def urlwatch_files(base: str, pages: int, folder: Path) -> list[str]:
    """Write urlwatch's jobs, config and (empty) hooks; the command line that runs it."""
    jobs = [
        "\n".join(
            [
                f"name: page {n}",
                f"url: {base}/page/{n}",
                "filter:",
                "  - grep: 'Risk Level:'",
            ]
        )
        for n in range(pages)
    ]
    (folder / "urls.yaml").write_text("\n---\n".join(jobs) + "\n", encoding="utf-8")
    (folder / "hooks.py").write_text("", encoding="utf-8")
    config = {
        "display": {"new": True, "error": True, "unchanged": False},
        "report": {"text": {"details": True}, "stdout": {"enabled": True, "color": False}},
    }
    (folder / "urlwatch.yaml").write_text(json.dumps(config), encoding="utf-8")
    executable = shutil.which("urlwatch", path=str(Path(sys.executable).parent)) or "urlwatch"
    return [
        executable,
        "--urls",
        str(folder / "urls.yaml"),
        "--config",
        str(folder / "urlwatch.yaml"),
        "--hooks",
        str(folder / "hooks.py"),
        "--cache",
        str(folder / "cache.db"),
    ]


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(
    command: list[str], env: dict[str, str], *, check_quiet: bool = False
) -> tuple[float, float]:
    """Run ``command`` to its end: (wall seconds, CPU seconds of the process)."""
    cpu = _cpu_children()
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(
            f"{command[0]} exited {result.returncode}:\n"
            f"{result.stderr[-3000:]}{result.stdout[-2000:]}"
        )
    if check_quiet and result.stdout.strip():
        raise RuntimeError(f"a steady run reported something:\n{result.stdout[-2000:]}")
    return wall, _cpu_children() - cpu


def config_load_seconds(path: Path, env: dict[str, str], runs: int = 3) -> float:
    """Median seconds to load the config in a fresh process (imports not counted)."""
    code = (
        "import sys, time\n"
        "from warnsvc.config import load_config\n"
        "t = time.perf_counter(); load_config(sys.argv[1]); print(time.perf_counter() - t)\n"
    )
    figures = []
    for _ in range(runs):
        result = subprocess.run(
            [sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise RuntimeError(result.stderr[-2000:])
        figures.append(float(result.stdout.strip()))
    return statistics.median(figures)


_WARM_CYCLES = """
import asyncio, statistics, sys, time
from warnsvc.config import load_config
from warnsvc.service import build_components

async def main(path, runs):
    parts = await build_components(load_config(path))
    try:
        ids = list(parts.sources)
        await parts.poller.poll_cycle(ids)  # warms up: the parse memo, the connections
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            reports = await parts.poller.poll_cycle(ids)
            times.append(time.perf_counter() - started)
            assert all(r.ok and not r.events for r in reports), "a steady cycle changed"
        print(statistics.median(times))
    finally:
        await parts.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def warm_cycle_seconds(path: Path, env: dict[str, str], runs: int = 5) -> float:
    """Median seconds of one steady cycle over every source inside one long-lived process (as
    ``warnsvc run`` polls: imports, config and store paid once, unchanged pages not parsed)."""
    command = [sys.executable, "-c", _WARM_CYCLES, str(path), str(runs)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return float(result.stdout.strip().splitlines()[-1])


CORE_IMPORTS = (
    "import aiohttp, sqlalchemy.engine, sqlalchemy.util.concurrency, pydantic, aiosqlite,"
    " selectolax.lexbor, yaml"
)
"""What every warnsvc process that polls imports before any of its own code runs."""


def core_imports_seconds(env: dict[str, str], runs: int = 5) -> float:
    """Median wall seconds of a fresh process that imports :data:`CORE_IMPORTS` and exits."""
    figures = [timed([sys.executable, "-c", CORE_IMPORTS], env)[0] for _ in range(runs)]
    return statistics.median(figures)


@contextlib.contextmanager
def _database(store: str, url: str | None, folder: Path) -> Iterator[str]:
    """The database URL: a SQLite file in the work folder, the given PostgreSQL URL, or a
    throw-away PostgreSQL server (the tests' own, tests/pgserver.py)."""
    if store == "sqlite":
        yield f"sqlite+aiosqlite:///{folder / 'warnsvc.db'}"
        return
    if url:
        yield url
        return
    sys.path.insert(0, str(ROOT))
    from tests.pgserver import PostgresServer

    with PostgresServer.start() as server:
        yield server.url


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def main(
    *,
    pages: int,
    runs: int,
    store: str,
    database: str | None,
    etag: bool,
    with_urlwatch: bool,
) -> dict[str, Any]:
    port = free_port()
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    child = context.Process(target=_serve, args=(port, pages, etag, ready), daemon=True)
    child.start()
    have_urlwatch = with_urlwatch and importlib.util.find_spec("urlwatch") is not None
    try:
        if not ready.wait(60):
            raise RuntimeError("the page server did not start")
        base = f"http://127.0.0.1:{port}"
        with (
            tempfile.TemporaryDirectory() as tmp,
            _database(store, database, Path(tmp)) as url,
        ):
            folder = Path(tmp)
            env = {**os.environ, "HOME": str(folder)}
            config = folder / "warnsvc.yaml"
            config.write_text(warnsvc_config(base, pages, url, folder / "feeds"), encoding="utf-8")
            executable = shutil.which("warnsvc", path=str(Path(sys.executable).parent))
            warnsvc = [executable or "warnsvc", "poll", "--once", "-c", str(config)]
            first, _ = timed(warnsvc, env)  # the baseline: every page fetched and stored
            print(f"warnsvc first cycle (baseline, {pages} pages): {first:.2f}s", flush=True)
            urlwatch: list[str] | None = None
            if have_urlwatch:
                urlwatch = urlwatch_files(base, pages, folder)
                first, _ = timed(urlwatch, env)
                print(f"urlwatch first run (cache filled): {first:.2f}s", flush=True)
            else:
                print("urlwatch is not installed (pip install -e '.[bench]'): warnsvc only")
            one = [*warnsvc, "--source", "page-0"]
            figures: dict[str, list[float]] = {
                "warnsvc": [],
                "warnsvc_cpu": [],
                "one_source": [],
                "urlwatch": [],
                "urlwatch_cpu": [],
            }
            for run in range(runs):
                wall, cpu = timed(warnsvc, env)
                figures["warnsvc"].append(wall)
                figures["warnsvc_cpu"].append(cpu)
                line = f"run {run + 1}: warnsvc {wall:.2f}s (cpu {cpu:.2f}s)"
                wall, _ = timed(one, env)
                figures["one_source"].append(wall)
                line += f", warnsvc one source {wall:.2f}s"
                if urlwatch is not None:
                    wall, cpu = timed(urlwatch, env, check_quiet=True)
                    figures["urlwatch"].append(wall)
                    figures["urlwatch_cpu"].append(cpu)
                    line += f", urlwatch {wall:.2f}s (cpu {cpu:.2f}s)"
                print(line, flush=True)
            loading = config_load_seconds(config, env)
            floor = core_imports_seconds(env)
            warm = warm_cycle_seconds(config, env)
    finally:
        child.terminate()
        child.join(10)
    result: dict[str, Any] = {
        "pages": pages,
        "runs": runs,
        "store": store,
        "etag": etag,
        "warnsvc_seconds": _median(figures["warnsvc"]),
        "warnsvc_cpu_seconds": _median(figures["warnsvc_cpu"]),
        "warnsvc_one_source_seconds": _median(figures["one_source"]),
        "cycle_seconds": round(
            statistics.median(figures["warnsvc"]) - statistics.median(figures["one_source"]), 3
        ),
        "urlwatch_seconds": _median(figures["urlwatch"]) if figures["urlwatch"] else None,
        "urlwatch_cpu_seconds": (
            _median(figures["urlwatch_cpu"]) if figures["urlwatch_cpu"] else None
        ),
        "config_load_seconds": round(loading, 3),
        "core_imports_seconds": round(floor, 3),
        "warm_cycle_seconds": round(warm, 3),
    }
    if result["urlwatch_seconds"] is not None:
        result["ratio"] = round(result["urlwatch_seconds"] / result["warnsvc_seconds"], 2)
        result["cpu_ratio"] = round(
            result["urlwatch_cpu_seconds"] / result["warnsvc_cpu_seconds"], 2
        )
        # the whole warnsvc process the target allows: half of urlwatch's
        result["budget_seconds"] = round(result["urlwatch_seconds"] / 2, 3)
        result["warm_ratio"] = round(result["urlwatch_seconds"] / warm, 2)
        result["ratio_ceiling"] = round(result["urlwatch_seconds"] / (floor + warm), 2)
    else:
        result["ratio"] = None
    return result


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5, help="timed steady-state runs of each")
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--database-url", help="a postgresql+asyncpg:// URL to measure on")
    parser.add_argument(
        "--no-etag", action="store_true", help="the server sends no validators: every fetch a 200"
    )
    parser.add_argument("--no-urlwatch", action="store_true", help="measure warnsvc only")
    args = parser.parse_args()
    result = main(
        pages=args.pages,
        runs=args.runs,
        store=args.store,
        database=args.database_url,
        etag=not args.no_etag,
        with_urlwatch=not args.no_urlwatch,
    )
    print(
        f"{result['pages']} pages on {result['store']}: warnsvc {result['warnsvc_seconds']}s, "
        f"urlwatch {result['urlwatch_seconds']}s, ratio {result['ratio']} (target >= 2); "
        f"config load {result['config_load_seconds']}s; the cycle itself "
        f"{result['cycle_seconds']}s; importing the core libraries alone "
        f"{result['core_imports_seconds']}s; a steady cycle in a running process "
        f"{result['warm_cycle_seconds']}s"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    cli()
