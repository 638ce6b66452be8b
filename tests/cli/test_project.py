"""In-process tests of the pieces behind the CLI: settings, model discovery, the env.py runner's
SQL, diff descriptions and `--help` for every command."""

from __future__ import annotations

import sqlite3
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Index, Integer, MetaData, String, Table, event, pool
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase

from repom.cli import app, main
from repom.engine import build_engine
from repom.exceptions import ConfigurationError
from repom.migrations import Migrations, ModelsError, describe_diff, find_project, init_project
from repom.migrations.models import find_metadata
from tests.cli._support import write_migration
from tests.cli.conftest import create_pg_database
from tests.support import require_postgres

# --------------------------------------------------------------------------- settings


def test_settings_precedence_argument_env_ini_pyproject(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.repom]\nmodels = ["from_pyproject.models"]\nmetadata = "from_pyproject:Base"\n'
    )
    found = find_project(cwd=tmp_path, environ={})
    assert found.models == ("from_pyproject.models",)
    assert found.metadata == "from_pyproject:Base"
    assert not found.has_alembic_config

    (tmp_path / "alembic.ini").write_text("[alembic]\n[repom]\nmodels = from_ini.a, from_ini.b\n")
    found = find_project(cwd=tmp_path, environ={})
    assert found.models == ("from_ini.a", "from_ini.b")
    assert found.metadata == "from_pyproject:Base"  # not set in the ini: next source
    assert found.sources["models"] == "alembic.ini [repom]"

    found = find_project(cwd=tmp_path, environ={"REPOM_MODELS": "from_env.models"})
    assert found.models == ("from_env.models",)

    found = find_project(
        cwd=tmp_path, environ={"REPOM_MODELS": "from_env.models"}, models="from_arg.models"
    )
    assert found.models == ("from_arg.models",)
    assert found.config_file == tmp_path / "alembic.ini"


def test_models_setting_must_name_modules(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="'app/models' is not a module name"):
        find_project(cwd=tmp_path, environ={}, models="app/models")


def test_sqlalchemy_url_in_alembic_ini_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    init_project()
    ini = tmp_path / "alembic.ini"
    ini.write_text(ini.read_text().replace("[alembic]\n", "[alembic]\nsqlalchemy.url = x://\n"))
    with pytest.raises(ConfigurationError, match=r"sets sqlalchemy\.url"):
        Migrations(url=f"sqlite:///{tmp_path}/d.db").upgrade()


# --------------------------------------------------------------------------- metadata discovery


def _module(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


def _base_with_table(table: str) -> type[DeclarativeBase]:
    class Base(DeclarativeBase):
        pass

    Table(table, Base.metadata, Column("id", Integer, primary_key=True))
    return Base


def test_metadata_found_in_the_first_module_then_by_scanning() -> None:
    base = _base_with_table("t1")
    (found,) = find_metadata([_module("m", Base=base)])
    assert found == (base.metadata, "m:Base.metadata")

    meta = MetaData()
    (found,) = find_metadata([_module("m", metadata=meta, Base=base)])
    assert found == (meta, "m:metadata")

    # not in the root module: the one non-empty MetaData among the submodules
    empty = _base_with_table("t2")
    empty.metadata.clear()
    modules = [_module("pkg"), _module("pkg.a", Model=base), _module("pkg.b", Other=empty)]
    (found,) = find_metadata(modules)
    assert found == (base.metadata, "pkg.a:Model.metadata")


def test_ambiguous_or_missing_metadata_is_an_error_naming_the_candidates() -> None:
    one, two = _base_with_table("t1"), _base_with_table("t2")
    modules = [_module("pkg"), _module("pkg.a", A=one), _module("pkg.b", B=two)]
    with pytest.raises(
        ModelsError, match=r"several MetaData .*pkg\.a:A\.metadata, pkg\.b:B\.metadata"
    ):
        find_metadata(modules)
    both = find_metadata(modules, "pkg.a:A.metadata, pkg.b:B")
    assert [meta for meta, _ in both] == [one.metadata, two.metadata]
    with pytest.raises(ModelsError, match="no MetaData found in pkg"):
        find_metadata([_module("pkg")])
    with pytest.raises(ModelsError, match="is a int, not a MetaData"):
        find_metadata([_module("pkg", x=1)], "x")


# --------------------------------------------------------------------------- diff descriptions


def test_describe_diff() -> None:
    meta = MetaData()
    users = Table(
        "users", meta, Column("id", Integer, primary_key=True), Column("name", String(20))
    )
    index = Index("ix_users_name", users.c.name, unique=True)
    assert describe_diff(("add_table", users)) == "+ table users"
    assert describe_diff(("remove_column", None, "users", users.c.name)) == (
        "- column users.name (VARCHAR(20))"
    )
    assert describe_diff(("add_index", index)) == "+ unique index ix_users_name on users (name)"
    change = [("modify_type", None, "users", "name", {}, String(20), String(50))]
    assert describe_diff(change) == "~ column users.name: type VARCHAR(20) -> VARCHAR(50)"
    nullable = [("modify_nullable", "s", "users", "name", {}, True, False)]
    assert describe_diff(nullable) == "~ column s.users.name: nullable True -> False"


# --------------------------------------------------------------------------- the runner's SQL


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_one_transaction_under_a_lock_with_the_exact_statements(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    if backend == "postgresql":
        require_postgres()
        url: str = request.getfixturevalue("pg_scratch")
        create_pg_database(request.getfixturevalue("pg_url"), make_url(url).database or "")
    else:
        url = f"sqlite:///{tmp_path}/d.db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    init_project()
    write_migration(
        tmp_path,
        "a1",
        None,
        'op.create_table("cli_stmt_a", sa.Column("id", sa.Integer, primary_key=True))',
    )
    write_migration(
        tmp_path,
        "b2",
        "a1",
        'op.create_table("cli_stmt_b", sa.Column("id", sa.Integer, primary_key=True))',
    )
    engine = build_engine(
        url.replace("postgresql://", "postgresql+psycopg://"), poolclass=pool.NullPool
    )
    log: list[str] = []
    event.listen(
        engine, "before_cursor_execute", lambda c, cu, statement, *a: log.append(statement)
    )
    event.listen(engine, "commit", lambda conn: log.append("<commit>"))
    event.listen(engine, "rollback", lambda conn: log.append("<rollback>"))
    migrations = Migrations(url=url)
    try:
        with engine.connect() as conn:
            migrations.config.attributes["connection"] = conn
            steps = migrations.upgrade()
            if backend == "sqlite":
                fks = conn.connection.cursor()
                fks.execute("PRAGMA foreign_keys")
                assert fks.fetchone()[0] == 1  # enforcement is back on after the run
                fks.close()
    finally:
        engine.dispose()
    assert [(s.kind, s.destination) for s in steps] == [("upgrade", ("a1",)), ("upgrade", ("b2",))]
    creates = [i for i, s in enumerate(log) if s.lstrip().startswith("CREATE TABLE")]
    inserts = [i for i, s in enumerate(log) if s.startswith("INSERT INTO alembic_version")]
    updates = [i for i, s in enumerate(log) if s.startswith("UPDATE alembic_version")]
    assert len(creates) == 3 and len(inserts) == 1 and len(updates) == 1, log
    commits = [i for i, s in enumerate(log) if s == "<commit>"]
    if backend == "postgresql":
        assert log[0].startswith("SELECT pg_advisory_lock(")
        assert log[-2].startswith("SELECT pg_advisory_unlock(")
        # lock, migrations, unlock: the two migrations share the middle transaction
        assert len(commits) == 3, log
        assert commits[0] < creates[0] and updates[-1] < commits[1] < log.index(log[-2])
    else:
        assert log[0] == "BEGIN IMMEDIATE", log
        assert log.count("BEGIN IMMEDIATE") == 1, log
        assert log[-2:] == ["PRAGMA foreign_key_check", "<commit>"], log
        assert len(commits) == 1
    assert "<rollback>" not in log


# --------------------------------------------------------------------------- --help


def _commands(group: Any, prefix: list[str]) -> list[list[str]]:
    found = [prefix]
    for name, command in getattr(group, "commands", {}).items():
        found.extend(_commands(command, [*prefix, name]))
    return found


def test_help_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    import typer.main

    paths = _commands(typer.main.get_command(app), [])
    assert ["db", "upgrade"] in paths and ["info"] in paths and len(paths) >= 14
    for path in paths:
        assert main([*path, "--help"]) == 0, path
        out = capsys.readouterr().out
        assert "Usage: repom" in out, path
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("repom ")


def test_info_json_and_unreachable_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path}/ok.db"
    sqlite3.connect(tmp_path / "ok.db").close()  # `repom info` never creates the file itself
    assert main(["info", "--json", "--url", url]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["url"] == url
    assert data["driver"] == "pysqlite"
    assert data["pool"]["class"] == "QueuePool"
    assert data["server_version"]
    assert data["connect_error"] is None
    assert data["models"] == [] and data["migrations"] is None

    missing = f"sqlite:///{tmp_path}/no/such/dir/x.db"
    assert main(["info", "--url", missing]) == 1
    out = capsys.readouterr().out
    assert "unreachable: unable to open database file" in out


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_create_and_drop_database_are_idempotent(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from repom.config import RepomConfig
    from repom.migrations import MigrationError, create_database, drop_database

    if backend == "postgresql":
        require_postgres()
        url: str = request.getfixturevalue("pg_scratch")
    else:
        url = f"sqlite:///{tmp_path}/sub/dir/app.db"
    assert create_database(url) is True
    assert create_database(url) is False
    production = RepomConfig(environment="production")
    with pytest.raises(MigrationError, match=r"refusing to drop .*environment=production"):
        drop_database(url, config=production)
    assert drop_database(url) is True
    assert drop_database(url) is False
    if backend == "sqlite":
        assert not (tmp_path / "sub" / "dir" / "app.db").exists()
