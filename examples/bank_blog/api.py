"""The HTTP API.  Three ways an endpoint gets its transaction, each where it fits:

* ``AsyncDbSession`` -- the request owns one transaction, committed before the response is sent
  (a failed commit becomes an error response); services called from it join it;
* no session at all -- the service opens its own transaction (``POST /transfers`` locks two
  accounts in its own transaction, which a retry policy can run again as a whole;
  ``GET /reports/bank`` reads in a read-only one);
* repositories never commit: they flush, and the owner of the transaction commits.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Response, status

from examples.bank_blog import services
from examples.bank_blog.repositories import (
    AccountRepository,
    ArticleRepository,
    ProfileRepository,
    TransferRepository,
    UserRepository,
)
from examples.bank_blog.schemas import (
    AccountOut,
    ArticleIn,
    ArticleOut,
    ArticlePatch,
    BankReport,
    CursorPageOut,
    ProfileOut,
    ProfilePatch,
    Registration,
    TransferIn,
    TransferOut,
    UserOut,
)
from repom.exceptions import NotFoundError
from repom.fastapi import (
    AsyncDbSession,
    CursorParams,
    Filters,
    cursor_params,
    filter_params,
    order_params,
)

users = APIRouter(prefix="/users", tags=["users"])
bank = APIRouter(tags=["bank"])
blog = APIRouter(prefix="/articles", tags=["blog"])

Cursor = Annotated[CursorParams, Depends(cursor_params(default=20, maximum=100))]


def _missing(what: str, identity: object) -> NotFoundError:
    return NotFoundError(f"{what} {identity} not found", model=what, identity=identity)


# --------------------------------------------------------------------------- users


@users.post("", status_code=status.HTTP_201_CREATED, response_model=UserOut)
async def register(data: Registration, session: AsyncDbSession) -> UserOut:
    """Register a user with a profile and a first account, atomically."""
    user = await services.register_user(data)  # joins the request's transaction
    return UserOut.model_validate(user)


@users.get("/{user_id}", response_model=UserOut)
async def get_user(user_id: uuid.UUID, session: AsyncDbSession) -> UserOut:
    user = await UserRepository(session).get_by_id(user_id)
    if user is None:
        raise _missing("User", user_id)
    return UserOut.model_validate(user)


@users.patch(
    "/{user_id}/profile",
    response_model=ProfileOut,
    responses={409: {"description": "The profile changed since `version` was read"}},
)
async def edit_profile(
    user_id: uuid.UUID, patch: ProfilePatch, session: AsyncDbSession
) -> ProfileOut:
    """Optimistic locking: send the ``version`` you read; a stale one gets 409."""
    profiles = ProfileRepository(session)
    profile = await profiles.get_one_or_none(user_id=user_id)
    if profile is None:
        raise _missing("Profile of user", user_id)
    profile = await profiles.update(profile, patch.model_dump(exclude_unset=True))
    return ProfileOut.model_validate(profile)


# --------------------------------------------------------------------------- bank


@bank.get("/accounts", response_model=CursorPageOut[AccountOut])
async def list_accounts(page: Cursor, session: AsyncDbSession) -> CursorPageOut[AccountOut]:
    found = await AccountRepository(session).keyset(
        after=page.cursor, limit=page.limit, order_by=["id"]
    )
    return CursorPageOut(
        items=[AccountOut.model_validate(a) for a in found.items], next_cursor=found.next_cursor
    )


@bank.get("/accounts/{account_id}", response_model=AccountOut)
async def get_account(account_id: int, session: AsyncDbSession) -> AccountOut:
    account = await AccountRepository(session).get_by_id(account_id)
    if account is None:
        raise _missing("Account", account_id)
    return AccountOut.model_validate(account)


@bank.get("/accounts/{account_id}/transfers", response_model=CursorPageOut[TransferOut])
async def account_transfers(
    account_id: int, page: Cursor, session: AsyncDbSession
) -> CursorPageOut[TransferOut]:
    """Newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
    if not await AccountRepository(session).exists(id=account_id):
        raise _missing("Account", account_id)
    found = await TransferRepository(session).for_account(
        account_id, after=page.cursor, limit=page.limit
    )
    return CursorPageOut(
        items=[TransferOut.model_validate(t) for t in found.items],
        next_cursor=found.next_cursor,
    )


@bank.post(
    "/transfers",
    status_code=status.HTTP_201_CREATED,
    response_model=TransferOut,
    responses={409: {"description": "Insufficient funds"}},
)
async def create_transfer(data: TransferIn) -> TransferOut:
    """Its own transaction (no request session): both accounts locked in key order."""
    return TransferOut.model_validate(await services.transfer(data))


@bank.get("/reports/bank", response_model=BankReport)
async def report() -> BankReport:
    """Totals from one read-only snapshot."""
    return await services.bank_report()


# --------------------------------------------------------------------------- blog

article_filters = filter_params(
    ArticleRepository,
    {
        "author_id": ("eq",),
        "published": ("eq",),
        "title": ("icontains",),
        "created_at": ("gte", "lt"),
    },
)
article_order = order_params(ArticleRepository, default=("-created_at",))


@blog.post("", status_code=status.HTTP_201_CREATED, response_model=ArticleOut)
async def create_article(data: ArticleIn, session: AsyncDbSession) -> ArticleOut:
    """The author is checked at COMMIT (deferred foreign key): an unknown one is a 409, and the
    201 prepared here is never sent."""
    article = await ArticleRepository(session).create(data)
    return ArticleOut.model_validate(article)


@blog.get("", response_model=CursorPageOut[ArticleOut])
async def list_articles(
    session: AsyncDbSession,
    filters: Annotated[Filters, Depends(article_filters)],
    order_by: Annotated[list[str], Depends(article_order)],
    page: Cursor,
) -> CursorPageOut[ArticleOut]:
    found = await ArticleRepository(session).keyset(
        filters=filters, order_by=order_by, after=page.cursor, limit=page.limit
    )
    return CursorPageOut(
        items=[ArticleOut.model_validate(a) for a in found.items], next_cursor=found.next_cursor
    )


@blog.get("/{article_id}", response_model=ArticleOut)
async def get_article(article_id: int, session: AsyncDbSession) -> ArticleOut:
    article = await ArticleRepository(session).get_by_id(article_id)
    if article is None:
        raise _missing("Article", article_id)
    return ArticleOut.model_validate(article)


@blog.patch("/{article_id}", response_model=ArticleOut)
async def edit_article(article_id: int, patch: ArticlePatch, session: AsyncDbSession) -> ArticleOut:
    articles = ArticleRepository(session)
    article = await articles.get_by_id(article_id)
    if article is None:
        raise _missing("Article", article_id)
    article = await articles.update(article, patch.model_dump(exclude_unset=True))
    return ArticleOut.model_validate(article)


@blog.delete("/{article_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_article(article_id: int, session: AsyncDbSession) -> Response:
    """Soft delete: the row stays, hidden from every query; ``/restore`` brings it back."""
    if not await ArticleRepository(session).delete(article_id):
        raise _missing("Article", article_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@blog.post("/{article_id}/restore", response_model=ArticleOut)
async def restore_article(article_id: int, session: AsyncDbSession) -> ArticleOut:
    articles = ArticleRepository(session)
    if not await articles.restore(article_id):
        raise _missing("Deleted article", article_id)
    article = await articles.get_by_id(article_id)
    return ArticleOut.model_validate(article)
