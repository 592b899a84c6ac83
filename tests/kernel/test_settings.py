"""The typed settings tree: parsed once at init(), frozen, every problem reported at once, and
each consumer handed its own typed part."""

from __future__ import annotations

import pydantic
import pytest

from tidings import ConfigurationError, Domain, handle
from tidings.app.server import worker_argv
from tidings.domain.config import DEFAULTS
from tidings.domain.parsing import check_server_broker, parse_settings
from tidings.domain.settings import (
    BrokerSettings,
    OutboxSettings,
    ServerSettings,
    Settings,
    SubscriptionOptions,
)
from tidings.domain.subscriptions import BUILT_IN, resolve

# The reference tutorial "Going Async" (shared/reference/tutorial-going-async.txt), verbatim.
TUTORIAL_GOING_ASYNC = """\
debug = true
[databases.default]
provider = "postgresql"
database_uri = "${DATABASE_URL|postgresql://postgres:postgres@localhost:5432/bookshelf}"
[brokers.default]
provider = "redis"
url = "${REDIS_URL|redis://localhost:6379/0}"
event_processing = "async"
command_processing = "async"
enable_outbox = true
[event_store]
provider = "memory"
[server]
default_subscription_type = "stream"
messages_per_tick = 100
[server.stream_subscription]
blocking_timeout_ms = 100
max_retries = 3
retry_delay_seconds = 1
enable_dlq = true
"""

# The reference brokers document (shared/reference/brokers.txt), verbatim.
BROKERS_DOCUMENT = """\
# Default broker configuration (required)
[brokers.default]
provider = "inline"
# Additional named brokers
[brokers.notifications]
provider = "redis_pubsub"
URI = "redis://localhost:6379/0"
[brokers.analytics]
provider = "redis"
URI = "redis://localhost:6379/1"
"""


def domain_from(tmp_path, toml: str) -> Domain:
    (tmp_path / "domain.toml").write_text(toml)
    return Domain("shop", root_path=tmp_path)


def problems_of(domain: Domain) -> list[str]:
    with pytest.raises(ConfigurationError) as caught:
        domain.init()
    return str(caught.value).split("\n  - ")[1:]


# ---- the two reference configurations -------------------------------------------------------------
def test_the_tutorials_processing_keys_under_brokers_default_fail_at_init_naming_the_fix(tmp_path):
    problems = problems_of(domain_from(tmp_path, TUTORIAL_GOING_ASYNC))
    for key in ("event_processing", "command_processing", "enable_outbox"):
        assert any(
            p.startswith(
                f"'{key}' belongs at the top level of domain.toml, not in [brokers.default]: "
                "move it above the first [table]"
            )
            for p in problems
        ), problems
    assert len(problems) == 3


def test_the_tutorial_with_the_keys_moved_to_the_top_level_works_as_written(tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    moved = ["event_processing", "command_processing", "enable_outbox"]
    lines = TUTORIAL_GOING_ASYNC.splitlines()
    top = [line for line in lines if line.split(" = ")[0] in moved]
    rest = [line for line in lines if line not in top]
    domain = domain_from(tmp_path, "\n".join(top + rest) + "\n").init()
    settings = domain.settings
    assert (settings.event_processing, settings.command_processing, settings.enable_outbox) == (
        "async",
        "async",
        True,
    )
    assert settings.brokers["default"].options.url == "redis://localhost:6379/0"
    assert settings.server.stream_subscription.enable_dlq is True
    domain.dispose()


def test_the_brokers_documents_inline_default_is_fine_for_a_domain_but_refused_by_the_server(tmp_path):
    domain = domain_from(tmp_path, BROKERS_DOCUMENT).init()  # a sync-only domain may use inline
    assert domain.settings.brokers["notifications"].options.url == "redis://localhost:6379/0"  # URI
    with pytest.raises(ConfigurationError) as caught:
        worker_argv(domain, pool="solo", concurrency=None, beat=False, debug=False)
    message = str(caught.value)
    assert message.startswith("`tidings server` with the inline default broker cannot reach other processes")
    assert 'set [brokers.default] provider = "redis" (or celery/amqp/sqlalchemy)' in message.lower()
    domain.dispose()


def test_the_server_accepts_a_real_default_broker_or_a_celery_broker_url():
    check_server_broker(Settings(brokers={"default": BrokerSettings(provider="redis")}))
    check_server_broker(Settings(celery={"broker_url": "redis://localhost:6379/0"}))
    with pytest.raises(ConfigurationError, match="memory default broker"):
        check_server_broker(Settings(brokers={"default": BrokerSettings(provider="memory")}))


# ---- every problem at once, with "did you mean" ---------------------------------------------------
def test_every_problem_of_every_section_is_reported_at_once(tmp_path, monkeypatch):
    monkeypatch.delenv("SHOP_UNSET", raising=False)
    domain = Domain("shop", root_path=tmp_path)
    domain.config["outbox"].update(batch_sise=10, interval="often", retention="${SHOP_UNSET}")
    domain.config["server"]["stream_subscription"] = {"max_retry": 2, "enable_dlq": "maybe"}
    domain.config["server"]["default_subscription_profile"] = "fsat"
    domain.config["brokers"]["feed"] = {"provider": "redis", "url": "redis://x", "claim_idle": 5}
    domain.config["databases"]["default"] = {"provider": "postgress"}
    domain.config["command_processing"] = "later"
    problems = problems_of(domain)
    expected = [
        "unknown config key 'outbox.batch_sise'; did you mean 'batch_size'?",
        "config key 'outbox.interval' must be a number, got 'often'",
        "config key 'outbox.retention': environment variable SHOP_UNSET is not set",
        "unknown config key 'server.stream_subscription.max_retry'; did you mean 'max_retries'?",
        "config key 'server.stream_subscription.enable_dlq' must be true or false, got 'maybe'",
        "config key 'server.default_subscription_profile': unknown profile 'fsat'",
        "unknown config key 'brokers.feed.claim_idle'; did you mean 'claim_idle_ms'?",
        "config key 'databases.default.provider': unknown provider 'postgress'",
        "config key 'command_processing' must be one of ['async', 'sync'], got 'later'",
    ]
    for fragment in expected:
        assert any(fragment in p for p in problems), (fragment, problems)
    assert len(problems) == len(expected)  # each once, nothing else


@pytest.mark.parametrize(
    "section, key, likely",
    [
        (("server", "stream_subscription"), "blocking_timout_ms", "blocking_timeout_ms"),
        (("server", "event_store_subscription"), "position_interval", "position_update_interval"),
        (("event_store",), "databse_uri", "database_uri"),
        (("brokers", "default"), "URL", "url"),
    ],
)
def test_a_misspelt_nested_key_names_its_path_and_the_likely_key(section, key, likely):
    config: dict = {"brokers": {"default": {"provider": "inline"}}}
    node = config
    for name in section:
        node = node.setdefault(name, {})
    node[key] = "1"
    settings, problems = parse_settings(config)
    assert settings is None
    assert problems == [f"unknown config key '{'.'.join((*section, key))}'; did you mean '{likely}'?"]


def test_a_misspelt_per_handler_subscription_key_is_caught_without_the_handler_being_registered():
    _, problems = parse_settings({"server": {"subscriptions": {"Notify": {"max_retires": 3}}}})
    assert problems == [
        "unknown config key 'server.subscriptions.Notify.max_retires'; did you mean 'max_retries'?"
    ]


def test_profiles_named_in_the_configuration_are_checked_when_it_is_parsed():
    _, problems = parse_settings(
        {
            "server": {
                "profiles": {"fast": {}, "slow": {"inherits": "bach"}},
                "subscriptions": {"A": {"profile": "x"}},
            }
        }
    )
    assert any("'fast' is a built-in profile" in p for p in problems)
    assert any(
        "server.profiles.slow.inherits': 'bach' is not a built-in" in p and "'batch'" in p for p in problems
    )
    assert any("server.subscriptions.A.profile': unknown profile 'x'" in p for p in problems)


# ---- ${VAR|default} and typed coercion ------------------------------------------------------------
def test_interpolated_strings_become_the_fields_types(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOP_BATCH", "5")
    monkeypatch.setenv("SHOP_DEBUG", "yes")
    monkeypatch.setenv("SHOP_IDLE", "250")
    (tmp_path / "domain.toml").write_text(
        'debug = "${SHOP_DEBUG|false}"\n'
        'enable_outbox = "${SHOP_OUTBOX|}"\n'
        "[outbox]\n"
        'batch_size = "${SHOP_BATCH|100}"\n'
        'interval = "${SHOP_INTERVAL|2.5}"\n'
        "[brokers.feed]\n"
        'provider = "redis"\n'
        'url = "redis://localhost:6379/0"\n'
        'claim_idle_ms = "${SHOP_IDLE|60000}"\n'
    )
    domain = Domain("shop", root_path=tmp_path).init()
    settings = domain.settings
    assert settings.outbox.batch_size == 5 and type(settings.outbox.batch_size) is int
    assert settings.outbox.interval == 2.5
    assert settings.debug is True
    assert settings.enable_outbox is False  # `${X|}`: empty is false
    assert domain.brokers["feed"].claim_idle_ms == 250
    domain.dispose()


def test_an_interpolated_value_that_is_not_a_number_names_its_key(monkeypatch):
    monkeypatch.setenv("SHOP_BATCH", "lots")
    _, problems = parse_settings({"outbox": {"batch_size": "${SHOP_BATCH|100}"}})
    assert problems == ["config key 'outbox.batch_size' must be a whole number, got 'lots'"]


@pytest.mark.parametrize(
    "value, fragment",
    [(0, "must be a positive number, got 0"), (True, "must be a number, got True"), (2.5, "whole number")],
)
def test_numbers_are_checked_for_what_they_mean(value, fragment):
    _, problems = parse_settings({"outbox": {"batch_size": value}})
    assert len(problems) == 1 and fragment in problems[0] and "outbox.batch_size" in problems[0]


# ---- frozen -------------------------------------------------------------------------------------------
def test_the_settings_are_frozen_at_every_level(tmp_path):
    domain = Domain("shop", root_path=tmp_path).init()
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        domain.settings.event_processing = "sync"
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        domain.settings.outbox.batch_size = 1
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        domain.settings.brokers["default"].provider = "redis"


def test_editing_the_raw_config_and_calling_init_again_builds_new_settings(tmp_path):
    domain = Domain("shop", root_path=tmp_path).init()
    first = domain.settings
    domain.config["outbox"]["batch_size"] = 7
    domain.init()
    assert (first.outbox.batch_size, domain.settings.outbox.batch_size) == (100, 7)


# ---- one source of defaults ----------------------------------------------------------------------------
def test_the_raw_defaults_parse_to_the_typed_defaults():
    settings, problems = parse_settings(DEFAULTS)
    assert problems == [] and settings == Settings()


def test_the_subscription_options_are_exactly_the_built_in_keys():
    assert set(SubscriptionOptions.model_fields) == set(BUILT_IN)


# ---- each consumer gets its own typed part ------------------------------------------------------------
def test_each_broker_adapter_gets_its_own_settings_with_its_own_options_model(tmp_path):
    domain = domain_from(tmp_path, BROKERS_DOCUMENT).init()
    analytics = domain.brokers["analytics"]
    assert analytics.settings is domain.settings.brokers["analytics"]
    assert type(analytics.settings.options).__name__ == "RedisStreamOptions"
    assert (analytics.url, analytics.claim_idle_ms, analytics.maxlen) == (
        "redis://localhost:6379/1",
        60000,
        None,
    )
    assert type(domain.brokers["notifications"].settings.options).__name__ == "RedisOptions"
    domain.dispose()


def test_the_subscription_resolver_needs_only_the_server_settings(tmp_path):
    domain = Domain("shop", root_path=tmp_path)

    @domain.aggregate
    class Order:
        pass

    @domain.event(part_of=Order)
    class Placed:
        pass

    @domain.event_handler(part_of=Order)
    class Notify:
        @handle(Placed)
        def on(self, event):
            pass

    server = ServerSettings(stream_subscription=SubscriptionOptions(max_retries=6), messages_per_tick=20)
    resolved = resolve(domain.registry["event_handler"]["Notify"], server)
    assert (resolved.max_retries, resolved.messages_per_tick) == (6, 20)
    assert resolved.sources["max_retries"] == "server.stream_subscription"


def test_the_celery_app_reads_the_outbox_and_celery_parts(tmp_path):
    from tidings.app.testing import eager_app

    domain = Domain("shop", root_path=tmp_path)
    domain.config["outbox"]["interval"] = "2.5"
    domain.config["celery"] = {"worker_concurrency": 3}
    domain.init()
    assert isinstance(domain.settings.outbox, OutboxSettings)
    celery = eager_app(domain)
    assert domain.settings.outbox.interval == 2.5  # the relay loop's idle period (app/relay_loop.py)
    assert celery.conf.worker_concurrency == 3
    celery.close()
