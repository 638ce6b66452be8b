"""Models for the repository tests (own metadata; table names prefixed ``rp_``)."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Integer,
    Numeric,
    String,
    UniqueConstraint,
    func,
)
from sqlalchemy import Enum as SAEnum
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from repom.models import SoftDeleteMixin, TimestampMixin, VersionMixin, new_metadata
from repom.types import UTCDateTime


class RepoBase(DeclarativeBase):
    metadata = new_metadata()


class Level(enum.Enum):
    low = "low"
    high = "high"


class Author(RepoBase):
    __tablename__ = "rp_authors"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    email: Mapped[str] = mapped_column(String(100), unique=True)
    age: Mapped[int | None] = mapped_column(Integer)
    score: Mapped[int] = mapped_column(default=0, server_default="0")
    active: Mapped[bool] = mapped_column(default=True)
    level: Mapped[Level] = mapped_column(SAEnum(Level, native_enum=False), default=Level.low)
    joined: Mapped[dt.datetime] = mapped_column(
        UTCDateTime(), default=lambda: dt.datetime.now(dt.UTC)
    )
    posts: Mapped[list[Post]] = relationship(back_populates="author", order_by="Post.id")


class Post(RepoBase):
    __tablename__ = "rp_posts"

    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("rp_authors.id"))
    title: Mapped[str] = mapped_column(String(100))
    views: Mapped[int] = mapped_column(default=0)
    author: Mapped[Author] = relationship(back_populates="posts")


class Tag(RepoBase):
    """Composite primary key, no autoincrement."""

    __tablename__ = "rp_tags"

    kind: Mapped[str] = mapped_column(String(20), primary_key=True)
    code: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    label: Mapped[str] = mapped_column(String(50))


class Doc(SoftDeleteMixin, VersionMixin, TimestampMixin, RepoBase):
    """repom's mixins: soft delete, optimistic locking, timestamps."""

    __tablename__ = "rp_docs"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100))
    slug: Mapped[str] = mapped_column(String(100))
    __table_args__ = (UniqueConstraint("slug"),)


class Item(RepoBase):
    """Client-side UUID key, numeric, JSON and a server default."""

    __tablename__ = "rp_items"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    sku: Mapped[str] = mapped_column(String(30), unique=True)
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    qty: Mapped[int] = mapped_column(default=0)
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    note: Mapped[str] = mapped_column(String(20), server_default="n/a")
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime(), server_default=func.now())


class Note(RepoBase):
    """Soft delete by a column of its own (no mixin, no global listener): ``deleted_at``."""

    __tablename__ = "rp_notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(50))
    deleted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=False))


TABLES = ["rp_posts", "rp_authors", "rp_tags", "rp_docs", "rp_items", "rp_notes"]
