"""The error tree of Tidings: every error a user can meet, with the fix in its message."""

from __future__ import annotations

from typing import Any


class TidingsError(Exception):
    """Base of every error Tidings raises on purpose."""


class ConfigurationError(TidingsError):
    """The domain, its registry or its configuration is wrong; raised by `domain.init()`."""


class IncorrectUsageError(TidingsError):
    """An API was called in a way it does not support."""


class ValidationError(TidingsError, ValueError):
    """Data does not satisfy an element's fields; `errors` maps field -> list of messages."""

    def __init__(self, errors: dict[str, list[str]], model: str = "") -> None:
        self.errors = errors
        self.model = model
        detail = "; ".join(f"{k}: {', '.join(v)}" for k, v in errors.items())
        super().__init__(f"invalid {model or 'data'}: {detail}")


class ObjectNotFoundError(TidingsError, LookupError):
    """No stored object matched."""


class TooManyObjectsError(TidingsError, LookupError):
    """More than one stored object matched where exactly one was expected."""


class ExpectedVersionError(TidingsError):
    """Optimistic concurrency: the aggregate was changed by someone else since it was loaded."""


class DuplicateCommandError(TidingsError):
    """`domain.process(..., idempotency_key=k, raise_on_duplicate=True)` for a key already
    processed: `result` is what the first command returned (sync) or its message id (async)."""

    def __init__(self, key: str, message_id: str, result: Any) -> None:
        self.key, self.message_id, self.result = key, message_id, result
        super().__init__(
            f"a command with idempotency key {key!r} was already processed (message {message_id}); "
            f"pass raise_on_duplicate=False to get its result instead"
        )


class CommandExpiredError(TidingsError):
    """A command reached its handler after its deadline (`deadline=` / `timeout=`, the handler's
    `timeout` or `command_default_timeout`); it was not handled."""


class InvalidMessageError(TidingsError, ValueError):
    """A message envelope or its data cannot be decoded."""


class MessageIntegrityError(InvalidMessageError):
    """A message's checksum does not match its data: it was altered after it was built."""


class UnknownMessageTypeError(InvalidMessageError):
    """A message names a type that is not registered in the domain."""


class BusinessRuleError(TidingsError):
    """A handler refused a message by a rule of the domain (an order already shipped, an
    account closed): the same message fails the same way on every attempt, so it is never
    retried. It goes to the dead-letter queue at once with this error as its reason (or is
    dropped when the handler's `enable_dlq` is off); the handler's `handle_error` still runs.

    Subclass it, or list other exception types in a handler's `throws=(...)` option.
    """


class BrokerConnectionError(TidingsError, ConnectionError):
    """A broker could not be reached; the URL in the message has its password masked."""


def from_pydantic(exc: Any, model: str) -> ValidationError:
    """Translate a pydantic ValidationError into ours, field by field."""
    errors: dict[str, list[str]] = {}
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or "__all__"
        errors.setdefault(loc, []).append(err.get("msg", "invalid"))
    return ValidationError(errors, model)
