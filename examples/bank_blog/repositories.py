"""One repository per model.  Repositories flush; they never commit.

The whitelists (``filterable_fields`` / ``orderable_fields``) are what HTTP clients may filter and
sort on; the API publishes exactly these as query parameters (``repom.fastapi.filter_params``).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import or_

from examples.bank_blog.models import Account, Article, Profile, Transfer, User
from repom.repository import AsyncRepository, CursorPage


class UserRepository(AsyncRepository[User]):
    default_options = ("profile", "accounts")  # always loaded: the relationships are lazy="raise"


class ProfileRepository(AsyncRepository[Profile]):
    pass


class AccountRepository(AsyncRepository[Account]):
    orderable_fields = ("id", "balance_cents")

    async def lock(self, ids: Iterable[int]) -> list[Account]:
        """The accounts with these ids, locked until the transaction ends (``FOR UPDATE``).

        The rows are locked in key order: two transactions locking overlapping accounts queue
        behind each other instead of deadlocking."""
        return await self.list(Account.id.in_(sorted(set(ids))), order_by="id", for_update=True)


class TransferRepository(AsyncRepository[Transfer]):
    orderable_fields = ("id",)
    max_page_size = 100

    async def for_account(
        self, account_id: int, *, after: str | None, limit: int
    ) -> CursorPage[Transfer]:
        """Transfers in or out of one account, newest first (keyset pagination)."""
        involved = or_(Transfer.from_account_id == account_id, Transfer.to_account_id == account_id)
        return await self.keyset(involved, after=after, limit=limit, order_by=["-id"])


class ArticleRepository(AsyncRepository[Article]):
    filterable_fields = ("author_id", "published", "title", "created_at")
    orderable_fields = ("created_at", "title", "id")
    max_page_size = 100
