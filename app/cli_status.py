"""`tidings status`: the reading of app/status.py as a table, as JSON, or refreshed."""

from __future__ import annotations

import json
import time

import click
import sqlalchemy as sa
from celery import Celery
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from tidings.app.cli_common import domain_option, load
from tidings.app.status import INSPECT_TIMEOUT, SystemStatus, read_status
from tidings.domain import Domain

MISSING = "-"  # not measurable on this transport, or not asked


def _cell(value: object) -> str:
    return MISSING if value is None else str(value)


def _seconds(value: float | None) -> str:
    return MISSING if value is None else f"{value:.1f}s"


def render(status: SystemStatus) -> Group:
    """The handlers' table, then the outbox, the audit, the workers and what it cost."""
    table = Table(title=f"{status.domain} ({status.transport}) at {status.taken_at:%H:%M:%S} UTC")
    for name in ("handler", "queue", "depth", "in flight", "lag", "lag age", "DLQ", "breaker", "workers"):
        table.add_column(name, justify="left" if name in ("handler", "queue", "breaker") else "right")
    for h in status.handlers:
        late = h.lag_seconds is not None and h.lag_seconds > status.audit.grace
        table.add_row(
            h.handler if h.subscription == "stream" else f"{h.handler} [dim]({h.subscription})[/dim]",
            h.queue,
            _cell(h.queue_depth),
            _cell(h.in_flight),
            _cell(h.lag_messages),
            Text(_seconds(h.lag_seconds), style="bold red" if late else ""),
            Text(str(h.dead_letters), style="bold red" if h.dead_letters else ""),
            _cell(h.breaker),
            Text(_cell(h.workers), style="bold red" if h.workers == 0 else ""),
        )
    o, a, w, c = status.outbox, status.audit, status.workers, status.cost
    lines = [
        f"outbox: {o.pending} pending ({o.failing} failing), oldest {o.oldest_pending_age:.1f}s; "
        f"relay queue {_cell(o.relay_queue_depth)}",
        f"delivery audit: lag {a.lag:.1f}s past its {a.grace:g}s grace",
        f"workers: {', '.join(w.names) or 'none answered'}"
        if w.checked
        else f"workers: not checked ({w.note})",
        f"[dim]read in {c.database_ms:.1f} ms database ({c.statements} statements), {c.broker_ms:.1f} ms "
        f"broker, {c.workers_ms:.0f} ms workers[/dim]",
    ]
    errors = [f"[bold red]could not read {e}[/bold red]" for e in status.errors]
    return Group(table, *(Text.from_markup(line) for line in [*lines, *errors]))


def reading(domain: Domain, celery: Celery, workers: bool, timeout: float) -> SystemStatus:
    """One reading; a database that cannot be read is one line naming the fix."""
    try:
        return read_status(domain, celery, workers, timeout)
    except sa.exc.SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        hint = (
            " (are they created? `tidings db create` with the same --domain)" if "table" in str(cause) else ""
        )
        raise click.ClickException(f"could not read the tables of '{domain.name}': {cause}{hint}") from None


@click.command("status")
@domain_option
@click.option("--json", "as_json", is_flag=True, help="print the reading as JSON")
@click.option(
    "--watch",
    "every",
    type=click.FloatRange(min=0.5),
    is_flag=False,
    flag_value=2.0,
    default=None,
    help="refresh every N seconds (default 2) until Ctrl+C",
)
@click.option("--workers/--no-workers", default=True, help="ask the workers which queues they consume")
@click.option(
    "--timeout", type=click.FloatRange(min=0.1), default=INSPECT_TIMEOUT, show_default=True, help="seconds"
)
def status(
    domain_path: str | None, as_json: bool, every: float | None, workers: bool, timeout: float
) -> None:
    """Per handler: queue depth, in flight, lag (messages and age of the oldest), dead letters,
    breaker and workers; the outbox and the delivery audit. Cheap enough to --watch."""
    domain, celery = load(domain_path)
    if as_json:
        while True:
            click.echo(json.dumps(reading(domain, celery, workers, timeout).to_dict(), indent=2))
            if every is None:
                return
            time.sleep(every)
    console = Console()
    if every is None:
        console.print(render(reading(domain, celery, workers, timeout)))
        return
    with Live(render(reading(domain, celery, workers, timeout)), console=console) as live:
        try:
            while True:
                time.sleep(every)
                live.update(render(reading(domain, celery, workers, timeout)))
        except KeyboardInterrupt:
            pass
