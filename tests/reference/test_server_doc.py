"""The reference's server documents: `protean --domain X server`, `protean server --domain=X`
and `protean server` alone (the domain found in the current directory), as `tidings ...`."""

from __future__ import annotations

import sys
import uuid

import pytest
from click.testing import CliRunner

from tidings.app.cli import main

DOMAIN_PY = """
from tidings import Domain, handle

{var} = Domain("{name}")
{var}.config["databases"]["default"] = {{"provider": "memory"}}
{var}.config["event_store"] = {{"provider": "memory"}}
{var}.config["brokers"]["default"] = {{"provider": "inline"}}


@{var}.aggregate
class Book:
    title: str = ""


@{var}.event(part_of=Book)
class BookAdded:
    book_id: str


@{var}.event_handler(part_of=Book)
class Catalogue:
    @handle(BookAdded)
    def on(self, event):
        pass
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    """Writes a domain module; `{mod}` in its path is a unique name (imports are cached per
    process, so no two tests may import the same module name)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TIDINGS_DOMAIN", raising=False)
    mod = f"refdoc_{uuid.uuid4().hex[:8]}"

    def write(relative: str, var: str = "domain") -> str:
        path = tmp_path / relative.format(mod=mod)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(DOMAIN_PY.format(var=var, name=mod))
        return mod

    return write


def subscriptions(*args: str, env: dict | None = None):
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.output


def test_the_domain_option_goes_before_the_subcommand_as_the_brokers_document_writes_it(project):
    mod = project("{mod}.py")
    code, out = subscriptions("--domain", mod, "subscriptions")
    assert code == 0, out
    assert f"Catalogue ({mod}.catalogue)" in out


def test_the_domain_option_after_the_subcommand_still_works(project):
    mod = project("{mod}.py")
    code, out = subscriptions("subscriptions", f"--domain={mod}")
    assert code == 0 and "Catalogue" in out


def test_tidings_domain_in_the_environment_names_the_domain(project):
    mod = project("{mod}.py")
    code, out = subscriptions("subscriptions", env={"TIDINGS_DOMAIN": mod})
    assert code == 0 and "Catalogue" in out


@pytest.mark.parametrize("found", ["domain.py", "subdomain.py"])
def test_without_a_domain_the_one_in_domain_py_or_subdomain_py_is_used(project, found, monkeypatch):
    module = found.removesuffix(".py")
    monkeypatch.delitem(sys.modules, module, raising=False)  # a fresh import of this folder's
    project(found)
    try:
        code, out = subscriptions("subscriptions")
    finally:
        sys.modules.pop(module, None)
    assert code == 0 and "Catalogue" in out


def test_a_folder_path_and_a_named_instance(project):
    mod = project("src/{mod}/__init__.py", var="inventory")
    code, out = subscriptions("--domain", f"src/{mod}:inventory", "subscriptions")
    assert code == 0 and "Catalogue" in out


def test_without_a_domain_anywhere_the_error_says_what_to_do(project):
    result = CliRunner().invoke(main, ["subscriptions"])
    assert result.exit_code != 0
    assert "pass --domain (before or after the subcommand) or set TIDINGS_DOMAIN" in result.output


def test_server_in_test_mode_with_the_documents_global_domain_option(project):
    mod = project("{mod}.py")
    code, out = subscriptions("--domain", mod, "server", "--test-mode", "--pool", "solo")
    assert code == 0, out
    assert "Registered subscriptions:" in out and "Catalogue -> " in out
    assert '"quiescent": true' in out
