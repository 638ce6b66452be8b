"""The seed's dependencies as written -- ``Depends(get_async_db_session)`` and
``Depends(get_db_session)``, no ``scope=`` -- commit before the response: a COMMIT that fails
reaches the client as an error status, never as a 2xx.

The failing COMMIT is a deferred foreign key (checked at COMMIT on SQLite and PostgreSQL).  The
first scenarios run in-process (with a probe at the moment the response starts); the last ones
run the application under a real uvicorn server.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import ForeignKey, Integer
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from repom.async_session import get_async_db_session
from repom.database import AsyncDatabase, Database, set_async_database, set_database
from repom.fastapi import install_exception_handlers
from repom.session import get_db_session
from tests.fastapi._support import Backend
from tests.fastapi.test_sessions import ResponseStartProbe, client_for
from tests.support import maybe_await


class Base(DeclarativeBase):
    pass


class Parent(Base):
    __tablename__ = "seed_dep_parents"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)


class Child(Base):
    __tablename__ = "seed_dep_children"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_id: Mapped[int] = mapped_column(
        ForeignKey("seed_dep_parents.id", deferrable=True, initially="DEFERRED")
    )


def build_app(flavour: str) -> FastAPI:
    """The seed's shape: the module's session generator in a plain ``Depends``."""
    app = FastAPI()
    install_exception_handlers(app)
    if flavour == "async":

        @app.post("/children", status_code=201)
        async def create_async(
            child_id: int, parent_id: int, db: AsyncSession = Depends(get_async_db_session)
        ) -> dict[str, int]:
            db.add(Child(id=child_id, parent_id=parent_id))
            await db.flush()  # accepted: the foreign key is only checked at COMMIT
            return {"id": child_id}

    else:

        @app.post("/children", status_code=201)
        def create_sync(
            child_id: int, parent_id: int, db: Session = Depends(get_db_session)
        ) -> dict[str, int]:
            db.add(Child(id=child_id, parent_id=parent_id))
            db.flush()
            return {"id": child_id}

    return app


@pytest.fixture
async def default_db(backend: Backend, flavour: str) -> Any:
    db = backend.flavour_database(flavour)
    await maybe_await(db.create_all(Base.metadata))
    if isinstance(db, AsyncDatabase):
        previous_async = set_async_database(db)
        yield db
        set_async_database(previous_async)
    else:
        assert isinstance(db, Database)
        previous = set_database(db)
        yield db
        set_database(previous)


def add_parent(backend: Backend) -> None:
    engine = backend.verify_engine()
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO seed_dep_parents (id) VALUES (1)")
    finally:
        engine.dispose()


def children(backend: Backend) -> list[int]:
    return [r[0] for r in backend.rows("SELECT id FROM seed_dep_children ORDER BY id")]


async def test_seed_dependency_commits_before_the_response(
    backend: Backend, flavour: str, default_db: Any
) -> None:
    add_parent(backend)
    probe = ResponseStartProbe(build_app(flavour), lambda: children(backend))
    async with client_for(probe) as client:
        ok = await client.post("/children", params={"child_id": 10, "parent_id": 1})
        failed = await client.post("/children", params={"child_id": 11, "parent_id": 999})
    assert ok.status_code == 201
    assert failed.status_code == 409 and failed.json()["code"] == "foreign_key_violation"
    # when the first byte of each response left, the COMMIT had happened (or failed)
    assert probe.seen == [(201, [10]), (409, [10])]
    assert children(backend) == [10]


# --------------------------------------------------------------------------- real uvicorn

APP = '''
"""The seed's FastAPI example, as a user writes it (no repom error handlers installed)."""
import os

from fastapi import Depends, FastAPI
from sqlalchemy import ForeignKey, Integer
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from repom.async_session import get_async_db_session
from repom.session import get_db_session
from repom.database import AsyncDatabase, Database, set_async_database, set_database

SCHEMA = os.environ.get("TEST_SCHEMA")
URL = os.environ["TEST_URL"]
if SCHEMA:  # the test's private PostgreSQL schema
    set_database(Database(URL, connect_args={"options": f"-csearch_path={SCHEMA}"}))
    set_async_database(
        AsyncDatabase(URL, connect_args={"server_settings": {"search_path": SCHEMA}})
    )
else:
    set_database(Database(URL))
    set_async_database(AsyncDatabase(URL))


class Base(DeclarativeBase):
    pass


class Parent(Base):
    __tablename__ = "seed_dep_parents"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)


class Child(Base):
    __tablename__ = "seed_dep_children"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_id: Mapped[int] = mapped_column(
        ForeignKey("seed_dep_parents.id", deferrable=True, initially="DEFERRED")
    )


app = FastAPI()


@app.post("/async/children", status_code=201)
async def create_async(
    child_id: int, parent_id: int, db: AsyncSession = Depends(get_async_db_session)
):
    db.add(Child(id=child_id, parent_id=parent_id))
    await db.flush()
    return {"id": child_id}


@app.post("/sync/children", status_code=201)
def create_sync(child_id: int, parent_id: int, db: Session = Depends(get_db_session)):
    db.add(Child(id=child_id, parent_id=parent_id))
    db.flush()
    return {"id": child_id}
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def uvicorn_app(backend: Backend, tmp_path: Path) -> Iterator[str]:
    """The seed app under a real uvicorn process; yields its base URL."""
    Base.metadata.create_all(engine := backend.verify_engine())
    engine.dispose()
    add_parent(backend)
    module = f"seed_app_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(APP))
    port = free_port()
    env = {
        **os.environ,
        "TEST_URL": backend.sync_url,
        "TEST_SCHEMA": backend.schema or "",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", f"{module}:app", "--port", str(port), "--no-access-log"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(base + "/docs", timeout=1)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    output = proc.stdout.read().decode() if proc.stdout else ""
                    pytest.fail(f"uvicorn did not start:\n{output}")
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            print(proc.stdout.read().decode())  # shown when the test fails


@pytest.mark.parametrize("flavour_path", ["async", "sync"])
def test_seed_dependency_under_uvicorn(
    backend: Backend, uvicorn_app: str, flavour_path: str
) -> None:
    with httpx.Client(base_url=uvicorn_app, timeout=10) as client:
        ok = client.post(f"/{flavour_path}/children", params={"child_id": 1, "parent_id": 1})
        # the client has its answer: the row is committed already
        assert ok.status_code == 201 and children(backend) == [1]
        failed = client.post(f"/{flavour_path}/children", params={"child_id": 2, "parent_id": 9})
    # without repom's handlers the failed COMMIT is a plain 500 -- but never a 2xx
    assert failed.status_code == 500
    assert children(backend) == [1]
