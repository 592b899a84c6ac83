"""Tidings' modeling kernel: declare a domain, persist it atomically, process its messages.

    from domain import Domain, handle, current_domain
    from domain.fields import Identifier, Integer
"""

from domain.context import current_domain
from domain.domain import Domain
from domain.elements import (
    BaseAggregate,
    BaseCommand,
    BaseCommandHandler,
    BaseEntity,
    BaseEvent,
    BaseEventHandler,
    BaseProjection,
    BaseProjector,
    BaseQuery,
    BaseQueryHandler,
    BaseSubscriber,
    BaseValueObject,
    handle,
    on,
    read,
)
from domain.envelope import Message, MessageKind
from domain.errors import (
    ConfigurationError,
    ExpectedVersionError,
    IncorrectUsageError,
    InvalidMessageError,
    ObjectNotFoundError,
    TooManyObjectsError,
    UnknownMessageTypeError,
    ValidationError,
)

__all__ = [
    "Domain", "current_domain", "handle", "on", "read", "Message", "MessageKind",
    "BaseAggregate", "BaseEntity", "BaseValueObject", "BaseEvent", "BaseCommand",
    "BaseProjection", "BaseQuery", "BaseEventHandler", "BaseCommandHandler", "BaseProjector",
    "BaseSubscriber", "BaseQueryHandler", "ConfigurationError", "ExpectedVersionError",
    "IncorrectUsageError", "InvalidMessageError", "ObjectNotFoundError", "TooManyObjectsError",
    "UnknownMessageTypeError", "ValidationError",
]
