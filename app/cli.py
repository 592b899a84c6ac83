"""The `tidings` command line."""

from __future__ import annotations

import json
import logging
import sys

import click

from tidings.app.cli_common import (
    DOMAIN_HELP,
    domain_option,
    domain_path_of,
    load,
)
from tidings.app.cli_db import db
from tidings.app.cli_dlq import dlq
from tidings.app.cli_errors import DEBUG_ENV, DEBUG_HELP, CleanErrors
from tidings.app.cli_metrics import metrics
from tidings.app.cli_status import status
from tidings.domain.errors import ConfigurationError


@click.group(cls=CleanErrors)
@click.option("--domain", "domain_path", envvar="TIDINGS_DOMAIN", default=None, help=DOMAIN_HELP)
@click.option("--debug", "debug", is_flag=True, envvar=DEBUG_ENV, help=DEBUG_HELP)
@click.version_option(package_name="tidings", prog_name="tidings", message="%(prog)s %(version)s")
@click.pass_context
def main(ctx: click.Context, domain_path: str | None, debug: bool) -> None:
    """Tidings: Celery-based orchestration for domain-driven Python.

    `tidings --domain X server` and `tidings server --domain X` are the same."""
    ctx.ensure_object(dict).update(domain_path=domain_path, debug=debug)


@main.command()
@click.option("--domain", "domain_path", default=None, help=DOMAIN_HELP)
@click.option("--debug", is_flag=True, help="log every message (and show the traceback of an error)")
@click.option("--test-mode", is_flag=True, help="process everything pending, then exit")
@click.option(
    "--pool",
    type=click.Choice(["prefork", "threads", "solo"]),
    default="prefork",
    show_default=True,
    help="the worker's execution pool",
)
@click.option("--concurrency", type=int, default=None, help="worker processes/threads (default: CPUs)")
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
    from tidings.app import children as specs
    from tidings.app import supervisor
    from tidings.app.server import run_until_quiescent, subscription_lines, worker_argv

    if debug:
        click.get_current_context().find_root().ensure_object(dict)["debug"] = True
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    domain_path = domain_path_of(domain_path)
    domain, celery = load(domain_path)
    children: list[specs.ChildSpec] = []
    if not test_mode:  # test mode runs its worker in this process: an inline broker reaches it
        try:  # before anything is created: a worker that can consume nothing must not start
            argv = worker_argv(domain, pool=pool, concurrency=concurrency, beat=False, debug=debug)
        except ConfigurationError as exc:
            raise click.ClickException(str(exc)) from None
        env = specs.domain_env(domain_path)  # the children load the same domain
        children = [specs.worker_spec(argv, env=env)]
        if not no_beat:
            children.append(specs.beat_spec(domain.name, debug=debug, env=env))
    domain.create_tables()  # Tidings's migrations, then the models' missing tables
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


@main.command()
@domain_option
def subscriptions(domain_path: str | None) -> None:
    """Every handler's resolved subscription settings and where each value came from."""
    from tidings.tasks.naming import async_handlers, queue_name

    domain, _ = load(domain_path)
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

    domain, _ = load(domain_path)
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
    """Outbox rows pending, failing and relayed, as JSON."""
    from dataclasses import asdict

    from tidings.tasks.relay import outbox_store

    domain, _ = load(domain_path)
    click.echo(json.dumps(asdict(outbox_store(domain).status()), indent=2))


@outbox.command("relay")
@domain_option
def outbox_relay(domain_path: str | None) -> None:
    """Relay every due row now (what the beat-driven task does)."""
    from tidings.tasks.relay import relay_now

    domain, celery = load(domain_path)
    click.echo(f"published {relay_now(celery, domain)} message(s)")


@main.command()
@domain_option
def health(domain_path: str | None) -> None:
    """Database, broker, outbox and audit lag, and a worker on every queue; exits 1 when
    degraded, with one line per reason (also under "reasons" in the JSON)."""
    from tidings.app.health import health as check

    domain, celery = load(domain_path)
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


main.add_command(db)
main.add_command(dlq)
main.add_command(status)
main.add_command(metrics)
