"""Celery settings in layers (Tidings' defaults < the user's celeryconfig < the domain < its
`[celery]` table < `create_celery_app` overrides), and the refusal of any value that weakens a
delivery guarantee. Fast: no broker, no worker."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.engine.ledger import build_ledger
from tidings import handle
from tidings.app.bootstrap import create_celery_app
from tidings.app.celery_settings import (
    GUARANTEES,
    Layer,
    celery_settings,
    check_guarantees,
    defaults_layer,
    layered_settings,
    module_settings,
    user_layer,
)
from tidings.domain.errors import ConfigurationError
from tidings.fields import String

REPO_ROOT = Path(__file__).resolve().parents[2]
DERIVED = {"broker_url": "memory://", "broker_transport_options": {"polling_interval": 0.05}}
# One value per enforced key that weakens it.
WEAKENING: dict[str, Any] = {
    "task_acks_late": False,
    "task_reject_on_worker_lost": None,
    "task_retry_on_worker_lost": False,
    "task_acks_on_timeout": False,
    "task_serializer": "msgpack",
    "result_serializer": "yaml",
    "event_serializer": "yaml",
    "accept_content": ["json", "application/x-python-serialize"],  # Python object serialization
    "result_accept_content": ["application/x-python-serialize"],
}


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """A user project directory; the config modules it writes are forgotten afterwards."""
    names = ("celeryconfig", "mysettings")
    saved = {name: sys.modules.pop(name) for name in names if name in sys.modules}
    importlib.invalidate_caches()
    yield tmp_path
    for name in names:
        sys.modules.pop(name, None)
    sys.modules.update(saved)


def write(folder: Path, module: str, body: str) -> None:
    (folder / f"{module}.py").write_text(body)
    importlib.invalidate_caches()


def settings(project: Path, table: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    return celery_settings(table or {}, DERIVED, overrides, environ={}, cwd=project).values


def test_the_defaults_alone_keep_every_guarantee() -> None:
    layered = layered_settings([defaults_layer()])
    check_guarantees(layered)
    assert layered.values["task_acks_late"] is True
    assert layered.values["accept_content"] == ["json"]
    assert layered.values["worker_prefetch_multiplier"] == 1
    assert set(layered.origins.values()) == {"tidings.celeryconfig"}


def test_each_layer_wins_over_the_one_below(project: Path) -> None:
    write(
        project,
        "celeryconfig",
        "worker_prefetch_multiplier = 4\nworker_concurrency = 3\ntask_time_limit = 30\n"
        "task_soft_time_limit = 20\nbroker_url = 'redis://ignored'\n",
    )
    result = celery_settings(
        {"task_time_limit": 60, "task_soft_time_limit": 50},
        DERIVED,
        {"task_soft_time_limit": 55},
        environ={},
        cwd=project,
    )
    values, origins = result.values, result.origins
    assert (values["worker_prefetch_multiplier"], origins["worker_prefetch_multiplier"]) == (
        4,
        "celeryconfig",
    )
    assert values["worker_concurrency"] == 3
    assert values["broker_url"] == "memory://"  # the domain's [brokers.default] decides the broker
    assert (values["task_time_limit"], origins["task_time_limit"]) == (60, "domain.toml [celery]")
    assert (values["task_soft_time_limit"], origins["task_soft_time_limit"]) == (
        55,
        "create_celery_app overrides",
    )
    assert (values["task_acks_late"], origins["task_acks_late"]) == (True, "tidings.celeryconfig")


def test_transport_options_merge_key_by_key_across_layers(project: Path) -> None:
    write(project, "celeryconfig", "broker_transport_options = {'visibility_timeout': 60}\n")
    values = settings(project, {"broker_transport_options": {"polling_interval": 0.5}})
    options = values["broker_transport_options"]
    assert options["visibility_timeout"] == 60  # celeryconfig
    assert options["polling_interval"] == 0.5  # [celery], over the domain's 0.05
    assert options["unacked_restore_interval"] == 5  # Tidings' default, kept


def test_a_user_celeryconfig_that_drops_late_acks_is_refused_in_one_line(project: Path) -> None:
    write(project, "celeryconfig", "task_acks_late = False\n")
    with pytest.raises(ConfigurationError) as refused:
        settings(project)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("tidings: celeryconfig sets task_acks_late=False, which loses messages")
    assert 'set [celery] allow_unsafe = ["task_acks_late"]' in message


@pytest.mark.parametrize("key", sorted(WEAKENING))
@pytest.mark.parametrize("layer", ["celeryconfig", "domain.toml [celery]", "create_celery_app overrides"])
def test_every_enforced_key_is_refused_from_every_layer(project: Path, key: str, layer: str) -> None:
    value = WEAKENING[key]
    if layer == "celeryconfig":
        write(project, "celeryconfig", f"{key} = {value!r}\n")
        call = lambda: settings(project)  # noqa: E731
    elif layer == "domain.toml [celery]":
        call = lambda: settings(project, {key: value})  # noqa: E731
    else:
        call = lambda: settings(project, **{key: value})  # noqa: E731
    with pytest.raises(ConfigurationError) as refused:
        call()
    message = str(refused.value)
    assert message.startswith(f"tidings: {layer} sets {key}={value!r}, which {GUARANTEES[key].weakened}")
    assert f'allow_unsafe = ["{key}"]' in message and "\n" not in message


def test_what_the_guarantees_leave_alone_is_the_users(project: Path) -> None:
    write(
        project,
        "celeryconfig",
        "worker_prefetch_multiplier = 4\ntask_acks_on_failure = False\n"
        "accept_content = ['application/json']\nresult_accept_content = ['json']\n"
        "task_ignore_result = False\n",
    )
    values = settings(project)
    assert values["worker_prefetch_multiplier"] == 4
    assert values["task_acks_on_failure"] is False
    assert values["accept_content"] == ["application/json"]


def test_allow_unsafe_in_the_celery_table_or_the_overrides_is_the_opt_out(project: Path) -> None:
    write(project, "celeryconfig", "task_acks_late = False\ntask_reject_on_worker_lost = None\n")
    values = settings(project, {"allow_unsafe": ["task_acks_late", "task_reject_on_worker_lost"]})
    assert values["task_acks_late"] is False and values["task_reject_on_worker_lost"] is None
    assert "allow_unsafe" not in values and "config_module" not in values  # Tidings' keys, not Celery's
    assert settings(project, allow_unsafe=["task_acks_late", "task_reject_on_worker_lost"])
    with pytest.raises(ConfigurationError, match="celeryconfig sets task_reject_on_worker_lost=None"):
        settings(project, {"allow_unsafe": ["task_acks_late"]})  # each key is opted out by name


def test_allow_unsafe_names_only_enforced_keys(project: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"names 'task_ack_late', .*did you mean 'task_acks_late'\?"):
        settings(project, {"allow_unsafe": ["task_ack_late"]})
    with pytest.raises(ConfigurationError, match="must be a list of setting names"):
        settings(project, {"allow_unsafe": "task_acks_late"})


def test_config_module_and_celery_config_module_name_the_users_module(project: Path) -> None:
    write(project, "celeryconfig", "worker_prefetch_multiplier = 4\n")
    write(project, "mysettings", "worker_prefetch_multiplier = 8\n")
    by_table = celery_settings({"config_module": "mysettings"}, DERIVED, {}, environ={}, cwd=project)
    assert (
        by_table.values["worker_prefetch_multiplier"],
        by_table.origins["worker_prefetch_multiplier"],
    ) == (
        8,
        "mysettings",
    )
    by_env = celery_settings({}, DERIVED, {}, environ={"CELERY_CONFIG_MODULE": "mysettings"}, cwd=project)
    assert by_env.values["worker_prefetch_multiplier"] == 8
    off = celery_settings({}, DERIVED, {}, environ={"CELERY_CONFIG_MODULE": ""}, cwd=project)
    assert off.values["worker_prefetch_multiplier"] == 1  # empty: no user module, celeryconfig unread
    off = celery_settings({"config_module": ""}, DERIVED, {}, environ={}, cwd=project)
    assert off.values["worker_prefetch_multiplier"] == 1


def test_a_module_named_explicitly_must_exist_the_conventional_one_may_not(project: Path) -> None:
    assert settings(project)["worker_prefetch_multiplier"] == 1  # no celeryconfig.py: defaults
    with pytest.raises(ConfigurationError, match="Celery config module 'nosuch' .* cannot be imported"):
        celery_settings({}, DERIVED, {}, environ={"CELERY_CONFIG_MODULE": "nosuch"}, cwd=project)


def test_tidings_own_celeryconfig_in_the_checkout_is_not_a_user_module() -> None:
    sys.modules.pop("celeryconfig", None)
    try:
        assert user_layer("celeryconfig", explicit=False, cwd=REPO_ROOT) is None
    finally:
        sys.modules.pop("celeryconfig", None)


def test_old_upper_case_setting_names_are_read_and_checked(project: Path) -> None:
    write(project, "celeryconfig", "CELERY_ACKS_LATE = False\nSOME_CONSTANT = 3\nimport os\n")
    layer = user_layer("celeryconfig", explicit=False, cwd=project)
    assert layer is not None and dict(layer.values) == {"task_acks_late": False}
    assert "annotations" not in module_settings(importlib.import_module("tidings.celeryconfig"))
    with pytest.raises(ConfigurationError, match="celeryconfig sets task_acks_late=False"):
        settings(project)


def test_a_layer_may_unset_nothing_it_does_not_name() -> None:
    layered = layered_settings([defaults_layer(), Layer("x", {"worker_concurrency": 2})])
    check_guarantees(layered)
    assert layered.values["task_reject_on_worker_lost"] is True


def test_create_celery_app_applies_the_layers_and_refuses_weakening(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    monkeypatch.delenv("CELERY_CONFIG_MODULE", raising=False)
    write(project, "celeryconfig", "worker_prefetch_multiplier = 4\n")
    domain = build_ledger(project)
    domain.config["celery"] = {"task_time_limit": 90}
    celery = create_celery_app(domain, broker_url="memory://")
    assert celery.conf.worker_prefetch_multiplier == 4
    assert celery.conf.task_time_limit == 90
    assert celery.conf.task_acks_late is True and celery.conf.accept_content == ["json"]
    assert "allow_unsafe" not in celery.conf
    with pytest.raises(ConfigurationError, match="create_celery_app overrides sets task_acks_late=False"):
        create_celery_app(build_ledger(project, name="ledger2"), task_acks_late=False)


# ---- the recovery bound (issue 10, item 6) ---------------------------------------------------------
def _redis_domain(**server):
    from tidings import Domain

    domain = Domain("bound")
    domain.config["brokers"]["default"] = {"provider": "redis", "url": "redis://127.0.0.1:1/0"}
    domain.config["server"]["stream_subscription"].update(server)

    @domain.aggregate
    class Thing:
        name: String()

    @domain.event(part_of=Thing)
    class Named:
        name: String()

    @domain.event_handler(part_of=Thing)
    class OnNamed:
        @handle(Named)
        def on(self, event):
            pass

    return domain.init()


def test_the_defaults_bound_recovery_below_60_seconds_and_pass_their_own_check():

    celery = create_celery_app(_redis_domain())
    options = celery.conf.broker_transport_options
    vt, sweep = options["visibility_timeout"], options["unacked_restore_interval"]
    assert options["unacked_restore_throttle"] == 1  # every sweep scans
    assert vt + sweep < 60  # SIGKILLed worker -> delivered again
    assert celery.conf.task_time_limit and celery.conf.task_time_limit + 10 < vt


def test_a_countdown_that_outlives_the_visibility_timeout_is_refused_with_the_numbers():

    domain = _redis_domain(retry_backoff=True, retry_backoff_max=20)
    with pytest.raises(ConfigurationError, match=r"task_time_limit=30.*20.*45") as caught:
        create_celery_app(domain)
    assert 'allow_unsafe = ["visibility_timeout"]' in str(caught.value)
    with pytest.raises(ConfigurationError, match="visibility timeout"):
        create_celery_app(_redis_domain(), task_time_limit=44)
    # raised together, or opted out, it starts
    create_celery_app(domain, broker_transport_options={"visibility_timeout": 60})
    create_celery_app(domain, allow_unsafe=["visibility_timeout"])
