"""Seed 004's session API, its examples run as written, sync and async, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import gc
import sys
import textwrap
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from repom.config import RepomConfig, set_config
from repom.database import DatabaseManager, get_async_database, get_database
from repom.exceptions import DuplicateKeyError
from repom.session import EarlyExitWarning, get_db_session, get_db_transaction, get_session
from tests.support import require_postgres

MODELS = """
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "seed_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100), unique=True)
    name: Mapped[str] = mapped_column(String(100))
"""

# seed 004, section 1 and 2, verbatim (comments translated)
SEED_004 = '''
from repom.async_session import get_async_session
from sqlalchemy import select
from your_project.models import User

async def get_user_by_id(user_id: int):
    """AsyncSession managed by hand"""
    session = await get_async_session()
    try:
        result = await session.execute(
            select(User).where(User.id == user_id)
        )
        user = result.scalar_one_or_none()
        return user
    finally:
        await session.close()  # always close

from repom.async_session import get_async_db_session

async def create_user(email: str, name: str):
    """transaction managed automatically"""
    async for session in get_async_db_session():
        user = User(email=email, name=name)
        session.add(user)
        # the seed says: returning here commits
        return user
    # the seed says: an error rolls back
'''


@pytest.fixture
def your_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    pkg = tmp_path / "your_project"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.split(".")[0] == "your_project"]:
        del sys.modules[name]
    import your_project.models as models  # type: ignore[import-not-found]

    yield models
    for name in [m for m in sys.modules if m.split(".")[0] == "your_project"]:
        del sys.modules[name]


@pytest.fixture(params=["sqlite", "postgresql"])
async def default_db(
    request: pytest.FixtureRequest, tmp_path: Path, your_project: Any
) -> AsyncIterator[Any]:
    """Point repom's default config at the backend; create the seed tables; yield a verifier."""
    if request.param == "postgresql":
        url = require_postgres()
    else:
        url = f"sqlite:///{tmp_path / 'seed.sqlite3'}"
    set_config(RepomConfig(database_url=url))
    verify = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    your_project.Base.metadata.drop_all(verify)
    your_project.Base.metadata.create_all(verify)
    yield verify
    await get_async_database().dispose()  # an async pool is closed from its event loop
    get_database().dispose()
    your_project.Base.metadata.drop_all(verify)
    verify.dispose()


def emails(verify: Any) -> list[str]:
    with verify.connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT email FROM seed_users ORDER BY email"))]


def seed_namespace() -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(compile(textwrap.dedent(SEED_004), "seed_004", "exec"), namespace)
    return namespace


async def test_seed_004_manual_session(default_db: Any, your_project: Any) -> None:
    with default_db.begin() as conn:
        conn.execute(text("INSERT INTO seed_users (id, email, name) VALUES (7, 'a@x', 'A')"))
    ns = seed_namespace()
    user = await ns["get_user_by_id"](7)
    assert user.email == "a@x"
    assert await ns["get_user_by_id"](8) is None


async def test_seed_004_return_inside_async_for_rolls_back_and_warns(
    default_db: Any, your_project: Any
) -> None:
    """Python cannot tell the seed's ``return`` from an exception: never commit, always warn."""
    ns = seed_namespace()
    with pytest.warns(EarlyExitWarning, match="ROLLED BACK") as record:
        user = await ns["create_user"]("seed@example.com", "Seed")
        for _ in range(5):  # the abandoned generator is closed by the event loop
            gc.collect()
            await asyncio.sleep(0)
    ours = [w for w in record if issubclass(w.category, EarlyExitWarning)]
    assert len(ours) == 1
    assert "async with transaction() as session" in str(ours[0].message)
    assert user.email == "seed@example.com"
    assert emails(default_db) == []


async def test_async_for_exception_never_commits(default_db: Any, your_project: Any) -> None:
    from repom.async_session import get_async_db_session

    User = your_project.User
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EarlyExitWarning)
        with pytest.raises(RuntimeError):
            async for session in get_async_db_session():
                session.add(User(email="boom@example.com", name="B"))
                await session.flush()
                raise RuntimeError("inside the loop")
        for _ in range(5):
            gc.collect()
            await asyncio.sleep(0)
    assert emails(default_db) == []


async def test_async_for_to_completion_commits(default_db: Any, your_project: Any) -> None:
    from repom.async_session import get_async_db_session, get_async_db_transaction

    User = your_project.User
    async for session in get_async_db_session():
        session.add(User(email="full@example.com", name="F"))
    async for session in get_async_db_transaction():
        session.add(User(email="tx@example.com", name="T"))
    assert emails(default_db) == ["full@example.com", "tx@example.com"]


async def test_async_dependency_protocol(default_db: Any, your_project: Any) -> None:
    """How FastAPI drives the generator: anext, then athrow on error / anext on success."""
    from repom.async_session import get_async_db_session

    User = your_project.User
    gen = get_async_db_session()
    session = await gen.__anext__()
    session.add(User(email="dep@example.com", name="D"))
    with pytest.raises(StopAsyncIteration):
        await gen.__anext__()
    gen = get_async_db_session()
    session = await gen.__anext__()
    session.add(User(email="dep@example.com", name="D"))
    with pytest.raises(DuplicateKeyError):
        await gen.__anext__()  # the commit fails: the consumer sees the typed error
    gen = get_async_db_session()
    session = await gen.__anext__()
    session.add(User(email="err@example.com", name="E"))
    with pytest.raises(KeyError):
        await gen.athrow(KeyError("handler failed"))
    assert emails(default_db) == ["dep@example.com"]


def test_sync_session_functions(default_db: Any, your_project: Any) -> None:
    User = your_project.User
    for session in get_db_session():
        session.add(User(email="s1@example.com", name="S"))
    for session in get_db_transaction():
        session.add(User(email="s2@example.com", name="S"))
    with pytest.warns(EarlyExitWarning, match="for session in get_db_session"):

        def early() -> Any:
            for session in get_db_session():
                session.add(User(email="early@example.com", name="E"))
                return session
            return None

        early()
        gc.collect()
    with pytest.raises(ValueError), warnings.catch_warnings():
        warnings.simplefilter("ignore", EarlyExitWarning)
        for session in get_db_session():
            session.add(User(email="err@example.com", name="E"))
            raise ValueError
    manual = get_session()
    try:
        assert manual.execute(text("SELECT COUNT(*) FROM seed_users")).scalar() == 2
    finally:
        manual.close()
    assert emails(default_db) == ["s1@example.com", "s2@example.com"]
    assert get_database().engine.pool.checkedout() == 0


async def test_seed_database_manager(default_db: Any, your_project: Any) -> None:
    """Seeds 002/003: initialize() checks the connection, get_session() commits, close()."""
    User = your_project.User
    db_manager = DatabaseManager()
    with pytest.raises(RuntimeError, match="initialize"):
        async with db_manager.get_session():
            pass
    await db_manager.initialize()
    async with db_manager.get_session() as session:
        session.add(User(email="mgr@example.com", name="M"))
    with pytest.raises(ZeroDivisionError):
        async with db_manager.get_session() as session:
            session.add(User(email="mgr2@example.com", name="M"))
            1 / 0  # noqa: B018
    await db_manager.close()
    assert db_manager.engine is None
    assert emails(default_db) == ["mgr@example.com"]
