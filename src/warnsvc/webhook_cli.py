"""``warnsvc webhooks list|add|rm|redeliver``: the operator's view of webhook endpoints.

The commands work on the database directly, so they need no running service; a running one
picks up new endpoints with the next event and requeued deliveries within seconds.
"""

# ruff: noqa: T201  (a command-line module: it prints)
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when the command runs: building the parser stays cheap
    from warnsvc.config import Settings
    from warnsvc.store.webhooks import Endpoint, EndpointStore

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EVENT_TYPES = (
    "situation.listed",
    "risk.escalated",
    "risk.deescalated",
    "situation.delisted",
    "situation.updated",
)


def add_parser(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """Add ``webhooks`` and its sub-commands; ``command`` makes a parser with ``-c``."""
    parser = command("webhooks", "list, add, remove webhook endpoints; redeliver")
    actions = parser.add_subparsers(dest="webhooks_action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every endpoint, with its partner and state")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    add = actions.add_parser("add", help="register an endpoint; prints its secret once")
    add.add_argument("url")
    add.add_argument("--partner", help="the partner it belongs to (from the config)")
    add.add_argument("--description", default="")
    add.add_argument("--event-type", action="append", default=[], choices=EVENT_TYPES)
    add.add_argument("--situation", action="append", default=[], help="a situation id")
    add.add_argument("--source", action="append", default=[], help="a source id")
    add.add_argument("--min-level", help="a level id, e.g. imminent-risk")
    remove = actions.add_parser("rm", help="remove an endpoint; its pending deliveries are dropped")
    remove.add_argument("endpoint_id")
    again = actions.add_parser("redeliver", help="send deliveries of an endpoint again")
    for sub in (listing, add, remove, again):  # -c may also follow the action
        sub.add_argument("-c", "--config", type=Path, default=argparse.SUPPRESS, help="the config")
    again.add_argument("endpoint_id")
    which = again.add_mutually_exclusive_group(required=True)
    which.add_argument("--delivery", type=int, help="one delivery, by id")
    which.add_argument(
        "--since", help="every dead-lettered delivery since this time (ISO 8601, e.g. 2026-11-28)"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_run(args, settings))


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    from warnsvc.channels.webhooks import level_ranks, static_endpoints
    from warnsvc.store.db import Store

    store = await Store.open(settings.storage.url)
    try:
        endpoints = store.endpoints
        now = datetime.now(UTC)  # the config's endpoints, as the service would see them
        ranks = level_ranks(settings.scale_map())
        await endpoints.sync_static(static_endpoints(settings, ranks, now=now), now=now)
        action = args.webhooks_action
        if action == "list":
            return await _list(endpoints, as_json=args.json)
        if action == "add":
            return await _add(endpoints, settings, args)
        if action == "rm":
            return await _remove(endpoints, args.endpoint_id)
        return await _redeliver(endpoints, args)
    finally:
        await store.close()


def _error(message: str) -> None:
    print(f"warnsvc: error: {message}", file=sys.stderr)


def _summary(endpoint: Endpoint) -> str:
    f = endpoint.filters
    parts = [
        *(f"type={t}" for t in f.event_types),
        *(f"situation={s}" for s in f.situations),
        *(f"source={s}" for s in f.sources),
        *([f"min_level={f.min_level}"] if f.min_level else []),
    ]
    return " ".join(parts) or "all events"


async def _list(endpoints: EndpointStore, *, as_json: bool) -> int:
    for endpoint in await endpoints.owned(every=True):
        if as_json:
            print(json.dumps({**endpoint.to_json(), "partner": endpoint.partner_id}))
            continue
        state = "enabled" if endpoint.enabled else f"disabled ({endpoint.disabled_reason})"
        owner = endpoint.partner_id or "-"
        origin = " [config]" if endpoint.static else ""
        print(f"{endpoint.id}  {owner}  {state}{origin}  {endpoint.url}  {_summary(endpoint)}")
    return EXIT_OK


async def _add(endpoints: EndpointStore, settings: Settings, args: argparse.Namespace) -> int:
    from warnsvc.channels.webhooks import level_ranks, make_guard
    from warnsvc.filters import Filter
    from warnsvc.security.ssrf import UnsafeUrlError
    from warnsvc.store.webhooks import refused_character

    partners = [p.id for p in settings.webhooks.partners]
    if args.partner is not None and args.partner not in partners:
        _error(f"unknown partner {args.partner!r} (known: {', '.join(partners) or 'none'})")
        return EXIT_USAGE
    ranks = level_ranks(settings.scale_map())
    if args.min_level is not None and args.min_level not in ranks:
        _error(f"unknown level {args.min_level!r} (known: {', '.join(ranks)})")
        return EXIT_USAGE
    texts = [
        ("--description", args.description),
        *(("--situation", s) for s in args.situation),
        *(("--source", s) for s in args.source),
    ]  # --min-level must name a known level
    problem = refused_character(args.url, url=True)
    if problem is not None:  # as the partner API: nothing stored that forges a terminal line
        _error(f"url must not contain whitespace or control characters (found {problem})")
        return EXIT_USAGE
    for option, text in texts:
        problem = refused_character(text)
        if problem is not None:
            _error(f"{option} must not contain control characters (found {problem})")
            return EXIT_USAGE
    try:
        await make_guard(settings.webhooks).check(args.url)
    except UnsafeUrlError as exc:
        _error(f"url {exc}")
        return EXIT_USAGE
    filters = Filter(
        event_types=tuple(args.event_type),
        situations=tuple(args.situation),
        sources=tuple(args.source),
        min_level=args.min_level,
    )
    endpoint, secret = await endpoints.create(
        url=args.url,
        partner_id=args.partner,
        description=args.description,
        filters=filters,
        now=datetime.now(UTC),
    )
    print(f"created {endpoint.id}")
    print(f"secret {secret}")
    print("(the secret is shown only now: give it to the receiver)", file=sys.stderr)
    return EXIT_OK


async def _remove(endpoints: EndpointStore, endpoint_id: str) -> int:
    endpoint = await endpoints.get(endpoint_id)
    if endpoint is None:
        _error(f"no endpoint {endpoint_id!r}")
        return EXIT_FAILURE
    if endpoint.static:
        _error(f"{endpoint_id} is declared in the config file; remove it there")
        return EXIT_USAGE
    await endpoints.delete(endpoint_id)
    print(f"removed {endpoint_id}")
    return EXIT_OK


async def _redeliver(endpoints: EndpointStore, args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    if await endpoints.get(args.endpoint_id) is None:
        _error(f"no endpoint {args.endpoint_id!r}")
        return EXIT_FAILURE
    if args.delivery is not None:
        if await endpoints.delivery_endpoint(args.delivery) != args.endpoint_id:
            _error(f"no delivery {args.delivery} of {args.endpoint_id}")
            return EXIT_FAILURE
        if not await endpoints.redeliver(args.endpoint_id, args.delivery, now=now):
            _error(f"delivery {args.delivery} is still pending or in flight")
            return EXIT_FAILURE
        print("queued 1 delivery")
        return EXIT_OK
    try:
        since = datetime.fromisoformat(args.since)
    except ValueError:
        _error(f"--since must be an ISO 8601 time like 2026-11-28T00:00:00Z, not {args.since!r}")
        return EXIT_USAGE
    since = since if since.tzinfo else since.replace(tzinfo=UTC)
    count = await endpoints.redeliver_dead(args.endpoint_id, since=since, now=now)
    print(f"queued {count} dead-lettered deliveries")
    return EXIT_OK
