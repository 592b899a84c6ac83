"""Repositories: `add`, `get`, `find_by`, `filter`, `all`, `remove` for one model."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from tidings.domain.database import Database
from tidings.domain.elements import BaseAggregate, _Identified
from tidings.domain.errors import ObjectNotFoundError, TooManyObjectsError
from tidings.domain.tables import column_kind, table_name

if TYPE_CHECKING:
    from tidings.domain.bus import MessageBus
    from tidings.domain.uow import UnitOfWork

T = TypeVar("T", bound=_Identified)  # an aggregate or a projection
R = TypeVar("R")


class Repository(Generic[T]):
    """Persists one aggregate (versioned, with its events) or projection (upserted)."""

    def __init__(self, bus: MessageBus, model: type[T], database: Database) -> None:
        self.bus = bus
        self.model = model
        self.database = database
        self.table = table_name(model)
        self.versioned = model.element_kind == "aggregate"
        self._json_fields = _json_fields(model)

    def _run(self, work: Callable[[UnitOfWork], R]) -> R:
        uow = self.bus.active_uow()
        if uow is not None:
            return work(uow)
        with self.bus.unit_of_work() as own:
            return work(own)

    def _row(self, obj: Any) -> dict[str, Any]:
        native = obj.model_dump()
        as_json = obj.model_dump(mode="json")
        return {k: as_json[k] if k in self._json_fields else native[k] for k in native}

    def _load(self, row: tuple[dict[str, Any], int]) -> T:
        data, version = row
        obj = self.model.model_validate(data)
        if self.versioned:
            cast(BaseAggregate, obj)._version = version  # versioned: the model is an aggregate
        return obj

    def add(self, obj: T) -> T:
        """Save the object; an aggregate's raised events commit with it."""

        def work(uow: UnitOfWork) -> T:
            session = uow.session_for(self.database)
            aggregate = cast(BaseAggregate, obj)  # read and written only when versioned
            version = session.save(
                self.table,
                obj.identity,
                self._row(obj),
                aggregate.version if self.versioned else -1,
                self.versioned,
            )
            if self.versioned:
                aggregate._version = version
                events, aggregate._events = list(aggregate._events), []
                uow.record(self._messages(events, obj))
            return obj

        return self._run(work)

    def _messages(self, events: list[Any], obj: Any) -> list[Any]:
        """The envelopes to commit; an event that got its envelope at `raise_()` keeps that
        envelope's id, time and causation (the sequence is the version just saved)."""
        messages, ids = [], set()
        envelopes = self.bus.envelopes
        for event in events:
            raised = event._message if event._raised else None
            own = raised is not None and raised.stream == envelopes.stream_of(event, obj)
            if raised is not None and own and raised.id not in ids:
                # the envelope built at raise_(), numbered now: the event is frozen, so its
                # data and checksum stand (building it again was a tenth of a commit's Python)
                message = raised.model_copy(update={"sequence": obj.version})
                event._message = message
            else:
                message = envelopes.event(event, obj)
            event._raised = False
            ids.add(message.id)
            messages.append(message)
        return messages

    def get(self, identity: Any) -> T:
        """The object with this identity, or ObjectNotFoundError."""
        row = self._run(lambda uow: uow.session_for(self.database).get(self.table, str(identity)))
        if row is None:
            raise ObjectNotFoundError(f"{self.model.__name__} with id {identity!r} does not exist")
        return self._load(row)

    def filter(self, **filters: Any) -> list[T]:
        rows = self._run(lambda uow: uow.session_for(self.database).find(self.table, filters))
        return [self._load(r) for r in rows]

    def all(self) -> list[T]:
        return self.filter()

    def find_by(self, **filters: Any) -> T:
        """Exactly one match, else ObjectNotFoundError or TooManyObjectsError."""
        found = self.filter(**filters)
        if not found:
            raise ObjectNotFoundError(f"no {self.model.__name__} matches {filters}")
        if len(found) > 1:
            raise TooManyObjectsError(f"{len(found)} {self.model.__name__} objects match {filters}")
        return found[0]

    def remove(self, obj: T) -> None:
        self._run(lambda uow: uow.session_for(self.database).delete(self.table, obj.identity))


@lru_cache(maxsize=1024)
def _json_fields(model: type[_Identified]) -> frozenset[str]:
    """The fields stored as JSON (a model's fields are fixed once its class is built; a
    repository is made per call of `repository_for`, so this is worked out once per model)."""
    return frozenset(n for n in model.model_fields if column_kind(model, n) == "json")
