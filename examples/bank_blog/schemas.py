"""Request and response bodies of the demo API (pydantic)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints, model_validator

T = TypeVar("T")

Handle = Annotated[str, StringConstraints(min_length=3, max_length=40, pattern=r"^[a-z0-9_]+$")]
Slug = Annotated[
    str, StringConstraints(min_length=3, max_length=120, pattern=r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
]


class Orm(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --------------------------------------------------------------------------- users


class Registration(BaseModel):
    email: EmailStr
    name: str = Field(min_length=1, max_length=100)
    handle: Handle
    bio: str = Field(default="", max_length=2000)
    phone: str | None = Field(default=None, max_length=40)
    initial_deposit_cents: int = Field(default=0, ge=0, le=10**12)


class ProfileOut(Orm):
    handle: str
    bio: str
    phone: str | None
    preferences: dict[str, Any]
    version: int
    updated_at: datetime


class ProfilePatch(BaseModel):
    """A partial update; ``version`` is the one the client read (optimistic locking)."""

    version: int = Field(ge=1)
    handle: Handle | None = None
    bio: str | None = Field(default=None, max_length=2000)
    phone: str | None = Field(default=None, max_length=40)
    preferences: dict[str, Any] | None = None


class AccountOut(Orm):
    id: int
    owner_id: uuid.UUID
    currency: str
    balance_cents: int


class UserOut(Orm):
    id: uuid.UUID
    email: str
    name: str
    created_at: datetime
    profile: ProfileOut
    accounts: list[AccountOut]


# --------------------------------------------------------------------------- bank


class TransferIn(BaseModel):
    from_account_id: int
    to_account_id: int
    amount_cents: int = Field(gt=0, le=10**12)
    memo: str = Field(default="", max_length=140)

    @model_validator(mode="after")
    def _distinct(self) -> TransferIn:
        if self.from_account_id == self.to_account_id:
            raise ValueError("from_account_id and to_account_id must differ")
        return self


class TransferOut(Orm):
    id: int
    from_account_id: int
    to_account_id: int
    amount_cents: int
    memo: str
    created_at: datetime


class RichestAccount(BaseModel):
    account_id: int
    owner: str
    balance_cents: int


class BankReport(BaseModel):
    """Read in one read-only transaction: every figure belongs to the same snapshot."""

    users: int
    accounts: int
    total_balance_cents: int
    transfers: int
    transferred_cents: int
    articles_published: int
    articles_draft: int
    articles_deleted: int
    richest: list[RichestAccount]


# --------------------------------------------------------------------------- blog


class ArticleIn(BaseModel):
    author_id: uuid.UUID
    slug: Slug
    title: str = Field(min_length=1, max_length=200)
    body: str = Field(default="", max_length=100_000)
    tags: list[str] = Field(default_factory=list, max_length=10)
    published: bool = False


class ArticlePatch(BaseModel):
    slug: Slug | None = None
    title: str | None = Field(default=None, min_length=1, max_length=200)
    body: str | None = Field(default=None, max_length=100_000)
    tags: list[str] | None = Field(default=None, max_length=10)
    published: bool | None = None


class ArticleOut(Orm):
    id: int
    author_id: uuid.UUID
    slug: str
    title: str
    body: str
    tags: list[str]
    published: bool
    created_at: datetime
    updated_at: datetime


class CursorPageOut(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None
