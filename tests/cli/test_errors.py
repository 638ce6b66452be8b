"""User mistakes: one readable line on stderr, exit code 1, no traceback, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from repom.migrations.commands import init_project
from tests.cli._support import assert_one_line_error, cli_env, db_state, run, write_project


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project with a migration folder (written in-process) and an empty SQLite database."""
    root = write_project(tmp_path / "proj")
    monkeypatch.chdir(root)
    init_project("migrations", models="app.models")
    return root


def _sqlite(project: Path) -> str:
    return f"sqlite:///{project / 'dev.sqlite3'}"


def test_no_migration_folder(tmp_path: Path) -> None:
    result = run(["db", "upgrade"], tmp_path, cli_env(f"sqlite:///{tmp_path}/x.db"), expect=1)
    assert_one_line_error(result, "no migration folder", "alembic.ini not found", "repom db init")
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize(
    ("args", "env", "fragments"),
    [
        (["db", "upgrade", "--url", "not a url"], {}, ["malformed database URL"]),
        (["db", "upgrade", "--url", "nosuchdb://x/y"], {}, ["unknown database dialect/driver"]),
        (["db", "current"], {"DATABASE_URL": "nosuchdb://u:topsecret@h/db"}, ["DATABASE_URL"]),
        (
            ["db", "upgrade", "--url", "postgresql://u:topsecret@127.0.0.1:1/nowhere"],
            {},
            ["database connection failed", "postgresql://u:***@127.0.0.1:1/nowhere"],
        ),
        (["db", "upgrade", "deadbeef"], {}, ["unknown revision", "deadbeef"]),
        (
            ["db", "check", "--models", "nosuch.models"],
            {},
            ["cannot import models module 'nosuch.models'", "no module named 'nosuch'"],
        ),
        (
            ["db", "revision", "-m", "x", "--autogenerate", "--metadata", "app.models:Nope"],
            {},
            ["has no attribute path 'Nope'"],
        ),
        (["db", "init"], {}, ["alembic.ini already exists"]),
    ],
    ids=[
        "malformed-url",
        "unknown-driver",
        "bad-env-url",
        "unreachable-server",
        "unknown-revision",
        "models-not-importable",
        "bad-metadata-path",
        "init-twice",
    ],
)
def test_user_mistakes(
    project: Path, args: list[str], env: dict[str, str], fragments: list[str]
) -> None:
    before = sorted(p.name for p in (project / "migrations" / "versions").iterdir())
    result = run(args, project, cli_env(_sqlite(project), **env), expect=1)
    line = assert_one_line_error(result, *fragments)
    assert "topsecret" not in result.output, line
    assert result.stdout == ""
    assert sorted(p.name for p in (project / "migrations" / "versions").iterdir()) == before
    db = project / "dev.sqlite3"
    if db.exists():
        assert db_state(_sqlite(project)).versions == []


def test_autogenerate_without_models_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    init_project()
    result = run(
        ["db", "revision", "-m", "x", "--autogenerate"],
        tmp_path,
        cli_env(f"sqlite:///{tmp_path}/d.db"),
        expect=1,
    )
    assert_one_line_error(result, "no models module configured", "[repom]", "REPOM_MODELS")


def test_drop_is_refused_in_production_unless_forced(project: Path) -> None:
    url = _sqlite(project)
    run(["db", "create"], project, cli_env(url))
    db = project / "dev.sqlite3"
    assert db.exists()
    production = cli_env(url, REPOM_ENVIRONMENT="production")
    result = run(["db", "drop", "--yes"], project, production, expect=1)
    assert_one_line_error(result, "refusing to drop", "environment=production", "--force")
    assert db.exists()
    # without --yes and no terminal to confirm on: refused, nothing dropped
    result = run(["db", "drop"], project, cli_env(url), expect=1)
    assert_one_line_error(result, "refusing to drop", "no terminal", "--yes")
    assert db.exists()
    assert "Dropped" in run(["db", "drop", "--yes", "--force"], project, production).stdout
    assert not db.exists()


def test_usage_errors_exit_2(project: Path) -> None:
    result = run(["db", "revision"], project, cli_env(_sqlite(project)), expect=2)
    assert "--message" in result.stderr
