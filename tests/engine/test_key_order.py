"""The per-key sequences of `sequential_by` handlers (outbox/ordering.py), on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from tidings.domain.sql import make_engine
from tidings.outbox.ordering import Sequenced, SqlKeyOrder, define_key_order


@dataclass
class Source:
    engine: sa.Engine


@pytest.fixture(params=["sqlite", "postgresql"])
def order(request, tmp_path):
    if request.param == "sqlite":
        uri = f"sqlite:///{tmp_path / 'order.db'}"
    else:
        uri = request.getfixturevalue("postgres_url")
    engine = make_engine(uri)
    metadata = sa.MetaData()
    heads, sequences = define_key_order(metadata)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    yield SqlKeyOrder(Source(engine), heads, sequences)
    metadata.drop_all(engine)
    engine.dispose()


H = "tidings.bank.Ledger"


def test_each_key_is_numbered_from_one_in_the_given_order(order):
    order.assign([Sequenced(H, "a", "m1"), Sequenced(H, "b", "m2"), Sequenced(H, "a", "m3")])
    order.assign([Sequenced(H, "a", "m4")])
    assert [(t.key, t.seq) for t in (order.turn(H, m) for m in ("m1", "m2", "m3", "m4"))] == [
        ("a", 1),
        ("b", 1),
        ("a", 2),
        ("a", 3),
    ]


def test_a_message_sent_again_keeps_its_number_so_the_key_has_no_gap(order):
    order.assign([Sequenced(H, "a", "m1"), Sequenced(H, "a", "m2")])
    order.assign([Sequenced(H, "a", "m2"), Sequenced(H, "a", "m3"), Sequenced(H, "a", "m3")])
    assert [order.turn(H, m).seq for m in ("m1", "m2", "m3")] == [1, 2, 3]


def test_only_the_next_number_is_due_and_the_key_moves_on_once(order):
    order.assign([Sequenced(H, "a", "m1"), Sequenced(H, "a", "m2")])
    first, second = order.turn(H, "m1"), order.turn(H, "m2")
    assert (first.due, second.due, second.early) == (True, False, True)
    assert order.advance(H, "a", 2) is False  # not its turn: nothing moves
    assert order.advance(H, "a", 1) is True
    assert order.advance(H, "a", 1) is False  # a second call (a redelivery) changes nothing
    assert order.turn(H, "m2").due
    assert not order.turn(H, "m1").due and not order.turn(H, "m1").early  # done: a late copy


def test_handlers_and_unnumbered_messages_are_apart(order):
    order.assign([Sequenced(H, "a", "m1"), Sequenced("tidings.bank.Audit", "a", "m1")])
    assert order.turn("tidings.bank.Audit", "m1").seq == 1
    assert order.turn(H, "never-sent") is None


def test_purge_forgets_old_numbers_of_its_domain_only(order):
    order.assign([Sequenced(H, "a", "m1"), Sequenced("tidings.other.X", "a", "m1")])
    assert order.purge(datetime.now(UTC) + timedelta(seconds=1), prefix="tidings.bank.") == 1
    assert order.turn(H, "m1") is None and order.turn("tidings.other.X", "m1") is not None
