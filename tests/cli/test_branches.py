"""Branches and inspection: `db heads`, `db merge`, `db show`, `db history`, `db current`.

The real `repom` executable on a project whose migrations fork and are merged again, on SQLite
and PostgreSQL, with the sync and the async env.py (one scenario body).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli._support import (
    Result,
    assert_one_line_error,
    cli_env,
    db_state,
    run,
    write_migration,
)
from tests.cli.conftest import backend_url


def _table(rev: str) -> tuple[str, str]:
    return (
        f'op.create_table("br_{rev}", sa.Column("id", sa.Integer, primary_key=True))',
        f'op.drop_table("br_{rev}")',
    )


def _versions(project: Path) -> set[str]:
    return {path.name for path in (project / "migrations" / "versions").glob("*.py")}


@pytest.mark.parametrize(
    ("backend", "flavour"),
    [("sqlite", "sync"), ("postgresql", "async")],
    ids=["sqlite-sync", "postgresql-async"],
)
def test_fork_merge_show_history(
    backend: str, flavour: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = backend_url(backend, tmp_path, request)
    project = tmp_path / "proj"
    project.mkdir()
    env = cli_env(url)

    def repom(*args: str, expect: int = 0) -> Result:
        return run(list(args), project, env, expect)

    repom("db", "init", *(["--async"] if flavour == "async" else []))
    write_migration(project, "a1", None, *_table("a1"))
    write_migration(project, "b2", "a1", *_table("b2"))
    write_migration(project, "c3", "a1", *_table("c3"))

    # commands that read only the migration folder are checked once (no database involved)
    folder_only = backend == "sqlite"

    # two heads: listed; a plain `upgrade` (to "head") refuses and changes nothing
    if folder_only:
        assert set(repom("db", "heads").stdout.splitlines()) == {
            "a1 -> b2 (head): b2 manual",
            "a1 -> c3 (head): c3 manual",
        }
    assert_one_line_error(repom("db", "upgrade", expect=1), "Multiple head revisions")
    assert db_state(url).versions == []

    result = repom("db", "upgrade", "heads")
    assert "Upgrade base -> a1: a1 manual" in result.stdout
    assert "Upgrade a1 -> b2: b2 manual" in result.stdout
    assert "Upgrade a1 -> c3: c3 manual" in result.stdout
    assert result.stdout.splitlines()[-1] == "Database at b2, c3."
    assert sorted(db_state(url).versions) == ["b2", "c3"]
    assert set(repom("db", "current").stdout.splitlines()) == {"b2 (head)", "c3 (head)"}

    # merge: one new file joining both heads, written from repom's template
    before = _versions(project)
    result = repom("db", "merge", "-m", "join the branches", "--rev-id", "m4")
    assert result.stdout.startswith("Created merge revision m4: migrations/versions/")
    assert "  merges b2, c3" in result.stdout
    (written,) = _versions(project) - before
    source = (project / "migrations" / "versions" / written).read_text()
    assert "down_revision: str | Sequence[str] | None = ('b2', 'c3')" in source
    assert '"""join the branches' in source
    assert repom("db", "heads").stdout.splitlines() == [
        "b2, c3 -> m4 (head, mergepoint): join the branches"
    ]
    assert sorted(db_state(url).versions) == ["b2", "c3"]  # writing a merge touches no database

    # nothing (more) to merge, or not heads: one line, no file written
    if folder_only:
        before = _versions(project)
        line = assert_one_line_error(repom("db", "merge", expect=1), "nothing to merge")
        assert "single head (m4)" in line
        result = repom("db", "merge", "a1", "m4", expect=1)
        assert_one_line_error(result, "cannot merge a1", "head")
        result = repom("db", "merge", "zz9", "m4", expect=1)
        assert_one_line_error(result, "unknown revision", "zz9")
        assert _versions(project) == before

    result = repom("db", "upgrade")
    assert "Upgrade b2, c3 -> m4: join the branches" in result.stdout
    assert db_state(url).versions == ["m4"]

    # show: everything about one migration; `current` reads the database
    assert repom("db", "show", "current").stdout.splitlines()[0] == "m4 (head, current, mergepoint)"
    if folder_only:
        shown = repom("db", "show", "m4").stdout.splitlines()
        assert shown[0] == "m4 (head, mergepoint)"
        assert "Merges:         b2, c3" in shown
        assert any(line.startswith("Path:           migrations/versions/") for line in shown)
        assert "    join the branches" in shown
        assert "    Revises: b2, c3" in shown
        fork = repom("db", "show", "a1").stdout.splitlines()
        assert fork[:3] == ["a1 (branchpoint)", "Parent:         base", "Branches into:  b2, c3"]
        result = repom("db", "show", "nosuch", expect=1)
        assert_one_line_error(result, "unknown revision", "nosuch")
        assert result.stdout == ""

    # history: newest first, ranges, the database's revision marked
    marked = repom("db", "history", "-i", "-r", ":current").stdout.splitlines()
    assert marked[0] == "b2, c3 -> m4 (head, current, mergepoint): join the branches"
    assert marked[-1] == "base -> a1 (branchpoint): a1 manual"
    assert set(marked[1:3]) == {"a1 -> b2: b2 manual", "a1 -> c3: c3 manual"}
    assert len(marked) == 4
    if folder_only:
        full = repom("db", "history").stdout.splitlines()
        assert full == [marked[0].replace("current, ", ""), *marked[1:]]
        assert repom("db", "history", "-r", "b2:").stdout.splitlines() == [
            full[0],
            "a1 -> b2: b2 manual",
        ]
        verbose = repom("db", "history", "--verbose", "-r", ":a1").stdout.splitlines()
        assert verbose[:3] == ["a1 (branchpoint)", "Parent:         base", "Branches into:  b2, c3"]
        assert_one_line_error(repom("db", "history", "-r", "b2", expect=1), "START:END")

    # and back down to the fork
    result = repom("db", "downgrade", "a1")
    assert "Downgrade m4 -> b2, c3: join the branches" in result.stdout
    assert result.stdout.splitlines()[-1] == "Database at a1."
    state = db_state(url)
    assert state.versions == ["a1"]
    assert "br_a1" in state.tables and not {"br_b2", "br_c3"} & state.tables
    assert repom("db", "current").stdout.strip() == "a1 (not at head)"
