"""The pytest fixture shipped for users: their async domain, run eagerly in the test process."""

from __future__ import annotations

import pytest

from tests.shop import build_shop


@pytest.fixture
def tidings_domain():
    return build_shop("async", "async")


def test_the_eager_fixture_runs_async_commands_and_events_inline(tidings_eager):
    shop = tidings_eager
    Order = shop.registry["aggregate"]["Order"]
    Inventory = shop.registry["aggregate"]["Inventory"]
    order = shop.repository_for(Order).add(Order(book_id="b", quantity=2))
    shop.repository_for(Inventory).add(Inventory(book_id="b", in_stock=3))
    message_id = shop.process(shop.registry["command"]["ShipOrder"](order_id=order.id))
    assert isinstance(message_id, str)
    assert shop.repository_for(Inventory).find_by(book_id="b").in_stock == 1


# ---- the fixture never touches the user's data (issue 10, item 9) --------------------------------
def user_shop(root, database_file):
    """The shop as a user has it: a domain.toml pointing at a SQLite file of dev data."""
    (root / "domain.toml").write_text(
        'event_processing = "async"\ncommand_processing = "async"\n'
        f'[databases.default]\nprovider = "sqlite"\ndatabase_uri = "sqlite:///{database_file}"\n'
        '[event_store]\nprovider = "sqlite"\n'
    )
    shop = build_shop("async", "async")
    shop.root_path = root
    from tidings.domain.config import load_config

    shop.config.update(
        {k: v for k, v in load_config(root).items() if k in ("databases", "event_store", "event_processing")}
    )
    return shop


def table_rows(database_file) -> dict[str, list[tuple]]:
    import sqlite3

    with sqlite3.connect(database_file) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr) for t in tables}


def test_the_eager_fixture_leaves_the_database_of_domain_toml_untouched(tmp_path):
    from tidings.app.testing import isolated_eager

    database_file = tmp_path / "dev.db"
    shop = user_shop(tmp_path, database_file)
    assert shop.init().settings.databases["default"].database_uri.endswith("dev.db")
    shop.create_tables()
    Inventory = shop.registry["aggregate"]["Inventory"]
    with shop.domain_context():
        for i in range(14):  # the user's dev data
            shop.repository_for(Inventory).add(Inventory(book_id=f"dev-{i}", in_stock=i))
    before = table_rows(database_file)
    assert len(before["inventory"]) == 14
    shop.dispose()

    with isolated_eager(shop) as test_shop:  # what `tidings_eager` runs
        Order = test_shop.registry["aggregate"]["Order"]
        order = test_shop.repository_for(Order).add(Order(book_id="b", quantity=2))
        test_shop.repository_for(Inventory).add(Inventory(book_id="b", in_stock=3))
        test_shop.process(test_shop.registry["command"]["ShipOrder"](order_id=order.id))
        assert test_shop.repository_for(Inventory).find_by(book_id="b").in_stock == 1
        assert len(test_shop.repository_for(Inventory).all()) == 1  # not the dev rows

    assert table_rows(database_file) == before  # same tables, same rows
    assert shop.settings.databases["default"].database_uri.endswith("dev.db")  # config put back


def test_the_eager_fixture_empties_the_dlq_between_tests(tmp_path):
    from tidings.app.testing import eager_app, isolated_eager
    from tidings.tasks import dlq

    shop = build_shop("async", "async")
    with isolated_eager(shop) as test_shop:
        celery = eager_app(test_shop)
        queue = next(q.name for q in celery.conf.task_queues if "outbox" not in q.name)
        dlq.dead_letter(celery, queue=queue, task="t", body={"id": "m"}, error=ValueError("x"), attempts=1)
        assert len(dlq.list_entries(celery, queue)) == 1
    with isolated_eager(shop) as test_shop:  # the next test
        assert dlq.list_entries(eager_app(test_shop), queue) == []


def test_the_eager_fixtures_dead_letters_are_read_with_dead_letters(tmp_path):
    from tidings.app.testing import dead_letters, isolated_eager

    shop = build_shop("async", "async")
    shop.config["server"]["stream_subscription"].update(max_retries=1, retry_delay_seconds=0.01)
    with isolated_eager(shop) as test_shop:
        Order = test_shop.registry["aggregate"]["Order"]
        order = test_shop.repository_for(Order).add(Order(book_id="b", quantity=2))  # no inventory
        test_shop.process(test_shop.registry["command"]["ShipOrder"](order_id=order.id))
        (letter,) = dead_letters(test_shop)
        assert (letter.queue, letter.error_type) == ("shop.manage_inventory", "ObjectNotFoundError")
        assert dead_letters(test_shop, "OrderCommandHandler") == []
        assert dead_letters(test_shop, test_shop.registry["event_handler"]["ManageInventory"]) == [letter]
