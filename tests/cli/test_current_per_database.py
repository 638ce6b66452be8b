"""A service with two databases (a SQLite one and a PostgreSQL one), one migration project each:
`db current` reports every database, `repom db -c FILE <command>` picks a project."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url

from repom.urls import mask_url
from tests.cli._support import (
    assert_one_line_error,
    cli_env,
    db_state,
    run,
    write_migration,
)
from tests.cli.conftest import create_pg_database


def test_current_reports_each_database(pg_scratch: str, pg_url: str, tmp_path: Path) -> None:
    create_pg_database(pg_url, make_url(pg_scratch).database or "")
    main_url = f"sqlite:///{tmp_path / 'orders.sqlite3'}"
    root = tmp_path / "svc"
    root.mkdir()
    run(["db", "init", "migrations"], root, cli_env())
    args = ["db", "-c", "audit.ini", "init", "audit_migrations", "--url-env", "AUDIT_DATABASE_URL"]
    run(args, root, cli_env())
    assert "url_env = AUDIT_DATABASE_URL" in (root / "audit.ini").read_text()
    write_migration(
        root, "o1", None, 'op.create_table("orders", sa.Column("id", sa.Integer, primary_key=True))'
    )
    write_migration(
        root,
        "l1",
        None,
        'op.create_table("audit_log", sa.Column("id", sa.Integer, primary_key=True))',
        folder="audit_migrations",
    )
    env = cli_env(main_url, AUDIT_DATABASE_URL=pg_scratch)
    run(["db", "upgrade"], root, env)
    run(["db", "-c", "audit.ini", "upgrade"], root, env)  # the group option picks the project
    assert db_state(main_url).versions == ["o1"]
    assert db_state(pg_scratch).versions == ["l1"]
    assert "orders" not in db_state(pg_scratch).tables

    expected = [
        f"alembic.ini ({main_url})",
        "  o1 (head)",
        f"audit.ini ({mask_url(pg_scratch)})",
        "  l1 (head)",
    ]
    result = run(["db", "current", "--all"], root, env)
    assert result.stdout.splitlines() == expected
    assert "***" in result.stdout and "s3cret-pw" not in result.output
    result = run(["db", "current", "-c", "alembic.ini", "-c", "audit.ini"], root, env)
    assert result.stdout.splitlines() == expected
    assert run(["db", "-c", "audit.ini", "current"], root, env).stdout == "l1 (head)\n"

    # one database not configured: the other is still reported, the failure named, exit 1
    result = run(["db", "current", "--all"], root, cli_env(main_url), expect=1)
    assert result.stdout.splitlines() == expected[:2]
    assert_one_line_error(result, "audit.ini", "AUDIT_DATABASE_URL", "is not set")

    # --url names one database: not for several projects
    result = run(["db", "current", "--all", "--url", main_url], root, env, expect=2)
    assert "--url names one database" in result.stderr
