"""Tidings' modeling kernel: declare a domain, persist it atomically, process its messages.

from tidings.domain import Domain, handle, current_domain
from tidings.domain.fields import Identifier, Integer
"""

from tidings.domain.context import current_domain
from tidings.domain.domain import Domain
from tidings.domain.elements import (
    BaseAggregate,
    BaseCommand,
    BaseEntity,
    BaseEvent,
    BaseProjection,
    BaseQuery,
    BaseValueObject,
)
from tidings.domain.envelope import Message, MessageKind
from tidings.domain.errors import (
    BrokerConnectionError,
    CommandExpiredError,
    ConfigurationError,
    DuplicateCommandError,
    ExpectedVersionError,
    IncorrectUsageError,
    InvalidMessageError,
    MessageIntegrityError,
    ObjectNotFoundError,
    TooManyObjectsError,
    UnknownMessageTypeError,
    ValidationError,
)
from tidings.domain.handlers import (
    BaseCommandHandler,
    BaseEventHandler,
    BaseProjector,
    BaseQueryHandler,
    BaseSubscriber,
    handle,
    on,
    read,
)
from tidings.domain.priority import Priority, processing_priority

__all__ = [
    "Domain",
    "current_domain",
    "handle",
    "on",
    "read",
    "Message",
    "MessageKind",
    "Priority",
    "processing_priority",
    "BaseAggregate",
    "BaseEntity",
    "BaseValueObject",
    "BaseEvent",
    "BaseCommand",
    "BaseProjection",
    "BaseQuery",
    "BaseEventHandler",
    "BaseCommandHandler",
    "BaseProjector",
    "BaseSubscriber",
    "BaseQueryHandler",
    "BrokerConnectionError",
    "CommandExpiredError",
    "DuplicateCommandError",
    "ConfigurationError",
    "ExpectedVersionError",
    "IncorrectUsageError",
    "InvalidMessageError",
    "MessageIntegrityError",
    "ObjectNotFoundError",
    "TooManyObjectsError",
    "UnknownMessageTypeError",
    "ValidationError",
]
