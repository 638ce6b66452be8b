"""`db upgrade` / `db downgrade` over many revisions report each migration as it completes, with
its time: plain lines when the output is not a terminal, a progress bar above them on one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.cli._support import (
    assert_one_line_error,
    cli_env,
    db_state,
    run,
    run_tty,
    user_tables,
    write_chain,
    write_migration,
)
from tests.cli.conftest import backend_url

COUNT = 30
TOOK = r"\((\d+ ms|\d+\.\d s|\d+ min \d+ s)\)"


@pytest.mark.parametrize(
    ("backend", "flavour"),
    [("sqlite", "sync"), ("postgresql", "async")],
    ids=["sqlite-sync", "postgresql-async"],
)
def test_upgrade_and_downgrade_report_every_revision(
    backend: str, flavour: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = backend_url(backend, tmp_path, request)
    project = tmp_path / "proj"
    project.mkdir()
    env = cli_env(url)
    run(["db", "init", *(["--async"] if flavour == "async" else [])], project, env)
    revisions = write_chain(project, COUNT)

    # a failure halfway: the lines name what ran, then say it was all rolled back
    write_migration(
        project,
        "r15",
        "r14",
        'op.execute("INSERT INTO no_such_table VALUES (1)")',
    )
    result = run(["db", "upgrade"], project, env, expect=1)
    assert_one_line_error(result, "database error", "no_such_table")
    lines = result.stdout.splitlines()
    assert len(lines) == 15, result.stdout
    assert lines[13].startswith("[14/30] Upgrade r13 -> r14: r14 manual (")
    assert lines[14].startswith("Rolled back: the 14 step(s) above ran in the failed run's")
    assert db_state(url).versions == []
    assert user_tables(url) == set()

    # fixed: 30 lines in order, each with its counter and its time, then the outcome
    write_chain(project, COUNT)
    result = run(["db", "upgrade"], project, env)
    lines = result.stdout.splitlines()
    assert len(lines) == COUNT + 1, result.stdout
    for number, (line, rev) in enumerate(zip(lines, revisions, strict=False), 1):
        down = revisions[number - 2] if number > 1 else "base"
        expected = rf"\[{number:>2}/{COUNT}\] Upgrade {down} -> {rev}: {rev} manual {TOOK}"
        assert re.fullmatch(expected, line), line
    assert lines[-1] == f"Database at {revisions[-1]}."
    assert "\x1b[" not in result.stdout and "━" not in result.stdout  # plain: no bar, no colour
    assert db_state(url).versions == [revisions[-1]]
    assert user_tables(url) == {f"t_{rev}" for rev in revisions}

    # on a terminal: a progress bar counting the migrations, and the same lines
    result = run_tty(["db", "downgrade", "r20"], project, env)
    assert result.code == 0, result.stdout
    assert "0/10" in result.stdout  # the bar's counter, drawn before the first migration
    done = re.findall(
        r"\[\s*(\d+)/10\] Downgrade (r\d+) -> (r\d+): r\d+ manual " + TOOK, result.stdout
    )
    assert [(int(n), source) for n, source, _, _ in done] == [
        (number, f"r{31 - number}") for number in range(1, 11)
    ]
    assert "Database at r20." in result.stdout
    assert db_state(url).versions == ["r20"]
    assert user_tables(url) == {f"t_{rev}" for rev in revisions[:20]}

    # one migration: no counter
    result = run(["db", "upgrade", "r21"], project, env)
    assert re.fullmatch(
        rf"Upgrade r20 -> r21: r21 manual {TOOK}\nDatabase at r21\.\n", result.stdout
    )
