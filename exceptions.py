"""Tidings' errors at the reference's import path: `from tidings.exceptions import ...`
(the reference: `protean.exceptions`). The same classes as `tidings.domain.errors`."""

from tidings.domain.errors import (
    BrokerConnectionError,
    BusinessRuleError,
    CommandExpiredError,
    ConfigurationError,
    DuplicateCommandError,
    ExpectedVersionError,
    IncorrectUsageError,
    InvalidMessageError,
    MessageIntegrityError,
    ObjectNotFoundError,
    TidingsError,
    TooManyObjectsError,
    UnknownMessageTypeError,
    ValidationError,
)

__all__ = [
    "BrokerConnectionError",
    "BusinessRuleError",
    "CommandExpiredError",
    "ConfigurationError",
    "DuplicateCommandError",
    "ExpectedVersionError",
    "IncorrectUsageError",
    "InvalidMessageError",
    "MessageIntegrityError",
    "ObjectNotFoundError",
    "TidingsError",
    "TooManyObjectsError",
    "UnknownMessageTypeError",
    "ValidationError",
]
