"""filter_params / order_params / page_params / cursor_params: whitelisted, typed, published in
OpenAPI, and applied to a real query."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import ForeignKey, String, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from repom.exceptions import ConfigurationError
from repom.fastapi import (
    AsyncDbSession,
    CursorParams,
    DbSession,
    Filters,
    PageParams,
    cursor_params,
    filter_params,
    install_exception_handlers,
    order_params,
    page_params,
    use_databases,
)
from repom.repository import AsyncRepository, Repository
from repom.repository.filters import validate_filters, validate_order_by
from tests.fastapi._support import Backend


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "fa_authors"
    id: Mapped[int] = mapped_column(primary_key=True)


class Post(Base):
    __tablename__ = "fa_posts"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("fa_authors.id"))
    title: Mapped[str] = mapped_column(String(100))
    published: Mapped[bool] = mapped_column(default=False)
    secret_note: Mapped[str] = mapped_column(String(100), default="")


class PostRepository:
    """Stands for a repository class: filter_params reads ``model`` and the whitelists."""

    model = Post
    filterable_fields = ("published",)
    orderable_fields = ("title", "id")


ALLOWED = {"author_id": ("eq", "in"), "title": ("icontains",), "published": ("eq",)}
post_filters = filter_params(Post, ALLOWED)
post_order = order_params(Post, ("title", "id"), default=("-id",))
lenient_filters = filter_params(PostRepository, strict=False)
repository_order = order_params(PostRepository)


def build_app(backend: Backend) -> FastAPI:
    app = FastAPI()
    install_exception_handlers(app)
    use_databases(app, async_database=backend.async_database())

    @app.get("/posts")
    async def list_posts(
        session: AsyncDbSession,
        filters: Annotated[Filters, Depends(post_filters)],
        order_by: Annotated[list[str], Depends(post_order)],
        page: Annotated[PageParams, Depends(page_params(default=2, maximum=5))],
    ) -> list[str]:
        query = select(Post.title).order_by(*validate_order_by(Post, order_by))
        criterion = validate_filters(Post, filters, allowed=ALLOWED.keys())
        if criterion is not None:
            query = query.where(criterion)
        rows = await session.scalars(query.offset(page.offset).limit(page.limit))
        return list(rows)

    @app.get("/posts/raw")
    async def raw(
        filters: Annotated[Filters, Depends(post_filters)],
        order_by: Annotated[list[str], Depends(repository_order)],
        cursor: Annotated[CursorParams, Depends(cursor_params(default=3, maximum=10))],
    ) -> dict[str, Any]:
        return {
            "filters": filters,
            "order_by": order_by,
            "limit": cursor.limit,
            "cursor": cursor.cursor,
        }

    @app.get("/posts/lenient")
    async def lenient(filters: Annotated[Filters, Depends(lenient_filters)]) -> Filters:
        return filters

    return app


async def seed(backend: Backend) -> None:
    db = backend.async_database()
    await db.create_all(Base.metadata)
    async with db.transaction() as session:
        session.add_all([Author(id=1), Author(id=2), Author(id=3)])
        await session.flush()
        session.add_all(
            [
                Post(id=1, author_id=1, title="SQL basics", published=True),
                Post(id=2, author_id=1, title="Advanced SQL", published=False),
                Post(id=3, author_id=2, title="FastAPI tips", published=True),
                Post(id=4, author_id=3, title="Keyset paging", published=True),
            ]
        )
    await db.dispose()


async def test_filters_ordering_and_paging_applied(backend: Backend) -> None:
    await seed(backend)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=build_app(backend)), base_url="http://test"
    ) as client:

        async def titles(**params: Any) -> Any:
            response = await client.get("/posts", params=params)
            assert response.status_code == 200, response.text
            return response.json()

        assert await titles(per_page=5) == [
            "Keyset paging",
            "FastAPI tips",
            "Advanced SQL",
            "SQL basics",
        ]
        assert await titles(author_id=1, per_page=5) == ["Advanced SQL", "SQL basics"]
        assert await titles(author_id__in=[2, 3], order_by="title") == [
            "FastAPI tips",
            "Keyset paging",
        ]
        assert await titles(title__icontains="sql", published="true") == ["SQL basics"]
        assert await titles(title__icontains="%") == []  # wildcards are literal
        assert await titles(order_by=["title"], page=2) == ["Keyset paging", "SQL basics"]


async def test_rejections(backend: Backend) -> None:
    await seed(backend)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=build_app(backend)), base_url="http://test"
    ) as client:
        unknown = await client.get("/posts", params={"secret_note": "x"})
        assert unknown.status_code == 422
        body = unknown.json()
        assert body["code"] == "invalid_filter" and body["field"] == "secret_note"
        assert "author_id__in" in body["allowed"] and "per_page" in body["allowed"]
        assert "secret_note" not in body["allowed"]

        for params in (
            {"order_by": "secret_note"},
            {"order_by": "--title"},
            {"author_id": "one"},
            {"per_page": 6},
            {"page": 0},
        ):
            response = await client.get("/posts", params=params)
            assert response.status_code == 422, params

        lenient = await client.get("/posts/lenient", params={"published": "false", "utm": "x"})
        assert lenient.json() == {"published": False}


async def test_raw_values_and_defaults(sqlite_backend: Backend) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=build_app(sqlite_backend)), base_url="http://test"
    ) as client:
        response = await client.get(
            "/posts/raw", params={"author_id__in": ["1", "2"], "cursor": "abc"}
        )
        assert response.json() == {
            "filters": {"author_id__in": [1, 2]},
            "order_by": [],
            "limit": 3,
            "cursor": "abc",
        }
        response = await client.get(
            "/posts/raw", params={"order_by": ["-title", "id"], "limit": 10}
        )
        assert response.json()["order_by"] == ["-title", "id"]
        assert (await client.get("/posts/raw", params={"limit": 11})).status_code == 422


def test_published_in_openapi(sqlite_backend: Backend) -> None:
    spec = build_app(sqlite_backend).openapi()
    params = {p["name"]: p for p in spec["paths"]["/posts"]["get"]["parameters"]}
    assert set(params) == {
        "author_id",
        "author_id__in",
        "title__icontains",
        "published",
        "order_by",
        "page",
        "per_page",
    }

    def schema(name: str) -> dict[str, Any]:
        found: dict[str, Any] = params[name]["schema"]
        return found

    assert {"type": "integer"} in schema("author_id")["anyOf"]
    assert {"type": "array", "items": {"type": "integer"}} in schema("author_id__in")["anyOf"]
    assert {"type": "boolean"} in schema("published")["anyOf"]
    [order_schema] = [s for s in schema("order_by")["anyOf"] if s.get("type") == "array"]
    assert order_schema["items"]["enum"] == ["title", "-title", "id", "-id"]
    assert (schema("per_page")["minimum"], schema("per_page")["maximum"]) == (1, 5)
    raw = {p["name"]: p for p in spec["paths"]["/posts/raw"]["get"]["parameters"]}
    assert raw["limit"]["schema"]["maximum"] == 10
    assert "cursor" in raw


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: filter_params(Post, {"nope": ("eq",)}), "has no column 'nope'"),
        (lambda: filter_params(Post, {"title": ("regex",)}), "unknown operator 'regex'"),
        (lambda: filter_params(Post, {"title": ()}), "no operator"),
        (lambda: filter_params(Post), "needs the allowed fields"),
        (lambda: order_params(Post, ("nope",)), "has no column 'nope'"),
        (lambda: order_params(Post, ("title",), default=("-id",)), "not an allowed ordering"),
        (lambda: order_params(Post), "needs the allowed fields"),
        (lambda: page_params(default=0), "page sizes"),
        (lambda: cursor_params(default=20, maximum=10), "page sizes"),
        (lambda: filter_params(func.now, ["x"]), "needs a mapped class"),
    ],
)
def test_definition_errors(make: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make()


class WhitelistedPosts(AsyncRepository[Post]):
    filterable_fields = ("title",)
    orderable_fields = ("title", "id")


class SyncWhitelistedPosts(Repository[Post]):
    filterable_fields = ("title",)
    orderable_fields = ("title", "id")


# the dependency offers secret_note, the repository's whitelist does not: the repository refuses
loose_filters = filter_params(Post, {"title": ("eq",), "secret_note": ("eq",)})
page_cursor = cursor_params(default=2, maximum=10)


def build_repository_app(flavour: str, backend: Backend) -> FastAPI:
    """Endpoints that call a whitelisted repository with caller filters and with code filters."""
    app = FastAPI()
    install_exception_handlers(app)
    if flavour == "sync":
        use_databases(app, database=backend.database())

        @app.get("/posts/{post_id}")
        def one(post_id: int, session: DbSession) -> dict[str, Any]:
            post = SyncWhitelistedPosts(session).get_one(id=post_id)  # code: any column
            return {"id": post.id, "title": post.title}

        @app.get("/posts")
        def many(
            session: DbSession,
            filters: Annotated[Filters, Depends(loose_filters)],
            page: Annotated[CursorParams, Depends(page_cursor)],
            order: str = "id",
        ) -> dict[str, Any]:
            found = SyncWhitelistedPosts(session).keyset(
                filters=filters, order_by=order, after=page.cursor, limit=page.limit
            )
            return {"ids": [p.id for p in found], "next": found.next_cursor}

    else:
        use_databases(app, async_database=backend.async_database())

        @app.get("/posts/{post_id}")
        async def one(post_id: int, session: AsyncDbSession) -> dict[str, Any]:
            post = await WhitelistedPosts(session).get_one(id=post_id)  # code: any column
            return {"id": post.id, "title": post.title}

        @app.get("/posts")
        async def many(
            session: AsyncDbSession,
            filters: Annotated[Filters, Depends(loose_filters)],
            page: Annotated[CursorParams, Depends(page_cursor)],
            order: str = "id",
        ) -> dict[str, Any]:
            found = await WhitelistedPosts(session).keyset(
                filters=filters, order_by=order, after=page.cursor, limit=page.limit
            )
            return {"ids": [p.id for p in found], "next": found.next_cursor}

    return app


async def test_whitelist_applies_to_caller_filters_only(backend: Backend, flavour: str) -> None:
    await seed(backend)
    app = build_repository_app(flavour, backend)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        # the application's own get_one(id=...) is not restricted by filterable_fields
        one = await client.get("/posts/3")
        assert (one.status_code, one.json()) == (200, {"id": 3, "title": "FastAPI tips"})
        missing = await client.get("/posts/99")
        assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
        # a caller's filter on a whitelisted field works ...
        by_title = await client.get("/posts", params={"title": "SQL basics"})
        assert by_title.json() == {"ids": [1], "next": None}
        # ... one outside the whitelist is refused by the repository, whatever the dependency
        refused = await client.get("/posts", params={"secret_note": ""})
        assert refused.status_code == 422
        assert refused.json() == {
            "detail": "unknown filter field 'secret_note' for Post; allowed: title",
            "code": "invalid_filter",
            "field": "secret_note",
            "allowed": ["title"],
        }


async def test_bad_cursor_names_the_query_parameter(backend: Backend, flavour: str) -> None:
    await seed(backend)
    app = build_repository_app(flavour, backend)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        first = (await client.get("/posts")).json()
        assert first["ids"] == [1, 2] and first["next"]
        second = await client.get("/posts", params={"cursor": first["next"]})
        assert second.json()["ids"] == [3, 4]

        forged = await client.get("/posts", params={"cursor": first["next"][:-2] + "xx"})
        assert forged.status_code == 422
        assert forged.json() == {
            "detail": "invalid cursor ('cursor'): signature mismatch (tampered, truncated or "
            "signed with another secret)",
            "code": "invalid_cursor",
            "field": "cursor",
        }
        garbage = await client.get("/posts", params={"cursor": "garbage"})
        assert garbage.json()["field"] == "cursor"
        other_order = await client.get("/posts", params={"cursor": first["next"], "order": "title"})
        assert other_order.json()["detail"] == (
            "invalid cursor ('cursor'): it was made for a different ordering; start again "
            "without 'cursor'"
        )
        too_long = await client.get("/posts", params={"cursor": "x" * 5000})
        assert too_long.status_code == 422
        assert too_long.json()["code"] == "validation_error"
        assert too_long.json()["field"] == "cursor"
