"""The units of work.  Each function is one transaction (``@transactional``):

* called from an endpoint that holds the request's session (``AsyncDbSession``), it *joins* that
  transaction (``Propagation.REQUIRED``) and the request commits it before responding;
* called with no transaction around it, it begins and commits its own.

``transfer`` always runs in its own transaction (the endpoint that calls it has no session of its
own).  Contention is handled by design, not by retries: it locks the two accounts before reading
them, always in key order, so concurrent transfers over the same accounts queue behind each other
and can never deadlock; each sees the balances the previous one committed (PostgreSQL: ``SELECT
... FOR UPDATE`` under READ COMMITTED; SQLite: the locking read takes the process's write turn,
see docs/transactions.md).  The retry policy stays as a safety net for what locking cannot
prevent (a connection lost before COMMIT was sent).
``bank_report`` reads in one read-only, repeatable-read transaction.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from examples.bank_blog.models import Account, Article, Profile, Transfer, User
from examples.bank_blog.repositories import AccountRepository, TransferRepository, UserRepository
from examples.bank_blog.schemas import BankReport, Registration, RichestAccount, TransferIn
from repom.exceptions import NotFoundError
from repom.retry import RetryPolicy
from repom.transactions import IsolationLevel, current_session, transactional

#: a safety net only: with the accounts locked in key order, a transfer is not expected to retry
TRANSFER_RETRIES = RetryPolicy(max_retries=5, delay=0.005, backoff_factor=2.0, max_delay=0.2)


class InsufficientFunds(Exception):
    """The source account cannot cover the amount (nothing was written)."""

    def __init__(self, account_id: int, balance_cents: int, amount_cents: int) -> None:
        super().__init__(
            f"account {account_id} has {balance_cents} cents; {amount_cents} cents requested"
        )
        self.account_id = account_id


@transactional
async def register_user(data: Registration) -> User:
    """User, profile and first account: all three rows or none (one flush, three INSERTs)."""
    session: AsyncSession = current_session()
    user = User(email=str(data.email), name=data.name)
    user.profile = Profile(handle=data.handle, bio=data.bio, phone=data.phone, preferences={})
    user.accounts = [Account(currency="EUR", balance_cents=data.initial_deposit_cents)]
    return await UserRepository(session).create(user)


@transactional(retries=TRANSFER_RETRIES)
async def transfer(data: TransferIn) -> Transfer:
    """Move money between two accounts: lock both (in key order), check, write both and the
    ledger row."""
    session: AsyncSession = current_session()
    wanted = (data.from_account_id, data.to_account_id)
    found = {a.id: a for a in await AccountRepository(session).lock(wanted)}
    for account_id in wanted:
        if account_id not in found:
            raise NotFoundError(
                f"account {account_id} not found", model="Account", identity=account_id
            )
    source, target = found[data.from_account_id], found[data.to_account_id]
    if source.balance_cents < data.amount_cents:
        raise InsufficientFunds(source.id, source.balance_cents, data.amount_cents)
    source.balance_cents -= data.amount_cents
    target.balance_cents += data.amount_cents
    ledger = Transfer(
        from_account_id=source.id,
        to_account_id=target.id,
        amount_cents=data.amount_cents,
        memo=data.memo,
    )
    return await TransferRepository(session).create(ledger)


def _count(*where: object) -> object:
    return select(func.count()).select_from(Article).where(*where).scalar_subquery()


@transactional(read_only=True, isolation=IsolationLevel.REPEATABLE_READ)
async def bank_report(top: int = 3) -> BankReport:
    """Every figure from one snapshot, in two round trips."""
    session: AsyncSession = current_session()
    totals = select(
        select(func.count()).select_from(User).scalar_subquery(),
        select(func.count()).select_from(Account).scalar_subquery(),
        select(func.coalesce(func.sum(Account.balance_cents), 0)).scalar_subquery(),
        select(func.count()).select_from(Transfer).scalar_subquery(),
        select(func.coalesce(func.sum(Transfer.amount_cents), 0)).scalar_subquery(),
        _count(Article.published.is_(True), Article.is_deleted.is_(False)),
        _count(Article.published.is_(False), Article.is_deleted.is_(False)),
        _count(Article.is_deleted.is_(True)),
    ).execution_options(include_deleted=True)  # the counts choose for themselves
    row = (await session.execute(totals)).one()
    richest = await session.execute(
        select(Account.id, User.name, Account.balance_cents)
        .join(User, Account.owner_id == User.id)
        .order_by(Account.balance_cents.desc(), Account.id)
        .limit(top)
    )
    return BankReport(
        users=row[0],
        accounts=row[1],
        total_balance_cents=row[2],
        transfers=row[3],
        transferred_cents=row[4],
        articles_published=row[5],
        articles_draft=row[6],
        articles_deleted=row[7],
        richest=[
            RichestAccount(account_id=a, owner=name, balance_cents=b) for a, name, b in richest
        ],
    )
