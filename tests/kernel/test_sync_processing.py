"""Sync processing: projectors, subscribers, queries, source_stream, causal order, errors."""

from __future__ import annotations

import pytest

from tidings import Domain, current_domain, handle, on, read
from tidings.fields import Identifier, Integer, String


def build_catalog(tmp_path, calls: list) -> Domain:
    domain = Domain("store", root_path=tmp_path)
    domain.config.update(event_processing="sync", command_processing="sync", message_processing="sync")

    @domain.aggregate
    class Book:
        title: String(required=True)

    @domain.event(part_of=Book)
    class BookAdded:
        book_id: Identifier(required=True)
        title: String(required=True)

    @domain.event(part_of=Book)
    class BookNoticed:
        book_id: Identifier(required=True)

    @domain.command(part_of=Book)
    class AddBook:
        title: String(required=True)

    @domain.projection
    class Catalog:
        book_id: Identifier(identifier=True)
        title: String()
        notices: Integer(default=0)

    @domain.command_handler(part_of=Book)
    class Books:
        @handle(AddBook)
        def add(self, command):
            book = Book(title=command.title)
            book.raise_(BookAdded(book_id=book.id, title=book.title))
            current_domain.repository_for(Book).add(book)
            calls.append("command")
            return book.id

    @domain.projector(projector_for=Catalog, aggregates=[Book])
    class CatalogProjector:
        @on(BookAdded)
        def added(self, event):
            calls.append("projector")
            current_domain.repository_for(Catalog).add(Catalog(book_id=event.book_id, title=event.title))
            current_domain.publish(BookNoticed(book_id=event.book_id))

        @on(BookNoticed)
        def noticed(self, event):
            calls.append("noticed")
            repo = current_domain.repository_for(Catalog)
            entry = repo.get(event.book_id)
            entry.notices += 1
            repo.add(entry)

    @domain.event_handler(part_of=Book, source_stream="store::book:command")
    class OnlyFromCommands:
        @handle(BookAdded)
        def seen(self, event):
            calls.append("from-command")

        @handle(BookNoticed)
        def never(self, event):
            calls.append("noticed-from-command")  # BookNoticed originates in an event stream

    @domain.subscriber(stream="supplier-feed")
    class SupplierFeed:
        def __call__(self, payload: dict):
            calls.append(("external", payload["title"]))
            current_domain.process(AddBook(title=payload["title"]))

    @domain.query(part_of=Catalog)
    class ByTitle:
        title: String(required=True)

    @domain.query_handler(part_of=Catalog)
    class CatalogQueries:
        @read(ByTitle)
        def by_title(self, query):
            return current_domain.repository_for(Catalog).filter(title=query.title)

    return domain.init()


def test_a_command_cascades_breadth_first_through_projector_and_handlers(tmp_path):
    calls: list = []
    domain = build_catalog(tmp_path, calls)
    AddBook = domain.registry["command"]["AddBook"]
    with domain.domain_context():
        book_id = domain.process(AddBook(title="Dune"))
        entry = domain.repository_for(domain.registry["projection"]["Catalog"]).get(book_id)
    assert entry.title == "Dune" and entry.notices == 1
    # every handler of one message runs before the messages they raised (breadth first)
    assert calls[0] == "command"
    assert sorted(calls[1:3]) == ["from-command", "projector"]
    assert calls[3:] == ["noticed"]


def test_queries_are_dispatched_to_their_handler(tmp_path):
    domain = build_catalog(tmp_path, [])
    with domain.domain_context():
        domain.process(domain.registry["command"]["AddBook"](title="Emma"))
        found = domain.dispatch(domain.registry["query"]["ByTitle"](title="Emma"))
    assert [c.title for c in found] == ["Emma"]


def test_subscribers_receive_external_messages_inline_in_sync_mode(tmp_path):
    calls: list = []
    domain = build_catalog(tmp_path, calls)
    with domain.domain_context():
        domain.brokers.publish("supplier-feed", {"title": "Ulysses"})
    assert calls[0] == ("external", "Ulysses")
    assert "projector" in calls


def test_handle_error_is_called_and_its_own_failure_is_only_logged(tmp_path, caplog):
    domain = Domain("shop", root_path=tmp_path)
    domain.config.update(event_processing="sync", command_processing="sync")
    seen = []

    @domain.aggregate
    class Order:
        pass

    @domain.command(part_of=Order)
    class Fail:
        order_id: Identifier()

    @domain.command_handler(part_of=Order)
    class Failing:
        @handle(Fail)
        def fail(self, command):
            current_domain.repository_for(Order).add(Order())
            raise LookupError("no such thing")

        @classmethod
        def handle_error(cls, exc, message):
            seen.append((type(exc).__name__, message.type))
            raise RuntimeError("the hook itself broke")

    domain.init()
    with domain.domain_context(), pytest.raises(LookupError):
        domain.process(Fail(order_id="1"))
    assert seen == [("LookupError", "Shop.Fail.v1")]
    assert "handle_error raised" in caplog.text
    with domain.domain_context():
        assert domain.repository_for(Order).all() == []  # the handler's work rolled back
