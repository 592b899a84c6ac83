"""A 10-second database outage during load dead-letters nothing: every delivery in flight
meets transient faults, is retried past max_retries, and is applied exactly once after."""

from __future__ import annotations

import logging
import time

import pytest
import sqlalchemy as sa

from tests.engine import ledger
from tests.engine.conftest import running_worker
from tests.engine.ledger import build_ledger, make_entry
from tests.engine.own_services import own_postgres
from tests.waiting import wait_until
from tidings.domain.tables import table_name
from tidings.outbox.tables import PUBLISHED
from tidings.tasks import dlq

log = logging.getLogger("tests.outage")
QUEUE = "ledger.apply"
ENTRIES = 300
OUTAGE_SECONDS = 10


def tallies(domain) -> dict[str, int]:
    """Entry id -> how many times its handler's effect committed: the tally's counter, which
    each run that commits increments (not idempotent on its own; the inbox makes it once)."""
    table = table_name(domain.registry["aggregate"]["Tally"])
    with domain.outbox_database.engine.connect() as conn:  # one database holds everything
        return dict(conn.execute(sa.text(f"SELECT entry_id, applied FROM {table}")).all())


def published(domain) -> int:
    t = domain.outbox_database.outbox_table
    with domain.outbox_database.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(t).where(t.c.status == PUBLISHED)).scalar()


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_a_ten_second_database_outage_during_load_dead_letters_nothing(redis_app, caplog, tmp_path):
    caplog.set_level("ERROR")
    ledger.FAILURES.clear()
    ledger.ERRORS_SEEN.clear()
    with own_postgres() as pg:
        domain = build_ledger()
        domain.config["databases"]["default"] = {"provider": "postgresql", "database_uri": pg.url}
        domain.config["event_store"] = {"provider": "postgresql"}
        domain.init()
        domain.create_tables()
        celery = redis_app(domain)  # default [server.transient_retry]; max_retries 3, 0 s apart
        try:
            with running_worker(celery):
                entries = [make_entry(domain, f"paced-{i}") for i in range(ENTRIES)]
                wait_until(lambda: published(domain) == ENTRIES, timeout=60, message="all relayed")
                in_flight = ENTRIES - len(tallies(domain))
                pg.stop()
                stopped = time.monotonic()
                time.sleep(OUTAGE_SECONDS)  # the fault itself: the database is down this long
                pg.start()
                outage = time.monotonic() - stopped
                done = wait_until(
                    lambda: len(tallies(domain)) == ENTRIES and tallies(domain),
                    timeout=90,
                    message="every entry applied after the outage",
                )
                recovered = time.monotonic() - stopped - outage
            dead = dlq.list_entries(celery, QUEUE)
            transient = sum(1 for kind, _ in ledger.ERRORS_SEEN if kind != "DownstreamError")
            log.warning(
                "outage %.1fs, %d deliveries in flight at the stop, %d transient faults, "
                "all %d applied %.1fs after the restart, %d dead-lettered",
                outage,
                in_flight,
                transient,
                ENTRIES,
                recovered,
                len(dead),
            )
            print(
                f"\nOUTAGE {outage:.1f}s in_flight={in_flight} faults={transient} "
                f"recovered_after_restart={recovered:.1f}s dead_lettered={len(dead)}"
            )
            assert in_flight > 0, "the outage must hit deliveries in flight"
            assert transient > 0, "the handlers must have met the outage"
            assert dead == []
            assert set(done) == set(entries)
            assert set(done.values()) == {1}  # every effect exactly once
        finally:
            celery.close()
            domain.dispose()
