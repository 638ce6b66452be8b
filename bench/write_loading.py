"""A created row handed back with a relationship loaded: what ``create(data, options=[...])``
costs next to doing the same by hand with SQLAlchemy and with advanced-alchemy (async, PostgreSQL
with asyncpg by default).

This is what an async endpoint needs when its response model shows a relationship of the object
it just created: the relationship must be loaded before the response is built (an async session
cannot load it on attribute access).  Variants, each creating one ``Post`` of an existing
``Author`` and leaving ``post.author`` loaded:

* ``SQLAlchemy add + flush + refresh(attribute_names=["author"])`` -- the baseline;
* ``repom create(options=["author"])`` -- the row read back with its author joined (a
  many-to-one relationship named by name: one ``SELECT``);
* ``advanced-alchemy add() + refresh(attribute_names=["author"])`` -- its ``add`` with its
  defaults, then SQLAlchemy's refresh (its repository has no loading option on ``add``);

and, for reference, without loading anything:

* ``SQLAlchemy add + flush``;
* ``repom create()`` (no ``options``: no ``SELECT`` after the ``INSERT``).

Every variant runs on the same engine (built by repom with its defaults).  A sample opens a
session, creates ``--calls`` posts (each of a different author, so no author is already in the
session), then rolls back; rounds are interleaved (each round runs every variant once, in a
rotating order), and a variant's ratio is the median over rounds of its time divided by the
baseline's time in the same round.  The statements each variant sends per create are counted
once, outside the timing.

Run: ``python -m bench.write_loading [--rounds N] [--calls N] [--url URL] [--no-write]``
(``python -m bench write_loading`` runs it with its defaults).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import ForeignKey, String, event, insert, inspect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from bench._meta import stamp
from repom.engine import build_async_engine
from repom.repository import AsyncRepository
from repom.urls import convert_to_async_uri

RESULTS = Path(__file__).resolve().parent / "results"
BASELINE = 'SQLAlchemy add + flush + refresh(attribute_names=["author"])'


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "bench_wl_authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40))


class Post(Base):
    __tablename__ = "bench_wl_posts"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("bench_wl_authors.id"))
    title: Mapped[str] = mapped_column(String(100))
    author: Mapped[Author] = relationship()


Body = Callable[[AsyncSession, int], Awaitable[Post]]


def bodies() -> dict[str, Body]:
    from advanced_alchemy.repository import SQLAlchemyAsyncRepository

    class AAPosts(SQLAlchemyAsyncRepository[Post]):
        model_type = Post

    async def raw_loaded(s: AsyncSession, author: int) -> Post:
        post = Post(author_id=author, title=f"post of {author}")
        s.add(post)
        await s.flush()
        await s.refresh(post, attribute_names=["author"])
        return post

    async def repom_loaded(s: AsyncSession, author: int) -> Post:
        data = {"author_id": author, "title": f"post of {author}"}
        return await AsyncRepository(s, Post).create(data, options=["author"])

    async def aa_loaded(s: AsyncSession, author: int) -> Post:
        post = await AAPosts(session=s).add(Post(author_id=author, title=f"post of {author}"))
        await s.refresh(post, attribute_names=["author"])
        return post

    async def raw_plain(s: AsyncSession, author: int) -> Post:
        post = Post(author_id=author, title=f"post of {author}")
        s.add(post)
        await s.flush()
        return post

    async def repom_plain(s: AsyncSession, author: int) -> Post:
        data = {"author_id": author, "title": f"post of {author}"}
        return await AsyncRepository(s, Post).create(data)

    return {
        BASELINE: raw_loaded,
        'repom create(options=["author"])': repom_loaded,
        'advanced-alchemy add() + refresh(attribute_names=["author"])': aa_loaded,
        "SQLAlchemy add + flush (author not loaded)": raw_plain,
        "repom create() (author not loaded)": repom_plain,
    }


async def seed(engine: AsyncEngine, authors: int) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
        await conn.execute(
            insert(Author), [{"id": i, "name": f"author {i}"} for i in range(1, authors + 1)]
        )


async def check(engine: AsyncEngine, variants: dict[str, Body]) -> dict[str, str]:
    """Each variant leaves ``author`` loaded (or not, as its name says); its statements."""
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.split()[0].upper())

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    notes: dict[str, str] = {}
    try:
        maker = async_sessionmaker(engine, expire_on_commit=False)
        for name, body in variants.items():
            async with maker() as s:
                await s.connection()
                statements.clear()
                post = await body(s, 1)
                loaded = "author" not in inspect(post).unloaded
                assert loaded == ("not loaded" not in name), name
                if loaded:
                    assert post.author.name == "author 1", name
                notes[name] = " + ".join(statements)
                await s.rollback()
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
    return notes


async def measure(
    engine: AsyncEngine, variants: dict[str, Body], rounds: int, calls: int
) -> dict[str, list[float]]:
    maker = async_sessionmaker(engine, expire_on_commit=False)

    async def sample(body: Body) -> float:
        async with maker() as s:
            await s.connection()  # BEGIN outside the timing
            start = time.perf_counter()
            for author in range(1, calls + 1):
                await body(s, author)
            elapsed = time.perf_counter() - start
            await s.rollback()
        return elapsed / calls

    names = list(variants)
    for name in names:  # warm up: statement caches, the pool
        await sample(variants[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(await sample(variants[name]))
    return times


def report(times: dict[str, list[float]], notes: dict[str, str], args: Any) -> str:
    base = times[BASELINE]
    lines = [
        "## Created rows with a relationship loaded (async)",
        "",
        f"Command: `python -m bench.write_loading --rounds {args.rounds} --calls {args.calls}` "
        f"({args.backend}; median of {args.rounds} interleaved rounds, each sample "
        f"{args.calls} creates in one session, rolled back; ratio = median over rounds of the "
        "variant's time / the baseline's in the same round)",
        "",
        "| variant | µs per create (median) | ratio to baseline | statements per create |",
        "|---|---:|---:|---|",
    ]
    for name, values in times.items():
        ratio = statistics.median(t / b for t, b in zip(values, base, strict=True))
        lines.append(
            f"| {name} | {statistics.median(values) * 1e6:,.0f} | {ratio:.2f}x | "
            f"{notes.get(name, '')} |"
        )
    lines += ["", stamp({"backend": args.backend, "calls": args.calls, "rounds": args.rounds})]
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace) -> str:
    engine = build_async_engine(convert_to_async_uri(args.url))
    args.backend = engine.dialect.name + " (" + engine.dialect.driver + ")"
    try:
        await seed(engine, args.calls)
        variants = bodies()
        notes = await check(engine, variants)
        times = await measure(engine, variants, args.rounds, args.calls)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
    finally:
        await engine.dispose()
    return report(times, notes, args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.write_loading")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=50, help="creates per sample")
    parser.add_argument(
        "--url",
        default=os.environ.get(
            "REPOM_BENCH_PG_URL",
            os.environ.get("REPOM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        ),
    )
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results/")
    args = parser.parse_args(argv if argv is not None else [])
    text = asyncio.run(main_async(args))
    print(text)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "write_loading.md").write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
