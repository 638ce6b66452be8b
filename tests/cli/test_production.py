"""environment=production: a downgrade (or a drop) happens only when a person confirms it at a
terminal, or when the command says --yes.  Without a terminal and without --yes: refused, with a
message naming --yes, and nothing changes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from repom.migrations import MigrationError, Migrations
from tests.cli._support import (
    assert_one_line_error,
    cli_env,
    db_state,
    run,
    run_tty,
    user_tables,
    write_chain,
)
from tests.cli.conftest import backend_url


@pytest.mark.parametrize(
    ("backend", "flavour"),
    [("sqlite", "async"), ("postgresql", "sync")],
    ids=["sqlite-async", "postgresql-sync"],
)
def test_downgrade_in_production_asks_or_needs_yes(
    backend: str, flavour: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = backend_url(backend, tmp_path, request)
    project = tmp_path / "proj"
    project.mkdir()
    run(["db", "init", *(["--async"] if flavour == "async" else [])], project, cli_env(url))
    revisions = write_chain(project, 3)
    run(["db", "upgrade"], project, cli_env(url))
    assert db_state(url).versions == ["r03"]
    production = cli_env(url, REPOM_ENVIRONMENT="production")

    # no terminal, no --yes: refused before anything runs
    for target in (["base"], [], ["-1"]):
        result = run(["db", "downgrade", *target], project, production, expect=1)
        assert_one_line_error(
            result, "refusing to downgrade", "environment=production", "pass --yes"
        )
        assert result.stdout == ""
    password = make_url(url).password
    if password:
        assert password not in result.output
    assert db_state(url).versions == ["r03"]
    assert user_tables(url) == {f"t_{rev}" for rev in revisions}

    # at a terminal: what would be undone is listed, newest first; "n" changes nothing
    result = run_tty(["db", "downgrade", "base"], project, production, answer="n")
    assert result.code == 1, result.stdout
    lines = result.stdout.splitlines()
    start = lines.index(
        f"environment=production: this undoes 3 migration(s) on "
        f"{make_url(url).render_as_string(hide_password=True)}:"
    )
    assert lines[start + 1 : start + 4] == [
        "  r03: r03 manual",
        "  r02: r02 manual",
        "  r01: r01 manual",
    ]
    assert "Downgrade? [y/N]:" in result.stdout
    assert "Error: aborted: nothing was changed" in result.stdout
    assert "Downgrade r03" not in result.stdout
    assert db_state(url).versions == ["r03"]

    # "y": exactly the listed migration is undone (a relative target works too)
    result = run_tty(["db", "downgrade", "-1"], project, production, answer="y")
    assert result.code == 0, result.stdout
    assert "this undoes 1 migration(s)" in result.stdout
    assert "Downgrade r03 -> r02: r03 manual" in result.stdout
    assert db_state(url).versions == ["r02"]
    assert user_tables(url) == {"t_r01", "t_r02"}

    # --yes: no question, no terminal needed
    result = run(["db", "downgrade", "base", "--yes"], project, production)
    assert "Downgrade r01 -> base: r01 manual" in result.stdout
    assert db_state(url).versions == []
    assert user_tables(url) == set()

    # nothing applied any more: nothing to confirm
    result = run_tty(["db", "downgrade", "base"], project, production)
    assert result.code == 0 and "Nothing to downgrade." in result.stdout
    assert "[y/N]" not in result.stdout

    # outside production nothing is asked (scripts keep working)
    run(["db", "upgrade"], project, cli_env(url))
    assert "Downgrade r03 -> r02" in run(["db", "downgrade"], project, cli_env(url)).stdout


def test_a_planned_downgrade_refuses_when_the_database_moved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the person confirmed is what runs: if the database changed in between (another
    deploy upgraded it), the downgrade stops without undoing anything."""
    url = f"sqlite:///{tmp_path / 'dev.sqlite3'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    run(["db", "init"], tmp_path, cli_env(url))
    write_chain(tmp_path, 3)
    migrations = Migrations(url=url)
    migrations.upgrade("r02")
    plan = migrations.plan("base", kind="downgrade")
    assert [info.revision for info in plan] == ["r02", "r01"]
    assert migrations.plan("head") and migrations.plan("head")[0].revision == "r03"
    assert db_state(url).versions == ["r02"]  # planning changes nothing

    migrations.upgrade()  # someone else's deploy, between the question and the answer
    with pytest.raises(MigrationError, match=r"database changed .* nothing was changed"):
        migrations.downgrade("base", expect=[info.revision for info in plan])
    assert db_state(url).versions == ["r03"]
    assert user_tables(url) == {"t_r01", "t_r02", "t_r03"}

    steps = migrations.downgrade("base", expect=["r03", "r02", "r01"])
    assert [step.revision for step in steps] == ["r03", "r02", "r01"]
    assert db_state(url).versions == []


def test_drop_asks_at_a_terminal_and_needs_yes_without_one(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dev.sqlite3'}"
    db = tmp_path / "dev.sqlite3"
    run(["db", "create"], tmp_path, cli_env(url))
    result = run(["db", "drop"], tmp_path, cli_env(url), expect=1)
    assert_one_line_error(result, "refusing to drop", "pass --yes")
    assert db.exists()
    result = run_tty(["db", "drop"], tmp_path, cli_env(url), answer="n")
    assert result.code == 1 and "aborted: nothing was changed" in result.stdout
    assert db.exists()
    result = run_tty(["db", "drop"], tmp_path, cli_env(url), answer="y")
    assert result.code == 0 and f"Dropped {url}" in result.stdout
    assert not db.exists()
