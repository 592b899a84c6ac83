"""`tidings dlq list|show|replay|purge`: the dead letters, by entry id (or message id)."""

from __future__ import annotations

import click

from tidings.app.cli_common import domain_option, failed_positions, handler_option, load, polled, queues


@click.group()
def dlq() -> None:
    """Inspect, replay and purge dead-lettered messages (the domain's `tidings_dead_letters`
    table; each entry is named by its entry id, or by its message id)."""


@dlq.command("list")
@domain_option
@handler_option
@click.option("--limit", default=100, show_default=True, help="at most this many per queue")
def dlq_list(domain_path: str | None, handler: str | None, limit: int) -> None:
    """One line per dead-lettered message: entry id, queue, message id, attempts, time, error."""
    from tidings.tasks import dlq as dead

    domain, celery = load(domain_path)
    total = 0
    for queue in queues(domain, handler):
        for entry in dead.list_entries(celery, queue, limit):
            total += 1
            click.echo(
                f"{entry.get('entry_id') or '(no entry id)'}  {queue}  {entry.get('message_id') or '-'}  "
                f"attempts={entry.get('attempts')}  {entry.get('failed_at')}  "
                f"{entry.get('error_type')}: {entry.get('error_message')}"
            )
    # a position given up on is in the table above; what is listed here still retries
    for row in [r for r in failed_positions(domain, handler) if r["status"] != "failed"][:limit]:
        total += 1
        click.echo(
            f"{row['handler']}@{row['global_position']}  {row['message_id']}  "
            f"attempts={row['attempts']}  {row['status']}  {row['failed_at']}  "
            f"{row['error_type']}: {row['error_message']}"
        )
    click.echo(f"{total} dead-lettered message(s) and position(s) still retrying")


@dlq.command("show")
@domain_option
@handler_option
@click.argument("entry_id")
def dlq_show(domain_path: str | None, handler: str | None, entry_id: str) -> None:
    """Everything recorded about one entry (by entry id, or by message id): body, error,
    traceback, attempts, time."""
    from tidings.tasks import dlq as dead

    domain, celery = load(domain_path)
    for queue in queues(domain, handler):
        for entry in dead.list_entries(celery, queue, 10_000):
            if dead.matches(entry, entry_id):
                click.echo(dead.as_text(entry))
                return
    for row in failed_positions(domain, handler):
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
    from tidings.tasks.naming import queue_name
    from tidings.tasks.poller import replay_failed

    domain, celery = load(domain_path)
    # event_store handlers have no task to re-queue to: their dead letters replay below, by
    # re-running the failed position (a success removes both)
    positional = {queue_name(domain, h) for h in polled(domain, handler)}
    outcomes = [
        dead.replay_entries(celery, q, wanted) for q in queues(domain, handler) if q not in positional
    ]
    click.echo(f"replayed {sum(o.replayed for o in outcomes)} message(s)")
    skipped = [s for o in outcomes for s in o.skipped]
    if skipped:
        click.echo(f"skipped {len(skipped)} entry(ies) that cannot be replayed (left in the DLQ):")
        for skipped_id, reason in skipped:
            click.echo(f"  {skipped_id or '(no entry id)'}: {reason}")
    done = failing = 0
    for h in polled(domain, handler):
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

    domain, celery = load(domain_path)
    if entry_id is not None:
        count = domain.storage.dead_letters.delete([entry_id])
        click.echo(f"purged {count} message(s)")
        return
    count = sum(dead.purge(celery, q) for q in queues(domain, handler))
    store = position_store(domain)
    count += sum(store.purge(task_name(domain, h)) for h in polled(domain, handler))
    click.echo(f"purged {count} message(s)")
