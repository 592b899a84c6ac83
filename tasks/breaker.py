"""A circuit breaker per handler: stop consuming a queue while its dependency is down.

States (the reference's): CLOSED -> after `circuit_breaker_threshold` failures in a row ->
OPEN for `circuit_breaker_reset_seconds` -> HALF_OPEN: one probe message runs; its success
closes the breaker, its failure opens it again for another cool-down. 0 (the default) is no
breaker.

How it acts on Celery:
- **Counting** happens in the task body (`with_breaker`): an ordinary or transient failure
  counts, a final one (business rule, bad data, `throws`) does not: it says nothing about a
  dependency. A success resets the count.
- **Holding, not dead-lettering.** A message that fails once the breaker is open (the one
  that opened it, the probe that re-opened it), and any message a worker already held when it
  opened, is sent back to its queue as it came (its `retries` unchanged) instead of spending
  a retry: nothing reaches the DLQ because a dependency is down.
- **Stopping the consumer.** A worker bootstep (`BreakerStep`) reads the shared state every
  `POLL_SECONDS` and cancels the consumer of an open handler's queues (Celery's
  `cancel_task_queue`, what the `cancel_consumer` control command calls, done by the worker
  itself so it works on every transport, also those without broadcast), and consumes them
  again when the cool-down is over (half-open) or the breaker closed. Messages wait in the
  queue meanwhile.
- **Shared state.** In Redis (`[server] breaker_store`, by default the broker when it is
  Redis): every worker of every lane sees the same breaker, the probe is claimed atomically
  (one per cool-down, re-claimable after `PROBE_SECONDS` if its worker died). Without Redis
  each process keeps its own (a lane's threads share it; prefork children do not).

`breaker_states(domain)` is what `tidings subscriptions` and `tidings status` show.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from celery import Task, bootsteps
from celery.exceptions import Ignore, Reject, Retry

if TYPE_CHECKING:
    from celery import Celery

    from tidings.domain.domain import Domain

log = logging.getLogger("tidings.breaker")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
POLL_SECONDS = 0.5  # how often a worker looks at its handlers' breakers
PROBE_SECONDS = 30.0  # a claimed probe that never reported is claimed again after this
CACHE_SECONDS = 0.5  # a worker trusts a closed breaker it saw this long ago (no round trip)


class BreakerStore(Protocol):
    """Where breaker state lives. Times are Unix seconds."""

    def state(self, handler: str, now: float) -> tuple[str, int]:
        """(state, consecutive failures), OPEN past its cool-down reads HALF_OPEN."""
        ...

    def admit(self, handler: str, reset: float, now: float) -> str:
        """CLOSED: run; HALF_OPEN: run as the probe (claimed); OPEN: hold the message."""
        ...

    def failed(self, handler: str, threshold: int, now: float) -> tuple[str, str]:
        """Count a failure: (state before, state after)."""
        ...

    def succeeded(self, handler: str) -> str:
        """Reset the count and close: the state before."""
        ...


# ---- Redis ---------------------------------------------------------------------------------------
_ADMIT = """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if state == 'closed' then return 'closed' end
local now = tonumber(ARGV[1])
local opened = tonumber(redis.call('HGET', KEYS[1], 'opened_at') or '0')
local probe = tonumber(redis.call('HGET', KEYS[1], 'probe_until') or '0')
if now < opened + tonumber(ARGV[2]) then return 'open' end
if probe > now then return 'open' end
redis.call('HSET', KEYS[1], 'state', 'half_open', 'probe_until', now + tonumber(ARGV[3]))
return 'half_open'
"""
_FAILED = """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local now = ARGV[1]
if state == 'half_open' or (state == 'closed' and failures >= tonumber(ARGV[2])) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', now, 'probe_until', 0)
  return {state, 'open'}
end
return {state, state}
"""
_SUCCEEDED = """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0, 'probe_until', 0)
return state
"""


class RedisBreakerStore:
    """One hash per handler, `<prefix>tidings:<domain>:breaker:<Handler>`; transitions are Lua
    scripts, so concurrent workers never both take the probe."""

    def __init__(
        self, url: str, domain_name: str, reset_of: Callable[[str], float], keyprefix: str = ""
    ) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.prefix = f"{keyprefix}tidings:{domain_name}:breaker:"
        self.reset_of = reset_of
        self._admit = self.client.register_script(_ADMIT)
        self._failed = self.client.register_script(_FAILED)
        self._succeeded = self.client.register_script(_SUCCEEDED)

    def _key(self, handler: str) -> str:
        return self.prefix + handler

    def state(self, handler: str, now: float) -> tuple[str, int]:
        raw = self.client.hmget(self._key(handler), ["state", "failures", "opened_at"])
        state = _text(raw[0] or CLOSED)
        failures = int(raw[1] or 0)
        if state == OPEN and now >= float(raw[2] or 0) + self.reset_of(handler):
            state = HALF_OPEN
        return state, failures

    def admit(self, handler: str, reset: float, now: float) -> str:
        return _text(self._admit(keys=[self._key(handler)], args=[now, reset, PROBE_SECONDS]))

    def failed(self, handler: str, threshold: int, now: float) -> tuple[str, str]:
        before, after = self._failed(keys=[self._key(handler)], args=[now, threshold])
        return _text(before), _text(after)

    def succeeded(self, handler: str) -> str:
        return _text(self._succeeded(keys=[self._key(handler)]))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# ---- one process ---------------------------------------------------------------------------------
@dataclass
class _Entry:
    state: str = CLOSED
    failures: int = 0
    opened_at: float = 0.0
    probe_until: float = 0.0


class MemoryBreakerStore:
    """The same transitions in this process's memory (no Redis: each process its own)."""

    def __init__(self, reset_of: Callable[[str], float]) -> None:
        self.entries: dict[str, _Entry] = {}
        self.reset_of = reset_of
        self.lock = threading.Lock()

    def state(self, handler: str, now: float) -> tuple[str, int]:
        e = self.entries.get(handler, _Entry())
        if e.state == OPEN and now >= e.opened_at + self.reset_of(handler):
            return HALF_OPEN, e.failures
        return e.state, e.failures

    def admit(self, handler: str, reset: float, now: float) -> str:
        with self.lock:
            e = self.entries.setdefault(handler, _Entry())
            if e.state == CLOSED:
                return CLOSED
            if now < e.opened_at + reset or e.probe_until > now:
                return OPEN
            e.state, e.probe_until = HALF_OPEN, now + PROBE_SECONDS
            return HALF_OPEN

    def failed(self, handler: str, threshold: int, now: float) -> tuple[str, str]:
        with self.lock:
            e = self.entries.setdefault(handler, _Entry())
            before = e.state
            e.failures += 1
            if before == HALF_OPEN or (before == CLOSED and e.failures >= threshold):
                e.state, e.opened_at, e.probe_until = OPEN, now, 0.0
            return before, e.state

    def succeeded(self, handler: str) -> str:
        with self.lock:
            e = self.entries.setdefault(handler, _Entry())
            before = e.state
            e.state, e.failures, e.probe_until = CLOSED, 0, 0.0
            return before


# ---- the domain's breakers -----------------------------------------------------------------------
class Breakers:
    """The breakers of one domain's handlers (those with a threshold), over one store."""

    def __init__(self, store: BreakerStore, thresholds: dict[str, tuple[int, float]]) -> None:
        self.store = store
        self.thresholds = thresholds  # handler -> (threshold, reset seconds)
        self._seen_closed: dict[str, float] = {}  # handler -> when this process last saw it closed
        self._failures_seen: set[str] = set()

    def guards(self, handler: str) -> bool:
        return handler in self.thresholds

    def admit(self, handler: str) -> str:
        now = time.time()
        if now - self._seen_closed.get(handler, 0.0) < CACHE_SECONDS:
            return CLOSED
        verdict = self.store.admit(handler, self.thresholds[handler][1], now)
        if verdict == CLOSED:
            self._seen_closed[handler] = now
        elif verdict == HALF_OPEN:
            log.warning("circuit breaker of %s half-open: one probe message runs", handler)
        return verdict

    def failed(self, handler: str) -> str:
        self._failures_seen.add(handler)
        self._seen_closed.pop(handler, None)
        before, after = self.store.failed(handler, self.thresholds[handler][0], time.time())
        if after == OPEN and before != OPEN:
            what = "probe failed, open again" if before == HALF_OPEN else "opened"
            log.error(
                "circuit breaker of %s %s: its queue is not consumed for %.0f s",
                handler,
                what,
                self.thresholds[handler][1],
            )
        return after

    def succeeded(self, handler: str, probe: bool) -> None:
        if not probe and handler not in self._failures_seen:
            return  # nothing to reset that this process knows of: no round trip
        self._failures_seen.discard(handler)
        if self.store.succeeded(handler) != CLOSED:
            log.warning("circuit breaker of %s closed: its queue is consumed again", handler)

    def states(self) -> dict[str, str]:
        now = time.time()
        return {h: self.store.state(h, now)[0] for h in self.thresholds}


def store_url(domain: Domain) -> str | None:
    """`[server] breaker_store`, else the default broker's URL when it is Redis."""
    server = domain.settings.server
    if server.breaker_store:
        return server.breaker_store
    broker = domain.settings.brokers["default"]
    url = getattr(broker.options, "url", None) or ""
    return url if url.startswith(("redis://", "rediss://")) else None


def keyprefix_of(celery: Any) -> str:
    """The broker's `global_keyprefix` (the breakers' keys share it on a shared Redis)."""
    options = getattr(getattr(celery, "conf", None), "broker_transport_options", None) or {}
    return str(options.get("global_keyprefix") or "")


def build_breakers(domain: Domain, keyprefix: str = "") -> Breakers:
    """The domain's breakers: one per handler with `circuit_breaker_threshold` > 0."""
    from tidings.tasks.naming import specs

    thresholds = {
        spec.name: (
            int(spec.subscription.circuit_breaker_threshold),
            float(spec.subscription.circuit_breaker_reset_seconds),
        )
        for spec in specs(domain)
        if spec.subscription.circuit_breaker_threshold
    }

    def reset_of(handler: str) -> float:
        return thresholds.get(handler, (0, 60.0))[1]

    url = store_url(domain)
    store: BreakerStore = (
        RedisBreakerStore(url, domain.name, reset_of, keyprefix) if url else MemoryBreakerStore(reset_of)
    )
    return Breakers(store, thresholds)


def breaker_states(domain: Domain) -> dict[str, str]:
    """Handler name -> "closed" / "open" / "half_open", for every handler with a breaker
    (read from the shared store; without one, this process's own view)."""
    runtime = getattr(domain.engine, "celery", None)  # the domain's Celery app, once built
    breakers = build_breakers(domain, keyprefix_of(runtime))
    if not breakers.thresholds:
        return {}
    try:
        return breakers.states()
    except Exception as exc:  # noqa: BLE001 - a status page must not fail with its store
        log.warning("circuit breaker states unavailable: %s", exc)
        return {h: "unknown" for h in breakers.thresholds}


# ---- in the task ---------------------------------------------------------------------------------
def hold(task: Task, reason: str) -> None:
    """Send the running message back to its queue as it came (retries unchanged) and
    acknowledge this delivery: it waits for the breaker instead of spending a retry."""
    request = task.request
    signature = task.signature_from_request(request, retries=request.retries, headers=request.headers or {})
    log.info("%s: message held (%s): back to its queue", task.name, reason)
    try:
        signature.apply_async()
    except Exception as exc:  # noqa: BLE001 - the broker itself is down: give it back
        raise Reject(exc, requeue=True) from exc
    raise Retry(f"held: {reason}", sig=signature)


def with_breaker(
    body: Callable[..., Any], breakers: Breakers, handler: str, final: tuple[type[BaseException], ...]
) -> Callable[..., Any]:
    """Wrap a bound task body with the handler's breaker (see the module docstring)."""

    @functools.wraps(body)
    def run(task: Task, *args: Any, **kwargs: Any) -> Any:
        if task.request.is_eager or task.request.called_directly:
            return body(task, *args, **kwargs)
        verdict = breakers.admit(handler)
        if verdict == OPEN:
            hold(task, "circuit breaker open")
        try:
            result = body(task, *args, **kwargs)
        except Retry as retry:
            # a transient fault re-sent by with_transient_retry (not a hold of ours): a failure
            if not str(retry.message or "").startswith("held:") and breakers.failed(handler) == OPEN:
                log.info("%s: transient retry left queued while the breaker is open", task.name)
            raise
        except (Ignore, Reject):
            raise
        except final:
            raise  # the message's own fault, not its dependency's: not counted
        except Exception as exc:
            if breakers.failed(handler) == OPEN:
                hold(task, f"circuit breaker open after {type(exc).__name__}: {exc}")
            raise
        breakers.succeeded(handler, probe=verdict == HALF_OPEN)
        return result

    return run


# ---- in the worker -------------------------------------------------------------------------------
class BreakerStep(bootsteps.StartStopStep):
    """A consumer bootstep: every POLL_SECONDS, stop consuming the queues of handlers whose
    breaker is open, and consume them again once it is half-open or closed."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.timer_ref: Any = None
        self.cancelled: set[str] = set()

    def start(self, parent: Any) -> None:
        app = parent.app
        watch = getattr(app, "tidings_breaker_watch", None)
        if not watch:
            return
        breakers, queues_of = watch
        consumed = {q.name for q in parent.task_consumer.queues} if parent.task_consumer else set()
        mine = {h: [q for q in qs if q in consumed] for h, qs in queues_of.items()}
        mine = {h: qs for h, qs in mine.items() if qs}
        if not mine:
            return

        def poll() -> None:
            try:
                states = {h: breakers.store.state(h, time.time())[0] for h in mine}
            except Exception as exc:  # noqa: BLE001 - the store is down: keep consuming as is
                log.warning("circuit breaker store unavailable: %s", exc)
                return
            for handler, state in states.items():
                for queue in mine[handler]:
                    if state == OPEN and queue not in self.cancelled:
                        parent.cancel_task_queue(queue)
                        self.cancelled.add(queue)
                        log.warning("circuit breaker of %s open: stopped consuming %s", handler, queue)
                    elif state != OPEN and queue in self.cancelled:
                        parent.add_task_queue(queue)
                        self.cancelled.discard(queue)
                        log.warning("circuit breaker of %s %s: consuming %s again", handler, state, queue)

        self.timer_ref = parent.timer.call_repeatedly(POLL_SECONDS, poll)

    def stop(self, parent: Any) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()
            self.timer_ref = None

    shutdown = stop


def install(celery: Celery, domain: Domain, breakers: Breakers) -> None:
    """Give the app's workers the bootstep that acts on the breakers of `domain`'s handlers."""
    from tidings.tasks.naming import handler_queues, specs

    if not breakers.thresholds:
        return
    queues_of = {
        spec.name: list(handler_queues(domain, spec))
        for spec in specs(domain)
        if spec.name in breakers.thresholds
    }
    celery.tidings_breaker_watch = (breakers, queues_of)
    celery.steps["consumer"].add(BreakerStep)
