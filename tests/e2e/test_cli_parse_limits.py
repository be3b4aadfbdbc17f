"""``warnsvc parse`` within the limits a source has: size (fetch.max_bytes) and parse bounds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def warnsvc(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "warnsvc", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def write_feed(path: Path, entries: int) -> Path:
    items = "".join(
        f"<item><title>Situation {n}</title><guid>urn:s:{n}</guid><category>Orange</category>"
        f"<description>Flooding in district {n}; several thousand people moved.</description>"
        "</item>"
        for n in range(entries)
    )
    path.write_text(
        f'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>{items}</channel></rss>',
        encoding="utf-8",
    )
    return path


def write_config(folder: Path, fetch: str, parse: str) -> Path:
    config = folder / "warnsvc.yaml"
    config.write_text(
        f"""\
storage: {{url: "sqlite+aiosqlite:///{folder}/s.db"}}
sources:
  - id: floods
    kind: feed
    url: https://example.org/feed.xml
    scale: gdacs
    levels: {{Orange: orange}}
    fetch: {fetch}
    parse: {parse}
""",
        encoding="utf-8",
    )
    return config


def test_a_file_over_the_default_size_limit_is_refused_with_exit_2(tmp_path: Path) -> None:
    big = tmp_path / "big.xml"
    with big.open("wb") as out:  # content does not matter: it is never read
        out.truncate(5_000_001)
    result = warnsvc("parse", "--kind", "feed", str(big), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "5,000,001 bytes" in result.stderr
    assert "fetch.max_bytes" in result.stderr and "--max-bytes" in result.stderr


def test_a_source_s_size_limit_applies_and_max_bytes_lifts_it(tmp_path: Path) -> None:
    feed = write_feed(tmp_path / "feed.xml", 600)  # about 80 KB: read in a worker
    config = write_config(tmp_path, "{max_bytes: 64KiB}", "{timeout: 30s}")
    refused = warnsvc("parse", "-c", str(config), "--source", "floods", str(feed), cwd=tmp_path)
    assert refused.returncode == 2
    assert "65,536" in refused.stderr and "fetch.max_bytes" in refused.stderr
    args = ("parse", "-c", str(config), "--source", "floods", "--max-bytes", "1MB", str(feed))
    read = warnsvc(*args, cwd=tmp_path)
    assert read.returncode == 0, read.stderr
    assert len(read.stdout.splitlines()) == 600


def test_a_parse_past_the_source_s_time_limit_fails_naming_it(tmp_path: Path) -> None:
    feed = write_feed(tmp_path / "feed.xml", 12_000)  # seconds of feedparser
    config = write_config(tmp_path, "{max_bytes: 5MB}", "{timeout: 1s}")
    result = warnsvc("parse", "-c", str(config), "--source", "floods", str(feed), cwd=tmp_path)
    assert result.returncode == 1
    assert "parse.timeout" in result.stderr
    assert result.stdout == ""
