"""Where kombu's Redis transport puts back the message of a consumer that was killed: at the
head of its queue (per-key ordering counts on it to keep waits short; see the README)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from contextlib import suppress

import redis
from kombu import Connection, Queue

from tests.services import REDIS_URL, require_redis
from tests.waiting import wait_until

HOLD_ONE = """
import sys, time
from kombu import Connection, Queue
url, prefix, name = sys.argv[1:4]
with Connection(url, transport_options={"global_keyprefix": prefix, "visibility_timeout": 1}) as conn:
    queue = Queue(name, routing_key=name)(conn.default_channel)
    message = queue.get(no_ack=False)  # popped and recorded as unacknowledged, never acked
    print(message.payload, flush=True)
    time.sleep(60)  # killed in here
"""


def test_a_killed_consumers_unacknowledged_message_comes_back_at_the_head_of_its_queue():
    require_redis()
    prefix, name = f"restore_{uuid.uuid4().hex[:8]}:", "restore.q"
    options = {"global_keyprefix": prefix, "visibility_timeout": 1}
    try:
        with Connection(REDIS_URL, transport_options=options) as conn:
            producer = conn.Producer(serializer="json")
            queue = Queue(name, routing_key=name)
            for n in (1, 2, 3):
                producer.publish({"n": n}, routing_key=name, declare=[queue])
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_ONE, REDIS_URL, prefix, name],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert holder.stdout is not None and holder.stdout.readline().strip() == "{'n': 1}"
        os.killpg(holder.pid, signal.SIGKILL)  # no warm shutdown: nothing restores it but the sweep
        holder.wait(timeout=10)
        with Connection(REDIS_URL, transport_options=options) as conn:
            channel = conn.default_channel
            bound = Queue(name, routing_key=name)(channel)

            def restored() -> bool:
                channel.qos.restore_visible(num=100)  # the sweep a worker runs periodically
                return channel.client.hlen("unacked") == 0  # the client adds the prefix

            wait_until(restored, timeout=15, interval=0.3, message="the visibility timeout's restore")
            order = []
            while (message := bound.get(no_ack=True)) is not None:
                order.append(message.payload["n"])
        assert order == [1, 2, 3]  # restored at the head: consumed before what was behind it
    finally:
        with suppress(Exception):
            holder.kill()
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()
