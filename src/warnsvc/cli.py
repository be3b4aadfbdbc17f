"""The ``warnsvc`` command line.

    warnsvc init [DIR]     write the commented starter config to DIR/config/warnsvc.yaml
    warnsvc run            poll on schedule, serve feeds and health over HTTP
    warnsvc check-config   validate the YAML; one line per problem (file:line: key.path: ...)
    warnsvc parse          parse a file or URL with a source kind; observations as JSON lines
    warnsvc poll --once    poll now; print the events emitted (or, with --dry-run, that would be)
    warnsvc feeds rebuild  rewrite every feed file from the stored events
    warnsvc webhooks       list, add, rm webhook endpoints; redeliver deliveries
    warnsvc notify         test an Apprise URL (a chat or messaging target); enable a target
    warnsvc status         sources, situations and the outbox at a glance (--json)
    warnsvc events         recent events (--json)
    warnsvc reload         make the running service re-read its config
    warnsvc publish        announce a change as an operator; warnsvc retract EVENT corrects one
    warnsvc demo           the whole flow offline, on bundled fixtures

Exit status: 0 ok, 1 runtime failure, 2 bad usage or bad config.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from warnsvc import __version__
from warnsvc.errors import ConfigError, SourceError, StartupError, WarnsvcError

if TYPE_CHECKING:  # each command imports what it needs: `--help` and check-config start fast
    from warnsvc.config import Settings
    from warnsvc.model import Event, Observation
    from warnsvc.pipeline import PollReport

DEFAULT_CONFIG = Path("config/warnsvc.yaml")
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def load_config(path: Path) -> Settings:
    """:func:`warnsvc.config.load_config`, imported when a command first reads its config."""
    from warnsvc.config import load_config as load

    return load(path)


def setup_logging(level: str, log_format: str) -> None:
    """:func:`warnsvc.logs.setup_logging`, imported when a command first logs."""
    from warnsvc.logs import setup_logging as setup

    setup(level, log_format)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="warnsvc",
        description="Early-warning alert distribution: watch risk assessments, "
        "detect confirmed level changes, publish them.",
    )
    parser.add_argument("--version", action="version", version=f"warnsvc {__version__}")
    parser.add_argument("--log-format", choices=["text", "json"], help="override the config")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument(
            "-c",
            "--config",
            type=Path,
            default=DEFAULT_CONFIG,
            help=f"the YAML config file (default: {DEFAULT_CONFIG})",
        )
        return sub

    init = commands.add_parser(
        "init",
        help="write the commented starter config",
        description=f"Write the commented starter config to DIR/{DEFAULT_CONFIG}, where "
        "`warnsvc run` run in DIR finds it (data and feeds then go under DIR too).",
    )
    init.add_argument(
        "dir", metavar="DIR", nargs="?", type=Path, default=Path("."), help="default: here"
    )
    init.add_argument("--force", action="store_true", help="replace an existing config file")
    run = command("run", "poll on schedule and serve feeds and health over HTTP")
    run.add_argument("--host", help="override service.http.host")
    run.add_argument("--port", type=int, help="override service.http.port")
    command("check-config", "validate the config file")
    parse = command("parse", "parse a file or URL; print observations as JSON lines")
    which = parse.add_mutually_exclusive_group(required=True)
    which.add_argument("--kind", help="a source kind with its defaults (e.g. gcr2p-page)")
    which.add_argument("--source", help="a source from the config, with its settings")
    parse.add_argument("target", metavar="FILE|URL")
    parse.add_argument("--url", help="the page's own URL, when parsing a saved FILE")
    parse.add_argument("--max-bytes", metavar="SIZE", help="largest FILE read (default 5MB)")
    poll = command("poll", "poll sources now and print the events")
    poll.add_argument("--once", action="store_true", required=True, help="poll once and exit")
    poll.add_argument("--dry-run", action="store_true", help="write nothing; show what would be")
    poll.add_argument("--source", help="only this source (even if disabled)")
    poll.add_argument(
        "--no-confirm",
        action="store_true",
        help="do not wait to re-fetch changes that await confirmation",
    )
    poll.add_argument("--json", action="store_true", help="print event payloads as JSON lines")
    status = command("status", "sources, situations and the outbox at a glance")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    events = command("events", "recent events, newest first")
    events.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    events.add_argument("--situation", help="only this situation")
    events.add_argument("--json", action="store_true", help="print payloads as JSON lines")
    events.add_argument(
        "--all", action="store_true", help="include partners' webhook.test pings (left out)"
    )
    command("reload", "tell the running service to re-read its config (SIGHUP)")
    publish = command("publish", "announce a level change now, before the source shows it")
    publish.add_argument("--situation", required=True, help="e.g. gcr2p:nagorno-karabakh")
    publish.add_argument("--level", required=True, help="a level id or name on its scale")
    publish.add_argument("--note", required=True, help="why; shown in every channel")
    retract = command("retract", "publish a correction of an event")
    retract.add_argument("event", help="the event id (see `warnsvc events`)")
    retract.add_argument(
        "--note", default="This alert was issued in error.", help="the correction's text"
    )
    from warnsvc import webhook_cli

    webhook_cli.add_parser(command)
    notify = command("notify", "chat and messaging targets (Apprise)")
    notify.add_argument(
        "action",
        choices=["test", "enable", "redeliver"],
        help="test: send a test message to URL; enable: enable target ID again; "
        "redeliver: queue target ID's dead letters again",
    )
    notify.add_argument("target", metavar="URL|ID")
    notify.add_argument(
        "--timeout", type=float, help="seconds per attempt (default: notify.timeout, or 10)"
    )
    notify.add_argument(
        "--since",
        help="redeliver: only what was dead-lettered since this time (ISO 8601, e.g. "
        "2026-11-28); default: every dead letter of the target",
    )
    feeds = command("feeds", "feed files")
    feeds.add_argument("action", choices=["rebuild"])
    demo = commands.add_parser(
        "demo",
        help="the whole flow offline, on bundled fixtures",
        description="Serve bundled GCR2P pages that change over time "
        "from a local replay server, poll them, and write feeds.",
    )
    demo.add_argument(
        "--dir",
        type=Path,
        default=Path("data/demo"),
        help="where to leave the feeds, their database and a config serving them "
        "(default: data/demo)",
    )
    demo.add_argument(
        "--feeds-dir", type=Path, help="write the feeds here instead (default: DIR/feeds)"
    )
    demo.add_argument(
        "--confirm-delay",
        type=float,
        default=1.0,
        help="seconds between a change and its confirming re-fetch (default 1)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = _COMMANDS[args.command]
    try:
        return handler(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        config = getattr(args, "config", None)
        if isinstance(config, Path) and not config.exists():
            where = "" if config == DEFAULT_CONFIG else " (then pass its path with -c)"
            print(f"hint: `warnsvc init` writes a starter config{where}", file=sys.stderr)
        return EXIT_USAGE
    except StartupError as exc:  # a wrong storage.url, a port in use: the operator's to fix
        print(f"warnsvc: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except WarnsvcError as exc:
        print(f"warnsvc: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _load(args: argparse.Namespace, *, quiet: bool = True) -> Settings:
    settings = load_config(args.config)
    level = args.log_level or ("warning" if quiet else settings.service.log_level)
    setup_logging(level, args.log_format or settings.service.log_format)
    return settings


# -- init, run, check-config -------------------------------------------------------------------


def starter_config() -> str:
    """The commented starter config shipped in the package (a copy of config/warnsvc.yaml)."""
    from importlib.resources import files

    return files("warnsvc").joinpath("starter", "warnsvc.yaml").read_text(encoding="utf-8")


def _init(args: argparse.Namespace) -> int:
    import shlex

    directory: Path = args.dir
    target = directory / DEFAULT_CONFIG
    if target.exists() and not args.force:
        print(
            f"warnsvc: error: {target} exists; left as it is (--force replaces it)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(starter_config(), encoding="utf-8")
    except OSError as exc:
        print(f"warnsvc: error: cannot write {target}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"wrote {target}: the starter config; its comments explain each setting")
    go = "" if directory == Path(".") else f"cd {shlex.quote(str(directory))} && "
    print(
        f"next: {go}warnsvc run   (it serves http://127.0.0.1:8080/; "
        "`warnsvc check-config` checks your edits)"
    )
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from warnsvc.service import Service

    settings = _load(args, quiet=False)
    overrides: dict[str, Any] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if overrides:
        http = settings.service.http.model_copy(update=overrides)
        service = settings.service.model_copy(update={"http": http})
        settings = settings.model_copy(update={"service": service})
    asyncio.run(Service(settings, migrate_apart=True).run_until_stopped())
    return EXIT_OK


def _check_config(args: argparse.Namespace) -> int:
    settings = load_config(args.config)
    enabled = [s.id for s in settings.sources if s.enabled]
    print(
        f"{args.config}: OK: {len(settings.sources)} source(s), {len(enabled)} enabled"
        f" ({', '.join(enabled) or 'none'}); scales: {', '.join(settings.scale_map())}"
    )
    return EXIT_OK


# -- parse ---------------------------------------------------------------------------------------


def _parse(args: argparse.Namespace) -> int:
    from warnsvc.config import FetchSettings, parse_size
    from warnsvc.sources.registry import KINDS, get_kind
    from warnsvc.sources.worker import limits_from_settings, parse_bounded_sync

    setup_logging(args.log_level or "warning", args.log_format or "text")
    source_config: Any = None
    if args.source:
        settings = load_config(args.config)
        try:
            config = settings.source(args.source)
        except KeyError:
            known = ", ".join(s.id for s in settings.sources) or "none"
            print(
                f"warnsvc: error: no source {args.source!r} in {args.config} (known: {known})",
                file=sys.stderr,
            )
            return EXIT_USAGE
        kind, scale, namespace = config.kind, settings.scale_map()[config.scale], config.namespace
        source_config = config
        configure = KINDS[kind].parse_with
        parse = configure(config) if configure is not None else get_kind(kind).parse
    else:
        if args.kind not in KINDS:
            print(
                f"warnsvc: error: unknown kind {args.kind!r} (known: {', '.join(sorted(KINDS))})",
                file=sys.stderr,
            )
            return EXIT_USAGE
        defaults = load_config(args.config) if args.config.exists() else None
        kind, namespace = args.kind, KINDS[args.kind].default_namespace
        scale = _default_scale(defaults, KINDS[kind].default_scale)
        parse = get_kind(kind).parse
    fetch = source_config.fetch if source_config is not None else FetchSettings()
    limits = limits_from_settings(source_config)  # the defaults with --kind
    try:
        max_bytes = parse_size(args.max_bytes) if args.max_bytes else fetch.max_bytes
    except ValueError as exc:
        print(f"warnsvc: error: --max-bytes: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if (size := _file_size(args.target)) is not None and size > max_bytes:
        print(
            f"warnsvc: error: {args.target} is {size:,} bytes, more than the {max_bytes:,} a "
            "source may fetch (fetch.max_bytes); pass --max-bytes to read it anyway",
            file=sys.stderr,
        )
        return EXIT_USAGE
    body, content_type, url = asyncio.run(_read_target(args.target, args.url, max_bytes))
    try:
        observations = parse_bounded_sync(
            parse,
            body,
            limits=limits,
            url=url,
            content_type=content_type,
            scale=scale,
            namespace=namespace,
        )
    except SourceError as exc:
        print(f"warnsvc: {args.target}: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE
    for observation in observations:
        if observation.problem is None:
            print(json.dumps(observation.to_json(), ensure_ascii=False))
    _warn_unnamed(observations)
    _warn_skipped(observations)
    return EXIT_OK


def _default_scale(settings: Settings | None, scale_id: str = "gcr2p") -> Any:
    from warnsvc.model import BUILTIN_SCALES

    scales = settings.scale_map() if settings else {s.id: s for s in BUILTIN_SCALES}
    return scales[scale_id]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _warn_skipped(observations: Sequence[Observation]) -> None:
    for observation in observations:
        if observation.problem is not None:
            print(f"skipped: {_one_line(observation.problem)}", file=sys.stderr)


def _warn_unnamed(observations: Sequence[Observation]) -> None:
    unnamed = sum(1 for o in observations if o.situation is None)
    if unnamed:
        print(
            f"note: {unnamed} observation(s) name no situation; for a saved page, "
            "pass its address with --url",
            file=sys.stderr,
        )


def _file_size(target: str) -> int | None:
    """The size of a FILE target; None for an address or a file that cannot be read."""
    if target.startswith(("http://", "https://")):
        return None
    try:
        return Path(target).stat().st_size
    except OSError:
        return None


async def _read_target(
    target: str, url: str | None, max_bytes: int
) -> tuple[str, str | None, str | None]:
    """The text, content type and URL of a file or an http(s) address."""
    from warnsvc.sources.fetch import Fetcher, FetchSettings, make_session
    from warnsvc.sources.text import decode_body

    if target.startswith(("http://", "https://")):
        agent = f"warnsvc/{__version__} (parse)"
        settings = FetchSettings(user_agent=agent, max_bytes=max_bytes)
        async with make_session(settings) as session:
            result = await Fetcher(session, settings).fetch(target)
        return decode_body(result.body, result.content_type), result.content_type, result.url
    path = Path(target)
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        raise WarnsvcError(f"cannot read {target}: {exc.strerror}") from exc
    content_type = "text/html" if path.suffix.lower() in (".html", ".htm") else None
    return decode_body(data, content_type), content_type, url


# -- poll ----------------------------------------------------------------------------------------


def _poll(args: argparse.Namespace) -> int:
    settings = _load(args)
    if args.source:
        try:
            settings.source(args.source)
        except KeyError:
            known = ", ".join(s.id for s in settings.sources) or "none"
            print(f"warnsvc: error: no source {args.source!r} (known: {known})", file=sys.stderr)
            return EXIT_USAGE
    return asyncio.run(_poll_once(settings, args))


async def _poll_once(settings: Settings, args: argparse.Namespace) -> int:
    from warnsvc.service import build_components

    parts = await build_components(settings, only=args.source)
    try:
        if not parts.sources:
            print("no enabled sources to poll", file=sys.stderr)
            return EXIT_FAILURE
        # one cycle over every source (many at once), then one re-fetch of those whose changes
        # await confirmation, after one delay for all of them
        reports = await parts.poller.poll_cycle(list(parts.sources), dry_run=args.dry_run)
        final = {report.source_id: report for report in reports}
        rounds = settings.detection.confirmations - 1
        while True:
            for report in reports:
                _print_report(report, args)
            waiting = [r.source_id for r in reports if r.ok and r.pending]
            if not waiting or args.no_confirm or rounds <= 0:
                break
            delay = settings.detection.confirm_delay
            for report in reports:
                if report.ok and report.pending:
                    print(
                        f"{report.source_id}: {len(report.pending)} change(s) await "
                        f"confirmation; re-fetching in {delay:.0f}s ...",
                        file=sys.stderr,
                        flush=True,
                    )
            await asyncio.sleep(delay)
            reports = await parts.poller.poll_cycle(waiting)
            final.update((report.source_id, report) for report in reports)
            rounds -= 1
        failed = any(not report.ok for report in final.values())
        if not args.dry_run:
            await parts.forward_notices()
            await parts.dispatcher.drain()
    finally:
        await parts.close()
    return EXIT_FAILURE if failed else EXIT_OK


def _print_report(report: PollReport, args: argparse.Namespace) -> None:
    sid = report.source_id
    if not report.ok:
        print(
            f"{sid}: FAILED: {report.error} (source marked unhealthy; no events)", file=sys.stderr
        )
        return
    verb = "would emit" if report.dry_run else "emitted"
    line = f"{sid}: {len(report.observations)} situation(s) observed"
    if report.baseline:
        line += "; first poll: baseline recorded, no events"
    elif report.dry_run and report.events:
        line += " (dry run: nothing written; each change is confirmed by a re-fetch first)"
    line += f"; {verb} {len(report.events)} event(s)"
    print(line, file=sys.stderr)
    for reason in report.skipped:
        print(f"{sid}: skipped: {reason}", file=sys.stderr)
    for event in report.events:
        print(json.dumps(event.payload(), ensure_ascii=False) if args.json else _event_line(event))


def _event_line(event: Event) -> str:
    before = event.previous_level.name if event.previous_level else "-"
    after = event.level.name if event.level else event.status.value
    return f"{event.type.value:<19} {event.situation:<40} {before} -> {after}   {event.id}"


# -- feeds, demo ---------------------------------------------------------------------------------


def _webhooks(args: argparse.Namespace) -> int:
    from warnsvc import webhook_cli

    return webhook_cli.run(args, _load(args))


def _notify(args: argparse.Namespace) -> int:
    """``notify test URL`` sends a test message through the config's SSRF allow-lists (exit 1
    when it fails, 2 when Apprise cannot use the URL); ``notify enable ID`` enables a target."""
    from warnsvc.config import NotifySettings

    setup_logging(args.log_level or "warning", args.log_format or "text")
    settings = load_config(args.config) if args.action == "enable" or args.config.exists() else None
    notify = (settings.notify if settings else None) or NotifySettings()
    if args.action == "enable":
        assert settings is not None
        return asyncio.run(_notify_enable(settings, notify, args.target))
    if args.action == "redeliver":
        if settings is None:
            print(f"warnsvc: error: {args.config}: no such config file", file=sys.stderr)
            return EXIT_USAGE
        return asyncio.run(_notify_redeliver(settings, notify, args.target, args.since))
    from warnsvc.channels.notify import send_test
    from warnsvc.security.ssrf import Guard

    guard = Guard.build(notify.allow_hosts, notify.allow_networks)
    try:
        masked, error = asyncio.run(
            send_test(args.target, guard=guard, seconds=args.timeout or notify.timeout)
        )
    except ValueError as exc:
        print(f"warnsvc: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"target: {masked}")
    print(f"result: {'sent' if error is None else 'failed: ' + error}")
    return EXIT_OK if error is None else EXIT_FAILURE


async def _notify_enable(settings: Settings, notify: Any, target: str) -> int:
    from warnsvc.channels.notify import enable
    from warnsvc.store.db import Store

    store = await Store.open(settings.storage.url)
    try:
        found = await enable(store.notices, notify, target)
    finally:
        await store.close()
    if not found:
        print(f"warnsvc: error: no notify target {target!r} in {settings.path}", file=sys.stderr)
        return EXIT_USAGE
    print(f"notify target {target} enabled; the running service uses it from its next delivery")
    return EXIT_OK


async def _notify_redeliver(
    settings: Settings, notify: Any, target: str, since_text: str | None
) -> int:
    """Queue the target's dead-lettered notify deliveries again (all, or those since a time)."""
    from datetime import UTC, datetime

    from warnsvc.channels.notify import NOTIFY_CHANNEL, target_id
    from warnsvc.store.db import Store

    if target not in {target_id(config, n) for n, config in enumerate(notify.targets, 1)}:
        print(f"warnsvc: error: no notify target {target!r} in {settings.path}", file=sys.stderr)
        return EXIT_USAGE
    since = datetime.min.replace(tzinfo=UTC)
    if since_text is not None:
        try:
            since = datetime.fromisoformat(since_text)
        except ValueError:
            print(
                f"warnsvc: error: --since must be an ISO 8601 time like 2026-11-28T00:00:00Z, "
                f"not {since_text!r}",
                file=sys.stderr,
            )
            return EXIT_USAGE
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
    store = await Store.open(settings.storage.url)
    try:
        count = await store.outbox.requeue(
            NOTIFY_CHANNEL, recipient=target, dead_since=since, now=datetime.now(UTC)
        )
    finally:
        await store.close()
    print(f"{count} notify deliveries to {target} queued again")
    return EXIT_OK


def _feeds(args: argparse.Namespace) -> int:
    settings = _load(args)
    return asyncio.run(_rebuild_feeds(settings))


async def _rebuild_feeds(settings: Settings) -> int:
    from warnsvc.channels.feeds import FeedChannel
    from warnsvc.service import feed_settings
    from warnsvc.store.db import Store

    store = await Store.open(settings.storage.url)
    try:
        channel = FeedChannel(store, settings.scale_map(), feed_settings(settings))
        written = await channel.rebuild()
        events = await store.count_events()
    finally:
        await store.close()
    print(f"{settings.feeds.dir}: {len(written)} file(s) rewritten from {events} event(s)")
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from warnsvc.demo import run_demo

    setup_logging(args.log_level or "warning", args.log_format or "text")
    return asyncio.run(
        run_demo(out_dir=args.dir, feeds_dir=args.feeds_dir, confirm_delay=args.confirm_delay)
    )


def _status(args: argparse.Namespace) -> int:
    settings = _load(args)
    return asyncio.run(_show_status(settings, as_json=args.json))


async def _show_status(settings: Settings, *, as_json: bool) -> int:
    from datetime import UTC, datetime

    from warnsvc.status import gather, render_status
    from warnsvc.store.db import Store

    service = await _service_state(settings)
    store = await Store.open(settings.storage.url)
    try:
        heartbeat = max(settings.storage.failover / 6, 0.2)  # as the replicas beat
        status = await gather(settings, store, service, heartbeat=heartbeat)
    finally:
        await store.close()
    if as_json:
        print(json.dumps(status.to_json(), ensure_ascii=False, indent=2))
    else:
        print(render_status(status, now=datetime.now(UTC)))
    return EXIT_OK


async def _service_state(settings: Settings) -> dict[str, Any]:
    """What answers on the configured port: its /healthz ``instance`` (which process it is;
    :func:`warnsvc.status.gather` checks it is a replica of this config's store) and what its
    /readyz says; or that nothing answers."""
    import aiohttp

    http = settings.service.http
    host = "127.0.0.1" if http.host in ("0.0.0.0", "::", "") else http.host
    base = f"http://{host}:{http.port}"
    url = f"{base}/readyz"
    timeout = aiohttp.ClientTimeout(total=3)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(f"{base}/healthz") as resp:
                health = await resp.json(content_type=None)
            async with session.get(url) as resp:
                body = await resp.json(content_type=None)
    except (aiohttp.ClientConnectionError, TimeoutError):
        return {"reachable": False, "url": url}
    except (aiohttp.ClientError, ValueError):  # something answers, but not as warnsvc does
        return {"reachable": True, "url": url, "instance": None}
    instance = health.get("instance") if isinstance(health, dict) else None
    readiness = body if isinstance(body, dict) else {}
    return {"reachable": True, "url": url, **readiness, "instance": instance}


def _events(args: argparse.Namespace) -> int:
    settings = _load(args)
    return asyncio.run(_show_events(settings, args))


async def _show_events(settings: Settings, args: argparse.Namespace) -> int:
    from warnsvc.model import EventType
    from warnsvc.status import render_events
    from warnsvc.store.db import Store

    store = await Store.open(settings.storage.url)
    try:
        hidden = () if args.all else (EventType.WEBHOOK_TEST.value,)  # partners' pings
        events = await store.recent_events(
            limit=args.limit, situation=args.situation, exclude_types=hidden
        )
    finally:
        await store.close()
    if args.json:
        for payload in events:
            print(json.dumps(payload, ensure_ascii=False))
    else:
        print(render_events(events))
    return EXIT_OK


def _reload(args: argparse.Namespace) -> int:
    import os
    import signal

    settings = load_config(args.config)  # a broken file is reported here, before signalling
    pid_file = settings.service.pid_file
    if pid_file is None or not pid_file.is_file():
        print(
            f"warnsvc: error: no pid file at {pid_file}; is `warnsvc run` running here?",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    try:
        pid = int(pid_file.read_text(encoding="ascii").strip())
        os.kill(pid, signal.SIGHUP)
    except (ValueError, ProcessLookupError, PermissionError) as exc:
        print(f"warnsvc: error: cannot signal the process in {pid_file}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(
        f"reload requested (SIGHUP sent to process {pid}); `warnsvc status` shows whether it took"
    )
    return EXIT_OK


def _publish(args: argparse.Namespace) -> int:
    settings = _load(args)
    return asyncio.run(_manual(settings, args, publishing=True))


def _retract(args: argparse.Namespace) -> int:
    settings = _load(args)
    return asyncio.run(_manual(settings, args, publishing=False))


async def _manual(settings: Settings, args: argparse.Namespace, *, publishing: bool) -> int:
    from datetime import UTC, datetime

    from warnsvc.manual import ManualEventError, publish, retract
    from warnsvc.service import build_components

    parts = await build_components(settings, with_sources=False)
    now = datetime.now(UTC)
    try:
        if publishing:
            event = await publish(
                parts, situation=args.situation, level=args.level, note=args.note, now=now
            )
        else:
            event = await retract(parts, event_id=args.event, note=args.note, now=now)
    except ManualEventError as exc:
        print(f"warnsvc: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        await parts.close()
    print(_event_line(event))
    print(
        "queued for every channel; the running service delivers it within seconds", file=sys.stderr
    )
    return EXIT_OK


_COMMANDS = {
    "init": _init,
    "run": _run,
    "check-config": _check_config,
    "parse": _parse,
    "poll": _poll,
    "feeds": _feeds,
    "webhooks": _webhooks,
    "notify": _notify,
    "demo": _demo,
    "status": _status,
    "events": _events,
    "reload": _reload,
    "publish": _publish,
    "retract": _retract,
}
