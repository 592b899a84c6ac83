"""Subscription settings: profiles, the priority order, sources, and errors at init."""

from __future__ import annotations

import pytest

from tidings import ConfigurationError, Domain, handle


def build(tmp_path, server=None, **handler_options) -> Domain:
    domain = Domain("shop", root_path=tmp_path)
    if server:
        domain.config["server"].update(server)

    @domain.aggregate
    class Order:
        pass

    @domain.event(part_of=Order)
    class Placed:
        pass

    @domain.event_handler(part_of=Order, **handler_options)
    class Notify:
        @handle(Placed)
        def on(self, event):
            pass

    return domain


def settings(domain):
    domain.init()
    return domain.subscription_settings(domain.registry["event_handler"]["Notify"])


def test_built_in_defaults_apply_when_nothing_else_is_said(tmp_path):
    s = settings(build(tmp_path))
    assert (s.max_retries, s.retry_delay_seconds, s.enable_dlq, s.messages_per_tick) == (3, 1, True, 100)
    assert s.sources["max_retries"] == "built-in default"


def test_server_sections_override_the_built_in_defaults(tmp_path):
    s = settings(build(tmp_path, server={"messages_per_tick": 20, "stream_subscription": {"max_retries": 6}}))
    assert (s.max_retries, s.messages_per_tick) == (6, 20)
    assert s.sources["max_retries"] == "server.stream_subscription"
    assert s.sources["messages_per_tick"] == "server defaults"


def test_handler_config_beats_handler_profile_which_beats_per_handler_server_section(tmp_path):
    domain = build(
        tmp_path,
        server={"subscriptions": {"Notify": {"max_retries": 7, "retry_delay_seconds": 9}}},
        subscription_profile="fast",
        subscription_config={"max_retries": 5},
    )
    s = settings(domain)
    assert s.max_retries == 5 and s.sources["max_retries"] == "handler subscription_config"
    assert s.retry_delay_seconds == 0  # fast profile beats [server.subscriptions.Notify]
    assert s.blocking_timeout_ms == 100


def test_a_custom_profile_inherits_a_built_in_one(tmp_path):
    domain = build(
        tmp_path,
        server={
            "profiles": {"gentle": {"inherits": "batch", "max_retries": 9}},
            "default_subscription_profile": "gentle",
        },
    )
    s = settings(domain)
    assert s.max_retries == 9 and s.messages_per_tick == 500 and s.retry_delay_seconds == 2
    assert "gentle" in s.sources["messages_per_tick"]


def test_the_debug_profile_turns_the_dlq_off(tmp_path):
    assert settings(build(tmp_path, subscription_profile="debug")).enable_dlq is False


@pytest.mark.parametrize(
    "options, fragment",
    [
        (
            {"subscription_config": {"max_retry": 3}},
            "unknown option 'max_retry' in handler subscription_config; did you mean 'max_retries'",
        ),
        ({"subscription_config": {"messages_per_tick": 0}}, "messages_per_tick must be > 0"),
        ({"subscription_config": {"max_retries": -1}}, "max_retries must be >= 0"),
        ({"subscription_profile": "turbo"}, "unknown profile 'turbo'"),
        (
            {"subscription_type": "event_store", "subscription_config": {"enable_dlq": True}},
            "enable_dlq is not available on an event_store subscription",
        ),
    ],
)
def test_invalid_settings_fail_at_init_naming_the_handler_and_the_key(tmp_path, options, fragment):
    with pytest.raises(ConfigurationError) as caught:
        build(tmp_path, **options).init()
    assert "Notify" in str(caught.value) and fragment in str(caught.value)


@pytest.mark.parametrize(
    "profile, expected",
    [
        ("production", ("stream", 100, 5000, 3, 1, True, 10)),
        ("fast", ("stream", 10, 100, 2, 0, True, 5)),
        ("batch", ("stream", 500, 10000, 5, 2, True, 50)),
        ("debug", ("stream", 1, 1000, 1, 0, False, 1)),
        ("projection", ("event_store", 100, None, 3, 1, False, 10)),
    ],
)
def test_each_built_in_profile_resolves_to_the_reference_values(tmp_path, profile, expected):
    s = settings(build(tmp_path, subscription_profile=profile))
    got = (
        s.subscription_type,
        s.messages_per_tick,
        None if profile == "projection" else s.blocking_timeout_ms,
        s.max_retries,
        s.retry_delay_seconds,
        s.enable_dlq,
        s.position_update_interval,
    )
    assert got == expected
    assert s.sources["max_retries"] == f"handler subscription_profile ({profile})"
