"""How the `tidings` command line fails: one line naming the fix, and a non-zero exit.

Every command runs inside `CleanErrors.invoke`: an exception nobody handled becomes
`Error: <what went wrong>; <what to do>` on stderr and exit code 1, instead of a traceback
whose one useful line is at the bottom. `tidings --debug …` (or `TIDINGS_DEBUG=1`) lets the
exception through with its full traceback, for a bug report.

Click's own errors (a bad option, `click.ClickException`), `SystemExit` (a command's chosen
exit code) and Ctrl-C pass through untouched.
"""

from __future__ import annotations

from typing import Any

import click

DEBUG_HELP = "show the full traceback of an error (also: TIDINGS_DEBUG=1)"
DEBUG_ENV = "TIDINGS_DEBUG"

# What to do about errors from the services a command talks to, by the exception's module.
_HINTS = (
    ("sqlalchemy", "check the database settings ([databases] in domain.toml, DATABASE_URL)"),
    ("psycopg2", "check the database settings ([databases] in domain.toml, DATABASE_URL)"),
    ("kombu", "check the broker settings ([brokers] in domain.toml, BROKER_URL)"),
    ("redis", "check the broker settings ([brokers] in domain.toml, BROKER_URL / REDIS_URL)"),
    ("amqp", "check the broker settings ([brokers] in domain.toml, BROKER_URL)"),
)


def one_line(exc: BaseException) -> str:
    """`exc` as one line: its type and the first line of its message, and a hint when it comes
    from the database or broker driver (their messages name the symptom, not the setting)."""
    text = str(exc).strip().splitlines()[0].strip() if str(exc).strip() else ""
    module = type(exc).__module__.split(".")[0]
    if module == "tidings" and text:  # Tidings' own errors are written to name the fix
        return text
    line = f"{type(exc).__name__}: {text}".rstrip(": ")
    hint = next((h for prefix, h in _HINTS if module == prefix), None)
    line = f"{line}; {hint}" if hint else line
    return f"{line} (run `tidings --debug …` for the traceback)"


def debugging(ctx: click.Context) -> bool:
    obj = ctx.find_root().obj
    return bool(obj.get("debug")) if isinstance(obj, dict) else False


class CleanErrors(click.Group):
    """A command group whose commands fail with one line (see the module docstring)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence of the CLI
            if debugging(ctx):
                raise
            raise click.ClickException(one_line(exc)) from None
