"""Tables used by the core tests (prefixed ``core_`` so they never clash with other suites)."""

from __future__ import annotations

from sqlalchemy import CheckConstraint, ForeignKey, Integer, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class CoreBase(DeclarativeBase):
    metadata = MetaData()


class Account(CoreBase):
    __tablename__ = "core_accounts"
    __table_args__ = (CheckConstraint("balance >= 0", name="ck_core_accounts_balance"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    owner: Mapped[str] = mapped_column(String(50), unique=True)
    balance: Mapped[int] = mapped_column(Integer, default=0)


class Entry(CoreBase):
    __tablename__ = "core_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("core_accounts.id"))
    note: Mapped[str] = mapped_column(String(100))
