"""The real `repom` executable, in a temporary project, on SQLite and PostgreSQL.

One scenario body per test, parametrized over backend and env.py flavour (sync / async).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.cli._support import (
    SECRET_KEY,
    Result,
    assert_one_line_error,
    cli_env,
    db_state,
    execute,
    finish,
    run,
    start,
    write_migration,
    write_project,
)
from tests.cli.conftest import create_pg_database, pg_database_exists
from tests.support import require_postgres

REV = re.compile(r"Created revision ([0-9a-f]+)")


def _url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "postgresql":
        require_postgres()
        url: str = request.getfixturevalue("pg_scratch")
        return url
    return f"sqlite:///{tmp_path / 'dev.sqlite3'}"


def _revision(result: Result) -> str:
    match = REV.search(result.stdout)
    assert match, result.stdout
    return match.group(1)


@pytest.mark.parametrize(
    ("backend", "flavour"),
    [("sqlite", "sync"), ("postgresql", "async")],
    ids=["sqlite-sync", "postgresql-async"],
)
def test_init_autogenerate_upgrade_check_change_downgrade(
    backend: str, flavour: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = _url(backend, tmp_path, request)
    project = write_project(tmp_path / "proj")
    env = cli_env(url)
    outputs: list[Result] = []

    def repom(*args: str, expect: int = 0) -> Result:
        result = run(list(args), project, env, expect)
        outputs.append(result)
        return result

    if backend == "postgresql":
        assert "Created" in repom("db", "create").stdout

    repom("db", "init", "--models", "app.models", *(["--async"] if flavour == "async" else []))
    assert (project / "alembic.ini").is_file()
    env_py = (project / "migrations" / "env.py").read_text()
    assert ("run_async" in env_py) is (flavour == "async")

    # 1. autogenerate the first migration from models defined in unimported submodules
    result = repom("db", "revision", "-m", "initial", "--autogenerate")
    first = _revision(result)
    assert "+ table cli_users" in result.stdout
    assert "+ table cli_posts" in result.stdout
    assert "+ index ix_cli_posts_user_id on cli_posts (user_id)" in result.stdout
    (script,) = (project / "migrations" / "versions").glob(f"*{first}*.py")
    source = script.read_text()
    assert "import app.types\n" in source  # the custom type imports itself
    assert "app.types.Slug(length=40)" in source
    assert "op.f('pk_cli_users')" in source  # naming convention rendered
    assert "op.f('uq_cli_users_email')" in source
    assert "op.f('fk_cli_posts_user_id_cli_users')" in source
    assert "import repom.types\n" in source  # repom's types render through repom.types
    assert "repom.types.UUIDType()" in source
    assert "repom.types.EncryptedType(sa.String(length=100))" in source
    assert SECRET_KEY not in source
    compile(source, str(script), "exec")

    # 2. upgrade: the tables exist, with the conventional names, at revision `first`
    result = repom("db", "upgrade")
    assert f"Upgrade base -> {first}: initial" in result.stdout
    state = db_state(url)
    assert {"cli_users", "cli_posts", "alembic_version"} <= state.tables
    assert state.versions == [first]
    assert {
        "pk_cli_users",
        "uq_cli_users_email",
        "pk_cli_posts",
        "fk_cli_posts_user_id_cli_users",
        "ix_cli_posts_user_id",
    } <= state.constraint_names

    # 3. models and database agree
    assert "agree" in repom("db", "check").stdout

    # 4. change a model: check fails (exit 1) and names the difference
    write_project(project, nickname=True)
    result = repom("db", "check", expect=1)
    assert "+ column cli_users.nickname (VARCHAR(30))" in result.stdout
    assert "+ index ix_cli_users_nickname on cli_users (nickname)" in result.stdout
    assert db_state(url).versions == [first]  # nothing written

    # 5. a revision for the change, then upgrade
    result = repom("db", "revision", "-m", "add nickname", "--autogenerate")
    second = _revision(result)
    (script2,) = (project / "migrations" / "versions").glob(f"*{second}*.py")
    source2 = script2.read_text()
    if backend == "sqlite":
        assert "op.batch_alter_table('cli_users'" in source2  # batch mode on SQLite
    else:
        assert "op.add_column('cli_users'" in source2
    result = repom("db", "upgrade")
    assert f"Upgrade {first} -> {second}: add nickname" in result.stdout
    state = db_state(url)
    assert "nickname" in state.columns["cli_users"]
    assert state.versions == [second]
    assert "agree" in repom("db", "check").stdout
    result = repom("db", "revision", "-m", "noop", "--autogenerate")
    assert "No changes detected" in result.stdout
    assert len(list((project / "migrations" / "versions").glob("*.py"))) == 2

    # 6. downgrade (one step): the column goes, the rows stay.  On SQLite the table is rebuilt;
    # its ON DELETE CASCADE child rows must survive the rebuild.
    execute(
        url,
        "INSERT INTO cli_users (id, email, slug, nickname) VALUES (1, 'a@example.com', 'a', 'x')",
        "INSERT INTO cli_posts (id, user_id) VALUES (10, 1)",
    )
    result = repom("db", "downgrade")
    assert f"Downgrade {second} -> {first}" in result.stdout
    state = db_state(url)
    assert "nickname" not in state.columns["cli_users"]
    assert state.versions == [first]
    users, posts = execute(
        url, "SELECT id, email FROM cli_users", "SELECT id, user_id FROM cli_posts"
    )
    assert users == [(1, "a@example.com")]
    assert posts == [(10, 1)]

    # 7. and up again
    assert f"Upgrade {first} -> {second}" in repom("db", "upgrade").stdout
    assert db_state(url).versions == [second]

    # 8. info: masked URL, driver, pool, server, models and tables, current revision
    info = repom("info").stdout
    assert "cli_users <- app.models.user.User (in database)" in info
    assert "cli_posts <- app.models.post.Post (in database)" in info
    assert f"{second} (head)" in info
    assert "metadata        app.models:Base.metadata" in info
    assert ("QueuePool" in info) and ("pool_size=10" in info)
    if backend == "postgresql":
        assert "***@" in info
        assert "postgresql+psycopg" in info
        assert "postgresql+asyncpg" in info

    # no secret in any output or generated file
    password = make_url(url).password
    if password:
        for result in outputs:
            assert password not in result.output
        for path in project.rglob("*"):
            if path.is_file() and path.suffix in (".py", ".ini", ".md", ".mako"):
                assert password not in path.read_text()

    if backend == "postgresql":
        name = make_url(url).database
        assert name is not None
        assert "Dropped" in repom("db", "drop", "--yes").stdout
        assert not pg_database_exists(str(request.getfixturevalue("pg_url")), name)


@pytest.mark.parametrize(
    ("backend", "flavour"),
    [("sqlite", "async"), ("postgresql", "sync")],
    ids=["sqlite-async", "postgresql-sync"],
)
def test_failed_upgrade_rolls_back_every_migration_of_the_run(
    backend: str, flavour: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Migrations of one run share one transaction (transactional DDL): when the second fails,
    the first one's table and the version row are gone too."""
    url = _url(backend, tmp_path, request)
    if backend == "postgresql":
        create_pg_database(request.getfixturevalue("pg_url"), make_url(url).database or "")
    project = tmp_path / "proj"
    project.mkdir()
    env = cli_env(url)
    run(["db", "init", *(["--async"] if flavour == "async" else [])], project, env)
    write_migration(
        project,
        "a1",
        None,
        'op.create_table("cli_tx_a", sa.Column("id", sa.Integer, primary_key=True))',
        'op.drop_table("cli_tx_a")',
    )
    write_migration(
        project,
        "b2",
        "a1",
        """
        op.create_table("cli_tx_b", sa.Column("id", sa.Integer, primary_key=True))
        op.execute("INSERT INTO cli_tx_missing VALUES (1)")
        """,
        'op.drop_table("cli_tx_b")',
    )
    result = run(["db", "upgrade"], project, env, expect=1)
    assert_one_line_error(result, "database error", "cli_tx_missing")
    state = db_state(url)
    assert not {"cli_tx_a", "cli_tx_b"} & state.tables
    assert state.versions == []

    # fixed: both apply; history, heads and current agree
    write_migration(
        project,
        "b2",
        "a1",
        'op.create_table("cli_tx_b", sa.Column("id", sa.Integer, primary_key=True))',
        'op.drop_table("cli_tx_b")',
    )
    result = run(["db", "upgrade"], project, env)
    assert "Upgrade base -> a1" in result.stdout
    assert "Upgrade a1 -> b2" in result.stdout
    state = db_state(url)
    assert {"cli_tx_a", "cli_tx_b"} <= state.tables
    assert state.versions == ["b2"]
    assert run(["db", "current"], project, env).stdout.strip() == "b2 (head)"
    if backend == "sqlite":  # no database involved: once is enough
        history = run(["db", "history"], project, env).stdout.splitlines()
        assert history == ["a1 -> b2 (head): b2 manual", "base -> a1: a1 manual"]
        assert run(["db", "heads"], project, env).stdout.strip() == "a1 -> b2 (head): b2 manual"

    # stamp records a revision without running it
    result = run(["db", "stamp", "a1"], project, env)
    assert db_state(url).versions == ["a1"]
    assert {"cli_tx_a", "cli_tx_b"} <= db_state(url).tables


def test_concurrent_upgrades_run_the_migrations_once(
    pg_scratch: str, pg_url: str, tmp_path: Path
) -> None:
    """Two `repom db upgrade` at the same moment (e.g. two replicas starting): the advisory lock
    makes the second wait, then find the database at head, instead of failing halfway."""
    create_pg_database(pg_url, make_url(pg_scratch).database or "")
    project = tmp_path / "proj"
    project.mkdir()
    env = cli_env(pg_scratch)
    run(["db", "init"], project, env)
    write_migration(
        project,
        "a1",
        None,
        """
        op.create_table("cli_lock_t", sa.Column("id", sa.Integer, primary_key=True))
        op.execute("SELECT pg_sleep(1)")
        """,
    )
    procs = [start(["db", "upgrade"], project, env) for _ in range(2)]
    results = [finish(proc, ["db", "upgrade"]) for proc in procs]
    applied = [r for r in results if "Upgrade base -> a1" in r.stdout]
    skipped = [r for r in results if "Nothing to upgrade" in r.stdout]
    assert (len(applied), len(skipped)) == (1, 1), [r.output for r in results]
    assert db_state(pg_scratch).versions == ["a1"]


def test_alembic_ini_in_a_subdirectory_of_the_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`-c app/db/alembic.ini` from the project root: the models package is imported from the
    working directory (a console script does not put it on sys.path by itself)."""
    from repom.migrations import init_project

    project = write_project(tmp_path / "proj")
    monkeypatch.chdir(project)
    init_project("app/db/migrations", config_file="app/db/alembic.ini", models="app.models")
    env = cli_env(f"sqlite:///{project / 'dev.sqlite3'}")
    args = ["db", "revision", "-m", "initial", "--autogenerate", "-c", "app/db/alembic.ini"]
    result = run(args, project, env)
    assert "+ table cli_users" in result.stdout
    assert len(list((project / "app" / "db" / "migrations" / "versions").glob("*.py"))) == 1
