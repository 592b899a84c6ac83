"""The composition root: one bootstrap per process, and commits wake the relay loop without it."""

from __future__ import annotations

import dataclasses
import threading

import pytest
import redis

from tests.engine.conftest import FAST, running_worker
from tests.engine.ledger import applied, build_ledger, make_entry
from tests.services import REDIS_URL
from tests.waiting import wait_until
from tidings.app.bootstrap import Runtime, bootstrap, runtime_for


def ledger_on_redis(tmp_path, prefix: str):
    domain = build_ledger(tmp_path, name=f"boot_{prefix.split('-')[-1].rstrip(':')}")
    domain.config["databases"]["default"] = {
        "provider": "sqlite",
        "database_uri": f"sqlite:///{tmp_path}/b.db",
    }
    domain.config["event_store"] = {"provider": "sqlite"}
    domain.config["brokers"]["default"] = {"provider": "redis", "url": REDIS_URL}
    domain.config["celery"] = {
        "broker_transport_options": {**FAST, "global_keyprefix": prefix},
        "allow_unsafe": ["visibility_timeout"],  # FAST's 4 s is below the recovery bound
    }
    domain.init()
    domain.create_tables()
    return domain


def test_a_process_that_never_bootstrapped_wakes_the_relay_on_its_first_async_commit(tmp_path, redis_prefix):
    domain = ledger_on_redis(tmp_path, redis_prefix)
    assert domain.engine is None  # an API process or a script: nobody built a Celery app

    entry_id = make_entry(domain, "from-a-script")

    # the commit loaded the engine (entry point tidings.engines) and pushed one relay wake-up
    assert domain.engine is not None
    client = redis.Redis.from_url(REDIS_URL)
    wake = f"{redis_prefix}tidings:{domain.name}:relay-wake"
    wait_until(lambda: client.llen(wake) == 1, message="one relay wake-up")
    # a worker without beat relays it from its relay loop, and consumes the wake-up
    with running_worker(runtime_for(domain).celery):
        wait_until(lambda: applied(domain, entry_id) == 1, message="handled after the wake-up")
        assert client.llen(wake) == 0
    domain.dispose()


def test_the_runtime_is_built_once_and_cannot_be_changed(tmp_path, redis_prefix):
    domain = ledger_on_redis(tmp_path, redis_prefix)
    runtime = bootstrap(domain)
    assert runtime_for(domain) is runtime
    assert domain.engine is runtime.engine
    with pytest.raises(dataclasses.FrozenInstanceError):
        runtime.celery = None  # type: ignore[misc]
    assert isinstance(runtime, Runtime)
    domain.dispose()


def test_a_commit_never_touches_the_broker_from_the_committing_thread(tmp_path, redis_prefix):
    domain = ledger_on_redis(tmp_path, redis_prefix)
    runtime = bootstrap(domain)
    senders: list[threading.Thread] = []
    wake = runtime.engine.wake
    assert wake is not None
    original = wake.signal

    def recording_signal() -> None:
        senders.append(threading.current_thread())
        original()

    wake.signal = recording_signal  # type: ignore[method-assign]
    try:
        make_entry(domain, "one")
        wait_until(lambda: senders, message="the relay wake-up was sent")
    finally:
        wake.signal = original  # type: ignore[method-assign]
    # a frozen or refusing broker therefore blocks the kicker's thread, never the producer
    assert senders[0] is not threading.current_thread()
    assert senders[0].name.startswith("tidings-kick-")
    domain.dispose()
