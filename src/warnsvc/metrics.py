"""Prometheus metrics, served at ``/metrics`` in the Prometheus text format.

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

The three kinds of metric and their exposition are written here, in the few lines this service
needs, and render what prometheus-client rendered (``_total`` counters with their ``_created``
series, cumulative histogram buckets, sorted labels, Go-style numbers): a scraper sees the same
series. prometheus-client itself, with the HTTP servers it imports, would be some 1 MB of an
idle service.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Generic, TypeVar

CONTENT_TYPE = "text/plain; version=1.0.0; charset=utf-8"

_Sample = tuple[str, dict[str, str], float]
C = TypeVar("C")


def _number(value: float) -> str:
    """``value`` as Prometheus (Go) writes numbers: ``1.0``, ``+Inf``, ``1.7e+09``."""
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(float(value))
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go switches to an exponent sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


_LABEL_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", '"': '\\"'})
_HELP_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n"})


def _line(name: str, labels: Mapping[str, str], value: float) -> str:
    if not labels:
        return f"{name} {_number(value)}\n"
    pairs = ",".join(f'{key}="{labels[key].translate(_LABEL_ESCAPES)}"' for key in sorted(labels))
    return f"{name}{{{pairs}}} {_number(value)}\n"


class Registry:
    """The metrics served at ``/metrics``, in the order they were made."""

    def __init__(self) -> None:
        self._metrics: list[_Metric[object]] = []

    def register(self, metric: _Metric[object]) -> None:
        self._metrics.append(metric)

    def render(self) -> bytes:
        return "".join(metric.exposition() for metric in self._metrics).encode("utf-8")

    def get_sample_value(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """The value of one series (``warnsvc_polls_total`` with its labels), or None."""
        wanted = dict(labels or {})
        for metric in self._metrics:
            for sample_name, sample_labels, value in (*metric.samples(), *metric.created()):
                if sample_name == name and sample_labels == wanted:
                    return value
        return None


REGISTRY = Registry()


class _Metric(Generic[C]):
    """A metric with its children, one per combination of label values."""

    kind = "untyped"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        registry: Registry = REGISTRY,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], C] = {}
        self._lock = threading.Lock()
        if not self.labelnames:
            self._children[()] = self._child()
        registry.register(self)  # type: ignore[arg-type]

    def _child(self) -> C:
        raise NotImplementedError

    def labels(self, *values: object, **named: object) -> C:
        """The child for these label values (made on first use)."""
        if named:
            if values or set(named) != set(self.labelnames):
                raise ValueError(f"{self.name}: the labels are {', '.join(self.labelnames)}")
            values = tuple(named[key] for key in self.labelnames)
        if len(values) != len(self.labelnames) or not self.labelnames:
            raise ValueError(f"{self.name}: the labels are {', '.join(self.labelnames)}")
        key = tuple(str(value) for value in values)
        with self._lock:
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self._child()
        return child

    def remove(self, *values: object) -> None:
        """Forget one child; KeyError when there is none."""
        with self._lock:
            del self._children[tuple(str(value) for value in values)]

    def _items(self) -> list[tuple[dict[str, str], C]]:
        with self._lock:
            return [
                (dict(zip(self.labelnames, k, strict=True)), c) for k, c in self._children.items()
            ]

    def samples(self) -> Iterator[_Sample]:
        raise NotImplementedError

    def created(self) -> Iterator[_Sample]:
        return iter(())

    def exposition(self) -> str:
        head = self.name + "_total" if self.kind == "counter" else self.name
        help_text = self.documentation.translate(_HELP_ESCAPES)
        lines = [f"# HELP {head} {help_text}\n", f"# TYPE {head} {self.kind}\n"]
        lines += [_line(name, labels, value) for name, labels, value in self.samples()]
        created = [_line(name, labels, value) for name, labels, value in self.created()]
        if created:
            lines += [f"# HELP {self.name}_created {help_text}\n"]
            lines += [f"# TYPE {self.name}_created gauge\n", *created]
        return "".join(lines)


class _Value:
    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()


class _CounterChild(_Value):
    __slots__ = ()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        self.value += amount


class _GaugeChild(_Value):
    __slots__ = ()

    def set(self, value: float) -> None:
        self.value = float(value)


class _HistogramChild:
    __slots__ = ("bounds", "count", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.count = 0
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        for index, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[index] += 1
                break
        self.count += 1
        self.sum += value


class Counter(_Metric[_CounterChild]):
    kind = "counter"

    def _child(self) -> _CounterChild:
        return _CounterChild()

    def inc(self, amount: float = 1) -> None:
        self._children[()].inc(amount)

    def samples(self) -> Iterator[_Sample]:
        for labels, child in self._items():
            yield self.name + "_total", labels, child.value

    def created(self) -> Iterator[_Sample]:
        for labels, child in self._items():
            yield self.name + "_created", labels, child.created


class Gauge(_Metric[_GaugeChild]):
    kind = "gauge"

    def _child(self) -> _GaugeChild:
        return _GaugeChild()

    def set(self, value: float) -> None:
        self._children[()].set(value)

    def samples(self) -> Iterator[_Sample]:
        for labels, child in self._items():
            yield self.name, labels, child.value


class Histogram(_Metric[_HistogramChild]):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        registry: Registry = REGISTRY,
    ) -> None:
        bounds = tuple(float(bound) for bound in buckets)
        self.bounds = bounds if bounds and bounds[-1] == math.inf else (*bounds, math.inf)
        super().__init__(name, documentation, labelnames, registry=registry)

    def _child(self) -> _HistogramChild:
        return _HistogramChild(self.bounds)

    def observe(self, value: float) -> None:
        self._children[()].observe(value)

    def samples(self) -> Iterator[_Sample]:
        for labels, child in self._items():
            cumulative = 0
            for bound, count in zip(child.bounds, child.counts, strict=True):
                cumulative += count
                yield self.name + "_bucket", {**labels, "le": _number(bound)}, cumulative
            yield self.name + "_count", labels, child.count
            yield self.name + "_sum", labels, child.sum

    def created(self) -> Iterator[_Sample]:
        for labels, child in self._items():
            yield self.name + "_created", labels, child.created


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

NOTIFY_SENDS = Counter(
    "warnsvc_notify_sends",
    "Notify deliveries, by target id and result (sent, failed after its quick retries).",
    ["target", "result"],
    registry=REGISTRY,
)
NOTIFY_SECONDS = Histogram(
    "warnsvc_notify_send_seconds",
    "Time to send one notify message that succeeded, quick retries included, by target id.",
    ["target"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
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
    return REGISTRY.render()
