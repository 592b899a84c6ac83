"""Which failures are transient (retried without spending max_retries) and which are final."""

from __future__ import annotations

import sqlite3

import kombu.exceptions
import psycopg2
import pytest
import redis.exceptions
import sqlalchemy as sa

from tidings.domain.errors import BusinessRuleError, ConfigurationError, ValidationError
from tidings.domain.settings import TransientRetrySettings
from tidings.tasks.retrying import TransientPolicy, dotted_types, final_errors, handler_throws, is_transient


def wrapped(orig: BaseException, kind=sa.exc.OperationalError, invalidated: bool = False) -> BaseException:
    return kind("SELECT 1", {}, orig, connection_invalidated=invalidated)


def raised_from(cause: BaseException) -> BaseException:
    try:
        try:
            raise cause
        except BaseException as exc:
            raise RuntimeError("the repository could not load the aggregate") from exc
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionError("reset"),
        ConnectionRefusedError("refused"),
        TimeoutError("timed out"),
        kombu.exceptions.OperationalError("broker down"),
        redis.exceptions.ConnectionError("redis down"),
        redis.exceptions.TimeoutError("redis slow"),
        psycopg2.OperationalError("server closed the connection unexpectedly"),
        wrapped(psycopg2.OperationalError("could not connect to server")),
        wrapped(psycopg2.InterfaceError("connection already closed"), sa.exc.InterfaceError, True),
        wrapped(Exception("whatever"), sa.exc.DBAPIError, invalidated=True),
        sa.exc.DisconnectionError("pool pre-ping failed"),
        wrapped(sqlite3.OperationalError("database is locked")),
        raised_from(wrapped(psycopg2.OperationalError("terminating connection"))),
    ],
    ids=lambda e: type(e).__name__,
)
def test_infrastructure_faults_are_transient(exc):
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad amount"),
        KeyError("missing"),
        RuntimeError("a handler bug"),
        BusinessRuleError("account closed"),
        wrapped(sqlite3.OperationalError("no such table: tally")),  # a bug, not a blip
        wrapped(psycopg2.ProgrammingError("syntax error"), sa.exc.ProgrammingError),
        sa.exc.IntegrityError("INSERT", {}, Exception("duplicate key")),
    ],
    ids=lambda e: type(e).__name__,
)
def test_bugs_and_rules_are_not_transient(exc):
    assert not is_transient(exc)


def test_configured_exceptions_are_transient_too():
    class QuotaExceeded(Exception):
        pass

    assert not is_transient(QuotaExceeded())
    assert is_transient(QuotaExceeded(), (QuotaExceeded,))
    assert dotted_types(("builtins.LookupError",)) == (LookupError,)
    with pytest.raises(ConfigurationError, match="cannot be imported"):
        dotted_types(("no.such.Error",))
    with pytest.raises(ConfigurationError, match="not an exception class"):
        dotted_types(("os.path",))


def test_the_backoff_grows_and_is_capped():
    policy = TransientPolicy(TransientRetrySettings(base_delay_seconds=0.5, max_delay_seconds=5))
    assert [policy.delay(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    linear = TransientPolicy(
        TransientRetrySettings(backoff="linear", base_delay_seconds=1, max_delay_seconds=2.5)
    )
    assert [linear.delay(n) for n in range(4)] == [1, 2, 2.5, 2.5]
    assert TransientPolicy(TransientRetrySettings(backoff="fixed")).delay(9) == 0.5


def test_final_errors_are_business_rules_bad_data_and_the_handler_s_throws():
    class Refused(Exception):
        pass

    class Handler:
        meta_ = {"throws": (Refused,)}

    assert {BusinessRuleError, ValidationError, Refused} <= set(final_errors(Handler))
    Handler.meta_ = {"throws": Refused}  # one class is accepted as well
    assert handler_throws(Handler) == (Refused,)
    Handler.meta_ = {"throws": ("Refused",)}
    with pytest.raises(ConfigurationError, match="exception classes"):
        handler_throws(Handler)


def test_transient_retry_is_on_by_default_with_a_deadline():
    from tidings import Domain

    settings = Domain("t").init().settings.server.transient_retry
    assert settings.enabled and settings.deadline_seconds == 300 and settings.max_retries is None
