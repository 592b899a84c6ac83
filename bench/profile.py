"""`python -m bench.profile [N] [HANDLERS] [PROFILE]`: py-spy profiles of the worker (its
relay loop included) and the producer during a flat-out end-to-end run, as inclusive shares
of non-idle samples (e.g. `python -m bench.profile 2000 10`, `python -m bench.profile 2000 1 batch`).

Needs `pip install py-spy`. Prints the frames that explain where the time goes.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

os.environ.setdefault("TIDINGS_TASK_EVENTS", "false")

from bench.harness import RESULTS, redis_prefix, scratch_database, wait_for  # noqa: E402
from bench.scenarios import PRODUCERS, _warm_up, tidings_pipeline  # noqa: E402

WORKER_FRAMES = [
    "RelayLoop._run",
    "SqlOutbox.relay_batch",
    "_publish_all",
    "Celery.send_task",
    "Domain.run_handler",
    "packed_body.<locals>.run",
    "HandlerRunner.run_pack",
    "mark_many",
    "SqlSession.mark_processed",
    "UnitOfWork.commit",
    "asynloop",
    "Message.ack",
    "_ConnectionFairy._checkout",
]
PRODUCER_FRAMES = [
    "UnitOfWork.commit",
    "SqlSession.append_events",
    "SqlSession.save",
    "SqlSession.write_outbox",
    "SqlSession.commit",
    "Domain.after_commit",
    "RedisWake.signal",
]


def record(pid: int, out: Path, seconds: int, subprocesses: bool) -> subprocess.Popen:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    argv = [
        spy,
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "-o",
        str(out),
        "-d",
        str(seconds),
        "-r",
        "200",
    ] + (["--subprocesses"] if subprocesses else [])
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def shares(raw: Path, frames: list[str]) -> dict[str, float]:
    counts: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        total += int(n)
        names = {f.split(" (")[0] for f in stack.split(";")}
        counts.update({frame: int(n) for frame in frames if frame in names})
    return {frame: 100 * counts[frame] / max(total, 1) for frame in frames}


def main(n: int = 2000, handlers: int = 1, profile: str | None = None) -> None:
    RESULTS.mkdir(exist_ok=True)
    worker_raw, producer_raw = RESULTS / "worker.pyspy", RESULTS / "producer.pyspy"
    with (
        scratch_database() as url,
        redis_prefix() as prefix,
        tidings_pipeline(url, prefix, handlers, profile) as pipe,
    ):
        _warm_up(pipe, handlers)
        pipe.reset()
        spies = [record(pipe.worker_pid, worker_raw, 10, True), record(os.getpid(), producer_raw, 8, False)]
        threads = [
            threading.Thread(target=lambda: [pipe.produce() for _ in range(n // PRODUCERS)])
            for _ in range(PRODUCERS)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_for(lambda: pipe.handled(handlers) >= n // PRODUCERS * PRODUCERS, 600, "the events")
        for spy in spies:
            spy.wait()
    for title, raw, frames in (
        ("worker", worker_raw, WORKER_FRAMES),
        ("producer", producer_raw, PRODUCER_FRAMES),
    ):
        print(f"\n{title} (inclusive share of non-idle samples)")
        for frame, share in shares(raw, frames).items():
            print(f"{share:5.1f}%  {frame}")


if __name__ == "__main__":
    args = sys.argv[1:]
    n, handlers = (int(args[0]) if args else 2000), (int(args[1]) if len(args) > 1 else 1)
    main(n, handlers, args[2] if len(args) > 2 else None)
