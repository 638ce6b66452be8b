"""Relationships in responses: an async endpoint whose response reads an unloaded relationship
gets repom's JSON error (``lazy_load_in_async``, naming the attribute and the fix, logged with
its traceback, nothing committed); loading it with the repository's ``options=`` works.

One scenario body per case, for both flavours (a sync endpoint with ``DbSession`` and
``Repository``, an async one with ``AsyncDbSession`` and ``AsyncRepository``), on SQLite and
PostgreSQL.  A sync session loads lazily on attribute access, so only the async flavour fails
where no option is given.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict
from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from repom.database import AsyncDatabase, Database
from repom.fastapi import AsyncDbSession, DbSession, install_exception_handlers, use_databases
from repom.repository import AsyncRepository, Repository
from tests.fastapi._support import Backend, StatementLog, sync_engine_of


class Base(DeclarativeBase):
    pass


class Writer(Base):
    __tablename__ = "fa_lz_writers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    notes: Mapped[list[Note]] = relationship(back_populates="writer", order_by="Note.id")


class Note(Base):
    __tablename__ = "fa_lz_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    writer_id: Mapped[int] = mapped_column(ForeignKey("fa_lz_writers.id"))
    text: Mapped[str] = mapped_column(String(100))
    writer: Mapped[Writer] = relationship(back_populates="notes")


class WriterOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str


class NoteOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    text: str
    writer: WriterOut


class NoteIn(BaseModel):
    writer_id: int
    text: str


class NoteRepository(Repository[Note]):
    pass


class AsyncNoteRepository(AsyncRepository[Note]):
    pass


LAZY_DETAIL = (
    "Note.writer was read but not loaded, and an async session cannot load it on attribute "
    "access (a lazy load); load it with the query: options=['writer'] on the repository read, "
    "create() or update() (or selectinload(Note.writer)), or "
    "await session.refresh(obj, attribute_names=['writer'])"
)


def build_app(flavour: str, db: Database | AsyncDatabase, **options: Any) -> FastAPI:
    app = FastAPI()
    install_exception_handlers(app, **options)
    if flavour == "sync":
        assert isinstance(db, Database)
        use_databases(app, database=db)

        @app.post("/notes", status_code=201, response_model=NoteOut)
        def create(data: NoteIn, session: DbSession) -> Any:
            return NoteRepository(session).create(data)

        @app.post("/notes/loaded", status_code=201, response_model=NoteOut)
        def create_loaded(data: NoteIn, session: DbSession) -> Any:
            return NoteRepository(session).create(data, options=["writer"])

        @app.get("/notes/{note_id}", response_model=NoteOut)
        def read(note_id: int, session: DbSession) -> Any:
            return NoteRepository(session).get_one(id=note_id, options=["writer"])

        @app.get("/notes/{note_id}/writer")
        def writer_name(note_id: int, session: DbSession) -> dict[str, str]:
            note = NoteRepository(session).get_one(id=note_id)
            return {"writer": note.writer.name}  # read in the endpoint's own code

        @app.get("/notes/{note_id}/expired", response_model=NoteOut)
        def expired(note_id: int, session: DbSession) -> Any:
            note = NoteRepository(session).get_one(id=note_id, options=["writer"])
            session.expire(note, ["text"])
            return note

    else:
        assert isinstance(db, AsyncDatabase)
        use_databases(app, async_database=db)

        @app.post("/notes", status_code=201, response_model=NoteOut)
        async def create(data: NoteIn, session: AsyncDbSession) -> Any:
            return await AsyncNoteRepository(session).create(data)

        @app.post("/notes/loaded", status_code=201, response_model=NoteOut)
        async def create_loaded(data: NoteIn, session: AsyncDbSession) -> Any:
            return await AsyncNoteRepository(session).create(data, options=["writer"])

        @app.get("/notes/{note_id}", response_model=NoteOut)
        async def read(note_id: int, session: AsyncDbSession) -> Any:
            return await AsyncNoteRepository(session).get_one(id=note_id, options=["writer"])

        @app.get("/notes/{note_id}/writer")
        async def writer_name(note_id: int, session: AsyncDbSession) -> dict[str, str]:
            note = await AsyncNoteRepository(session).get_one(id=note_id)
            return {"writer": note.writer.name}  # read in the endpoint's own code

        @app.get("/notes/{note_id}/expired", response_model=NoteOut)
        async def expired(note_id: int, session: AsyncDbSession) -> Any:
            note = await AsyncNoteRepository(session).get_one(id=note_id, options=["writer"])
            session.expire(note, ["text"])
            return note

    return app


async def setup(backend: Backend, flavour: str, **options: Any) -> tuple[FastAPI, StatementLog]:
    db = backend.flavour_database(flavour)
    if isinstance(db, AsyncDatabase):
        await db.create_all(Base.metadata)
    else:
        db.create_all(Base.metadata)
    with backend.verify_engine().begin() as conn:
        conn.execute(Writer.__table__.insert(), [{"id": 1, "name": "Ann"}])
    app = build_app(flavour, db, **options)
    app.state.test_db = db
    return app, StatementLog().attach(db)


def client_for(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "repom.fastapi" and r.levelno == logging.ERROR]


async def test_unloaded_relationship_in_the_response_model(
    backend: Backend, flavour: str, caplog: pytest.LogCaptureFixture
) -> None:
    app, log = await setup(backend, flavour)
    caplog.set_level(logging.ERROR, logger="repom.fastapi")
    async with client_for(app) as client:
        response = await client.post("/notes", json={"writer_id": 1, "text": "hello"})
    assert sync_engine_of(app.state.test_db).pool.checkedout() == 0  # connection returned
    if flavour == "async":
        assert response.status_code == 500
        assert response.json() == {
            "detail": LAZY_DETAIL,
            "code": "lazy_load_in_async",
            "attribute": "Note.writer",
        }
        [record] = errors_logged(caplog)
        assert record.getMessage() == f"POST /notes failed: ResponseValidationError: {LAZY_DETAIL}"
        assert record.exc_info is not None
        # the request's transaction was rolled back: the INSERT is gone
        assert "COMMIT" not in log.statements and log.statements[-1] == "ROLLBACK"
        assert backend.rows("SELECT count(*) FROM fa_lz_notes") == [(0,)]
    else:
        assert response.status_code == 201  # a sync session loads the relationship on access
        assert response.json()["writer"] == {"id": 1, "name": "Ann"}
        assert errors_logged(caplog) == []
        assert log.statements[-1] == "COMMIT"
        assert backend.rows("SELECT text FROM fa_lz_notes") == [("hello",)]


async def test_relationship_read_in_endpoint_code(
    backend: Backend, flavour: str, caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = await setup(backend, flavour)
    with backend.verify_engine().begin() as conn:
        conn.execute(Note.__table__.insert(), [{"id": 1, "writer_id": 1, "text": "x"}])
    caplog.set_level(logging.ERROR, logger="repom.fastapi")
    async with client_for(app) as client:
        response = await client.get("/notes/1/writer")
    if flavour == "async":
        assert response.status_code == 500
        assert response.json() == {
            "detail": LAZY_DETAIL,
            "code": "lazy_load_in_async",
            "attribute": "Note.writer",
        }
        [record] = errors_logged(caplog)
        assert record.getMessage() == f"GET /notes/1/writer failed: MissingGreenlet: {LAZY_DETAIL}"
        assert record.exc_info is not None
    else:
        assert response.json() == {"writer": "Ann"}


async def test_options_load_the_relationship(backend: Backend, flavour: str) -> None:
    app, log = await setup(backend, flavour)
    async with client_for(app) as client:
        created = await client.post("/notes/loaded", json={"writer_id": 1, "text": "hello"})
        assert created.status_code == 201, created.text
        statements = list(log.statements)
        read = await client.get(f"/notes/{created.json()['id']}")
    expected = {"id": created.json()["id"], "text": "hello", "writer": {"id": 1, "name": "Ann"}}
    assert created.json() == expected
    assert read.status_code == 200 and read.json() == expected
    # INSERT, the note with its writer joined, COMMIT: nothing loaded during serialization
    kinds = [
        s.split()[0].upper()
        for s in statements
        if not s.upper().startswith(("BEGIN", "PRAGMA", "SET", "SHOW", "SELECT PG_"))
    ]
    assert kinds == ["INSERT", "SELECT", "COMMIT"]
    assert backend.rows("SELECT text FROM fa_lz_notes") == [("hello",)]


async def test_names_can_be_left_out(sqlite_backend: Backend) -> None:
    app, _ = await setup(sqlite_backend, "async", include_names=False)
    async with client_for(app) as client:
        response = await client.post("/notes", json={"writer_id": 1, "text": "hello"})
    assert response.status_code == 500
    body = response.json()
    assert body["code"] == "lazy_load_in_async" and "attribute" not in body
    assert "Note" not in body["detail"] and "options=[...]" in body["detail"]


async def test_expired_column_in_the_response_model(backend: Backend, flavour: str) -> None:
    app, _ = await setup(backend, flavour)
    with backend.verify_engine().begin() as conn:
        conn.execute(Note.__table__.insert(), [{"id": 1, "writer_id": 1, "text": "x"}])
    async with client_for(app) as client:
        response = await client.get("/notes/1/expired")
    if flavour == "async":
        assert response.status_code == 500
        assert response.json() == {
            "detail": "Note.text was read but not loaded, and an async session cannot load it "
            "on attribute access (a lazy load); the object was expired (a commit with "
            "expire_on_commit=True, or session.expire()); await session.refresh(obj) before "
            "returning it",
            "code": "lazy_load_in_async",
            "attribute": "Note.text",
        }
    else:
        assert response.json() == {"id": 1, "text": "x", "writer": {"id": 1, "name": "Ann"}}
