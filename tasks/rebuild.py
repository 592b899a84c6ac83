"""Rebuilding a projection: truncate it, reset its projector's cursor, replay from position 0."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tidings.domain.errors import IncorrectUsageError
from tidings.domain.tables import table_name
from tidings.tasks.naming import task_name
from tidings.tasks.poller import run_batch
from tidings.tasks.positions import position_store

if TYPE_CHECKING:
    from tidings.domain.domain import Domain
    from tidings.domain.elements import ElementClass

Progress = Callable[[int, int | None], None]  # (cursor, last position or None)


@dataclass(frozen=True)
class Rebuilt:
    projection: str
    handled: int
    failed: int
    cursor: int


def projection_of(domain: Domain, projector: ElementClass) -> ElementClass:
    """The projection a projector maintains (its `projector_for`)."""
    target = projector.meta_.get("projector_for")
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    try:
        return domain.registry["projection"][name]
    except KeyError:
        raise IncorrectUsageError(
            f"{projector.__name__}: projector_for {name!r} is not a registered projection"
        ) from None


def truncate(domain: Domain, model: type) -> None:
    """Delete every row of a model's table."""
    domain.database_for(model).truncate(table_name(model))


def last_position(domain: Domain, categories: list[str]) -> int | None:
    """The highest global position in these categories (None when the store cannot say)."""
    return domain.storage.event_store.last_position(categories)


def rebuild_projection(
    domain: Domain, projector: ElementClass, progress: Progress | None = None, wait: float = 30.0
) -> Rebuilt:
    """Truncate the projection and replay every event from position 0 through the projector.

    Holds the subscription's ownership throughout, so no poller runs meanwhile (waits up to
    `wait` seconds for a poller to finish its batch). A failing event is retried like on the
    poller, then recorded as a failed position; the replay goes on.
    """
    projection = projection_of(domain, projector)
    store, name = position_store(domain), task_name(domain, projector)
    categories = domain.names.handler_categories(projector)
    deadline = time.monotonic() + wait
    while True:
        with store.owned(name) as lease:
            if lease is not None:
                truncate(domain, projection)
                store.forget(name)
                store.reset(name, 0)
                return _replay(
                    domain, projector, store, lease, projection, last_position(domain, categories), progress
                )
        if time.monotonic() > deadline:
            raise IncorrectUsageError(
                f"{projector.__name__} is busy: its poller did not release "
                f"the subscription within {wait:.0f}s"
            )
        time.sleep(0.1)  # a poller holds it for one batch at most


def _replay(
    domain: Domain,
    projector: ElementClass,
    store: Any,
    lease: Any,
    projection: type,
    last: int | None,
    progress: Progress | None,
) -> Rebuilt:
    handled = failed = cursor = 0
    while True:
        batch = run_batch(domain, projector, store, lease)
        handled, failed, cursor = handled + batch.handled, failed + batch.failed, batch.cursor
        if progress:
            progress(cursor, last)
        if batch.retry_in is not None:
            time.sleep(batch.retry_in)  # the retry delay, on the command line's own time
        elif batch.read == 0:
            return Rebuilt(projection.__name__, handled, failed, cursor)
