"""The demo's models: users with profiles, bank accounts and transfers, blog articles.

What each one shows:

* ``User`` -- a UUIDv7 primary key made in Python (``UUIDPrimaryKeyMixin``), timestamps;
* ``Profile`` -- optimistic locking (``VersionMixin``), an encrypted column (``EncryptedType``,
  AES-256-GCM) and a JSON document (``JSONBType``: JSONB on PostgreSQL);
* ``Account`` -- a CHECK constraint the database enforces (no negative balance);
* ``Transfer`` -- an append-only ledger row with an aware UTC timestamp (``UTCDateTime``);
* ``Article`` -- soft delete (``SoftDeleteMixin``), a list column (``ArrayType``: ARRAY on
  PostgreSQL), and a foreign key checked at COMMIT (``DEFERRABLE INITIALLY DEFERRED``).

The models have a metadata of their own (``DemoBase``), with repom's naming convention and type
annotations, so they never collide with other models loaded in the same process.
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from repom.models import (
    TYPE_ANNOTATION_MAP,
    IntegerPrimaryKeyMixin,
    ModelMixin,
    SoftDeleteMixin,
    TimestampMixin,
    UUIDPrimaryKeyMixin,
    VersionMixin,
    new_metadata,
)
from repom.types import ArrayType, EncryptedType, JSONBType, utcnow

#: A key for the demo only: set REPOM_ENCRYPTION_KEYS (``id:key,...``) for anything real.
DEMO_ENCRYPTION_KEYS = "demo-2025:MHXVU1KrUKh2cnVHKrDxR0Jf8S4yjy1Tj9Lb5MZmDC0="


def encryption_keys() -> str:
    """The keyring spec in use (read at each use, so a rotated key is picked up)."""
    return os.environ.get("REPOM_ENCRYPTION_KEYS") or DEMO_ENCRYPTION_KEYS


class DemoBase(ModelMixin, DeclarativeBase):
    metadata = new_metadata()
    type_annotation_map = TYPE_ANNOTATION_MAP


class User(UUIDPrimaryKeyMixin, TimestampMixin, DemoBase):
    __tablename__ = "users"

    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(100))

    profile: Mapped[Profile] = relationship(back_populates="user", lazy="raise")
    accounts: Mapped[list[Account]] = relationship(
        back_populates="owner", lazy="raise", order_by="Account.id"
    )


class Profile(IntegerPrimaryKeyMixin, VersionMixin, TimestampMixin, DemoBase):
    __tablename__ = "profiles"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), unique=True
    )
    handle: Mapped[str] = mapped_column(String(40), unique=True)
    bio: Mapped[str] = mapped_column(Text, default="")
    phone: Mapped[str | None] = mapped_column(
        EncryptedType(String(40), key=encryption_keys, associated_data="profiles.phone")
    )
    preferences: Mapped[dict[str, Any]] = mapped_column(JSONBType(), default=dict)

    user: Mapped[User] = relationship(back_populates="profile", lazy="raise")


class Account(IntegerPrimaryKeyMixin, TimestampMixin, DemoBase):
    __tablename__ = "accounts"
    __table_args__ = (CheckConstraint("balance_cents >= 0", name="balance_not_negative"),)

    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    currency: Mapped[str] = mapped_column(String(3), default="EUR")
    balance_cents: Mapped[int] = mapped_column(BigInteger)

    owner: Mapped[User] = relationship(back_populates="accounts", lazy="raise")


class Transfer(IntegerPrimaryKeyMixin, DemoBase):
    __tablename__ = "transfers"
    __table_args__ = (
        CheckConstraint("amount_cents > 0", name="amount_positive"),
        CheckConstraint("from_account_id <> to_account_id", name="distinct_accounts"),
    )

    from_account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    to_account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    memo: Mapped[str] = mapped_column(String(140), default="")
    created_at: Mapped[datetime] = mapped_column(insert_default=utcnow)


class Article(IntegerPrimaryKeyMixin, SoftDeleteMixin, TimestampMixin, DemoBase):
    __tablename__ = "articles"

    # checked at COMMIT: an article may be written before its author row (bulk imports)
    author_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", deferrable=True, initially="DEFERRED"), index=True
    )
    slug: Mapped[str] = mapped_column(String(120), unique=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[str]] = mapped_column(ArrayType(String(40)), default=list)
    published: Mapped[bool] = mapped_column(default=False)
