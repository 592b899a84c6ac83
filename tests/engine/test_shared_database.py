"""Two domains on one database: each relay claims only its own domain's outbox rows, so each
domain handles all of its messages and none of the other's, with both relays running at once."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.waiting import wait_until
from tidings import Domain, current_domain, handle
from tidings.domain.envelope import Message
from tidings.fields import Identifier, String
from tidings.outbox.relay import Backoff, relay_pending_messages
from tidings.tasks.naming import task_name

NOTES = 60  # per domain


def build_noting(name: str, root: Path) -> Domain:
    """A domain whose async handler records each note it sees, in tables of its own."""
    domain = Domain(name, root_path=root)
    domain.config.update(event_processing="async", command_processing="async", message_processing="async")

    @domain.event(part_of="Note")
    class Noted:
        note_id: Identifier(required=True)
        text: String(required=True)

    @domain.aggregate(table=f"{name}_note")
    class Note:
        text: String(required=True)

        def write(self):
            self.raise_(Noted(note_id=self.id, text=self.text))

    @domain.aggregate(table=f"{name}_seen")
    class Seen:
        note_id: Identifier(identifier=True)

    @domain.event_handler(part_of=Seen, stream_category="note")
    class RecordNote:
        @handle(Noted)
        def record(self, event):
            current_domain.repository_for(Seen).add(Seen(note_id=event.note_id))

    return domain


@pytest.fixture
def two_domains(provider, tmp_path) -> Iterator[tuple[Domain, Domain]]:
    domains = []
    for name in ("alpha", "beta"):
        domain = build_noting(name, tmp_path)
        domain.config["databases"]["default"] = dict(provider)
        domain.config["event_store"] = {"provider": provider["provider"]}
        domains.append(domain.init())
    domains[0].drop_tables()
    for domain in domains:
        domain.create_tables()
    yield domains[0], domains[1]
    for domain in domains:
        domain.drop_tables()
        domain.dispose()


class Runtime:
    """For each domain a relay thread (publishing to a queue) and a worker thread running the
    handlers from it: the broker and Celery, minus everything that is not the outbox."""

    def __init__(self, domains: tuple[Domain, ...]) -> None:
        self.domains = domains
        self.stop = threading.Event()
        self.orphans: list[tuple[str, str]] = []  # (relaying domain, envelope) with no handler
        self.errors: list[BaseException] = []
        self.queues: dict[str, queue.Queue] = {d.name: queue.Queue() for d in domains}

    def publisher(self, domain: Domain):
        def publish(envelope: str) -> None:
            message = Message.from_dict(json.loads(envelope))
            if not domain.handlers_for(message):
                self.orphans.append((domain.name, envelope))  # "published" without a handler
                return
            self.queues[domain.name].put(message)

        return publish

    def relay(self, domain: Domain) -> None:
        publish = self.publisher(domain)
        while not self.stop.is_set():
            try:
                relay_pending_messages(domain.storage.outbox, publish, batch_size=7, backoff=Backoff())
            except Exception as exc:  # noqa: BLE001 - reported by the test
                self.errors.append(exc)
            self.stop.wait(0.005)  # the relay's own poll interval

    def work(self, domain: Domain) -> None:
        while not self.stop.is_set():
            try:
                message = self.queues[domain.name].get(timeout=0.05)
            except queue.Empty:
                continue
            for handler in domain.handlers_for(message):
                try:
                    domain.run_handler(handler, message, idempotency_key=task_name(domain, handler))
                except Exception as exc:  # noqa: BLE001 - reported by the test
                    self.errors.append(exc)

    @contextmanager
    def running(self) -> Iterator[Runtime]:
        threads = [
            threading.Thread(target=target, args=(d,), daemon=True)
            for d in self.domains
            for target in (self.relay, self.work)
        ]
        for thread in threads:
            thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(timeout=30)


def write_note(domain: Domain, text: str) -> str:
    Note = domain.registry["aggregate"]["Note"]
    with domain.domain_context():
        note = Note(text=text)
        note.write()
        domain.repository_for(Note).add(note)
    return note.id


def seen(domain: Domain) -> set[str]:
    Seen = domain.registry["aggregate"]["Seen"]
    with domain.domain_context():
        return {s.note_id for s in domain.repository_for(Seen).all()}


@pytest.mark.parametrize("provider", ["sqlite", "postgresql"], indirect=True)
def test_two_domains_on_one_database_each_handle_all_of_their_own_messages_under_both_relays(
    two_domains,
):
    alpha, beta = two_domains
    written: dict[str, set[str]] = {"alpha": set(), "beta": set()}
    with Runtime(two_domains).running() as runtime:
        for n in range(NOTES):  # written while both relays run, interleaved
            written["alpha"].add(write_note(alpha, f"a{n}"))
            written["beta"].add(write_note(beta, f"b{n}"))
        wait_until(
            lambda: seen(alpha) == written["alpha"] and seen(beta) == written["beta"],
            timeout=60,
            message="each domain to handle all of its notes",
        )
    assert runtime.orphans == [], "a relay published another domain's rows"
    assert runtime.errors == []
    for domain in two_domains:
        status = domain.storage.outbox.status()
        assert (status.pending, status.published) == (0, NOTES)
    assert not written["alpha"] & seen(beta) and not written["beta"] & seen(alpha)
