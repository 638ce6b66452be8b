"""A service with two databases: each migration project records the variable holding its
database's URL and never migrates the other one's database by accident."""

from __future__ import annotations

from pathlib import Path

from tests.cli._support import assert_one_line_error, cli_env, db_state, run, write_migration


def make_project(root: Path, *, url_env: str | None, table: str) -> Path:
    root.mkdir(parents=True)
    args = ["db", "init", "migrations"]
    if url_env is not None:
        args += ["--url-env", url_env]
    run(args, root, cli_env())
    write_migration(
        root,
        "0001",
        None,
        f"op.create_table('{table}', sa.Column('id', sa.Integer, primary_key=True))",
        f"op.drop_table('{table}')",
    )
    return root


def test_each_project_migrates_only_its_own_database(tmp_path: Path) -> None:
    main_url = f"sqlite:///{tmp_path / 'main.sqlite3'}"
    audit_url = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    main = make_project(tmp_path / "main", url_env=None, table="orders")
    audit = make_project(tmp_path / "audit", url_env="AUDIT_DATABASE_URL", table="audit_log")
    assert "url_env = DATABASE_URL" in (main / "alembic.ini").read_text()
    assert "url_env = AUDIT_DATABASE_URL" in (audit / "alembic.ini").read_text()

    # only DATABASE_URL is set: the audit project refuses instead of migrating the main database
    refused = run(["db", "upgrade"], audit, cli_env(main_url), expect=1)
    assert_one_line_error(refused, "AUDIT_DATABASE_URL", "--url")
    assert db_state(main_url).tables == set()

    run(["db", "upgrade"], main, cli_env(main_url, AUDIT_DATABASE_URL=audit_url))
    run(["db", "upgrade"], audit, cli_env(main_url, AUDIT_DATABASE_URL=audit_url))
    assert db_state(main_url).tables == {"orders", "alembic_version"}
    assert db_state(audit_url).tables == {"audit_log", "alembic_version"}


def test_url_env_is_read_from_dotenv_and_url_overrides(tmp_path: Path) -> None:
    audit_url = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    other_url = f"sqlite:///{tmp_path / 'other.sqlite3'}"
    audit = make_project(tmp_path / "audit", url_env="AUDIT_DATABASE_URL", table="audit_log")
    (audit / ".env").write_text(f"AUDIT_DATABASE_URL={audit_url}\n")
    run(["db", "upgrade"], audit, cli_env())
    assert "audit_log" in db_state(audit_url).tables
    run(["db", "upgrade", "--url", other_url], audit, cli_env())  # explicit: allowed
    assert "audit_log" in db_state(other_url).tables


def test_url_env_must_be_a_variable_name(tmp_path: Path) -> None:
    root = tmp_path / "p"
    root.mkdir()
    result = run(["db", "init", "migrations", "--url-env", "not a name"], root, cli_env(), expect=1)
    assert_one_line_error(result, "url_env")
    assert not (root / "alembic.ini").exists()
