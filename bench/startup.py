"""Benchmark: how fast the command line starts, against ``python -c "import aiohttp"``.

Four commands, each a fresh process, interleaved over several rounds (so that the machine's
load falls on all of them alike):

- ``baseline``: ``python -c "import aiohttp"``, what any aiohttp program pays to start;
- ``help``: ``warnsvc --help``;
- ``check``: ``warnsvc check-config -c config/warnsvc.yaml``, the shipped config;
- ``check500``: ``warnsvc check-config`` on a generated config of 500 ``page`` sources.

Each figure is the median wall-clock time over the rounds, with the median CPU time (user +
system, of the child) beside it. The last line is one JSON object with the ratios
``help_ratio`` and ``check_ratio`` (medians over the baseline's median) and whether the
targets (help <= 1.5x, check <= 3x) are met.

    python bench/startup.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELP_TARGET = 1.5
CHECK_TARGET = 3.0


def config_of(sources: int) -> str:
    lines = [
        "storage:",
        "  url: sqlite+aiosqlite:///data/warnsvc.db",
        "feeds:",
        "  dir: feeds",
        "sources:",
    ]
    for n in range(sources):
        lines += [
            f"  - id: page-{n}",
            "    kind: page",
            f"    url: https://example.org/watch/{n}/",
            "    scale: gcr2p",
            "    interval: 1h          # hourly",
            "    jitter: 1m",
            "    block: article.situation",
            "    fields:",
            "      title: {css: h2}",
            '      level: {css: ".risk", regex: "Risk: (.+)"}',
            "      date: {css: time, attribute: datetime}",
            "    fetch:",
            "      timeout: 20s",
            "      max_bytes: 1MB",
        ]
    return "\n".join(lines) + "\n"


def timed(command: list[str]) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one run of ``command`` (which must succeed)."""
    before = os.times()
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, check=False)
    wall = time.perf_counter() - start
    after = os.times()
    if done.returncode != 0:
        raise RuntimeError(f"{command} exited {done.returncode}: {done.stderr.decode()[-500:]}")
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="warnsvc-startup-") as tmp:
        big = Path(tmp) / "warnsvc.yaml"
        big.write_text(config_of(500), encoding="utf-8")
        commands = {
            "baseline": [python, "-c", "import aiohttp"],
            "help": [python, "-m", "warnsvc", "--help"],
            "check": [python, "-m", "warnsvc", "check-config", "-c", "config/warnsvc.yaml"],
            "check500": [python, "-m", "warnsvc", "check-config", "-c", str(big)],
        }
        for command in commands.values():  # warm the file cache and the bytecode
            timed(command)
        walls: dict[str, list[float]] = {name: [] for name in commands}
        cpus: dict[str, list[float]] = {name: [] for name in commands}
        names = list(commands)
        for n in range(args.rounds):
            order = names[n % len(names) :] + names[: n % len(names)]  # rotate who goes first
            for name in order:
                seconds, cpu_seconds = timed(commands[name])
                walls[name].append(seconds)
                cpus[name].append(cpu_seconds)

    wall = {name: statistics.median(values) for name, values in walls.items()}
    cpu = {name: statistics.median(values) for name, values in cpus.items()}
    for name in names:
        ratio = wall[name] / wall["baseline"]
        print(
            f"{name:9} {wall[name] * 1000:7.0f} ms wall ({ratio:4.2f}x baseline)"
            f"  {cpu[name] * 1000:6.0f} ms CPU ({cpu[name] / cpu['baseline']:4.2f}x)"
        )
    help_ratio = wall["help"] / wall["baseline"]
    check_ratio = wall["check"] / wall["baseline"]
    print(
        f"targets: help <= {HELP_TARGET}x: {'met' if help_ratio <= HELP_TARGET else 'NOT met'}; "
        f"check-config <= {CHECK_TARGET}x: {'met' if check_ratio <= CHECK_TARGET else 'NOT met'}"
    )
    result = {
        "rounds": args.rounds,
        "baseline_ms": round(wall["baseline"] * 1000),
        "help_ms": round(wall["help"] * 1000),
        "check_ms": round(wall["check"] * 1000),
        "check500_ms": round(wall["check500"] * 1000),
        "help_ratio": round(help_ratio, 2),
        "check_ratio": round(check_ratio, 2),
        "check500_ratio": round(wall["check500"] / wall["baseline"], 2),
        "help_cpu_ratio": round(cpu["help"] / cpu["baseline"], 2),
        "check_cpu_ratio": round(cpu["check"] / cpu["baseline"], 2),
        "help_target": HELP_TARGET,
        "check_target": CHECK_TARGET,
        "help_target_met": help_ratio <= HELP_TARGET,
        "check_target_met": check_ratio <= CHECK_TARGET,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
