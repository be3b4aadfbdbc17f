"""Prometheus metrics (prometheus-client), served at ``/metrics``.

The counters and histograms are updated where the work happens (poller, fetcher, dispatcher,
reloads); the outbox gauges are read from the store when ``/metrics`` is scraped, so they are
right even for rows written by another process (``warnsvc publish``) or left by a crash.

    warnsvc_polls_total{source,result}          polls by outcome: ok, failed
    warnsvc_fetch_seconds                       HTTP fetch time (histogram)
    warnsvc_events_total{type}                  events emitted
    warnsvc_outbox_pending{channel}             rows waiting or in flight
    warnsvc_outbox_oldest_pending_seconds{channel}
    warnsvc_deliveries_total{channel,result}    delivered, retry, dead
    warnsvc_delivery_latency_seconds{channel}   event detected -> delivered (histogram)
    warnsvc_config_reloads_total{result}        ok, failed
    warnsvc_source_healthy{source}              1 healthy, 0 failing
    warnsvc_leader                              1 when this replica leads (polls), else 0
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry(auto_describe=True)
CONTENT_TYPE = CONTENT_TYPE_LATEST

POLLS = Counter(
    "warnsvc_polls", "Polls of a source, by result.", ["source", "result"], registry=REGISTRY
)
FETCH_SECONDS = Histogram(
    "warnsvc_fetch_seconds",
    "Time to fetch one page over HTTP.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
EVENTS = Counter("warnsvc_events", "Events emitted, by type.", ["type"], registry=REGISTRY)
OUTBOX_PENDING = Gauge(
    "warnsvc_outbox_pending", "Outbox rows pending or in flight.", ["channel"], registry=REGISTRY
)
OUTBOX_OLDEST = Gauge(
    "warnsvc_outbox_oldest_pending_seconds",
    "Age of the oldest pending outbox row.",
    ["channel"],
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "warnsvc_deliveries",
    "Delivery attempts, by channel and result (delivered, retry, dead).",
    ["channel", "result"],
    registry=REGISTRY,
)
DELIVERY_LATENCY = Histogram(
    "warnsvc_delivery_latency_seconds",
    "Time from an event's detection to its delivery.",
    ["channel"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 900, 3600, 21600, 86400),
    registry=REGISTRY,
)
CONFIG_RELOADS = Counter(
    "warnsvc_config_reloads",
    "Config reloads, by result (ok, failed).",
    ["result"],
    registry=REGISTRY,
)
SOURCE_HEALTHY = Gauge(
    "warnsvc_source_healthy",
    "1 when the source's last poll succeeded, else 0.",
    ["source"],
    registry=REGISTRY,
)

LEADER = Gauge(
    "warnsvc_leader",
    "1 when this replica is the leader (it polls, confirms, builds digests, prunes), else 0.",
    registry=REGISTRY,
)


def set_outbox(
    pending: Mapping[str, int],
    oldest: Mapping[str, datetime | None],
    *,
    now: datetime,
    channels: list[str],
) -> None:
    """Refresh the outbox gauges from store figures (every known channel gets a value)."""
    for channel in channels:
        OUTBOX_PENDING.labels(channel=channel).set(pending.get(channel, 0))
        first = oldest.get(channel)
        OUTBOX_OLDEST.labels(channel=channel).set((now - first).total_seconds() if first else 0)


def forget_source(source_id: str) -> None:
    """Drop a removed source's health gauge (its counters stay: they are history)."""
    with contextlib.suppress(KeyError):
        SOURCE_HEALTHY.remove(source_id)


def render() -> bytes:
    return generate_latest(REGISTRY)
