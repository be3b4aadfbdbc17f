"""``/metrics`` renders what prometheus-client rendered for the same metrics and updates (the
series, their order, labels, escaping and numbers); only the ``_created`` times differ, being
clocks read at different moments. prometheus-client serves as the reference here."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry

from warnsvc import metrics

BUCKETS = (0.05, 0.1, 0.25, 1, 2.5, 60)
AWKWARD = 'b"x\\y\nz é'


def exercise(module: Any, registry: Any) -> None:
    """The same metrics and updates, on ``module``'s classes and ``registry``."""
    counter = module.Counter(
        "t_polls", "Polls, by result.", ["source", "result"], registry=registry
    )
    plain = module.Counter("t_reloads", "Reloads\\ with a\nnewline.", registry=registry)
    untouched = module.Counter("t_events", "Events.", ["type"], registry=registry)
    gauge = module.Gauge("t_pending", "Pending rows.", ["channel"], registry=registry)
    leader = module.Gauge("t_leader", "1 when leading.", registry=registry)
    fetch = module.Histogram("t_fetch_seconds", "Fetch time.", buckets=BUCKETS, registry=registry)
    latency = module.Histogram(
        "t_latency_seconds", "Latency.", ["channel"], buckets=BUCKETS, registry=registry
    )
    counter.labels(source="a", result="ok").inc()
    counter.labels(source=AWKWARD, result="failed").inc(2.5)
    counter.labels(source="a", result="ok").inc(3)
    plain.inc()
    del untouched
    gauge.labels(channel="feeds").set(0)
    gauge.labels(channel="email").set(1_234_567_890.5)
    gauge.labels(channel="gone").set(7)
    gauge.remove("gone")
    leader.set(1)
    for value in (0.01, 0.05, 0.07, 3, 1e9):
        fetch.observe(value)
    latency.labels(channel="feeds").observe(0.3)
    latency.labels(channel="webhooks").observe(61)


def normalized(text: bytes) -> str:
    """The text with each ``_created`` sample's time (a clock reading) replaced by ``T``."""
    return re.sub(r"^(\w+_created(?:\{.*\})?) \S+$", r"\1 T", text.decode("utf-8"), flags=re.M)


def test_the_exposition_is_prometheus_clients() -> None:
    ours, theirs = metrics.Registry(), CollectorRegistry(auto_describe=True)
    exercise(metrics, ours)
    exercise(prometheus_client, theirs)
    assert normalized(ours.render()) == normalized(prometheus_client.generate_latest(theirs))
    assert metrics.CONTENT_TYPE == prometheus_client.CONTENT_TYPE_LATEST


@pytest.mark.parametrize(
    ("name", "labels"),
    [
        ("t_polls_total", {"source": "a", "result": "ok"}),
        ("t_polls_total", {"source": AWKWARD, "result": "failed"}),
        ("t_reloads_total", {}),
        ("t_pending", {"channel": "email"}),
        ("t_pending", {"channel": "gone"}),
        ("t_fetch_seconds_bucket", {"le": "0.1"}),
        ("t_fetch_seconds_count", {}),
        ("t_latency_seconds_sum", {"channel": "webhooks"}),
        ("t_events_total", {"type": "x"}),
    ],
)
def test_sample_values_read_as_prometheus_clients(name: str, labels: dict[str, str]) -> None:
    ours, theirs = metrics.Registry(), CollectorRegistry(auto_describe=True)
    exercise(metrics, ours)
    exercise(prometheus_client, theirs)
    assert ours.get_sample_value(name, labels) == theirs.get_sample_value(name, labels)


def test_labels_must_be_the_metrics_own() -> None:
    counter = metrics.Counter("t_checked", "Checked.", ["source"], registry=metrics.Registry())
    with pytest.raises(ValueError, match="source"):
        counter.labels(sauce="a")
    with pytest.raises(ValueError, match="only go up"):
        counter.labels(source="a").inc(-1)


def test_the_metrics_load_no_prometheus_client() -> None:
    code = (
        "import sys\n"
        "from warnsvc import metrics\n"
        "metrics.POLLS.labels(source='s', result='ok').inc()\n"
        "assert b'warnsvc_polls_total' in metrics.render()\n"
        "print('prometheus_client' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
