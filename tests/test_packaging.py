"""The built wheel, installed next to a user project, as a new user meets it.

The wheel's only top-level name is `tidings` (the bookshelf example and its domain.toml
inside); installed in a fresh venv, it runs a user project that has its own `app/` package,
`tasks.py` and `celeryconfig.py`: the user's weakening celeryconfig is refused by a real
`celery worker` with the one-line error, and once fixed, a command goes through a real worker
started in that project directory.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.waiting import wait_until

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
NOT_SHIPPED = ("app", "domain", "tasks", "outbox", "examples", "celeryconfig.py", "tests", "bench")
WEAKENING = "task_acks_late = False\nworker_prefetch_multiplier = 4\ntask_reject_on_worker_lost = None\n"

USER_DOMAIN = '''\
"""The user's own domain: notes, added by a command handled on a worker."""

from __future__ import annotations

from tidings import Domain, current_domain, handle
from tidings.exceptions import BusinessRuleError
from tidings.fields import Identifier, String

domain = Domain("notes")


class NoteRejected(BusinessRuleError):
    """Not retried: dead-lettered at once."""


@domain.aggregate
class Note:
    text: String(required=True, max_length=200)


@domain.command(part_of=Note)
class AddNote:
    note_id: Identifier(required=True)
    text: String(required=True)


@domain.command_handler(part_of=Note)
class NoteCommands:
    @handle(AddNote)
    def add(self, command: AddNote) -> None:
        if command.text == "boom":
            raise NoteRejected("a note may not say boom")
        current_domain.repository_for(Note).add(Note(id=command.note_id, text=command.text))
'''

USER_TASKS = '''\
"""The user's Celery app module (Celery's first-steps name), for `celery -A tasks worker`."""

from tidings.app.bootstrap import create_celery_app

from app.domain import domain

domain.init()
app = create_celery_app(domain)
'''


def ignored(folder: str, names: list[str]) -> set[str]:
    skip = {".venv", ".git", "build", "dist", "__pycache__", ".tidings", ".pytest_cache", ".ruff_cache"}
    skip |= {".mypy_cache", ".typecheck"}  # the type-check staging tree (symlinks; see Makefile)
    return {n for n in names if n in skip or n.endswith(".egg-info")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the working tree (a stale `build/` cannot leak into it)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO_ROOT, source, ignore=ignored)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(root), str(source)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (built,) = root.glob("tidings-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed. Its dependencies come from this venv's
    site-packages through a `.pth` line (a path added that way does not run the .pth files in
    it, so the editable install's finder of this checkout stays out)."""
    target = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True, timeout=60)
    python = target / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "_dev_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet", str(wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return target


@pytest.fixture
def user_project(tmp_path: Path) -> Path:
    """A user project: its own `app` package, `tasks.py`, `celeryconfig.py` (weakening, as in
    Celery tutorials), and a domain on the embedded default (SQLite + kombu's SQLAlchemy)."""
    project = tmp_path / "project"
    (project / "app").mkdir(parents=True)
    (project / "app" / "__init__.py").write_text('OWNER = "the user"\n')
    (project / "app" / "domain.py").write_text(USER_DOMAIN)
    (project / "tasks.py").write_text(USER_TASKS)
    (project / "celeryconfig.py").write_text(WEAKENING)
    (project / "domain.toml").write_text(
        textwrap.dedent(
            f"""\
            command_processing = "async"
            event_processing = "async"

            [databases.default]
            provider = "sqlite"
            database_uri = "sqlite:///{project}/notes.db"

            [brokers.default]
            provider = "sqlalchemy"
            url = "sqla+sqlite:///{project}/broker.db"

            [event_store]
            provider = "sqlite"
            """
        )
    )
    return project


def env_for(venv: Path) -> dict[str, str]:
    """The user's environment: the venv first, nothing of this checkout on the path."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "TIDINGS_", "CELERY_", "VIRTUAL_ENV"))
        and k not in ("DATABASE_URL", "BROKER_URL")
    }
    return {
        **clean,
        "PATH": f"{venv / 'bin'}{os.pathsep}{clean.get('PATH', '')}",
        "VIRTUAL_ENV": str(venv),
        "TIDINGS_POLLING_INTERVAL": "0.05",
    }


def run(venv: Path, cwd: Path, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "python"), *argv],
        cwd=cwd,
        env=env_for(venv),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_wheels_only_top_level_name_is_tidings(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names}
    assert top == {"tidings", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    assert not top & set(NOT_SHIPPED)
    record = next(n for n in names if n.endswith(".dist-info/RECORD"))
    listed = {line.split(",", 1)[0] for line in zipfile.ZipFile(wheel).read(record).decode().splitlines()}
    assert {p.split("/", 1)[0] for p in listed} == top
    for shipped in (
        "tidings/__init__.py",
        "tidings/fields.py",
        "tidings/celeryconfig.py",
        "tidings/app/celery_settings.py",
        "tidings/examples/bookshelf/domain.toml",
        "tidings/examples/bookshelf/worker.py",
        "tidings/domain/migrations/env.py",
        "tidings/domain/migrations/script.py.mako",
        "tidings/domain/migrations/versions/0001_framework_tables.py",
    ):
        assert shipped in names and shipped in listed
    assert not [n for n in names if n.startswith(("tidings/tests/", "tidings/bench/"))]


def test_the_installed_wheel_is_what_imports_not_this_checkout(venv: Path, user_project: Path) -> None:
    (user_project / "celeryconfig.py").write_text("worker_prefetch_multiplier = 4\n")
    probe = (
        "import app, tasks, tidings, tidings.app, tidings.tasks, tidings.examples.bookshelf as b\n"
        "from pathlib import Path\n"
        "print(tidings.__file__, tidings.app.__file__, tidings.tasks.__file__)\n"
        "print(app.OWNER, Path(tasks.__file__).parent)\n"
        "print(tasks.app.conf.worker_prefetch_multiplier, tasks.app.conf.task_acks_late)\n"
        "print((Path(b.__file__).parent / 'domain.toml').is_file())\n"
    )
    result = run(venv, user_project, "-c", probe)
    assert result.returncode == 0, result.stderr
    modules, user, conf, toml = result.stdout.splitlines()
    site = str(venv / "lib")
    assert all(path.startswith(site) for path in modules.split()), modules
    assert str(REPO_ROOT) not in modules
    assert user == f"the user {user_project}"  # the user's `app` and `tasks`, not Tidings'
    assert conf == "4 True"  # prefetch is the user's; late acks are Tidings'
    assert toml == "True"


def test_a_real_worker_refuses_the_users_weakening_celeryconfig(venv: Path, user_project: Path) -> None:
    result = run(venv, user_project, "-m", "celery", "-A", "tasks", "worker", "--pool", "solo", timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert (
        "tidings: celeryconfig sets task_acks_late=False, which loses messages when a worker dies; "
        'it must be True: remove it or set [celery] allow_unsafe = ["task_acks_late"]'
    ) in output


@pytest.fixture
def worker(venv: Path, user_project: Path) -> Iterator[subprocess.Popen[str]]:
    """A real `celery worker` in the user project (its own directory first on sys.path)."""
    (user_project / "celeryconfig.py").write_text("worker_prefetch_multiplier = 4\n")  # the fix
    log = (user_project / "worker.log").open("w")
    child = subprocess.Popen(
        [
            str(venv / "bin" / "python"),
            "-m",
            "celery",
            "-A",
            "tasks",
            "worker",
            "--pool",
            "solo",
            "-l",
            "WARNING",
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
        ],
        cwd=user_project,
        env=env_for(venv),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield child
    finally:
        child.terminate()
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        log.close()


def test_a_command_goes_through_a_real_worker_in_the_users_project(
    venv: Path, user_project: Path, worker: subprocess.Popen[str]
) -> None:
    send = (
        "import tasks\n"
        "from app.domain import AddNote, domain\n"
        "domain.create_tables()\n"
        "with domain.domain_context():\n"
        "    domain.process(AddNote(note_id='note-1', text='hello from the user project'))\n"
    )
    sent = run(venv, user_project, "-c", send)
    assert sent.returncode == 0, sent.stderr

    def handled() -> list[tuple[str, str]]:
        assert worker.poll() is None, (user_project / "worker.log").read_text()
        with sqlite3.connect(user_project / "notes.db") as db:
            return db.execute("SELECT id, text FROM note").fetchall()

    rows = wait_until(handled, timeout=30, message="the worker to handle AddNote")
    assert rows == [("note-1", "hello from the user project")]


def test_the_installed_wheel_migrates_the_framework_tables(venv: Path, user_project: Path) -> None:
    # the migrations are package data: `db upgrade` must find them in site-packages
    (user_project / "celeryconfig.py").unlink()  # the weakening one is another test's subject

    def db(*argv: str) -> subprocess.CompletedProcess[str]:
        tidings = str(venv / "bin" / "tidings")
        command = [tidings, "--domain", "app.domain", "db", *argv]
        return subprocess.run(command, cwd=user_project, env=env_for(venv), capture_output=True, text=True)

    upgraded = db("upgrade")
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    with sqlite3.connect(user_project / "notes.db") as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"tidings_outbox", "tidings_event_store", "tidings_alembic_version"} <= names
    assert "note" not in names  # the user's own table is `db create`'s
    checked = db("check")
    assert checked.returncode == 1 and "note: table missing" in checked.stderr
    assert db("create").returncode == 0
    assert db("check").returncode == 0


def test_tidings_demo_ships_with_the_wheel(venv: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(venv / "bin" / "tidings"), "demo", "--help"],
        cwd=tmp_path,
        env=env_for(venv),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--redis" in result.stdout
    # what `tidings demo` launches: the bookshelf worker module, its domain.toml found in the wheel
    probe = run(
        venv,
        tmp_path,
        "-c",
        "import tidings.examples.bookshelf.worker as w; print(w.app.conf.broker_url, w.domain.initialized)",
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["sqla+sqlite:///.tidings/broker.db", "True"]


def test_tidings_demo_runs_from_the_installed_wheel(venv: Path, tmp_path: Path) -> None:
    # the main job, from an empty folder with only the wheel installed: its exit code is 0
    # only on the exact end state (worker, beat and API as real processes)
    env = {k: v for k, v in env_for(venv).items() if k not in ("DATABASE_URL", "REDIS_URL", "BROKER_URL")}
    result = subprocess.run(
        [str(venv / "bin" / "tidings"), "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "end state is exactly as expected" in result.stdout


USER_TESTS = """\
\"\"\"The user's tests: Tidings' fixtures come from the installed plugin, no conftest.py.\"\"\"

import pytest

from app.domain import AddNote, Note, domain


@pytest.fixture
def tidings_domain():
    return domain


def test_a_note_is_added_eagerly(tidings_eager):
    tidings_eager.process(AddNote(note_id="n1", text="hello"))
    assert tidings_eager.repository_for(Note).get("n1").text == "hello"


def test_a_note_is_added_by_a_real_worker(tidings_worker):
    tidings_worker.domain.process(AddNote(note_id="n2", text="hi"))
    tidings_worker.wait_until_quiescent()
    assert tidings_worker.domain.repository_for(Note).get("n2").text == "hi"
    assert tidings_worker.dead_letters() == []


def test_a_rejected_note_is_dead_lettered(tidings_worker):
    tidings_worker.domain.process(AddNote(note_id="n3", text="boom"))
    tidings_worker.wait_until_quiescent()
    (letter,) = tidings_worker.dead_letters("NoteCommands")
    assert (letter.error_type, letter.error_message) == ("NoteRejected", "a note may not say boom")
    assert letter.body["type"] == "Notes.AddNote.v1"


def test_wrong_on_purpose(tidings_worker):
    tidings_worker.domain.process(AddNote(note_id="n4", text="four"))
    tidings_worker.wait_until_quiescent()
    assert tidings_worker.domain.repository_for(Note).get("n4").text == "five"
"""


def test_a_user_projects_pytest_gets_the_fixtures_from_the_installed_plugin(
    venv: Path, user_project: Path
) -> None:
    (user_project / "celeryconfig.py").write_text("worker_prefetch_multiplier = 4\n")
    (user_project / "tests").mkdir()
    (user_project / "tests" / "test_notes.py").write_text(USER_TESTS)
    assert not list(user_project.rglob("conftest.py"))
    argv = ("-m", "pytest", "-p", "no:cacheprovider", "tests/test_notes.py")

    passing = run(venv, user_project, *argv, "-k", "not wrong_on_purpose", timeout=120)
    assert passing.returncode == 0, passing.stdout[-3000:] + passing.stderr[-2000:]
    assert "3 passed, 1 deselected" in passing.stdout
    assert "tidings-" in passing.stdout.split("rootdir:")[1].split("collected")[0]  # plugins: tidings-x.y

    failing = run(venv, user_project, *argv, "-k", "wrong_on_purpose", timeout=120)
    assert failing.returncode == 1, failing.stdout[-3000:]
    assert "1 failed, 3 deselected" in failing.stdout
    assert "assert 'four' == 'five'" in failing.stdout
    assert not (user_project / "notes.db").exists()  # the fixtures never touched domain.toml's database
