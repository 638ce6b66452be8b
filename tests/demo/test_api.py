"""Every endpoint of the demo and every error it maps, over HTTP, on SQLite and PostgreSQL.

State is checked with a separate plain-SQLAlchemy connection (committed rows only).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import anyio
import pytest
from sqlalchemy import text

from repom.fastapi import AsyncDbSession
from tests.demo.conftest import Demo, start_demo
from tests.fastapi._support import Backend, StatementLog, sync_engine_of


async def register(demo: Demo, handle: str, deposit: int = 100_000, **extra: Any) -> Any:
    payload = {
        "email": f"{handle}@example.com",
        "name": handle.title(),
        "handle": handle,
        "initial_deposit_cents": deposit,
        **extra,
    }
    return await demo.client.post("/users", json=payload)


async def accounts(demo: Demo) -> dict[int, int]:
    response = await demo.client.get("/accounts", params={"limit": 100})
    return {a["id"]: a["balance_cents"] for a in response.json()["items"]}


# --------------------------------------------------------------------------- users


async def test_register_and_read_user(demo: Demo) -> None:
    log = StatementLog().attach(demo.database)
    response = await register(demo, "zelda", phone="+1 555 0100")
    assert response.status_code == 201, response.text
    user = response.json()
    assert (user["email"], user["profile"]["handle"], user["profile"]["version"]) == (
        "zelda@example.com",
        "zelda",
        1,
    )
    assert [a["balance_cents"] for a in user["accounts"]] == [100_000]
    # one transaction, one flush: three INSERTs, no refresh SELECT
    assert log.count("INSERT") == 3 and log.count("SELECT") == 0 and log.count("COMMIT") == 1

    fetched = await demo.client.get(f"/users/{user['id']}")
    assert fetched.status_code == 200 and fetched.json() == user
    # the phone number is encrypted at rest
    [(stored,)] = demo.rows("SELECT phone FROM profiles WHERE handle = 'zelda'")
    assert stored is not None and b"555" not in bytes(stored)

    missing = await demo.client.get(f"/users/{uuid.uuid4()}")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    invalid = await demo.client.post("/users", json={"email": "not-an-email", "name": "x"})
    assert invalid.status_code == 422


async def test_registration_is_atomic(demo: Demo) -> None:
    assert (await register(demo, "yara")).status_code == 201
    same_email = await demo.client.post(
        "/users", json={"email": "yara@example.com", "name": "Y", "handle": "yara_two"}
    )
    # new email, taken handle: the user row is inserted, then the profile fails -> all undone
    same_handle = await demo.client.post(
        "/users", json={"email": "yara2@example.com", "name": "Y", "handle": "yara"}
    )
    for response in (same_email, same_handle):
        assert response.status_code == 409
        assert response.json()["code"] == "duplicate_key"
        assert "INSERT" not in response.text and "yara2@" not in response.text
    assert demo.scalar("SELECT count(*) FROM users WHERE email = 'yara2@example.com'") == 0
    assert demo.scalar("SELECT count(*) FROM users") == demo.seeded.users + 1
    assert demo.scalar("SELECT count(*) FROM accounts") == demo.seeded.accounts + 1


async def test_profile_optimistic_locking(demo: Demo) -> None:
    user = (await register(demo, "xena")).json()
    url = f"/users/{user['id']}/profile"
    first = await demo.client.patch(url, json={"version": 1, "bio": "one", "preferences": {"a": 1}})
    assert first.status_code == 200
    assert (first.json()["version"], first.json()["bio"]) == (2, "one")
    stale = await demo.client.patch(url, json={"version": 1, "bio": "two"})
    assert stale.status_code == 409
    assert stale.json()["code"] == "conflict" and stale.json()["resource"] == "Profile"
    assert demo.rows("SELECT bio, version FROM profiles WHERE handle = 'xena'") == [("one", 2)]
    unknown = await demo.client.patch(f"/users/{uuid.uuid4()}/profile", json={"version": 1})
    assert unknown.status_code == 404


async def test_concurrent_profile_edits_postgresql(pg_url: str, tmp_path: Any) -> None:
    """Two edits of the same version at the same time: one wins, the other gets 409 (the row
    version check in the UPDATE, not the pre-check, decides)."""
    from tests.fastapi._support import make_backend

    with make_backend(pg_url, tmp_path) as backend:
        try:
            await start_demo(backend)
            import httpx

            from examples.bank_blog.app import create_app

            app = create_app()
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
                user = (
                    await client.post(
                        "/users", json={"email": "w@example.com", "name": "W", "handle": "wanda"}
                    )
                ).json()
                url = f"/users/{user['id']}/profile"
                results = await asyncio.gather(
                    *(client.patch(url, json={"version": 1, "bio": f"edit {i}"}) for i in range(2))
                )
            assert sorted(r.status_code for r in results) == [200, 409]
            assert backend.rows("SELECT version FROM profiles WHERE handle = 'wanda'") == [(2,)]
        finally:
            await backend.dispose_all()


# --------------------------------------------------------------------------- bank


async def test_transfers(demo: Demo) -> None:
    balances = await accounts(demo)
    first, second = sorted(balances)[:2]
    ok = await demo.client.post(
        "/transfers",
        json={
            "from_account_id": first,
            "to_account_id": second,
            "amount_cents": 1234,
            "memo": "rent",
        },
    )
    assert ok.status_code == 201, ok.text
    assert ok.json()["memo"] == "rent"
    after = await accounts(demo)
    assert (after[first], after[second]) == (balances[first] - 1234, balances[second] + 1234)

    too_much = await demo.client.post(
        "/transfers",
        json={"from_account_id": first, "to_account_id": second, "amount_cents": 10**11},
    )
    assert too_much.status_code == 409
    assert too_much.json()["code"] == "insufficient_funds"
    unknown = await demo.client.post(
        "/transfers", json={"from_account_id": first, "to_account_id": 999_999, "amount_cents": 1}
    )
    assert unknown.status_code == 404
    same = await demo.client.post(
        "/transfers", json={"from_account_id": first, "to_account_id": first, "amount_cents": 1}
    )
    assert same.status_code == 422
    assert await accounts(demo) == after  # nothing written by the refused ones
    assert demo.scalar("SELECT count(*) FROM transfers") == 1

    account = await demo.client.get(f"/accounts/{first}")
    assert account.json()["balance_cents"] == after[first]
    assert (await demo.client.get("/accounts/999999")).status_code == 404


async def test_account_history_keyset_pages(demo: Demo) -> None:
    ids = sorted(await accounts(demo))
    for n in range(7):
        response = await demo.client.post(
            "/transfers",
            json={"from_account_id": ids[n % 2], "to_account_id": ids[2], "amount_cents": 10 + n},
        )
        assert response.status_code == 201
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = (await demo.client.get(f"/accounts/{ids[2]}/transfers", params=params)).json()
        seen += [t["id"] for t in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert pages == 3 and len(seen) == 7 and seen == sorted(seen, reverse=True)
    assert (await demo.client.get("/accounts/999999/transfers")).status_code == 404
    forged = await demo.client.get(f"/accounts/{ids[2]}/transfers", params={"cursor": "x.y"})
    assert forged.status_code == 422 and forged.json()["code"] == "invalid_cursor"


async def test_report_is_read_only_snapshot(demo: Demo) -> None:
    log = StatementLog().attach(demo.database)
    report = (await demo.client.get("/reports/bank")).json()
    assert report["users"] == demo.seeded.users
    assert report["total_balance_cents"] == demo.seeded.total_balance_cents
    assert report["articles_published"] + report["articles_draft"] == demo.seeded.articles
    top = report["richest"]
    assert len(top) == 3 and top == sorted(top, key=lambda r: -r["balance_cents"])
    selects = [s for s in log.statements if s.startswith("SELECT")]
    assert len(selects) == 2 and selects[0].count("count(") == 6  # all totals in one statement
    assert log.count("COMMIT") == 1
    if demo.backend.name == "sqlite":
        assert "PRAGMA query_only=ON" in log.statements  # a write would be refused


# --------------------------------------------------------------------------- blog


async def test_articles_crud_soft_delete_and_restore(demo: Demo) -> None:
    author = (await register(demo, "wren")).json()["id"]
    created = await demo.client.post(
        "/articles",
        json={"author_id": author, "slug": "first-post", "title": "First", "tags": ["a", "b"]},
    )
    assert created.status_code == 201, created.text
    article = created.json()
    assert article["tags"] == ["a", "b"] and article["published"] is False
    url = f"/articles/{article['id']}"

    patched = await demo.client.patch(url, json={"title": "First!", "published": True})
    assert patched.status_code == 200 and patched.json()["title"] == "First!"
    assert (await demo.client.get(url)).json()["published"] is True

    assert (await demo.client.delete(url)).status_code == 204
    assert (await demo.client.get(url)).status_code == 404
    assert (await demo.client.delete(url)).status_code == 404
    assert demo.rows("SELECT is_deleted FROM articles WHERE slug = 'first-post'") == [(True,)]
    restored = await demo.client.post(f"{url}/restore")
    assert restored.status_code == 200 and restored.json()["title"] == "First!"
    assert (await demo.client.post(f"{url}/restore")).status_code == 404
    assert (await demo.client.get(url)).status_code == 200
    assert (await demo.client.get("/articles/999999")).status_code == 404
    assert (await demo.client.patch("/articles/999999", json={"title": "x"})).status_code == 404

    taken = await demo.client.post(
        "/articles", json={"author_id": author, "slug": "first-post", "title": "Again"}
    )
    assert taken.status_code == 409 and taken.json()["code"] == "duplicate_key"
    other = await demo.client.post(
        "/articles", json={"author_id": author, "slug": "second-post", "title": "Second"}
    )
    rename = await demo.client.patch(f"/articles/{other.json()['id']}", json={"slug": "first-post"})
    assert rename.status_code == 409


async def test_unknown_author_fails_at_commit(demo: Demo) -> None:
    """The author foreign key is DEFERRABLE INITIALLY DEFERRED: the INSERT succeeds, COMMIT
    fails, and the client gets 409 instead of the 201 the endpoint had prepared."""
    log = StatementLog().attach(demo.database)
    response = await demo.client.post(
        "/articles", json={"author_id": str(uuid.uuid4()), "slug": "orphan", "title": "Orphan"}
    )
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "foreign_key_violation"
    insert = next(i for i, s in enumerate(log.statements) if s.startswith("INSERT INTO articles"))
    # the INSERT passed; the violation came from COMMIT
    assert log.statements[insert + 1] == "COMMIT"
    assert demo.scalar("SELECT count(*) FROM articles WHERE slug = 'orphan'") == 0


async def test_list_articles_filters_order_and_pages(demo: Demo) -> None:
    published = demo.scalar("SELECT count(*) FROM articles WHERE published")
    titles: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"published": "true", "order_by": ["title", "-id"], "limit": 2}
        if cursor:
            params["cursor"] = cursor
        response = await demo.client.get("/articles", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert all(item["published"] for item in body["items"])
        titles += [item["title"] for item in body["items"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert len(titles) == published and titles == sorted(titles)

    [(author,)] = demo.rows("SELECT author_id FROM articles ORDER BY id LIMIT 1")
    author_id = str(uuid.UUID(str(author))) if not isinstance(author, uuid.UUID) else str(author)
    mine = await demo.client.get("/articles", params={"author_id": author_id})
    assert mine.status_code == 200 and len(mine.json()["items"]) == 2
    search = await demo.client.get("/articles", params={"title__icontains": "KEYSET"})
    assert search.json()["items"] and all("Keyset" in a["title"] for a in search.json()["items"])
    recent = await demo.client.get("/articles", params={"created_at__gte": "2000-01-01T00:00:00Z"})
    assert len(recent.json()["items"]) == min(20, demo.seeded.articles)

    unknown = await demo.client.get("/articles", params={"is_deleted": "true"})
    assert unknown.status_code == 422 and unknown.json()["field"] == "is_deleted"
    bad_order = await demo.client.get("/articles", params={"order_by": "body"})
    assert bad_order.status_code == 422
    too_big = await demo.client.get("/articles", params={"limit": 101})
    assert too_big.status_code == 422


# --------------------------------------------------------------------------- operations


async def test_health_and_openapi(demo: Demo) -> None:
    health = await demo.client.get("/health")
    assert health.status_code == 200
    [database] = health.json()["databases"]
    assert database["dialect"] == demo.backend.name and database["pool"]["checked_out"] == 0
    spec = (await demo.client.get("/openapi.json")).json()
    params = {p["name"] for p in spec["paths"]["/articles"]["get"]["parameters"]}
    assert params == {
        "author_id",
        "published",
        "title__icontains",
        "created_at__gte",
        "created_at__lt",
        "order_by",
        "limit",
        "cursor",
    }


async def test_pool_exhausted_is_503(backend: Backend) -> None:
    import httpx

    from examples.bank_blog.app import create_app

    database, _ = await start_demo(backend, pool_size=1, max_overflow=0, pool_timeout=0.2)
    app = create_app()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
        async with database.engine.connect():  # the pool's only connection
            busy = await client.get("/articles")
            transfer = await client.post(
                "/transfers", json={"from_account_id": 1, "to_account_id": 2, "amount_cents": 1}
            )
        assert (await client.get("/articles")).status_code == 200
    for response in (busy, transfer):
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.json()["code"] == "pool_exhausted"
    assert sync_engine_of(database).pool.checkedout() == 0


async def test_cancelled_requests_leave_no_connection_behind(demo: Demo) -> None:
    """Cancel a burst of transfers while they are in flight: no connection stays checked out,
    and no half-done transfer is visible (money is conserved)."""
    before = await accounts(demo)
    ids = sorted(before)
    pool = sync_engine_of(demo.database).pool
    tasks = [
        asyncio.create_task(
            demo.client.post(
                "/transfers",
                json={
                    "from_account_id": ids[n % len(ids)],
                    "to_account_id": ids[(n + 1) % len(ids)],
                    "amount_cents": 100,
                },
            )
        )
        for n in range(30)
    ]
    with anyio.fail_after(10):
        while pool.checkedout() == 0:  # noqa: ASYNC110 - no event to wait on: poll the pool
            await asyncio.sleep(0)  # until at least one request is inside its transaction
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert any(isinstance(r, asyncio.CancelledError) for r in results)
    assert pool.checkedout() == 0
    # every committed transfer is whole: each balance moved by exactly its ledger rows
    after = await accounts(demo)
    assert sum(after.values()) == sum(before.values())
    ledger = demo.rows("SELECT from_account_id, to_account_id, amount_cents FROM transfers")
    for account in ids:
        delta = sum(a for _, t, a in ledger if t == account)
        delta -= sum(a for f, _, a in ledger if f == account)
        assert after[account] - before[account] == delta
    accepted = sum(1 for r in results if getattr(r, "status_code", None) == 201)
    assert accepted <= len(ledger) < len(tasks)  # some were cancelled before their COMMIT


async def test_connection_lost_mid_request_is_503_postgresql(pg_url: str, tmp_path: Any) -> None:
    """The server side of the connection dies between two statements of a request."""
    import httpx

    from examples.bank_blog.app import create_app
    from tests.fastapi._support import make_backend

    with make_backend(pg_url, tmp_path) as backend:
        try:
            await start_demo(backend)
            app = create_app()

            @app.get("/test/die")
            async def die(session: AsyncDbSession) -> None:
                pid = await session.scalar(text("SELECT pg_backend_pid()"))
                backend.rows("SELECT pg_terminate_backend(:pid)", pid=pid)
                await session.execute(text("SELECT 1"))

            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
                response = await client.get("/test/die")
                assert response.status_code == 503
                assert response.json()["code"] == "database_unavailable"
                assert response.headers["retry-after"] == "1"
                assert (await client.get("/health")).status_code == 200  # the pool recovered
        finally:
            await backend.dispose_all()


@pytest.mark.parametrize("path", ["/users", "/articles"])
async def test_bodies_never_echo_sql(demo: Demo, path: str) -> None:
    author = (await register(demo, "vera")).json()["id"]
    payloads = {
        "/users": {"email": "vera@example.com", "name": "V", "handle": "vera_b"},
        "/articles": {"author_id": author, "slug": "vera-x", "title": "T"},
    }
    if path == "/articles":
        await demo.client.post(path, json=payloads[path])
    response = await demo.client.post(path, json=payloads[path])
    assert response.status_code == 409
    lowered = response.text.lower()
    assert "insert" not in lowered and "values" not in lowered and "vera" not in lowered
