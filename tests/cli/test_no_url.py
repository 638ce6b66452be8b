"""No database URL: a silent SQLite default no more.

``environment=dev`` keeps the SQLite file ``./repom.sqlite3`` and says so on stderr; any other
environment stops with an error naming ``DATABASE_URL / REPOM_DATABASE_URL``; ``repom info``
never creates a database file; ``postgres://`` URLs (Heroku) work.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.cli._support import assert_one_line_error, cli_env, db_state, run, write_project

FALLBACK = "no database URL configured (DATABASE_URL / REPOM_DATABASE_URL)"


def _files(root: Path) -> set[str]:
    return {
        str(path.relative_to(root)) for path in root.rglob("*") if "__pycache__" not in str(path)
    }


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Warning:")]


def test_info_in_dev_announces_the_fallback_and_creates_nothing(tmp_path: Path) -> None:
    result = run(["info"], tmp_path, cli_env())
    assert os.listdir(tmp_path) == []
    (warning,) = _warnings(result.stderr)
    assert FALLBACK in warning and "sqlite:///repom.sqlite3" in warning
    assert "repom.sqlite3 does not exist yet" in result.stdout
    assert "environment     dev" in result.stdout

    data = json.loads(run(["info", "--json"], tmp_path, cli_env()).stdout)
    assert (data["url"], data["missing_file"], data["connect_error"]) == (
        "sqlite:///repom.sqlite3",
        "repom.sqlite3",
        None,
    )
    assert os.listdir(tmp_path) == []


def test_info_never_creates_an_explicit_sqlite_file(tmp_path: Path) -> None:
    project = write_project(tmp_path / "proj")
    run(["db", "init", "--models", "app.models"], project, cli_env())
    before = _files(project)
    url = f"sqlite:///{project / 'later.sqlite3'}"
    result = run(["info", "--url", url], project, cli_env())
    assert "later.sqlite3 does not exist yet" in result.stdout
    assert "cli_users <- app.models.user.User (missing)" in result.stdout
    assert "base (nothing applied)" in result.stdout
    assert _warnings(result.stderr) == []  # a URL was given: nothing to announce
    assert _files(project) == before


@pytest.mark.parametrize("environment", ["production", "prod"])
def test_production_without_a_url_is_an_error(tmp_path: Path, environment: str) -> None:
    project = write_project(tmp_path / "proj")
    run(["db", "init", "--models", "app.models"], project, cli_env())
    before = _files(project)
    env = cli_env(REPOM_ENVIRONMENT=environment)
    for args in (["info"], ["db", "revision", "--autogenerate", "-m", "x"], ["db", "upgrade"]):
        result = run(args, project, env, expect=1)
        assert_one_line_error(result, "no database URL configured", "DATABASE_URL", "production")
    assert _files(project) == before  # no SQLite file, no migration


def test_dev_revision_uses_the_announced_fallback(tmp_path: Path) -> None:
    project = write_project(tmp_path / "proj")
    run(["db", "init", "--models", "app.models"], project, cli_env())
    result = run(["db", "revision", "--autogenerate", "-m", "first"], project, cli_env())
    (warning,) = _warnings(result.stderr)
    assert FALLBACK in warning
    assert "+ table cli_users" in result.stdout
    assert (project / "repom.sqlite3").exists()  # dev's documented default, announced above


def test_postgres_scheme_url_from_the_environment(pg_scratch: str, tmp_path: Path) -> None:
    heroku = "postgres://" + pg_scratch.split("://", 1)[1]  # as Heroku writes it
    project = write_project(tmp_path / "proj")
    env = cli_env(heroku)
    assert "Created" in run(["db", "create"], project, env).stdout
    run(["db", "init", "--models", "app.models"], project, env)
    run(["db", "revision", "--autogenerate", "-m", "first"], project, env)
    run(["db", "upgrade"], project, env)
    assert {"cli_users", "cli_posts"} <= db_state(pg_scratch).tables
    data = json.loads(run(["info", "--json"], project, env).stdout)
    assert data["backend"] == "postgresql" and data["driver"] == "psycopg"
    assert data["connect_error"] is None and data["server_version"]
    assert "s3cret-pw" not in json.dumps(data)
