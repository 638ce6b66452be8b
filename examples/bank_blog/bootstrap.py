"""Migrating and seeding the demo database.

``migrate()`` runs the Alembic migrations next to this file (``alembic.ini``) through repom's
migration API; ``seed()`` fills an empty database with users, accounts and articles in one
transaction (one flush: the ORM batches the INSERTs).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from examples.bank_blog.models import Account, Article, Profile, User
from repom.database import AsyncDatabase, get_async_database
from repom.migrations import Migrations

ALEMBIC_INI = Path(__file__).resolve().parent / "alembic.ini"

NAMES = [
    "Ada Lovelace",
    "Grace Hopper",
    "Edsger Dijkstra",
    "Barbara Liskov",
    "Donald Knuth",
    "Frances Allen",
    "Ken Thompson",
    "Margaret Hamilton",
    "Dennis Ritchie",
    "Radia Perlman",
    "Tony Hoare",
    "Shafi Goldwasser",
]
TOPICS = [
    ("Keyset pagination", ["sql", "performance"]),
    ("Why transactions have one owner", ["design"]),
    ("Serializable isolation in practice", ["postgresql", "concurrency"]),
    ("Soft delete without regrets", ["design", "sql"]),
    ("Optimistic locking for humans", ["concurrency"]),
    ("Connection pools explained", ["performance"]),
]


def migrate(url: str | None = None, *, connection: Any = None) -> list[str]:
    """Upgrade to head; return the messages of the migrations applied (``[]``: up to date).

    *url* defaults to repom's configuration; *connection* (a sync ``Connection``) runs the
    migrations on it instead (tests)."""
    migrations = Migrations(config_file=ALEMBIC_INI, url=url)
    if connection is not None:
        migrations.config.attributes["connection"] = connection
    return [step.message for step in migrations.upgrade()]


@dataclass(frozen=True)
class Seeded:
    users: int
    accounts: int
    articles: int
    total_balance_cents: int


def build_seed(users: int = 12, seed: int = 7) -> list[User]:
    """Deterministic demo data: *users* users, each with a profile, an account, articles."""
    rng = random.Random(seed)
    made: list[User] = []
    for index in range(users):
        name = NAMES[index % len(NAMES)]
        suffix = "" if index < len(NAMES) else str(index // len(NAMES))
        handle = name.split()[0].lower() + suffix
        user = User(email=f"{handle}@example.com", name=name)
        user.profile = Profile(
            handle=handle,
            bio=f"{name} writes about data.",
            phone=f"+44 20 7946 {rng.randrange(10**4):04d}",
            preferences={"theme": rng.choice(["light", "dark"]), "newsletter": rng.random() < 0.5},
        )
        user.accounts = [Account(currency="EUR", balance_cents=rng.randrange(1_000, 5_000) * 100)]
        made.append(user)
    return made


def build_articles(people: list[User]) -> list[Article]:
    """Two articles per user: the first published, the second a draft."""
    articles = []
    for index, person in enumerate(people):
        for number in (1, 2):
            title, tags = TOPICS[(index + number * 3) % len(TOPICS)]
            articles.append(
                Article(
                    author_id=person.id,
                    slug=f"{person.profile.handle}-{number}-" + title.lower().replace(" ", "-"),
                    title=title,
                    body=f"{title}, by {person.name}.",
                    tags=tags,
                    published=number == 1,
                )
            )
    return articles


async def seed(database: AsyncDatabase | None = None, *, users: int = 12) -> Seeded | None:
    """Insert the demo data if the database has no user yet; ``None`` when it had some."""
    db = database or get_async_database()
    async with db.transaction() as session:
        if await session.scalar(select(func.count()).select_from(User)):
            return None
        people = build_seed(users)
        articles = build_articles(people)
        session.add_all([*people, *articles])
        await session.flush()
        return Seeded(
            users=len(people),
            accounts=len(people),
            articles=len(articles),
            total_balance_cents=sum(p.accounts[0].balance_cents for p in people),
        )
