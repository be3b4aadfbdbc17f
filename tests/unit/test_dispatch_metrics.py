"""What the dispatcher counts when a batch is delivered."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from warnsvc.dispatch import _count_delivered
from warnsvc.metrics import REGISTRY
from warnsvc.outbox import Delivery

NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_delivered_batch_is_counted_and_timed_per_row() -> None:
    channel = "metrics-test"
    early = {"detected_at": "2024-03-01T11:59:50Z"}
    late = {"detected_at": (NOW - timedelta(seconds=2)).isoformat()}
    rows = [
        Delivery(id=n, event_id=e, channel=channel, recipient=f"r{n}", attempts=0, payload=p)
        for n, (e, p) in enumerate(
            [("evt_1", early)] * 3 + [("evt_2", late)] * 2 + [("evt_3", {})], start=1
        )
    ]
    _count_delivered(rows, NOW)
    _count_delivered([], NOW)  # nothing: no labels are touched

    delivered = sample("warnsvc_deliveries_total", channel=channel, result="delivered")
    assert delivered == 6
    latency = "warnsvc_delivery_latency_seconds"
    assert sample(latency + "_count", channel=channel) == 5  # evt_3 has no detected_at
    assert sample(latency + "_sum", channel=channel) == 3 * 10.0 + 2 * 2.0
