"""Helpers for the CLI tests: a throwaway project, the real `repom` executable, DB inspection."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, inspect, pool, text

MAIN = Path(__file__).resolve().parents[2]
# the `repom` script of the environment running the tests (the compatibility venvs have their own)
_BIN = Path(sys.executable).parent / "repom"
REPOM = [str(_BIN)] if _BIN.exists() else [sys.executable, "-m", "repom.cli"]

_CLEARED = (
    "DATABASE_URL",
    "REPOM_DATABASE_URL",
    "REPOM_ASYNC_DATABASE_URL",
    "REPOM_ENVIRONMENT",
    "REPOM_MODELS",
    "REPOM_METADATA",
    "REPOM_DEBUG",
    "CONFIG_HOOK",
    "ALEMBIC_CONFIG",
)


@dataclass
class Result:
    args: list[str]
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def cli_env(url: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    if url is not None:
        env["DATABASE_URL"] = url
    env["COLUMNS"] = "200"
    env.update(extra)
    return env


def start(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*REPOM, *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], args: list[str], expect: int | None = 0) -> Result:
    stdout, stderr = proc.communicate(timeout=120)
    result = Result(args, proc.returncode, stdout, stderr)
    if expect is not None:
        assert result.code == expect, (
            f"repom {' '.join(args)} exited {result.code} (expected {expect})\n"
            f"--- stdout\n{stdout}\n--- stderr\n{stderr}"
        )
    assert "Traceback" not in result.output, result.output
    return result


def run(args: list[str], cwd: Path, env: dict[str, str], expect: int | None = 0) -> Result:
    """Run the real `repom` executable in *cwd*."""
    return finish(start(args, cwd, env), args, expect)


def assert_one_line_error(result: Result, *fragments: str) -> str:
    """A user mistake: exit 1, nothing on stdout, exactly one 'Error: ...' line on stderr."""
    assert result.code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("Error: "), line
    for fragment in fragments:
        assert fragment in line, line
    return line


# --------------------------------------------------------------------------- the project

_TYPES = '''
from sqlalchemy import String
from sqlalchemy.types import TypeDecorator


class Slug(TypeDecorator[str]):
    """A custom type: migrations must import this module themselves."""

    impl = String
    cache_ok = True

    def __init__(self, length: int = 50) -> None:
        super().__init__(length)
        self.length = length
'''

_BASE = """
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

# The models live in submodules this package does NOT import: repom must find them.
CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=CONVENTION)
"""

_USER = """
from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.models import Base
from app.types import Slug


class User(Base):
    __tablename__ = "cli_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)
    slug: Mapped[str] = mapped_column(Slug(40))
{extra}
    posts: Mapped[list["Post"]] = relationship(back_populates="user")  # noqa: F821
"""

# A key in the model source: the generated migrations must never contain it.
SECRET_KEY = base64.urlsafe_b64encode(b"cli-test-key-material-32-bytes!!").decode()

_POST = f"""
import uuid

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.models import Base
from repom.types import EncryptedType, UUIDType


class Post(Base):
    __tablename__ = "cli_posts"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("cli_users.id", ondelete="CASCADE"), index=True
    )
    ref: Mapped[uuid.UUID | None] = mapped_column(UUIDType())
    token: Mapped[str | None] = mapped_column(EncryptedType(String(100), key="{SECRET_KEY}"))
    user: Mapped["User"] = relationship(back_populates="posts")  # noqa: F821
"""

NICKNAME = "    nickname: Mapped[str | None] = mapped_column(String(30), index=True)"


def write_project(root: Path, *, nickname: bool = False) -> Path:
    """``app/`` with a models package (Base + two submodules) and a custom column type."""
    models = root / "app" / "models"
    models.mkdir(parents=True, exist_ok=True)
    (root / "app" / "__init__.py").write_text("")
    (root / "app" / "types.py").write_text(textwrap.dedent(_TYPES))
    (models / "__init__.py").write_text(textwrap.dedent(_BASE))
    (models / "user.py").write_text(_USER.format(extra=NICKNAME if nickname else ""))
    (models / "post.py").write_text(textwrap.dedent(_POST))
    return root


def write_migration(
    project: Path,
    rev: str,
    down: str | None,
    upgrade: str,
    downgrade: str = "pass",
    *,
    folder: str = "migrations",
) -> Path:
    """A hand-written migration file."""
    path = project / folder / "versions" / f"{rev}_manual.py"
    body = f'''"""{rev} manual"""
import sqlalchemy as sa
from alembic import op

revision = {rev!r}
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
{textwrap.indent(textwrap.dedent(upgrade).strip(), "    ")}


def downgrade() -> None:
{textwrap.indent(textwrap.dedent(downgrade).strip(), "    ")}
'''
    path.write_text(body)
    return path


# --------------------------------------------------------------------------- inspection


def sync_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@dataclass
class DbState:
    tables: set[str]
    columns: dict[str, set[str]]
    versions: list[str]
    constraint_names: set[str]


def db_state(url: str) -> DbState:
    """Read the schema with a separate engine (not repom's)."""
    engine = create_engine(sync_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            insp = inspect(conn)
            tables = set(insp.get_table_names())
            columns = {t: {c["name"] for c in insp.get_columns(t)} for t in tables}
            names: set[str] = set()
            for table in tables - {"alembic_version"}:
                pk = insp.get_pk_constraint(table).get("name")
                if pk:
                    names.add(pk)
                names.update(c["name"] for c in insp.get_unique_constraints(table) if c["name"])
                names.update(c["name"] for c in insp.get_foreign_keys(table) if c["name"])
                names.update(i["name"] for i in insp.get_indexes(table) if i["name"])
            versions = []
            if "alembic_version" in tables:
                versions = [
                    row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))
                ]
    finally:
        engine.dispose()
    return DbState(tables, columns, versions, names)


def execute(url: str, *statements: str) -> list[list[tuple[object, ...]]]:
    engine = create_engine(sync_url(url), poolclass=pool.NullPool)
    results: list[list[tuple[object, ...]]] = []
    try:
        with engine.begin() as conn:
            for statement in statements:
                result = conn.execute(text(statement))
                results.append([tuple(row) for row in result] if result.returns_rows else [])
    finally:
        engine.dispose()
    return results


# --------------------------------------------------------------------------- a terminal

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_tty(
    args: list[str], cwd: Path, env: dict[str, str], *, answer: str | None = None
) -> Result:
    """Run the real `repom` executable on a pseudo-terminal (stdin, stdout and stderr), as a
    person at a terminal would; *answer* is typed when a `[y/N]` question appears.  The output
    (both streams, in `stdout`) comes back without colour codes."""
    import pty
    import select

    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [*REPOM, *args], cwd=cwd, env=env, stdin=secondary, stdout=secondary, stderr=secondary
    )
    os.close(secondary)
    raw = b""
    asked = False
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            raw += chunk
            if answer is not None and not asked and b"[y/N]" in raw:
                os.write(primary, answer.encode() + b"\n")
                asked = True
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(primary)
    text = ANSI.sub("", raw.decode("utf-8", errors="replace")).replace("\r\n", "\n")
    assert "Traceback" not in text, text
    return Result(args, code, text, "")


def write_chain(project: Path, count: int, *, prefix: str = "r") -> list[str]:
    """*count* hand-written migrations in a line, each creating one table; their ids in order."""
    revisions = [f"{prefix}{number:02d}" for number in range(1, count + 1)]
    down: str | None = None
    for rev in revisions:
        write_migration(
            project,
            rev,
            down,
            f'op.create_table("t_{rev}", sa.Column("id", sa.Integer, primary_key=True))',
            f'op.drop_table("t_{rev}")',
        )
        down = rev
    return revisions


def user_tables(url: str) -> set[str]:
    """The tables the test migrations created (``t_<revision>``)."""
    return {table for table in db_state(url).tables if table.startswith("t_")}
