"""The circuit breaker per handler (issue 12 item 4), with real worker processes on Redis and
RabbitMQ: `Charge` (threshold 3, cool-down 2 s, max_retries 2) fails while its dependency is
down (LANES_DOWN_FILE exists).

What must hold: the breaker opens after 3 failures in a row; the lane stops consuming
`Charge`'s queue and the messages wait there (none spends its retries into the DLQ); after
the cool-down one probe runs (half-open), fails, and the breaker opens again; once the
dependency is back the next probe closes it and every message is applied exactly once."""

from __future__ import annotations

import pytest

from tests.lanes.conftest import lanes_run, served
from tidings.app.bootstrap import runtime_for
from tidings.tasks import dlq
from tidings.tasks.breaker import breaker_states

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

MESSAGES = 12


def test_breaker_opens_holds_the_queue_probes_and_closes_applying_everything_once(tmp_path, broker):
    down = tmp_path / "down"
    down.touch()
    with lanes_run(tmp_path, broker, LANES_DOWN_FILE=str(down)) as run, served(run) as server:
        celery = runtime_for(run.domain).celery
        queue = f"{run.domain.name}.charge"
        ids = run.post("ChargePosted", MESSAGES)

        run.wait(lambda: breaker_states(run.domain).get("Charge") == "open", "the breaker to open")
        run.wait(lambda: f"stopped consuming {queue}" in server.output(), "the lane to stop consuming")
        # the messages wait in the queue; none went to the DLQ, none was applied
        run.wait(lambda: run.depth(celery, queue) >= MESSAGES - 4, "the messages back in the queue")
        assert dlq.depth(celery, queue) == 0
        assert run.effects("Charge") == []

        # half-open after the cool-down: one probe, which fails, and the breaker opens again
        run.wait(lambda: "probe failed, open again" in server.output(), "a failed probe")
        assert dlq.depth(celery, queue) == 0

        down.unlink()  # the dependency is back: the next probe closes the breaker
        run.wait(lambda: len(run.effects("Charge")) >= MESSAGES, "every message applied")
        run.wait(lambda: breaker_states(run.domain).get("Charge") == "closed", "the breaker to close")
        applied = [e.message_id for e in run.effects("Charge")]
        assert sorted(applied) == sorted(ids), "a message was lost or applied twice"
        assert dlq.depth(celery, queue) == 0, "a message was dead-lettered while its dependency was down"
        log = server.output()
        assert "circuit breaker of Charge opened" in log
        assert "circuit breaker of Charge closed" in log
        assert f"consuming {queue} again" in log
