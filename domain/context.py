"""Context-local state: the current domain, unit of work and message being handled."""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Any

from tidings.domain.errors import IncorrectUsageError

_domains: ContextVar[tuple[Any, ...]] = ContextVar("tidings_domains", default=())
current_uow: ContextVar[Any] = ContextVar("tidings_uow", default=None)
current_message: ContextVar[Any] = ContextVar("tidings_message", default=None)


def push_domain(domain: Any) -> Token[tuple[Any, ...]]:
    return _domains.set((*_domains.get(), domain))


def pop_domain(token: Token[tuple[Any, ...]]) -> None:
    _domains.reset(token)


def get_current_domain() -> Any:
    stack = _domains.get()
    if not stack:
        raise IncorrectUsageError("no active domain: wrap the code in `with domain.domain_context():`")
    return stack[-1]


def domain_of(cls: type) -> Any:
    """The domain `cls` is registered in: the innermost active one that registers it, else the
    one it was last registered with (None when it is not registered anywhere)."""
    kind = getattr(cls, "element_kind", None)
    for domain in reversed(_domains.get()):
        if domain.registry.get(kind, {}).get(cls.__name__) is cls:
            return domain
    return cls.__dict__.get("__tidings_domain__")


class _CurrentDomain:
    """A proxy to the domain of the innermost `domain.domain_context()`."""

    def __getattr__(self, name: str) -> Any:
        return getattr(get_current_domain(), name)

    def __repr__(self) -> str:
        stack = _domains.get()
        return f"<current_domain {stack[-1].name if stack else 'unbound'}>"


current_domain: Any = _CurrentDomain()
