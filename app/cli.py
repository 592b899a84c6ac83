"""The `tidings` command line."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click
from celery import Celery

from tidings.app.bootstrap import runtime_for
from tidings.app.loading import load_domain
from tidings.domain import Domain
from tidings.domain.errors import ConfigurationError

DOMAIN_HELP = (
    "dotted path, file or folder, optionally :name (e.g. tidings.examples.bookshelf, src/shop, "
    "shop:domain); default: TIDINGS_DOMAIN, else domain.py or subdomain.py here"
)


@click.group()
@click.option("--domain", "domain_path", envvar="TIDINGS_DOMAIN", default=None, help=DOMAIN_HELP)
@click.pass_context
def main(ctx: click.Context, domain_path: str | None) -> None:
    """Tidings: Celery-based orchestration for domain-driven Python.

    `tidings --domain X server` and `tidings server --domain X` are the same."""
    ctx.ensure_object(dict)["domain_path"] = domain_path


def _domain_path(domain_path: str | None) -> str | None:
    """The subcommand's --domain, else the group's (or TIDINGS_DOMAIN); None: discover it."""
    if domain_path is None:
        root = click.get_current_context(silent=True)
        domain_path = (root.find_root().obj or {}).get("domain_path") if root else None
    return domain_path


def _load(domain_path: str | None) -> tuple[Domain, Celery]:
    """The domain: the subcommand's --domain, else the group's (or TIDINGS_DOMAIN), else found."""
    domain = load_domain(_domain_path(domain_path))
    if not domain.initialized:
        domain.init()
    return domain, runtime_for(domain).celery


@main.command()
@click.option("--domain", "domain_path", default=None, help=DOMAIN_HELP)
@click.option("--debug", is_flag=True, help="log every message")
@click.option("--test-mode", is_flag=True, help="process everything pending, then exit")
@click.option("--pool", type=click.Choice(["prefork", "threads", "solo"]), default="prefork")
@click.option("--concurrency", type=int, default=None)
@click.option("--no-beat", is_flag=True, help="do not start beat (run `celery beat` once elsewhere)")
@click.option(
    "--max-restarts",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="give up (exit 3) when a child needs more restarts than this within --restart-window",
)
@click.option(
    "--restart-window", type=click.FloatRange(min=0), default=60.0, show_default=True, help="seconds"
)
@click.option(
    "--restart-delay",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="seconds before the first restart; doubles with each restart in the window, up to 30",
)
def server(
    domain_path: str | None,
    debug: bool,
    test_mode: bool,
    pool: str,
    concurrency: int | None,
    no_beat: bool,
    max_restarts: int,
    restart_window: float,
    restart_delay: float,
) -> None:
    """Run a worker on all of the domain's queues and beat (unless --no-beat) as supervised
    child processes: restarted when they exit, stopped together on SIGTERM/SIGINT."""
    from tidings.app import supervisor
    from tidings.app.server import run_until_quiescent, subscription_lines, worker_argv

    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    domain_path = _domain_path(domain_path)
    domain, celery = _load(domain_path)
    children: list[supervisor.ChildSpec] = []
    if not test_mode:  # test mode runs its worker in this process: an inline broker reaches it
        try:  # before anything is created: a worker that can consume nothing must not start
            argv = worker_argv(domain, pool=pool, concurrency=concurrency, beat=False, debug=debug)
        except ConfigurationError as exc:
            raise click.ClickException(str(exc)) from None
        env = supervisor.domain_env(domain_path)  # the children load the same domain
        children = [supervisor.worker_spec(argv, env=env)]
        if not no_beat:
            children.append(supervisor.beat_spec(domain.name, debug=debug, env=env))
    domain.create_tables()  # only the missing ones; migrations are yours (domain.metadata)
    click.echo("Registered subscriptions:")
    for line in subscription_lines(domain):
        click.echo(f"  {line}")
    if test_mode:
        summary = run_until_quiescent(celery, domain, pool="solo" if pool == "prefork" else pool)
        click.echo(json.dumps(summary, indent=2))
        sys.exit(0 if summary["quiescent"] and not summary["dead_lettered"] else 1)
    domain.dispose()  # the children open their own connections; this process only watches them
    policy = supervisor.RestartPolicy(
        max_restarts=max_restarts,
        window=restart_window,
        initial_delay=restart_delay,
        max_delay=max(30.0, restart_delay),
    )
    sys.exit(supervisor.supervise(children, policy))


def _queues(domain: Domain, handler: str | None) -> list[str]:
    from tidings.tasks.naming import async_handlers, queue_name

    handlers = async_handlers(domain)
    if handler:
        handlers = [h for h in handlers if h.__name__ == handler]
        if not handlers:
            raise click.BadParameter(f"no handler named {handler!r}", param_hint="--handler")
    return [queue_name(domain, h) for h in handlers]


def _polled(domain: Domain, handler: str | None) -> list[type]:
    """The event_store handlers (optionally one): their failures are failed positions."""
    from tidings.tasks.naming import event_store_handlers

    return [h for h in event_store_handlers(domain) if not handler or h.__name__ == handler]


def _failed_positions(domain: Domain, handler: str | None) -> list[dict[str, Any]]:
    from tidings.tasks.naming import task_name
    from tidings.tasks.positions import position_store

    store = position_store(domain)
    return [row for h in _polled(domain, handler) for row in store.failures(task_name(domain, h))]


domain_option = click.option("--domain", "domain_path", default=None, help=DOMAIN_HELP)
handler_option = click.option("--handler", default=None, help="one handler (default: all)")


@main.group()
def dlq() -> None:
    """Inspect, replay and purge dead-lettered messages (the domain's `tidings_dead_letters`
    table; each entry is named by its entry id, or by its message id)."""


@dlq.command("list")
@domain_option
@handler_option
@click.option("--limit", default=100, show_default=True)
def dlq_list(domain_path: str | None, handler: str | None, limit: int) -> None:
    """One line per dead-lettered message: entry id, queue, message id, attempts, time, error."""
    from tidings.tasks import dlq as dead

    domain, celery = _load(domain_path)
    total = 0
    for queue in _queues(domain, handler):
        for entry in dead.list_entries(celery, queue, limit):
            total += 1
            click.echo(
                f"{entry.get('entry_id') or '(no entry id)'}  {queue}  {entry.get('message_id') or '-'}  "
                f"attempts={entry.get('attempts')}  {entry.get('failed_at')}  "
                f"{entry.get('error_type')}: {entry.get('error_message')}"
            )
    for row in _failed_positions(domain, handler)[:limit]:
        total += 1
        click.echo(
            f"{row['handler']}@{row['global_position']}  {row['message_id']}  "
            f"attempts={row['attempts']}  {row['status']}  {row['failed_at']}  "
            f"{row['error_type']}: {row['error_message']}"
        )
    click.echo(f"{total} dead-lettered message(s) and failed position(s)")


@dlq.command("show")
@domain_option
@handler_option
@click.argument("entry_id")
def dlq_show(domain_path: str | None, handler: str | None, entry_id: str) -> None:
    """Everything recorded about one entry (by entry id, or by message id): body, error,
    traceback, attempts, time."""
    from tidings.tasks import dlq as dead

    domain, celery = _load(domain_path)
    for queue in _queues(domain, handler):
        for entry in dead.list_entries(celery, queue, 10_000):
            if dead.matches(entry, entry_id):
                click.echo(dead.as_text(entry))
                return
    for row in _failed_positions(domain, handler):
        if row["message_id"] == entry_id:
            click.echo(dead.as_text(row))
            return
    raise click.ClickException(
        f"{entry_id} is not a dead letter's entry id or message id, nor a failed position"
    )


@dlq.command("replay")
@domain_option
@handler_option
@click.option(
    "--message-id", "--entry-id", "wanted", default=None, help="only this entry (entry or message id)"
)
def dlq_replay(domain_path: str | None, handler: str | None, wanted: str | None) -> None:
    """Re-queue to the handler with the retry count reset; an entry leaves the table only once
    its re-publish succeeded, and one that cannot be replayed (poison, undecodable, no such
    task) stays, with the reason. Failed positions are re-run here; a success removes the row."""
    from tidings.tasks import dlq as dead
    from tidings.tasks.poller import replay_failed

    domain, celery = _load(domain_path)
    outcomes = [dead.replay_entries(celery, q, wanted) for q in _queues(domain, handler)]
    click.echo(f"replayed {sum(o.replayed for o in outcomes)} message(s)")
    skipped = [s for o in outcomes for s in o.skipped]
    if skipped:
        click.echo(f"skipped {len(skipped)} entry(ies) that cannot be replayed (left in the DLQ):")
        for skipped_id, reason in skipped:
            click.echo(f"  {skipped_id or '(no entry id)'}: {reason}")
    done = failing = 0
    for h in _polled(domain, handler):
        ok, bad = replay_failed(domain, h, wanted)
        done, failing = done + ok, failing + bad
    click.echo(f"re-ran {done} failed position(s); {failing} still failing")


@dlq.command("purge")
@domain_option
@handler_option
@click.option("--entry-id", default=None, help="only this entry")
@click.confirmation_option(prompt="Delete the dead-lettered messages for good?")
def dlq_purge(domain_path: str | None, handler: str | None, entry_id: str | None) -> None:
    """Delete dead letters for good (the table's rows and the broker mirror `<queue>.dlq`)."""
    from tidings.tasks import dlq as dead
    from tidings.tasks.naming import task_name
    from tidings.tasks.positions import position_store

    domain, celery = _load(domain_path)
    if entry_id is not None:
        count = domain.storage.dead_letters.delete([entry_id])
        click.echo(f"purged {count} message(s)")
        return
    count = sum(dead.purge(celery, q) for q in _queues(domain, handler))
    store = position_store(domain)
    count += sum(store.purge(task_name(domain, h)) for h in _polled(domain, handler))
    click.echo(f"purged {count} message(s)")


@main.group()
def db() -> None:
    """The domain's tables."""


@db.command("create")
@domain_option
def db_create(domain_path: str | None) -> None:
    """Create the missing tables of every database (aggregates, projections, event store,
    outbox, inbox). For migrations, hand `domain.metadata` to Alembic. A table that exists
    without a column this version needs is reported with the statement that adds it."""
    from tidings.domain.sql import SchemaError

    domain, _ = _load(domain_path)
    try:
        domain.create_tables()
    except SchemaError as exc:
        raise click.ClickException(f"tables of '{domain.name}' are NOT in place: {exc}") from None
    click.echo(f"tables of '{domain.name}' are in place")


@main.command()
@domain_option
def subscriptions(domain_path: str | None) -> None:
    """Every handler's resolved subscription settings and where each value came from."""
    from tidings.tasks.naming import async_handlers, queue_name

    domain, _ = _load(domain_path)
    for handler in async_handlers(domain):
        settings = domain.subscription_settings(handler)
        click.echo(f"{handler.__name__} ({queue_name(domain, handler)})")
        for key, value in settings.values.items():
            click.echo(f"  {key:<26} {value!s:<10} <- {settings.sources[key]}")


@main.group()
def projection() -> None:
    """Projections and their projectors."""


@projection.command("rebuild")
@domain_option
@click.argument("projector")
def projection_rebuild(domain_path: str | None, projector: str) -> None:
    """Truncate the projector's projection, reset its cursor to 0 and replay every event."""
    from rich.progress import Progress

    from tidings.tasks.rebuild import rebuild_projection

    domain, _ = _load(domain_path)
    found = domain.registry["projector"].get(projector)
    if found is None:
        raise click.BadParameter(
            f"no projector named {projector!r} (known: {sorted(domain.registry['projector'])})",
            param_hint="PROJECTOR",
        )
    with Progress() as bar:
        step = bar.add_task(f"rebuilding with {projector}", total=None)

        def advance(cursor: int, last: int | None) -> None:
            bar.update(step, completed=cursor, total=last)

        done = rebuild_projection(domain, found, advance)
    click.echo(
        f"rebuilt {done.projection}: {done.handled} event(s) applied, {done.failed} "
        f"failed position(s), cursor at {done.cursor}"
    )
    if done.failed:
        sys.exit(1)


@main.group()
def outbox() -> None:
    """The transactional outbox."""


@outbox.command("status")
@domain_option
def outbox_status(domain_path: str | None) -> None:
    from dataclasses import asdict

    from tidings.tasks.relay import outbox_store

    domain, _ = _load(domain_path)
    click.echo(json.dumps(asdict(outbox_store(domain).status()), indent=2))


@outbox.command("relay")
@domain_option
def outbox_relay(domain_path: str | None) -> None:
    """Relay every due row now (what the beat-driven task does)."""
    from tidings.tasks.relay import relay_now

    domain, celery = _load(domain_path)
    click.echo(f"published {relay_now(celery, domain)} message(s)")


@main.command()
@domain_option
def health(domain_path: str | None) -> None:
    """Database, broker, outbox and audit lag, and a worker on every queue; exits 1 when
    degraded, with one line per reason (also under "reasons" in the JSON)."""
    from tidings.app.health import health as check

    domain, celery = _load(domain_path)
    report = check(domain, celery, workers=True)
    for reason in report["reasons"]:
        click.echo(f"degraded: {reason}", err=True)
    click.echo(json.dumps(report, indent=2))
    sys.exit(0 if report["status"] == "ok" else 1)


@main.command()
@click.option("--redis", is_flag=True, help="use Redis (REDIS_URL) as the broker")
@click.option("--postgres", is_flag=True, help="use PostgreSQL (DATABASE_URL) for the data")
def demo(redis: bool, postgres: bool) -> None:
    """Run the bookshelf service async — worker with beat, and the API, as real processes —
    through a scripted scenario, on the embedded default (SQLite) unless told otherwise."""
    from tidings.app.demo import console, run

    try:
        code = run(redis=redis, postgres=postgres)
    except KeyboardInterrupt:
        console.print("interrupted; every process the demo started was stopped")
        code = 130
    except (TimeoutError, RuntimeError) as exc:
        console.print(f"[bold red]demo failed:[/bold red] {exc}")
        code = 1
    sys.exit(code)
