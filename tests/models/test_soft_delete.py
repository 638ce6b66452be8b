"""Soft-deleted rows are invisible to ORM SELECTs: plain, joined, aliased, eager and lazy
relationship loads, ``session.get``, counts; unless the statement or the session asks."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import ForeignKey, String, func, select
from sqlalchemy.orm import (
    Mapped,
    aliased,
    contains_eager,
    joinedload,
    mapped_column,
    relationship,
    selectinload,
)

from repom.models import (
    SoftDeleteMixin,
    TimestampMixin,
    include_deleted,
    not_deleted,
    restore,
    restore_values,
    soft_delete,
    soft_delete_values,
)
from tests.models.conftest import Harness, make_bases
from tests.support import enter, maybe_await

Base, _ = make_bases()


class Author(SoftDeleteMixin, Base):
    __tablename__ = "rm_sd_author"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    books: Mapped[list[Book]] = relationship(back_populates="author", order_by="Book.id")


class Book(SoftDeleteMixin, TimestampMixin, Base):
    __tablename__ = "rm_sd_book"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(40))
    author_id: Mapped[int] = mapped_column(ForeignKey("rm_sd_author.id"))
    author: Mapped[Author] = relationship(back_populates="books")
    reviews: Mapped[list[Review]] = relationship(back_populates="book")


class Review(Base):  # not soft-deletable: never filtered itself
    __tablename__ = "rm_sd_review"

    id: Mapped[int] = mapped_column(primary_key=True)
    book_id: Mapped[int] = mapped_column(ForeignKey("rm_sd_book.id"))
    book: Mapped[Book] = relationship(back_populates="reviews")


async def seed(h: Harness) -> None:
    """Authors 1 (alive) and 2 (deleted); books 1, 2 by author 1 (2 deleted), 3 by author 2."""
    h.create(Author, Book, Review)
    async with enter(h.session()) as session:
        alive, gone = Author(id=1, name="alive"), Author(id=2, name="gone")
        books = [
            Book(id=1, title="b1", author=alive),
            Book(id=2, title="b2", author=alive),
            Book(id=3, title="b3", author=gone),
        ]
        reviews = [Review(id=1, book=books[1]), Review(id=2, book=books[0])]
        session.add_all([alive, gone, *books, *reviews])
        await maybe_await(session.flush())
        soft_delete(gone)
        soft_delete(books[1])
        await maybe_await(session.commit())


async def load(session: Any, obj: Any, attribute: str) -> Any:
    """A lazy relationship load, written once for both flavours."""
    if hasattr(session, "run_sync"):
        return await session.run_sync(lambda _sync: getattr(obj, attribute))
    return getattr(obj, attribute)


async def scalars(session: Any, statement: Any) -> list[Any]:
    return list((await maybe_await(session.scalars(statement))).unique().all())


async def test_plain_selects_counts_and_get(harness: Harness) -> None:
    await seed(harness)
    async with enter(harness.session()) as session:
        assert [b.id for b in await scalars(session, select(Book).order_by(Book.id))] == [1, 3]
        assert await scalars(session, select(Book.title).order_by(Book.id)) == ["b1", "b3"]
        assert await maybe_await(session.scalar(select(func.count()).select_from(Book))) == 2
        assert await maybe_await(session.scalar(select(func.count(Author.id)))) == 1
        assert await maybe_await(session.get(Book, 2)) is None
        assert (await maybe_await(session.get(Book, 1))).title == "b1"

        everything = include_deleted(select(Book).order_by(Book.id))
        assert [b.id for b in await scalars(session, everything)] == [1, 2, 3]
        by_option = await maybe_await(
            session.get(Book, 2, execution_options={"include_deleted": True})
        )
        assert by_option is not None and by_option.is_deleted is True

    async with enter(harness.session(info={"include_deleted": True})) as session:
        assert len(await scalars(session, select(Book))) == 3
        assert await maybe_await(session.get(Author, 2)) is not None


async def test_joins_and_aliases(harness: Harness) -> None:
    await seed(harness)
    async with enter(harness.session()) as session:
        joined = select(Book).join(Book.author).order_by(Book.id)
        assert [b.id for b in await scalars(session, joined)] == [1]  # book 3's author is gone
        pairs = (
            await maybe_await(session.execute(select(Book.id, Author.name).join(Book.author)))
        ).all()
        assert [tuple(p) for p in pairs] == [(1, "alive")]
        writer = aliased(Author)
        aliased_join = select(Book.id).join(writer, Book.author).where(writer.name != "x")
        assert await scalars(session, aliased_join) == [1]
        outer = (
            await maybe_await(
                session.execute(select(Book.id, Author.id).outerjoin(Book.author).order_by(Book.id))
            )
        ).all()
        assert [tuple(r) for r in outer] == [(1, 1), (3, None)]  # criteria in the ON clause
        # entities that are not soft-deletable are not filtered, their joins are
        reviews = select(Review.id).join(Review.book).order_by(Review.id)
        assert await scalars(session, reviews) == [2]
        assert await scalars(session, select(Review.id).order_by(Review.id)) == [1, 2]


async def test_relationship_loads(harness: Harness) -> None:
    await seed(harness)
    async with enter(harness.session()) as session:
        for option in (selectinload(Author.books), joinedload(Author.books)):
            (author,) = await scalars(session, select(Author).options(option))
            assert [b.id for b in author.books] == [1]
            session.expunge_all()

        # contains_eager over a join
        stmt = select(Author).join(Author.books).options(contains_eager(Author.books))
        (author,) = await scalars(session, stmt)
        assert [b.id for b in author.books] == [1]
        session.expunge_all()

        # lazy loads: the criteria reach them once (no duplicated WHERE)
        (author,) = await scalars(session, select(Author))
        harness.capture()
        assert [b.id for b in await load(session, author, "books")] == [1]
        (lazy_sql,) = harness.sql("SELECT")
        assert lazy_sql.count("is_deleted = ") == 1
        review = await maybe_await(session.get(Review, 1))
        assert await load(session, review, "book") is None  # its book is deleted

        # include_deleted applies to the statement and its eager loads
        session.expunge_all()
        stmt = include_deleted(
            select(Author).options(selectinload(Author.books)).order_by(Author.id)
        )
        authors = await scalars(session, stmt)
        assert [[b.id for b in a.books] for a in authors] == [[1, 2], [3]]

    async with enter(harness.session()) as session:
        # objects that never came from a query (new, then flushed) are filtered too
        fresh = Author(id=3, name="fresh")
        session.add_all([fresh, Book(id=4, title="b4", author_id=3)])
        await maybe_await(session.flush())
        deleted = Book(id=5, title="b5", author_id=3)
        session.add(deleted)
        soft_delete(deleted)
        await maybe_await(session.flush())
        session.expire(fresh, ["books"])
        assert [b.id for b in await load(session, fresh, "books")] == [4]


async def test_helpers_only_set_attributes(harness: Harness) -> None:
    await seed(harness)
    async with enter(harness.session()) as session:
        book = await maybe_await(session.get(Book, 1))
        updated = book.updated_at
        harness.capture()
        soft_delete(book)
        assert harness.statements == [] and book in session.dirty  # nothing flushed
        first_deleted_at = book.deleted_at
        assert book.is_deleted is True and first_deleted_at.tzinfo is not None
        soft_delete(book)
        assert book.deleted_at == first_deleted_at  # deleting twice keeps the first time
        await maybe_await(session.flush())
        (statement,) = harness.sql("UPDATE")
        assert "is_deleted" in statement and "deleted_at" in statement and "updated_at" in statement
        assert book.updated_at > updated
        await maybe_await(session.rollback())  # the caller owns the transaction

    t = harness.table("rm_sd_book")
    assert tuple(harness.raw(f"SELECT is_deleted FROM {t} WHERE id = 1")[0]) in ((False,), (0,))

    async with enter(harness.session()) as session:
        options = {"include_deleted": True}
        book = await maybe_await(session.get(Book, 2, execution_options=options))
        restore(book)
        assert book.is_deleted is False and book.deleted_at is None
        await maybe_await(session.commit())
        assert [b.id for b in await scalars(session, select(Book).order_by(Book.id))] == [1, 2, 3]

        # bulk values for repository-style UPDATEs (Core statements are never filtered)
        from sqlalchemy import update

        await maybe_await(
            session.execute(update(Book).where(Book.id == 1).values(**soft_delete_values()))
        )
        await maybe_await(
            session.execute(update(Author).where(~not_deleted(Author)).values(**restore_values()))
        )
        await maybe_await(session.commit())
        assert [b.id for b in await scalars(session, select(Book).order_by(Book.id))] == [2, 3]
        assert await maybe_await(session.scalar(select(func.count(Author.id)))) == 2

    with pytest.raises(TypeError, match="needs a SoftDeleteMixin model instance"):
        soft_delete(Review(id=9))


def test_refreshing_a_deleted_object_still_works(sync_harness: Harness) -> None:
    """Expired attributes of an object you hold are reloaded even if it is soft-deleted."""
    sync_harness.create(Author, Book, Review)
    with sync_harness.session(expire_on_commit=True) as session:
        author = Author(id=1, name="a")
        session.add(author)
        session.commit()
        soft_delete(author)
        session.commit()  # expires everything
        assert author.name == "a" and author.is_deleted is True
