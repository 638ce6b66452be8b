"""Helpers for the monitoring tests: one scenario body, sync and async engines."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import ForeignKey, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from repom.engine import build_async_engine, build_engine
from repom.urls import convert_to_async_uri, convert_to_sync_uri
from tests.support import maybe_await


@dataclass
class Flavour:
    """Builds engines of one flavour and disposes of them at the end of the test."""

    is_async: bool
    engines: list[Any] = field(default_factory=list)

    @property
    def name(self) -> str:
        return "async" if self.is_async else "sync"

    def engine(self, url: str, **overrides: Any) -> Any:
        if self.is_async:
            engine: Any = build_async_engine(convert_to_async_uri(url), **overrides)
        else:
            engine = build_engine(convert_to_sync_uri(url), **overrides)
        self.engines.append(engine)
        return engine

    async def connect(self, engine: Any) -> Any:
        """A checked-out connection (``await engine.connect()`` for async engines)."""
        return await maybe_await(engine.connect())

    async def close(self, conn: Any) -> None:
        await maybe_await(conn.close())

    async def execute(self, conn: Any, statement: Any, params: Any = None) -> Any:
        return await maybe_await(conn.execute(statement, params))

    async def dispose_all(self) -> None:
        for engine in self.engines:
            await maybe_await(engine.dispose())


@pytest.fixture(params=["sync", "async"])
async def flavour(request: pytest.FixtureRequest) -> AsyncIterator[Flavour]:
    flav = Flavour(is_async=request.param == "async")
    try:
        yield flav
    finally:
        await flav.dispose_all()


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> Callable[[str], list[logging.LogRecord]]:
    """``records("repom.monitoring.sql")``: the WARNING+ records of one logger so far."""
    caplog.set_level(logging.INFO, logger="repom.monitoring")

    def of(logger: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == logger]

    return of


def unique(prefix: str) -> str:
    """A table name no other test (or xdist worker) uses at the same time."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def make_models(suffix: str) -> tuple[type[Any], type[Any], MetaData]:
    """``User`` with lazily loaded ``addresses`` (for N+1 checks), on fresh table names."""

    class Base(DeclarativeBase):
        metadata = MetaData()

    class User(Base):
        __tablename__ = f"mon_users_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(40))
        addresses: Mapped[list[Address]] = relationship(back_populates="user", lazy="select")

    class Address(Base):
        __tablename__ = f"mon_addresses_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True)
        user_id: Mapped[int] = mapped_column(ForeignKey(f"{User.__tablename__}.id"))
        email: Mapped[str] = mapped_column(String(80))
        user: Mapped[User] = relationship(back_populates="addresses")

    return User, Address, Base.metadata
