"""Benchmark: ``warnsvc parse --kind feed`` on a 50 MB RSS feed, bounded in time and memory.

Writes, in a temp dir, a 50 MB RSS 2.0 feed (short entries, as GDACS writes them) and a 1 MB one
of the same entries, then runs as subprocesses, interleaved, ``--runs`` times each:

- ``large``: ``warnsvc parse --kind feed big.xml`` (with ``--max-bytes SIZE`` when given: the
  file is then read, within the parse limits, instead of refused);
- ``baseline``: the same command on the 1 MB feed, read in a worker process;
- ``import``: ``python -c "import warnsvc.sources.feed"``, the least any parse costs.

For each run: wall time, CPU time and peak resident memory of the process tree (``wait4``:
the child and the workers it waited for), and its exit status. The last line is one JSON
object with the medians, the ratio of the large run's time to the baseline's, and whether the
target is met: refused (exit 2, with a message naming the limit), or read in < 5 s and
< 300 MB.

    python bench/parse_large.py [--runs 3] [--size-mb 50] [--max-bytes 60MB]
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
from typing import Any

TARGET_SECONDS = 5.0
TARGET_RSS_MB = 300.0


def write_feed(path: Path, size: int) -> int:
    """An RSS feed of about ``size`` bytes, written piece by piece (so that this process stays
    small: a child's peak RSS counts its parent's at the fork); the number of entries."""
    head = (
        '<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0" '
        'xmlns:gdacs="http://www.gdacs.org"><channel><title>Load</title>'
        "<link>http://127.0.0.1/</link><description>bench</description>\n"
    )
    with path.open("w", encoding="utf-8") as out:
        written, n = out.write(head), 0
        while written < size:
            written += out.write(
                f"<item><title>Situation {n}</title><link>http://127.0.0.1/s/{n}</link>"
                f"<guid>urn:bench:{n}</guid><category>Orange</category>"
                "<pubDate>Mon, 30 Dec 2019 10:00:00 GMT</pubDate><description>Flooding in the "
                f"district {n} has displaced several thousand people; the situation is "
                "monitored.</description><gdacs:alertlevel>Orange</gdacs:alertlevel></item>\n"
            )
            n += 1
        out.write("</channel></rss>\n")
    return n


def measure(command: list[str]) -> dict[str, Any]:
    """Run ``command``: wall seconds, CPU seconds, peak RSS (MB) of its tree, exit, stderr."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    stderr = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # kilobytes on Linux
        "exit": proc.returncode,
        "stderr": stderr.strip()[-300:],
    }


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "seconds": round(statistics.median(r["seconds"] for r in runs), 3),
        "cpu_seconds": round(statistics.median(r["cpu_seconds"] for r in runs), 3),
        "peak_rss_mb": round(statistics.median(r["peak_rss_mb"] for r in runs), 1),
        "exit": sorted({r["exit"] for r in runs}),
        "message": runs[-1]["stderr"].splitlines()[-1] if runs[-1]["stderr"] else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mb", type=float, default=50.0)
    parser.add_argument("--max-bytes", help="pass --max-bytes to the large run (read it)")
    args = parser.parse_args()
    warnsvc = [sys.executable, "-m", "warnsvc", "parse", "--kind", "feed"]
    with tempfile.TemporaryDirectory(prefix="warnsvc-bench-") as tmp:
        big, small = Path(tmp) / "big.xml", Path(tmp) / "small.xml"
        entries = write_feed(big, int(args.size_mb * 1_000_000))
        write_feed(small, 1_000_000)
        print(f"{big.stat().st_size:,} bytes, {entries:,} entries", flush=True)
        extra = ["--max-bytes", args.max_bytes] if args.max_bytes else []
        commands = {
            "large": [*warnsvc, *extra, str(big)],
            "baseline": [*warnsvc, str(small)],
            "import": [sys.executable, "-c", "import warnsvc.sources.feed"],
        }
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in commands}
        for number in range(1, args.runs + 1):
            for name, command in commands.items():
                result = measure(command)
                runs[name].append(result)
                print(
                    f"run {number} {name:8}: {result['seconds']:6.2f} s  "
                    f"cpu {result['cpu_seconds']:6.2f} s  {result['peak_rss_mb']:7.1f} MB  "
                    f"exit {result['exit']}",
                    flush=True,
                )
    figures = {name: medians(r) for name, r in runs.items()}
    large = figures["large"]
    refused = large["exit"] == [2] and "max_bytes" in large["message"]
    read_fast = (
        large["exit"] == [0]
        and large["seconds"] < TARGET_SECONDS
        and large["peak_rss_mb"] < TARGET_RSS_MB
    )
    print(f"large: {large['message']}")
    result = {
        "bench": "parse_large",
        "size_mb": args.size_mb,
        **figures,
        "ratio_seconds": round(large["seconds"] / figures["baseline"]["seconds"], 2),
        "ratio_rss": round(large["peak_rss_mb"] / figures["baseline"]["peak_rss_mb"], 2),
        "refused": refused,
        "target": f"refused (exit 2) or < {TARGET_SECONDS:g} s and < {TARGET_RSS_MB:g} MB",
        "target_met": refused or read_fast,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
