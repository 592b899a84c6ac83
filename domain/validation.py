"""Registry checks run by `domain.init()`: every problem is collected, none is fatal alone."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from tidings.domain.errors import ConfigurationError
from tidings.domain.ordering import check_sequential_by
from tidings.domain.registry import handler_targets, query_targets
from tidings.domain.subscriptions import SettingsError, resolve

if TYPE_CHECKING:
    from tidings.domain.handlers import ElementClass
    from tidings.domain.naming import Names
    from tidings.domain.settings import ServerSettings, Settings


def check_registry(domain: Names, settings: Settings | None) -> list[str]:
    """Every problem of the registry; with `settings` (None when the configuration itself is
    invalid) also the handlers' subscriptions and the subscribers' brokers."""
    problems: list[str] = []
    if settings is not None:
        problems += _check_subscriptions(domain, settings.server)
    for kind in ("event", "command", "event_handler", "command_handler", "query_handler"):
        for cls in domain.registry[kind].values():
            if kind == "event_handler" and cls.meta_.get("event") is not None:
                problems += _check_subscribed_event(domain, cls)
            else:
                problems += _check_part_of(domain, cls, kind)
    problems += _check_handler_targets(domain)
    problems += _check_command_handlers(domain)
    problems += _check_projectors(domain)
    problems += _check_categories(domain)
    problems += _check_sequential(domain, settings.server if settings is not None else None)
    if settings is not None:
        problems += _check_external_brokers(settings)
    for sub in domain.registry["subscriber"].values():
        if not sub.meta_.get("stream"):
            problems.append(f"subscriber {sub.__name__}: 'stream' is required")
        broker = sub.meta_.get("broker") or "default"
        if settings is not None and broker not in settings.brokers:
            problems.append(
                f"subscriber {sub.__name__}: broker {broker!r} is not configured "
                f"(add [brokers.{broker}]; configured: {sorted(settings.brokers)})"
            )
    return problems


def _check_external_brokers(settings: Settings) -> list[str]:
    problems = []
    for name in settings.outbox.external_brokers:
        if name not in settings.brokers:
            problems.append(
                f"outbox.external_brokers: broker {name!r} is not configured "
                f"(add [brokers.{name}]; configured: {sorted(settings.brokers)})"
            )
        elif len(name) > 27:  # its outbox rows are keyed `<message id>@<broker>`, 64 characters
            problems.append(f"outbox.external_brokers: broker name {name!r} is longer than 27 characters")
    return problems


def _check_part_of(domain: Names, cls: ElementClass, kind: str) -> list[str]:
    if not cls.meta_.get("part_of"):
        return [f"{kind.replace('_', ' ')} {cls.__name__}: 'part_of' is required"]
    try:
        domain.part_of(cls)
    except ConfigurationError:
        return [
            f"{kind.replace('_', ' ')} {cls.__name__}: part_of "
            f"{_name(cls.meta_['part_of'])!r} is not a registered aggregate"
        ]
    return []


def _check_subscribed_event(domain: Names, cls: ElementClass) -> list[str]:
    """`@domain.subscriber(event=X)`: X is a registered event (by class or name)."""
    target = cls.meta_["event"]
    if domain.registry["event"].get(_name(target)) is None or (
        not isinstance(target, str) and domain.registry["event"][_name(target)] is not target
    ):
        return [
            f"subscriber {cls.__name__}: event {_name(target)!r} is not a registered event "
            f"(register it with @domain.event, or subscribe to an external stream with stream=)"
        ]
    return []


def _name(target: object) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", repr(target))


def _registered(domain: Names, target: object, kinds: tuple[str, ...]) -> bool:
    return any(domain.registry[k].get(_name(target)) is target for k in kinds)


def _check_handler_targets(domain: Names) -> list[str]:
    problems = []
    expected = {"event_handler": ("event",), "projector": ("event",), "command_handler": ("command",)}
    for kind, kinds in expected.items():
        for handler in domain.registry[kind].values():
            for target in handler_targets(handler):
                if isinstance(target, str):
                    problems += _check_type_string(domain, handler, target, kinds)
                    continue
                if not _registered(domain, target, kinds):
                    problems.append(
                        f"{handler.__name__}: @handle({_name(target)}) names a class "
                        f"that is not a registered {' or '.join(kinds)}"
                    )
    for handler in domain.registry["query_handler"].values():
        for target in query_targets(handler):
            if not isinstance(target, str) and not _registered(domain, target, ("query",)):
                problems.append(
                    f"{handler.__name__}: @read({_name(target)}) names a class that is not a registered query"
                )
    return problems


def _check_type_string(domain: Names, handler: type, target: str, kinds: tuple[str, ...]) -> list[str]:
    """`@handle("BookAdded")` names a registered class, `@handle("Shop.BookAdded.v1")` its type;
    `"$any"` takes every message of the handler's streams. Anything else would never match."""
    known = {c.__name__ for k in kinds for c in domain.registry[k].values()}
    types = {domain.type_of(c) for k in kinds for c in domain.registry[k].values()}
    if target == "$any" or target in known or target in types:
        return []
    what = " or ".join(kinds)
    return [
        f"{handler.__name__}: @handle({target!r}) names no registered {what}, so it would never "
        f"be called; register that {what}, or pass its class, its name or its type string "
        f'(registered: {", ".join(sorted(types)) or "none"}), or "$any"'
    ]


def _check_command_handlers(domain: Names) -> list[str]:
    counts: Counter = Counter()
    owners: dict[str, list[str]] = {}
    for handler in domain.registry["command_handler"].values():
        for target in handler_targets(handler):
            counts[_name(target)] += 1
            owners.setdefault(_name(target), []).append(handler.__name__)
    return [
        f"command {name} has {n} command handlers ({', '.join(owners[name])}); a command has exactly one"
        for name, n in counts.items()
        if n > 1
    ]


def _check_projectors(domain: Names) -> list[str]:
    problems = []
    for projector in domain.registry["projector"].values():
        target = projector.meta_.get("projector_for")
        if not target:
            problems.append(f"projector {projector.__name__}: 'projector_for' is required")
        elif _name(target) not in domain.registry["projection"]:
            problems.append(
                f"projector {projector.__name__}: projector_for {_name(target)!r} "
                f"is not a registered projection"
            )
        if not projector.meta_.get("aggregates") and not projector.meta_.get("stream_categories"):
            problems.append(f"projector {projector.__name__}: give 'aggregates' or 'stream_categories'")
        for agg in projector.meta_.get("aggregates") or []:
            if _name(agg) not in domain.registry["aggregate"]:
                problems.append(f"projector {projector.__name__}: aggregate {_name(agg)!r} is not registered")
    return problems


def _check_categories(domain: Names) -> list[str]:
    known = {domain.category(a) for a in domain.registry["aggregate"].values()}
    problems = []
    for handler in domain.registry["event_handler"].values():
        category = handler.meta_.get("stream_category")
        if category and domain.qualify(category) not in known:
            problems.append(
                f"event handler {handler.__name__}: stream_category {category!r} "
                f"matches no aggregate (known: {sorted(known)})"
            )
    return problems


def _check_subscriptions(domain: Names, server: ServerSettings) -> list[str]:
    problems = []
    for kind in ("event_handler", "command_handler", "projector", "subscriber"):
        for handler in domain.registry[kind].values():
            try:
                resolve(handler, server)
            except SettingsError as exc:
                problems.append(str(exc))
    return problems


def _check_sequential(domain: Names, server: ServerSettings | None) -> list[str]:
    problems = []
    for kind in ("event_handler", "command_handler"):
        for handler in domain.registry[kind].values():
            try:
                subscription = resolve(handler, server) if server is not None else None
            except SettingsError:
                subscription = None  # reported by _check_subscriptions
            problems += check_sequential_by(domain, handler, subscription)
    return problems
