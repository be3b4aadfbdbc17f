"""The Atom and RSS files keep, byte for byte, what earlier releases wrote (through feedgen and
lxml): an upgrade rewrites no feed, so ETags and Last-Modified stay and no reader re-fetches.
The expected files under ``tests/fixtures/written/`` were written by that earlier writer."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_feeds import BASE, SCALES, SUDAN, payload, settings
from warnsvc.channels.feeds import build_feeds
from warnsvc.model import EventType, Status

WRITTEN = Path(__file__).parent.parent / "fixtures" / "written"


def events() -> list[dict[str, Any]]:
    """Links or none, markup, ampersands and quotes, a control character, a line separator,
    accents and an emoji, empty summaries and risk factors, an unsafe link."""
    return [
        payload("e1"),
        payload(
            "e2",
            EventType.DEESCALATED,
            level="imminent-risk",
            previous="current-crisis",
            minutes=5,
        ),
        payload(
            "e3",
            EventType.LISTED,
            previous=None,
            minutes=7,
            situation=SUDAN,
            name="Sudan & <South> \"quoted\" 'x'",
            url=None,
        ),
        payload(
            "e4",
            EventType.DELISTED,
            level=None,
            previous="current-crisis",
            status=Status.DELISTED,
            minutes=9,
        ),
        payload(
            "e5",
            summary="Line one.\n\nLine <b>two</b> & \x01ctrl \u2028 sep é 😀\n\n",
            risk_factors=("A & B", "<x>", "ü"),
            minutes=11,
            url="javascript:alert(1)",
        ),
        payload(
            "e6",
            summary="",
            risk_factors=(),
            minutes=11,
            url='https://example.org/a?b=1&c="2"',
        ),
    ]


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("alerts.atom", "alerts.atom"),
        ("alerts.rss", "alerts.rss"),
        ("levels/current-crisis.atom", "current-crisis.atom"),
    ],
)
def test_feeds_keep_the_bytes_earlier_releases_wrote(
    tmp_path: Path, written: str, expected: str
) -> None:
    build_feeds(events(), SCALES, settings(tmp_path, author="Ops & <co>"), now=BASE)
    assert (tmp_path / written).read_bytes() == (WRITTEN / expected).read_bytes()


@pytest.mark.parametrize(
    ("title", "written", "expected"),
    [
        ("warnsvc alerts", "alerts.rss", "empty.rss"),
        ('T & <t> "q" é', "alerts.atom", "empty-titled.atom"),
    ],
)
def test_empty_feeds_keep_the_bytes_earlier_releases_wrote(
    tmp_path: Path, title: str, written: str, expected: str
) -> None:
    out = settings(tmp_path, title=title, author="Ops & <co>")
    build_feeds([], SCALES, out, now=BASE + timedelta(hours=1))
    assert (tmp_path / written).read_bytes() == (WRITTEN / expected).read_bytes()


def test_writing_feeds_loads_no_xml_library() -> None:
    """Feeds are written at every start: the writer must not pull lxml or feedgen in."""
    code = (
        "import sys, tempfile, pathlib\n"
        "from warnsvc.channels.feeds import FeedSettings, build_feeds\n"
        "from warnsvc.model import GCR2P_SCALE\n"
        "out = pathlib.Path(tempfile.mkdtemp())\n"
        "build_feeds([], {'gcr2p': GCR2P_SCALE}, FeedSettings(out_dir=out, base_url='http://x'))\n"
        "assert (out / 'alerts.atom').is_file()\n"
        "print(sorted(m for m in ('lxml', 'feedgen') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
