"""Every endpoint of the demo and every error it maps, over HTTP, on SQLite and PostgreSQL.

Tests taking ``api`` run in a transaction that is rolled back afterwards (repom.testing; the
schema is migrated once per session): the requests' commits release savepoints, and state is
checked through the test's own session on the same connection.  The tests that need real
COMMITs, several connections or the pool's figures opt out (each says why): they use a database
of their own, and check committed state with a separate plain-SQLAlchemy connection.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import anyio
import pytest
from sqlalchemy import text

from repom.fastapi import AsyncDbSession
from tests.demo.conftest import Demo, IsolatedDemo, start_demo
from tests.fastapi._support import Backend, StatementLog, sync_engine_of


async def register(
    demo: Demo | IsolatedDemo, handle: str, deposit: int = 100_000, **extra: Any
) -> Any:
    payload = {
        "email": f"{handle}@example.com",
        "name": handle.title(),
        "handle": handle,
        "initial_deposit_cents": deposit,
        **extra,
    }
    return await demo.client.post("/users", json=payload)


async def accounts(demo: Demo | IsolatedDemo) -> dict[int, int]:
    response = await demo.client.get("/accounts", params={"limit": 100})
    return {a["id"]: a["balance_cents"] for a in response.json()["items"]}


# --------------------------------------------------------------------------- users


async def test_register_and_read_user(api: IsolatedDemo) -> None:
    log = api.log()
    response = await register(api, "zelda", phone="+1 555 0100")
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

    fetched = await api.client.get(f"/users/{user['id']}")
    assert fetched.status_code == 200 and fetched.json() == user
    # the phone number is encrypted at rest
    [(stored,)] = await api.rows("SELECT phone FROM profiles WHERE handle = 'zelda'")
    assert stored is not None and b"555" not in bytes(stored)

    missing = await api.client.get(f"/users/{uuid.uuid4()}")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    invalid = await api.client.post("/users", json={"email": "not-an-email", "name": "x"})
    assert invalid.status_code == 422


async def test_registration_is_atomic(api: IsolatedDemo) -> None:
    assert (await register(api, "yara")).status_code == 201
    same_email = await api.client.post(
        "/users", json={"email": "yara@example.com", "name": "Y", "handle": "yara_two"}
    )
    # new email, taken handle: the user row is inserted, then the profile fails -> all undone
    same_handle = await api.client.post(
        "/users", json={"email": "yara2@example.com", "name": "Y", "handle": "yara"}
    )
    for response in (same_email, same_handle):
        assert response.status_code == 409
        assert response.json()["code"] == "duplicate_key"
        assert "INSERT" not in response.text and "yara2@" not in response.text
    assert await api.scalar("SELECT count(*) FROM users WHERE email = 'yara2@example.com'") == 0
    assert await api.scalar("SELECT count(*) FROM users") == api.seeded.users + 1
    assert await api.scalar("SELECT count(*) FROM accounts") == api.seeded.accounts + 1


async def test_profile_optimistic_locking(api: IsolatedDemo) -> None:
    user = (await register(api, "xena")).json()
    url = f"/users/{user['id']}/profile"
    first = await api.client.patch(url, json={"version": 1, "bio": "one", "preferences": {"a": 1}})
    assert first.status_code == 200
    assert (first.json()["version"], first.json()["bio"]) == (2, "one")
    stale = await api.client.patch(url, json={"version": 1, "bio": "two"})
    assert stale.status_code == 409
    assert stale.json()["code"] == "conflict" and stale.json()["resource"] == "Profile"
    assert await api.rows("SELECT bio, version FROM profiles WHERE handle = 'xena'") == [("one", 2)]
    unknown = await api.client.patch(f"/users/{uuid.uuid4()}/profile", json={"version": 1})
    assert unknown.status_code == 404


# Opts out of the rolled-back transaction: two requests at once need two connections (one
# test connection serves requests one after the other only).
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


async def test_transfers(api: IsolatedDemo) -> None:
    balances = await accounts(api)
    first, second = sorted(balances)[:2]
    ok = await api.client.post(
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
    after = await accounts(api)
    assert (after[first], after[second]) == (balances[first] - 1234, balances[second] + 1234)

    too_much = await api.client.post(
        "/transfers",
        json={"from_account_id": first, "to_account_id": second, "amount_cents": 10**11},
    )
    assert too_much.status_code == 409
    assert too_much.json()["code"] == "insufficient_funds"
    unknown = await api.client.post(
        "/transfers", json={"from_account_id": first, "to_account_id": 999_999, "amount_cents": 1}
    )
    assert unknown.status_code == 404
    same = await api.client.post(
        "/transfers", json={"from_account_id": first, "to_account_id": first, "amount_cents": 1}
    )
    assert same.status_code == 422
    assert await accounts(api) == after  # nothing written by the refused ones
    assert await api.scalar("SELECT count(*) FROM transfers") == 1

    account = await api.client.get(f"/accounts/{first}")
    assert account.json()["balance_cents"] == after[first]
    assert (await api.client.get("/accounts/999999")).status_code == 404


async def test_account_history_keyset_pages(api: IsolatedDemo) -> None:
    ids = sorted(await accounts(api))
    for n in range(7):
        response = await api.client.post(
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
        page = (await api.client.get(f"/accounts/{ids[2]}/transfers", params=params)).json()
        seen += [t["id"] for t in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert pages == 3 and len(seen) == 7 and seen == sorted(seen, reverse=True)
    assert (await api.client.get("/accounts/999999/transfers")).status_code == 404
    forged = await api.client.get(f"/accounts/{ids[2]}/transfers", params={"cursor": "x.y"})
    assert forged.status_code == 422 and forged.json()["code"] == "invalid_cursor"


async def test_report_is_read_only_snapshot(api: IsolatedDemo) -> None:
    log = api.log()
    report = (await api.client.get("/reports/bank")).json()
    assert report["users"] == api.seeded.users
    assert report["total_balance_cents"] == api.seeded.total_balance_cents
    assert report["articles_published"] + report["articles_draft"] == api.seeded.articles
    top = report["richest"]
    assert len(top) == 3 and top == sorted(top, key=lambda r: -r["balance_cents"])
    selects = [s for s in log.statements if s.startswith("SELECT")]
    assert len(selects) == 2 and selects[0].count("count(") == 6  # all totals in one statement
    assert log.count("COMMIT") == 1
    if api.dialect == "sqlite":
        assert "PRAGMA query_only=ON" in log.statements  # a write would be refused


# --------------------------------------------------------------------------- blog


async def test_articles_crud_soft_delete_and_restore(api: IsolatedDemo) -> None:
    author = (await register(api, "wren")).json()["id"]
    created = await api.client.post(
        "/articles",
        json={"author_id": author, "slug": "first-post", "title": "First", "tags": ["a", "b"]},
    )
    assert created.status_code == 201, created.text
    article = created.json()
    assert article["tags"] == ["a", "b"] and article["published"] is False
    url = f"/articles/{article['id']}"

    patched = await api.client.patch(url, json={"title": "First!", "published": True})
    assert patched.status_code == 200 and patched.json()["title"] == "First!"
    assert (await api.client.get(url)).json()["published"] is True

    assert (await api.client.delete(url)).status_code == 204
    assert (await api.client.get(url)).status_code == 404
    assert (await api.client.delete(url)).status_code == 404
    assert await api.rows("SELECT is_deleted FROM articles WHERE slug = 'first-post'") == [(True,)]
    restored = await api.client.post(f"{url}/restore")
    assert restored.status_code == 200 and restored.json()["title"] == "First!"
    assert (await api.client.post(f"{url}/restore")).status_code == 404
    assert (await api.client.get(url)).status_code == 200
    assert (await api.client.get("/articles/999999")).status_code == 404
    assert (await api.client.patch("/articles/999999", json={"title": "x"})).status_code == 404

    taken = await api.client.post(
        "/articles", json={"author_id": author, "slug": "first-post", "title": "Again"}
    )
    assert taken.status_code == 409 and taken.json()["code"] == "duplicate_key"
    other = await api.client.post(
        "/articles", json={"author_id": author, "slug": "second-post", "title": "Second"}
    )
    rename = await api.client.patch(f"/articles/{other.json()['id']}", json={"slug": "first-post"})
    assert rename.status_code == 409


# Opts out of the rolled-back transaction: the DEFERRABLE INITIALLY DEFERRED foreign key is only
# checked at the outer COMMIT, which a test transaction never reaches (RELEASE SAVEPOINT does not
# check it).
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


async def test_list_articles_filters_order_and_pages(api: IsolatedDemo) -> None:
    published = await api.scalar("SELECT count(*) FROM articles WHERE published")
    titles: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"published": "true", "order_by": ["title", "-id"], "limit": 2}
        if cursor:
            params["cursor"] = cursor
        response = await api.client.get("/articles", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert all(item["published"] for item in body["items"])
        titles += [item["title"] for item in body["items"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert len(titles) == published and titles == sorted(titles)

    [(author,)] = await api.rows("SELECT author_id FROM articles ORDER BY id LIMIT 1")
    author_id = str(uuid.UUID(str(author))) if not isinstance(author, uuid.UUID) else str(author)
    mine = await api.client.get("/articles", params={"author_id": author_id})
    assert mine.status_code == 200 and len(mine.json()["items"]) == 2
    search = await api.client.get("/articles", params={"title__icontains": "KEYSET"})
    assert search.json()["items"] and all("Keyset" in a["title"] for a in search.json()["items"])
    recent = await api.client.get("/articles", params={"created_at__gte": "2000-01-01T00:00:00Z"})
    assert len(recent.json()["items"]) == min(20, api.seeded.articles)

    unknown = await api.client.get("/articles", params={"is_deleted": "true"})
    assert unknown.status_code == 422 and unknown.json()["field"] == "is_deleted"
    bad_order = await api.client.get("/articles", params={"order_by": "body"})
    assert bad_order.status_code == 422
    too_big = await api.client.get("/articles", params={"limit": 101})
    assert too_big.status_code == 422


# --------------------------------------------------------------------------- operations


async def test_health_and_openapi(api: IsolatedDemo) -> None:
    health = await api.client.get("/health")
    assert health.status_code == 200
    [database] = health.json()["databases"]
    # the only connection checked out is the test's own: the request held none of its own
    assert database["dialect"] == api.dialect and database["pool"]["checked_out"] == 1
    spec = (await api.client.get("/openapi.json")).json()
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


# Opts out of the rolled-back transaction: it needs a pool of its own (one connection, held by
# the test) and a request that checks out a connection of its own.
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


# Opts out of the rolled-back transaction: 30 concurrent requests (several connections), the
# pool's checked-out count after they are cancelled, and what was really committed.
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


# Opts out of the rolled-back transaction: it kills the request's server connection, which in a
# test transaction would be the test's own.
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
async def test_bodies_never_echo_sql(api: IsolatedDemo, path: str) -> None:
    author = (await register(api, "vera")).json()["id"]
    payloads = {
        "/users": {"email": "vera@example.com", "name": "V", "handle": "vera_b"},
        "/articles": {"author_id": author, "slug": "vera-x", "title": "T"},
    }
    if path == "/articles":
        await api.client.post(path, json=payloads[path])
    response = await api.client.post(path, json=payloads[path])
    assert response.status_code == 409
    lowered = response.text.lower()
    assert "insert" not in lowered and "values" not in lowered and "vera" not in lowered
