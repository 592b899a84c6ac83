"""The worker survives every input: whatever lands on a handler's queue that is not a valid task
is dead-lettered with its reason and its raw body as text, never executed, and the worker goes
on to handle the next good message. A real worker subprocess on the shared Redis (a key prefix
of this module's own: nothing is killed here)."""

from __future__ import annotations

import json
import pickle
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import redis
from click.testing import CliRunner

from tests.reliability.audit import handler_queue, make_entries
from tests.reliability.conftest import AuditRun, audit_run
from tests.services import REDIS_URL, require_redis
from tidings.tasks import dlq

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture(scope="module")
def poison_run(postgres_url, tmp_path_factory) -> Iterator[AuditRun]:
    """One worker for the module (it must survive every kind, one after the other)."""
    require_redis()
    prefix = f"tidings-poison-{uuid.uuid4().hex[:8]}:"
    try:
        with audit_run(postgres_url, REDIS_URL, tmp_path_factory.mktemp("poison"), keyprefix=prefix) as run:
            run.worker()
            make_entries(run.domain, ["warm-up"])
            run.wait(lambda: all(a.applied for a in run.audit().values()), "the worker to be ready")
            yield run
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(f"{prefix}*"))
        if keys:
            client.delete(*keys)


def task_headers(run: AuditRun, task: str | None = None) -> dict[str, object]:
    """Celery protocol 2 headers of a task message for the `Apply` handler (or `task`)."""
    task_id = str(uuid.uuid4())
    return {
        "lang": "py",
        "task": task or f"tidings.{run.domain.name}.Apply",
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "argsrepr": "()",
        "kwargsrepr": "{}",
        "origin": "poison-test",
    }


def publish(run: AuditRun, body: bytes, content_type: str, headers: dict | None = None) -> None:
    """A kombu message with this exact body (bytes are sent as they are, not serialized)."""
    with run.celery.producer_or_acquire() as producer:
        producer.publish(
            body,
            exchange="",
            routing_key=handler_queue(run.domain, "Apply"),
            content_type=content_type,
            content_encoding="utf-8" if content_type == "application/json" else "binary",
            headers=headers or {},
        )


def lpush(run: AuditRun, item: bytes) -> None:
    """A raw item on the handler's Redis list, as `LPUSH <queue> <item>` would put it."""
    with redis.Redis.from_url(REDIS_URL) as client:
        client.lpush(run.keyprefix + handler_queue(run.domain, "Apply"), item)


def an_envelope_args() -> list:
    return [[{"id": str(uuid.uuid4()), "type": "nonsense"}], {}, {"callbacks": None, "errbacks": None}]


@dataclass(frozen=True)
class Poison:
    kind: str
    send: Callable[[AuditRun], None]
    error_types: set[str]  # the reason's kind, as the DLQ entry names it
    raw: str | None  # text the entry's raw body holds (None: the entry holds a decoded body)


POISON = [
    Poison("raw list item", lambda run: lpush(run, b"garbage"), {"NotAMessage"}, "garbage"),
    Poison(
        "raw JSON list item (not a kombu message)",
        lambda run: lpush(run, b'{"hello": "world"}'),
        {"NotAMessage"},
        '{"hello": "world"}',
    ),
    Poison(
        "raw list item, broken base64 body",
        lambda run: lpush(
            run,
            json.dumps(
                {"body": "%%%not base64", "properties": {"delivery_tag": "t", "body_encoding": "base64"}}
            ).encode(),
        ),
        {"NotAMessage"},
        "%%%not base64",
    ),
    Poison(
        "non-JSON body, no task headers",
        lambda run: publish(run, b"garbage{", "application/json"),
        {"DecodeError", "JSONDecodeError"},
        "garbage{",
    ),
    Poison(
        "non-JSON body with task headers",
        lambda run: publish(run, b"garbage{", "application/json", task_headers(run)),
        {"DecodeError", "JSONDecodeError"},
        "garbage{",
    ),
    Poison(
        "pickle content type (refused)",
        lambda run: publish(
            run, pickle.dumps(([], {}, {})), "application/x-python-serialize", task_headers(run)
        ),
        {"ContentDisallowed"},
        "\\x80",
    ),
    Poison(
        "unknown task name",
        lambda run: publish(
            run,
            json.dumps(an_envelope_args()).encode(),
            "application/json",
            task_headers(run, "tidings.nope"),
        ),
        {"NotRegistered"},
        "nonsense",
    ),
    Poison(
        "JSON body that is not task arguments",
        lambda run: publish(run, b'{"not": "args"}', "application/json", task_headers(run)),
        {"InvalidTaskError"},
        '{"not": "args"}',
    ),
    Poison(
        "JSON body that is not an envelope",
        lambda run: publish(
            run, json.dumps(an_envelope_args()).encode(), "application/json", task_headers(run)
        ),
        {"InvalidMessageError"},
        None,
    ),
]


def effects(run: AuditRun) -> int:
    return sum(a.applied for a in run.audit().values())


@pytest.mark.parametrize("poison", POISON, ids=[p.kind for p in POISON])
def test_poison_is_dead_lettered_with_its_reason_and_the_worker_goes_on(poison_run, poison):
    run = poison_run
    queue = handler_queue(run.domain, "Apply")
    dlq.purge(run.celery, queue)
    before = effects(run)
    worker = run.workers[0]

    poison.send(run)
    entries = run.wait(lambda: dlq.list_entries(run.celery, queue), f"a DLQ entry for {poison.kind}", 20)
    assert len(entries) == 1, entries
    entry = entries[0]
    assert entry["error_type"] in poison.error_types, entry
    assert entry["error_message"] and entry["queue"] == queue and entry["entry_id"]
    if poison.raw is not None:
        assert entry["body"] is None and poison.raw in entry["raw_body"], entry
    json.dumps(entry)  # JSON through and through

    good = make_entries(run.domain, [f"after {poison.kind}"])
    run.wait(lambda: effects(run) == before + 2, "the worker to handle a good message after the poison")
    assert worker.alive(), worker.output()
    assert effects(run) == before + 2  # the poison ran no handler: only the good message's effects
    assert all(a.doubled == 0 for a in run.audit().values())
    assert len(dlq.list_entries(run.celery, queue)) == 1 and good


def test_one_undecodable_dlq_entry_does_not_break_dlq_list_show_or_replay(poison_run, monkeypatch):
    """The dead-letter table holding poison (a raw list item) and an entry whose body no
    longer decodes, next to a real entry, and garbage in the broker mirror: `tidings dlq list`
    shows all four (the mirror's raw item too: the Redis transport records a raw list item
    there only), `show` finds the good one, `replay` replays it and skips the other three,
    saying why."""
    from tidings.app import cli, cli_dlq

    run = poison_run
    queue = handler_queue(run.domain, "Apply")
    dlq.purge(run.celery, queue)
    with redis.Redis.from_url(REDIS_URL) as client:  # the mirror is never read: no harm
        client.lpush(run.keyprefix + dlq.dlq_name(queue), b"garbage in the dlq")
    dlq.dead_letter(
        run.celery,
        queue=queue,
        task=None,
        body=None,
        error="a list item that is not a message",
        error_type="NotAMessage",
        attempts=1,
        raw_body=b"garbage\x80",
    )
    broken = str(uuid.uuid4())
    dlq.dead_letter(run.celery, queue=queue, task="t", body={"id": broken}, error=ValueError("x"), attempts=1)
    table = run.domain.outbox_database.dead_letters_table
    with run.domain.outbox_database.engine.begin() as conn:  # its body no longer decodes
        conn.execute(table.update().where(table.c.message_id == broken).values(body="{not json"))
    message_id = str(uuid.uuid4())
    dlq.dead_letter(
        run.celery,
        queue=queue,
        task=f"tidings.{run.domain.name}.Apply",
        body={"id": message_id, "type": "nonsense"},
        error=ValueError("handler bug"),
        attempts=4,
    )
    monkeypatch.setattr(cli_dlq, "load", lambda _path: (run.domain, run.celery))
    runner = CliRunner()

    listed = runner.invoke(cli.main, ["dlq", "list", "--domain", "x", "--handler", "Apply"])
    assert listed.exit_code == 0, listed.output
    assert "4 dead-lettered" in listed.output
    assert "NotAMessage" in listed.output and "UndecodableEntry" in listed.output, listed.output
    assert "ValueError: handler bug" in listed.output

    shown = runner.invoke(cli.main, ["dlq", "show", "--domain", "x", "--handler", "Apply", message_id])
    assert shown.exit_code == 0 and "handler bug" in shown.output, shown.output

    replayed = runner.invoke(cli.main, ["dlq", "replay", "--domain", "x", "--handler", "Apply"])
    assert replayed.exit_code == 0, replayed.output
    assert "replayed 1 message(s)" in replayed.output
    assert "skipped 3" in replayed.output, replayed.output
    left = dlq.list_entries(run.celery, queue)
    assert {e["error_type"] for e in left} >= {"NotAMessage", "UndecodableEntry"}
