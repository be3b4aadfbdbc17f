"""The dispatcher: deliver due outbox rows through their channels.

:class:`Dispatcher` claims due outbox rows per channel (every channel in its own loop) and
records each outcome: delivered, rescheduled by the :class:`~warnsvc.outbox.RetryPolicy`,
dead-lettered, or released untouched when the channel deferred it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from warnsvc import metrics
from warnsvc.channels.base import Channel, Outcome
from warnsvc.errors import StoreError
from warnsvc.outbox import Delivery, RetryPolicy
from warnsvc.store.outbox import Outbox

log = logging.getLogger(__name__)


class Dispatcher:
    """Deliver due outbox rows through their channels until stopped.

    Every channel has its own loop, so a slow channel never holds up another. A channel's
    :class:`~warnsvc.channels.base.ChannelOptions` (read at every claim) set its rows per
    claim, claimed batches in flight at once, lease and retry policy; what they leave unset
    is the dispatcher's own. A channel that sends with its own concurrency does so inside
    ``deliver``. On :meth:`stop` no more rows are claimed; after ``grace`` seconds every
    channel's ``abort()`` is called so it gives its rows back, and rows still claimed when the
    run is cancelled are released, so a shutdown leaves no row waiting for its lease to
    expire.
    """

    def __init__(
        self,
        outbox: Outbox,
        channels: Mapping[str, Channel],
        policy: RetryPolicy,
        *,
        batch: int = 100,
        idle: float = 5.0,
        grace: float = 5.0,
    ) -> None:
        self.outbox = outbox
        self.channels = channels
        self.policy = policy
        self.batch = batch
        self.idle = idle
        self.grace = grace
        self._wakes = {name: asyncio.Event() for name in channels}
        self._stopping = False
        self._abort_handle: asyncio.TimerHandle | None = None
        self._claimed: dict[int, Delivery] = {}

    def wake(self) -> None:
        """Look for work now (called after events are written)."""
        for event in self._wakes.values():
            event.set()

    async def run(self) -> None:
        try:
            await asyncio.gather(
                *(self._pump(name, ch, forever=True) for name, ch in self.channels.items())
            )
        finally:
            if self._abort_handle is not None:
                self._abort_handle.cancel()

    def stop(self) -> None:
        """Claim no more rows; after ``grace`` seconds abort the sends still in flight."""
        self._stopping = True
        self.wake()
        if self._abort_handle is None:
            with contextlib.suppress(RuntimeError):  # no running loop: nothing is in flight
                loop = asyncio.get_running_loop()
                self._abort_handle = loop.call_later(self.grace, self._abort)

    def _abort(self) -> None:
        for channel in self.channels.values():
            channel.abort()

    async def drain(self) -> int:
        """Deliver every row that is due now, every channel at once. Returns how many were tried.

        Rows that fail and fall due again while it runs are left for the next run.
        """
        due_by = _now()
        counts = await asyncio.gather(
            *(self._pump(n, ch, forever=False, due_by=due_by) for n, ch in self.channels.items())
        )
        return sum(counts)

    async def _pump(
        self, name: str, channel: Channel, *, forever: bool, due_by: datetime | None = None
    ) -> int:
        """Claim and deliver batches of one channel; until stopped, or until none is due."""
        options = channel.options
        size = options.batch_size or self.batch
        lease = options.lease
        slots = asyncio.Semaphore(options.parallel_batches)
        wake = self._wakes.setdefault(name, asyncio.Event())
        running: set[asyncio.Task[None]] = set()
        tried = 0
        try:
            while not self._stopping:
                await slots.acquire()
                if self._stopping:  # stopped while waiting for a slot
                    slots.release()
                    break
                wake.clear()  # a wake (or stop) from here on is seen by the wait below
                claimed = await self._claim(name, size, lease, due_by)
                if claimed:
                    tried += len(claimed)
                    task = asyncio.create_task(self._batch(channel, claimed))
                    running.add(task)
                    task.add_done_callback(running.discard)
                    task.add_done_callback(lambda _: slots.release())
                    continue
                slots.release()
                if not forever:
                    if not running:
                        break
                    await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=self.idle)
        except asyncio.CancelledError:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            raise
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        return tried

    async def _claim(
        self, name: str, size: int, lease: float | None, due_by: datetime | None
    ) -> list[Delivery]:
        try:
            return await self.outbox.claim(name, now=_now(), limit=size, lease=lease, due_by=due_by)
        except StoreError as exc:
            log.error(
                "dispatcher cannot reach the store: %s",
                exc,
                extra={"action": "dispatch_failed", "channel": name},
            )
            return []

    async def _batch(self, channel: Channel, claimed: Sequence[Delivery]) -> None:
        self._claimed.update((d.id, d) for d in claimed)
        try:
            await self._deliver(channel, claimed)
        except asyncio.CancelledError:
            # Shutdown overran its deadline: give back what was not recorded (rows already
            # recorded are no longer in flight, so release leaves them alone).
            with contextlib.suppress(StoreError):
                await self.outbox.release([d.id for d in claimed], now=_now())
            raise
        except StoreError as exc:
            log.error(
                "cannot record deliveries: %s; they will be retried when their lease ends",
                exc,
                extra={"action": "dispatch_failed", "channel": channel.name},
            )
        finally:
            for delivery in claimed:
                self._claimed.pop(delivery.id, None)

    async def _deliver(self, channel: Channel, claimed: Sequence[Delivery]) -> None:
        try:
            outcomes = await channel.deliver(claimed)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a channel bug must not lose rows: they are retried
            log.exception(
                "channel %s raised",
                channel.name,
                extra={"action": "channel_crashed", "channel": channel.name},
            )
            outcomes = [Outcome(delivery_id=d.id, ok=False, error=repr(exc)) for d in claimed]
        by_id = {d.id: d for d in claimed}
        now = _now()
        delivered: dict[int | None, list[int]] = {}
        for outcome in outcomes:
            if outcome.ok:
                delivered.setdefault(outcome.status, []).append(outcome.delivery_id)
        for status, ids in delivered.items():
            await self.outbox.complete(ids, now=now, status=status)
            _count_delivered([by_id[i] for i in ids], now)
        answered = {o.delivery_id for o in outcomes}
        released = [o.delivery_id for o in outcomes if o.deferred and not o.ok]
        released += [d.id for d in claimed if d.id not in answered]
        if released:
            await self.outbox.release(released, now=now)
        policy = channel.options.retry_policy or self.policy
        for outcome in outcomes:
            if not outcome.ok and not outcome.deferred:
                await self._failed(by_id[outcome.delivery_id], outcome, policy, now=now)

    async def _failed(
        self, delivery: Delivery, outcome: Outcome, policy: RetryPolicy, *, now: datetime
    ) -> None:
        attempts = delivery.attempts + 1
        decision = (
            policy.decide(policy.max_attempts, now=now)
            if outcome.permanent
            else policy.decide(attempts, now=now, retry_after=outcome.retry_after)
        )
        await self.outbox.fail(
            delivery,
            error=outcome.error or "failed",
            decision=decision,
            now=now,
            status=outcome.status,
        )
        metrics.DELIVERIES.labels(
            channel=delivery.channel, result="dead" if decision.dead else "retry"
        ).inc()
        log.warning(
            "delivery %d via %s failed (attempt %d): %s; %s",
            delivery.id,
            delivery.channel,
            attempts,
            outcome.error,
            "dead-lettered" if decision.dead else f"retry at {decision.retry_at:%H:%M:%S}",
            extra={
                "action": "delivery_failed",
                "channel": delivery.channel,
                "delivery": delivery.id,
                "event": delivery.event_id,
                "attempt": attempts,
            },
        )


def _count_delivered(deliveries: Sequence[Delivery], now: datetime) -> None:
    """Count delivered rows and observe their latency (the event's age, read once per event)."""
    if not deliveries:
        return
    channel = deliveries[0].channel
    metrics.DELIVERIES.labels(channel=channel, result="delivered").inc(len(deliveries))
    histogram = metrics.DELIVERY_LATENCY.labels(channel=channel)
    latencies: dict[str, float | None] = {}
    for delivery in deliveries:
        if delivery.event_id not in latencies:
            latencies[delivery.event_id] = _latency(delivery.payload, now)
        latency = latencies[delivery.event_id]
        if latency is not None:
            histogram.observe(latency)


def _latency(payload: Mapping[str, object], now: datetime) -> float | None:
    detected = payload.get("detected_at")
    if isinstance(detected, str):
        with contextlib.suppress(ValueError):
            since = datetime.fromisoformat(detected.replace("Z", "+00:00"))
            return max(0.0, (now - since).total_seconds())
    return None


def _now() -> datetime:
    return datetime.now(UTC)
