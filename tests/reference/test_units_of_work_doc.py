"""Two handler-run guarantees of the reference:

- the event-handlers document: "Each @handle method runs within its own Unit of Work", so a
  failing second method does not roll back the first; on the async path a retry re-runs only
  the method that failed (its inbox rows are per method);
- the reference study's `server.version_retry` (protean.md §2.1, §4.9): a handler run that
  meets `ExpectedVersionError` is re-run with backoff (enabled, 3 retries, 0.05 s to 1 s)
  before the failure counts, so two concurrent writers of one aggregate both land.
"""

from __future__ import annotations

import threading

import pytest

from tidings import Domain, ExpectedVersionError, handle
from tidings.app.testing import eager_app
from tidings.domain.bus import SKIPPED
from tidings.fields import Identifier, Integer, String


def audit_domain(processing: str = "async") -> Domain:
    """`Audit.both` has two methods for `Shipped`: `log` writes one `Trail` row per run (not
    idempotent), `notify` writes one too but fails while `flaky["left"] > 0`."""
    domain = Domain("audits")
    domain.config["event_processing"] = processing

    @domain.aggregate
    class Trail:
        order_id: Identifier(required=True)
        step: String(required=True)

    @domain.event(part_of=Trail)
    class Shipped:
        order_id: Identifier(required=True)

    flaky = {"left": 0, "runs": 0}

    @domain.event_handler(part_of=Trail, subscription_config={"max_retries": 5, "retry_delay_seconds": 0})
    class Audit:
        @handle(Shipped)
        def log(self, event: Shipped) -> None:
            domain.repository_for(Trail).add(Trail(order_id=event.order_id, step="logged"))

        @handle(Shipped)
        def notify(self, event: Shipped) -> None:
            flaky["runs"] += 1
            if flaky["left"] > 0:
                flaky["left"] -= 1
                raise ConnectionError("the mailer is down")
            domain.repository_for(Trail).add(Trail(order_id=event.order_id, step="notified"))

    domain.flaky = flaky  # type: ignore[attr-defined]
    return domain


def steps(domain: Domain) -> list[str]:
    return sorted(t.step for t in domain.repository_for(domain.registry["aggregate"]["Trail"]).all())


def shipped(domain: Domain):
    return domain.event_message(domain.registry["event"]["Shipped"](order_id="o-1"))


def test_each_method_has_its_own_unit_of_work_and_a_retry_reruns_only_the_failed_one(use_provider):
    domain = use_provider(audit_domain())
    domain.flaky["left"] = 2
    handler, message = domain.registry["event_handler"]["Audit"], shipped(domain)
    with domain.domain_context():
        for attempt in (1, 2):  # what the worker's redeliveries do: the same message again
            with pytest.raises(ConnectionError):
                domain.run_handler(handler, message, idempotency_key="audits.Audit")
            assert steps(domain) == ["logged"], f"attempt {attempt}: the first method's work stays"
        domain.run_handler(handler, message, idempotency_key="audits.Audit")
        assert steps(domain) == ["logged", "notified"]  # `log` ran once, `notify` three times
        assert domain.flaky["runs"] == 3
        assert domain.run_handler(handler, message, idempotency_key="audits.Audit") is SKIPPED
        assert steps(domain) == ["logged", "notified"]  # no double effect
    # the handler's own inbox row is there once all methods are: what quiescence counts
    applied = domain.storage.deliveries.snapshot(["audits.Audit"]).applied
    assert [m for m, _ in applied] == [message.id]


def test_on_the_worker_the_second_method_is_retried_until_it_succeeds():
    domain = audit_domain().init()
    celery = eager_app(domain)  # the tasks, retries and inbox of a worker, run inline
    domain.flaky["left"] = 3
    Trail, Shipped = domain.registry["aggregate"]["Trail"], domain.registry["event"]["Shipped"]
    with domain.domain_context():
        trail = Trail(order_id="o-1", step="created")
        trail.raise_(Shipped(order_id="o-1"))
        domain.repository_for(Trail).add(trail)
        assert steps(domain) == ["created", "logged", "notified"]
    assert domain.flaky["runs"] == 4  # three failures, then success
    assert celery.tidings_runtime.stats["handled"] == 1
    assert celery.tidings_runtime.stats["dead_lettered"] == 0


def test_sync_a_failing_method_does_not_roll_back_the_other():
    domain = audit_domain("sync").init()
    domain.flaky["left"] = 1
    handler = domain.registry["event_handler"]["Audit"]
    with domain.domain_context():
        with pytest.raises(ConnectionError):
            domain.run_handler(handler, shipped(domain))
        assert steps(domain) == ["logged"]


def test_several_failing_methods_are_raised_together():
    domain = audit_domain("sync")
    Audit = domain.registry["event_handler"]["Audit"]
    Audit.log = handle(domain.registry["event"]["Shipped"])(lambda self, event: 1 / 0)
    domain.init()
    domain.flaky["left"] = 1
    with domain.domain_context(), pytest.raises(ExceptionGroup) as raised:
        domain.run_handler(Audit, shipped(domain))
    assert {type(e) for e in raised.value.exceptions} == {ZeroDivisionError, ConnectionError}


# ---- version retry -------------------------------------------------------------------------------
def counter_domain(retry: dict | None = None) -> Domain:
    """`Tally.count` loads the one `Counter`, waits until both writers loaded it (first run
    only), then adds its amount: the second save meets the first one's version."""
    domain = Domain("tallies")
    domain.config["event_processing"] = "async"
    if retry is not None:
        domain.config["server"] = {"version_retry": retry}

    @domain.aggregate
    class Counter:
        total: Integer(default=0)

    @domain.event(part_of=Counter)
    class Added:
        counter_id: Identifier(required=True)
        amount: Integer(required=True)

    both_loaded = threading.Barrier(2, timeout=10)
    runs: list[int] = []

    @domain.event_handler(part_of=Counter)
    class Tally:
        @handle(Added)
        def count(self, event: Added) -> None:
            repo = domain.repository_for(Counter)
            counter = repo.get(event.counter_id)
            first_run = event.amount not in runs
            runs.append(event.amount)
            if first_run:
                both_loaded.wait()
            counter.total += event.amount
            repo.add(counter)

    domain.runs = runs  # type: ignore[attr-defined]
    return domain


def concurrent_writers(domain: Domain) -> tuple[list[BaseException], int]:
    """Two threads handle one `Added` each for the same counter; returns their errors and the
    counter's final total."""
    Counter, Added = domain.registry["aggregate"]["Counter"], domain.registry["event"]["Added"]
    tally = domain.registry["event_handler"]["Tally"]
    with domain.domain_context():
        counter = domain.repository_for(Counter).add(Counter())
    errors: list[BaseException] = []

    def write(amount: int) -> None:
        message = domain.event_message(Added(counter_id=counter.id, amount=amount))
        try:
            domain.run_handler(tally, message, idempotency_key="tallies.Tally")
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(amount,)) for amount in (1, 10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    with domain.domain_context():
        return errors, domain.repository_for(Counter).get(counter.id).total


@pytest.mark.parametrize("provider", ["postgresql", "memory"], indirect=True)
def test_a_version_conflict_is_retried_and_both_writers_land(use_provider):
    domain = use_provider(counter_domain())
    errors, total = concurrent_writers(domain)
    assert errors == []
    assert total == 11  # both effects
    assert len(domain.runs) == 3  # two first runs, one re-run of the writer that lost
    assert domain.bus.stats["version_retries"] == 1


@pytest.mark.parametrize("provider", ["postgresql"], indirect=True)
def test_with_version_retry_disabled_the_conflict_fails_the_run(use_provider):
    domain = use_provider(counter_domain({"enabled": False}))
    errors, total = concurrent_writers(domain)
    assert [type(e) for e in errors] == [ExpectedVersionError]
    assert total in (1, 10)  # only the winner's effect
    assert domain.bus.stats["version_retries"] == 0


def test_version_retry_settings_have_the_references_defaults_and_are_typed():
    domain = counter_domain().init()
    retry = domain.bus.version_retry
    assert (retry.enabled, retry.max_retries, retry.base_delay, retry.max_delay) == (True, 3, 0.05, 1.0)
    assert [retry.delay(n) for n in (1, 2, 3, 6)] == [0.05, 0.1, 0.2, 1.0]
    custom = counter_domain({"max_retries": 5, "base_delay_seconds": 0.01}).init()
    assert (custom.bus.version_retry.max_retries, custom.bus.version_retry.base_delay) == (5, 0.01)
    with pytest.raises(Exception, match="version_retry"):
        counter_domain({"max_retries": -1}).init()
