"""`tidings server`: the subscriptions it prints, and `--test-mode` on the bookshelf example."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_demo import TIDINGS

ROOT = Path(__file__).resolve().parents[1]


def embedded_env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "BROKER_URL")}
    return {
        **clean,
        "TIDINGS_DATABASE_PROVIDER": "sqlite",
        "DATABASE_URL": f"sqlite:///{tmp_path}/bookshelf.db",
        "TIDINGS_BROKER_PROVIDER": "sqlalchemy",
        "BROKER_URL": f"sqla+sqlite:///{tmp_path}/broker.db",
    }


SEED = """
from tidings.examples.bookshelf.domain import domain, AddBook, AddStock
domain.init(); domain.create_tables()
with domain.domain_context():
    book = AddBook(title="Dune", author="Frank Herbert", isbn="978-0441172719", price=9.99)
    domain.process(book)
print(book.book_id)
"""
CHECK = """
import sys
from tidings.examples.bookshelf.domain import domain, BookCatalog, Inventory
domain.init()
with domain.domain_context():
    entry = domain.repository_for(BookCatalog).get(sys.argv[1])
    stock = domain.repository_for(Inventory).get(sys.argv[1])
print(entry.title, entry.in_stock, stock.in_stock)
"""


@pytest.mark.slow
def test_test_mode_processes_everything_pending_and_exits_0(tmp_path):
    env = embedded_env(tmp_path)
    # commands committed while no worker runs: they wait in the outbox
    book_id = subprocess.run(
        [sys.executable, "-c", SEED], env=env, cwd=tmp_path, check=True, capture_output=True, text=True
    ).stdout.strip()
    result = subprocess.run(
        [TIDINGS, "server", "--domain", "tidings.examples.bookshelf", "--test-mode"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BookEventHandler -> bookshelf::book (bookshelf.book_event_handler, stream)" in result.stdout
    assert '"quiescent": true' in result.stdout
    state = subprocess.run(
        [sys.executable, "-c", CHECK, book_id],
        env=env,
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    # AddBook -> BookAdded -> the inventory record and the catalog entry, across three hops
    assert state == ["Dune", "0", "0"]


POISON = """
from tidings.app.bootstrap import create_celery_app
from tidings.examples.bookshelf.domain import domain
domain.init(); domain.create_tables()
create_celery_app(domain).send_task("tidings.bookshelf.BookEventHandler", args=["{broken"],
                                    queue="bookshelf.book_event_handler")
"""


@pytest.mark.slow
def test_test_mode_exits_1_when_a_message_went_to_the_dlq(tmp_path):
    env = embedded_env(tmp_path)
    subprocess.run([sys.executable, "-c", POISON], env=env, cwd=tmp_path, check=True)
    result = subprocess.run(
        [TIDINGS, "server", "--domain", "tidings.examples.bookshelf", "--test-mode"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert '"bookshelf.book_event_handler": 1' in result.stdout
