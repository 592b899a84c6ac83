from __future__ import annotations

import pytest

from tidings import ConfigurationError, Domain
from tidings.domain.config import interpolate


def test_interpolation_reads_the_environment_and_falls_back_to_defaults(monkeypatch):
    monkeypatch.setenv("SHOP_DB", "sqlite:///x.db")
    monkeypatch.delenv("SHOP_MISSING", raising=False)
    value = interpolate(
        {"a": "${SHOP_DB|none}", "b": "${SHOP_MISSING|fallback}", "c": ["${SHOP_MISSING|}", "x${SHOP_DB}y"]}
    )
    assert value == {"a": "sqlite:///x.db", "b": "fallback", "c": ["", "xsqlite:///x.dby"]}


def test_a_missing_variable_without_default_names_the_key(monkeypatch):
    monkeypatch.delenv("SHOP_MISSING", raising=False)
    with pytest.raises(ConfigurationError, match=r"databases\.default\.database_uri.*SHOP_MISSING"):
        interpolate({"databases": {"default": {"database_uri": "${SHOP_MISSING}"}}})


def test_domain_toml_beside_the_domain_is_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOP_BATCH", "250")
    (tmp_path / "domain.toml").write_text(
        'event_processing = "sync"\n[outbox]\nbatch_size = "${SHOP_BATCH|100}"\n'
    )
    domain = Domain("shop", root_path=tmp_path).init()
    assert domain.settings.event_processing == "sync"
    assert domain.settings.outbox.batch_size == 250


def test_pyproject_tool_tidings_section_is_loaded(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.tidings]\ncommand_processing = "sync"\n')
    assert Domain("shop", root_path=tmp_path).init().settings.command_processing == "sync"


def test_unknown_provider_misspelt_key_and_malformed_value_are_all_reported(tmp_path):
    domain = Domain("shop", root_path=tmp_path)
    domain.config["databases"]["default"] = {"provider": "postgress", "database_uri": "x"}
    domain.config["outbox"]["batch_sise"] = 10
    domain.config["outbox"]["interval"] = "often"
    domain.config["event_processing"] = "later"
    with pytest.raises(ConfigurationError) as caught:
        domain.init()
    text = str(caught.value)
    assert "databases.default.provider" in text and "did you mean 'postgresql'" in text
    assert "outbox.batch_sise" in text and "did you mean 'batch_size'" in text
    assert "outbox.interval" in text
    assert "event_processing" in text
