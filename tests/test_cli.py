"""The `tidings` command line as a user meets it: the real entry point in a subprocess.

A mistake is one line naming the fix and a non-zero exit (the traceback only with --debug);
`--version`; `TIDINGS_DOMAIN` stands in for `--domain`; every command and option has help.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
from pathlib import Path

import click
import pytest

from tests.test_demo import TIDINGS
from tidings.app.cli import main


def tidings(cwd: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    return subprocess.run(
        [TIDINGS, *argv], cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=60
    )


def test_a_wrong_domain_path_is_one_line_naming_the_fix_and_a_non_zero_exit(tmp_path: Path) -> None:
    result = tidings(tmp_path, "--domain", "src/no_such_app", "subscriptions")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: domain 'src/no_such_app' (--domain or TIDINGS_DOMAIN): no module or file")
    assert "a file or a folder" in line  # what to give instead
    assert result.stdout == ""


def test_an_error_in_the_users_code_is_one_line_with_its_type(tmp_path: Path) -> None:
    (tmp_path / "domain.py").write_text("import a_dependency_nobody_installed\n")
    result = tidings(tmp_path, "subscriptions")  # discovered: ./domain.py
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert "ModuleNotFoundError: No module named 'a_dependency_nobody_installed'" in line
    assert "--debug" in line


@pytest.mark.parametrize("how", ["--debug", "TIDINGS_DEBUG"])
def test_debug_shows_the_traceback(tmp_path: Path, how: str) -> None:
    argv = ["--debug"] if how == "--debug" else []
    env = {"TIDINGS_DEBUG": "1"} if how == "TIDINGS_DEBUG" else {}
    result = tidings(tmp_path, *argv, "--domain", "src/no_such_app", "subscriptions", **env)
    assert result.returncode == 1
    assert result.stderr.startswith("Traceback (most recent call last):")
    assert 'app/loading.py", line' in result.stderr  # where it was raised
    assert result.stderr.strip().splitlines()[-1].startswith("tidings.app.loading.DomainNotFoundError: ")


def test_version_prints_the_installed_package_version(tmp_path: Path) -> None:
    result = tidings(tmp_path, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"tidings {importlib.metadata.version('tidings')}\n"


def test_tidings_domain_is_the_default_domain_of_every_command(tmp_path: Path) -> None:
    without = tidings(tmp_path, "subscriptions")
    assert without.returncode == 1 and "no domain given" in without.stderr
    with_env = tidings(tmp_path, "subscriptions", TIDINGS_DOMAIN="tidings.examples.bookshelf")
    assert with_env.returncode == 0, with_env.stderr
    assert with_env.stdout.startswith("BookCommandHandler (bookshelf.book_command_handler)")
    # an explicit --domain wins over the environment
    shelf = {"TIDINGS_DOMAIN": "tidings.examples.bookshelf"}
    explicit = tidings(tmp_path, "subscriptions", "--domain", "nowhere", **shelf)
    assert explicit.returncode == 1 and "domain 'nowhere'" in explicit.stderr


def test_a_server_that_cannot_run_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    # an in-process broker reaches no worker process: refused before anything starts
    result = tidings(
        tmp_path,
        "server",
        "--domain",
        "tidings.examples.bookshelf",
        TIDINGS_BROKER_PROVIDER="inline",
        TIDINGS_DATABASE_PROVIDER="sqlite",
        DATABASE_URL=f"sqlite:///{tmp_path}/bookshelf.db",
    )
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: ") and "broker" in line


def every_command(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, click.Command]]:
    found = []
    for name, command in sorted(group.commands.items()):
        found.append((" ".join((*path, name)), command))
        if isinstance(command, click.Group):
            found += every_command(command, (*path, name))
    return found


def test_every_command_and_option_has_help() -> None:
    commands = [("tidings", main), *every_command(main)]
    assert {"server", "db create", "dlq list", "dlq replay", "demo", "health"} <= {n for n, _ in commands}
    missing = [name for name, command in commands if not (command.help or "").strip()]
    missing += [
        f"{name} {param.opts[0]}"
        for name, command in commands
        for param in command.params
        if isinstance(param, click.Option) and not (param.help or "").strip()
    ]
    assert missing == []
    # and it renders: the root's help names its options
    text = main.get_help(click.Context(main, info_name="tidings"))
    assert "--version" in text and "--debug" in text and "TIDINGS_DOMAIN" in text


def test_a_driver_error_is_one_line_naming_the_setting_to_check() -> None:
    import kombu.exceptions
    import sqlalchemy as sa

    from tidings.app.cli_errors import one_line

    database = one_line(sa.exc.OperationalError("SELECT 1", {}, Exception("connection refused\nis it up?")))
    assert "\n" not in database
    assert database.startswith("OperationalError: (builtins.Exception) connection refused; check the data")
    broker = one_line(kombu.exceptions.OperationalError("[Errno 111] Connection refused"))
    assert broker.startswith("OperationalError: [Errno 111] Connection refused; check the broker settings")
