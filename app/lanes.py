"""Lanes: which worker child of `tidings server` consumes which queues.

A lane is a named set of queues with a concurrency and a pool, run as one supervised
`celery worker -Q <queues>` child (or `--workers N` of them). By default every handler gets a
lane of its own, so a slow, failing or bulk handler holds only its own slots: the issue that
made this module measured an unrelated handler waiting 12.5 s behind 16 slow messages when all
queues shared one prefork-2 worker.

Defaults, for a small (2-core) box: the `threads` pool with 2 threads per lane. One process per
lane (instead of prefork's 1 + N) keeps memory at one interpreter per handler, and handlers are
mostly I/O (database, broker, HTTP) where threads overlap well. A CPU-bound or untrusted handler
should get `pool = "prefork"`: only prefork enforces the hard `task_time_limit` (a hung thread
is not killed; its message comes back after the visibility timeout and the inbox absorbs the
second run). The relay has a lane of its own (`outbox`, threads x2).

`[server.lanes.<name>]` groups handlers (`handlers = ["A", "B"]`, or `["*"]` for every
handler no other lane names) with their own `concurrency` and `pool`. Another kind of child
(e.g. the consumers of a handler's partition queues) is one more `Lane` with its own queues
(and `options`): `lane_children(domain, [*plan_lanes(domain), *more])` supervises them all.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tidings.app.children import CELERY_APP, ChildSpec, celery_command
from tidings.domain.errors import ConfigurationError
from tidings.domain.naming import snake
from tidings.tasks.naming import handler_queues, relay_queue, specs

if TYPE_CHECKING:
    from tidings.domain.domain import Domain

OUTBOX_LANE = "outbox"
EVERY_OTHER = "*"


@dataclass(frozen=True)
class Lane:
    """One kind of worker child: its name, the queues it consumes (in consumption order), the
    handlers they belong to, and its pool and concurrency."""

    name: str
    queues: tuple[str, ...]
    handlers: tuple[str, ...]
    concurrency: int
    pool: str
    options: tuple[str, ...] = ()  # more `celery worker` options of this kind of child

    def worker_args(self, domain_name: str, *, index: int = 1, debug: bool = False) -> list[str]:
        """The `celery worker` arguments of this lane's `index`-th child."""
        return [
            "worker",
            "-Q",
            ",".join(self.queues),
            "--pool",
            self.pool,
            "-c",
            str(self.concurrency),
            "-l",
            "DEBUG" if debug else "INFO",
            "-n",
            f"{domain_name}.{self.name}.{index}@%h",
            *self.options,
        ]


def plan_lanes(domain: Domain, *, pool: str | None = None, concurrency: int | None = None) -> list[Lane]:
    """The domain's lanes: the relay's, the configured ones, then one per remaining handler.

    `pool` / `concurrency` (the server's `--pool` / `--concurrency`) replace the defaults of
    the lanes that do not set their own. An unknown or twice-named handler is a
    ConfigurationError naming the lane and the fix."""
    server = domain.settings.server
    default_pool, default_concurrency = pool or server.lane_pool, concurrency or server.lane_concurrency
    by_name = {spec.name: spec for spec in specs(domain)}
    claimed = _claimed(server.lanes, list(by_name))
    # The relay's queue also carries the delivery audit (beat, every few seconds): two threads,
    # so that a long audit round never holds a relay round up (relay rounds claim with
    # SKIP LOCKED / per-row compare-and-set, so two at once are safe).
    lanes = [Lane(OUTBOX_LANE, (relay_queue(domain),), (), 2, "threads")]
    for name, lane in server.lanes.items():
        members = [h for h in by_name if claimed.get(h) == name]
        if not members:
            continue  # a "*" lane with nothing left over
        # every interactive queue of the lane before any backfill queue in the -Q list
        queues = [handler_queues(domain, by_name[h]) for h in members]
        ordered = tuple(q[0] for q in queues) + tuple(b for q in queues for b in q[1:])
        concurrency_, pool_ = lane.concurrency or default_concurrency, lane.pool or default_pool
        lanes.append(Lane(name, ordered, tuple(members), concurrency_, pool_))
    for handler, spec in by_name.items():
        if handler not in claimed:
            lanes.append(
                Lane(
                    snake(handler),
                    handler_queues(domain, spec),
                    (handler,),
                    default_concurrency,
                    default_pool,
                )
            )
    return lanes


def _claimed(configured: Mapping[str, object], known: list[str]) -> dict[str, str]:
    """handler -> the lane naming it (a `"*"` lane takes every handler no other lane names)."""
    claimed: dict[str, str] = {}
    problems: list[str] = []
    wildcard: str | None = None
    for lane_name, lane in configured.items():
        handlers: tuple[str, ...] = getattr(lane, "handlers", ())
        if not handlers:
            problems.append(
                f'[server.lanes.{lane_name}] names no handlers: add handlers = ["<Handler>", ...]'
            )
        for handler in handlers:
            if handler == EVERY_OTHER:
                if wildcard is not None:
                    problems.append(
                        f'[server.lanes.{lane_name}]: only one lane may take "*" (also {wildcard})'
                    )
                wildcard = lane_name
            elif handler not in known:
                close = difflib.get_close_matches(handler, known, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"known handlers: {sorted(known)}"
                problems.append(f"[server.lanes.{lane_name}] handlers: unknown handler {handler!r}; {hint}")
            elif handler in claimed:
                problems.append(
                    f"[server.lanes.{lane_name}] handlers: {handler!r} is already in lane "
                    f"{claimed[handler]!r}; a handler's queue has one lane"
                )
            else:
                claimed[handler] = lane_name
    if problems:
        raise ConfigurationError("lanes: " + "; ".join(problems))
    if wildcard is not None:
        claimed.update({h: wildcard for h in known if h not in claimed})
    return claimed


def lane_children(
    domain: Domain,
    lanes: Sequence[Lane],
    *,
    workers: int = 1,
    debug: bool = False,
    env: Mapping[str, str] | None = None,
) -> list[ChildSpec]:
    """One supervised child per lane (`workers` per handler lane; the relay lane has one)."""
    children = []
    for lane in lanes:
        count = 1 if lane.name == OUTBOX_LANE else workers
        for index in range(1, count + 1):
            name = f"lane-{lane.name}" + (f"-{index}" if count > 1 else "")
            argv = celery_command(*lane.worker_args(domain.name, index=index, debug=debug))
            children.append(ChildSpec(name, argv, lane.queues, dict(env or {})))
    return children


def lane_lines(lanes: Sequence[Lane]) -> list[str]:
    """`lane: queues (pool xN)`, one per lane, for `tidings subscriptions` and the server."""
    return [f"{lane.name}: {', '.join(lane.queues)} ({lane.pool} x{lane.concurrency})" for lane in lanes]


def celery_commands(
    domain: Domain, lanes: Sequence[Lane], *, app: str = "tidings.app.celery_app"
) -> list[str]:
    """The plain `celery worker` command of each lane (and beat), as one would run them by hand."""
    lines = [f"celery -A {app} " + " ".join(lane.worker_args(domain.name)) for lane in lanes]
    lines.append(f"celery -A {app} beat -l INFO")
    return lines


def celery_multi(domain: Domain, lanes: Sequence[Lane], *, app: str = CELERY_APP) -> str:
    """One `celery multi start` line starting every lane's worker."""
    names = " ".join(lane.name for lane in lanes)
    options = " ".join(
        f"-Q:{n} {','.join(lane.queues)} -P:{n} {lane.pool} -c:{n} {lane.concurrency}"
        for lane in lanes
        for n in [lane.name]
    )
    return f"celery multi start {names} -A {app} -l INFO {options}"
