"""What ``warnsvc status`` and ``warnsvc events`` show: read from the store (and the running
service's ``/readyz`` when it answers), rendered as terminal tables or JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from warnsvc.config import Settings
from warnsvc.store.db import Store
from warnsvc.store.replicas import Replica


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceStatus:
    id: str
    kind: str
    enabled: bool
    health: str  # healthy, failing, unknown (never polled), disabled
    consecutive_failures: int
    last_poll: datetime | None
    next_poll: datetime | None
    last_error: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SituationStatus:
    id: str
    name: str
    level: str | None
    status: str
    last_change: datetime | None
    pending: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaStatus:
    id: str
    url: str
    role: str  # leader, follower, gone (no heartbeat for three beats)
    version: str
    started_at: datetime
    seen_at: datetime
    config_digest: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Status:
    service: dict[str, Any]
    sources: list[SourceStatus]
    situations: list[SituationStatus]
    outbox: dict[str, dict[str, int]]
    oldest_pending: dict[str, datetime] = field(default_factory=dict)
    replicas: list[ReplicaStatus] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        value: dict[str, Any] = _jsonable(asdict(self))
        return value


async def gather(
    settings: Settings, store: Store, service: dict[str, Any], *, heartbeat: float = 5.0
) -> Status:
    """Collect the status of every configured source, known situation, outbox channel and
    replica (``heartbeat``: seconds between a replica's beats; three missed: gone).

    ``service`` is what answered on the configured port (see ``warnsvc.cli``): its ``/healthz``
    ``instance`` and its ``/readyz`` body. It is this config's service only if that instance is
    one of the replicas in this store; otherwise its readiness is not shown as ours."""
    replicas = await store.replicas.all()
    service = same_service(service, replicas)
    health = {h.source_id: h for h in await store.all_source_health()}
    next_polls: dict[str, str] = service.get("checks", {}).get("next_polls", {})
    sources = []
    for config in settings.sources:
        h = health.get(config.id)
        state = (
            "disabled"
            if not config.enabled
            else ("unknown" if h is None else ("healthy" if h.healthy else "failing"))
        )
        estimated = (
            h.last_poll_at + timedelta(seconds=config.interval)
            if h and h.last_poll_at and config.enabled
            else None
        )
        live = next_polls.get(config.id)
        sources.append(
            SourceStatus(
                id=config.id,
                kind=config.kind,
                enabled=config.enabled,
                health=state,
                consecutive_failures=h.consecutive_failures if h else 0,
                last_poll=h.last_poll_at if h else None,
                next_poll=datetime.fromisoformat(live) if live else estimated,
                last_error=h.last_error if h else None,
            )
        )
    return Status(
        service=service,
        sources=sources,
        situations=await _situations(store),
        outbox=await _outbox(store),
        oldest_pending=await store.outbox.oldest_pending(),
        replicas=_replicas(replicas, now=datetime.now(UTC), beat=heartbeat),
    )


def replica_instance(replica: Replica) -> str:
    """The ``instance`` that replica's ``/healthz`` answers (``host:pid``, see warnsvc.web.app)."""
    return f"{replica.host}:{replica.pid}"


def same_service(service: dict[str, Any], replicas: Sequence[Replica]) -> dict[str, Any]:
    """``service`` with ``same_service``: whether the process that answered is a replica of
    this store. A process that is not (another service on the port, or one still starting) keeps
    only its address and instance: its readiness says nothing about this config's service."""
    if not service.get("reachable"):
        return service
    instance = service.get("instance")
    if instance is not None and any(replica_instance(r) == instance for r in replicas):
        return {**service, "same_service": True}
    return {
        "reachable": True,
        "url": service.get("url"),
        "instance": instance,
        "same_service": False,
    }


def _replicas(replicas: Sequence[Replica], *, now: datetime, beat: float) -> list[ReplicaStatus]:
    stale = now - timedelta(seconds=3 * beat)
    return [
        ReplicaStatus(
            id=r.id,
            url=r.url,
            role="gone" if r.seen_at < stale else ("leader" if r.leader else "follower"),
            version=r.version,
            started_at=r.started_at,
            seen_at=r.seen_at,
            config_digest=r.config_digest,
        )
        for r in replicas
    ]


async def _situations(store: Store) -> list[SituationStatus]:
    last = await store.last_changes()
    rows = []
    for state in await store.all_situations():
        pending = None
        if state.pending_status is not None:
            pending = (
                f"{state.pending_level or state.pending_status.value} (seen {state.pending_count}x)"
            )
        when = last.get(state.situation)
        rows.append(
            SituationStatus(
                id=state.situation,
                name=state.name,
                level=state.level,
                status=state.status.value,
                last_change=when,
                pending=pending,
            )
        )
    return rows


async def _outbox(store: Store) -> dict[str, dict[str, int]]:
    result: dict[str, dict[str, int]] = {}
    for (channel, status), count in (await store.outbox.counts()).items():
        result.setdefault(channel, {})[status] = count
    return result


# -- rendering ---------------------------------------------------------------------------------


def render_status(status: Status, *, now: datetime) -> str:
    lines = [_service_line(status.service), "", "SOURCES"]
    lines += _table(
        ["source", "kind", "health", "last poll", "next poll"],
        [
            [
                s.id,
                s.kind,
                s.health + (f" ({s.consecutive_failures}x)" if s.consecutive_failures else ""),
                _ago(s.last_poll, now),
                _ago(s.next_poll, now),
            ]
            for s in status.sources
        ],
    )
    # Each last error whole, on its own line: cut to a column, it lost its cause.
    lines += [
        f"  {s.id}: last error: {_indent_lines(s.last_error)}"
        for s in status.sources
        if s.last_error
    ]
    lines += ["", "SITUATIONS"]
    lines += (
        _table(
            ["situation", "level", "status", "last change", "awaiting confirmation"],
            [
                [s.id, s.level or "-", s.status, _ago(s.last_change, now), s.pending or ""]
                for s in status.situations
            ],
        )
        if status.situations
        else ["  (none yet: no successful poll)"]
    )
    if status.replicas:
        lines += ["", "REPLICAS"]
        lines += _table(
            ["replica", "role", "url", "version", "started", "last heartbeat"],
            [
                [r.id, r.role, r.url, r.version, _ago(r.started_at, now), _ago(r.seen_at, now)]
                for r in status.replicas
            ],
        )
    lines += ["", "OUTBOX"]
    states = ["pending", "in_flight", "delivered", "dead"]
    lines += (
        _table(
            ["channel", *states, "oldest pending"],
            [
                [
                    channel,
                    *(str(counts.get(s, 0)) for s in states),
                    _ago(status.oldest_pending.get(channel), now),
                ]
                for channel, counts in sorted(status.outbox.items())
            ],
        )
        if status.outbox
        else ["  (empty)"]
    )
    return "\n".join(lines)


def render_events(events: Sequence[dict[str, Any]]) -> str:
    if not events:
        return "no events yet"
    rows = []
    for e in events:
        before = (e.get("previous_level") or {}).get("name", "-")
        after = (e.get("level") or {}).get("name") or e.get("status", "-")
        rows.append(
            [
                e.get("detected_at", ""),
                e.get("type", ""),
                e["situation"]["id"],
                f"{before} -> {after}",
                e.get("id", ""),
            ]
        )
    return "\n".join(_table(["detected", "type", "situation", "change", "event"], rows))


def _service_line(service: dict[str, Any]) -> str:
    if not service.get("reachable"):
        return f"service: not answering at {service.get('url')} (not running?)"
    if service.get("same_service") is False:
        who = f"process {service['instance']}" if service.get("instance") else "something"
        return (
            f"service: not running here: {who} answers at {service.get('url')}, but it is not"
            " a replica of this config's database (another service on this port, or one still"
            " starting)"
        )
    checks = service.get("checks", {})
    text = f"service: {service.get('status')} at {service.get('url')}"
    config = checks.get("config", {})
    if config.get("last_reload_error"):
        text += f"\n  last reload FAILED ({config.get('last_reload_at')}); still on the old config:"
        text += "".join(f"\n    {p}" for p in config["last_reload_error"])
    return text


def _indent_lines(text: str) -> str:
    return "\n    ".join(text.splitlines())


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def line(cells: list[str]) -> str:
        return "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def _ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    seconds = (now - moment).total_seconds()
    span = abs(seconds)
    text = (
        f"{span:.0f}s"
        if span < 90
        else f"{span / 60:.0f}m"
        if span < 5400
        else f"{span / 3600:.1f}h"
        if span < 172800
        else f"{span / 86400:.0f}d"
    )
    return f"{text} ago" if seconds >= 0 else f"in {text}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
