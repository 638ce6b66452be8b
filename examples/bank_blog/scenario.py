"""The scripted scenario: what a client does with the demo API, checked step by step.

:func:`run_scenario` takes any ``httpx.AsyncClient`` pointed at the application (real HTTP in
the demo, an ASGI transport in tests) and returns a :class:`ScenarioResult`: one :class:`Check`
per step, the figures of the concurrent transfer run, and the bank report before and after.

The central invariant: money is neither created nor destroyed.  The total of all balances is the
same before and after the concurrent transfers, and every account's balance equals its starting
balance plus what the accepted transfers moved in, minus what they moved out.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    ms: float


@dataclass
class TransferRun:
    attempted: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    moved_cents: int = 0
    client_retries: int = 0

    @property
    def accepted(self) -> int:
        return self.statuses[201]

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def throughput(self) -> float:
        return self.attempted / self.seconds if self.seconds else 0.0


@dataclass
class ScenarioResult:
    checks: list[Check] = field(default_factory=list)
    transfers: TransferRun = field(default_factory=TransferRun)
    report_before: dict[str, Any] = field(default_factory=dict)
    report_after: dict[str, Any] = field(default_factory=dict)
    health_after: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)


class Scenario:
    def __init__(self, client: httpx.AsyncClient, *, transfers: int, concurrency: int, seed: int):
        self.client = client
        self.transfer_count = transfers
        self.concurrency = concurrency
        self.rng = random.Random(seed)
        self.run_id = uuid.uuid4().hex[:8]
        self.result = ScenarioResult()

    async def step(self, name: str, body: Callable[[], Awaitable[tuple[bool, str]]]) -> bool:
        start = time.perf_counter()
        try:
            ok, detail = await body()
        except Exception as exc:  # a step that blows up is a failed check, not a crash
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        self.result.checks.append(Check(name, ok, detail, (time.perf_counter() - start) * 1000))
        return ok

    async def get(self, url: str, **params: Any) -> httpx.Response:
        return await self.client.get(url, params=params or None)

    async def post_honouring_retry_after(
        self, url: str, payload: dict[str, Any], *, attempts: int = 5
    ) -> httpx.Response:
        """POST; a ``503`` with ``Retry-After`` (the server was briefly out of connections or
        the database was busy: nothing was written) is sent again after the delay it asks for,
        a few times at most."""
        for _ in range(attempts - 1):
            response = await self.client.post(url, json=payload)
            retry_after = response.headers.get("Retry-After")
            if response.status_code != 503 or retry_after is None:
                return response
            self.result.transfers.client_retries += 1
            delay = min(float(retry_after), 5.0)
            await asyncio.sleep(delay * self.rng.uniform(0.5, 1.0))
        return await self.client.post(url, json=payload)

    async def report(self) -> dict[str, Any]:
        response = await self.get("/reports/bank")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    async def all_pages(self, url: str, limit: int, **params: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            query = dict(params, limit=limit)
            if cursor:
                query["cursor"] = cursor
            response = await self.get(url, **query)
            response.raise_for_status()
            page = response.json()
            items.extend(page["items"])
            cursor = page["next_cursor"]
            if not cursor:
                return items

    # ------------------------------------------------------------------ the steps

    async def run(self) -> ScenarioResult:
        await self.step("health: database reachable", self.health)
        await self.step("read-only report (one snapshot)", self.first_report)
        user = await self.register()
        if user is not None:
            await self.step("profile edit with optimistic locking", lambda: self.profile(user))
            await self.blog(user)
        await self.step(f"{self.transfer_count} concurrent transfers", self.transfers)
        await self.step("invariant: total balance unchanged", self.total_unchanged)
        await self.step("invariant: every balance = start + in - out", self.balances_match)
        await self.step("keyset pages of one account's transfers", self.account_history)
        await self.step("pool: no connection left checked out", self.pool_idle)
        return self.result

    async def health(self) -> tuple[bool, str]:
        response = await self.get("/health")
        body = response.json()
        database = body["databases"][0]
        return (
            response.status_code == 200 and body["status"] == "ok",
            f"{database['dialect']} ({database['flavour']}), ping {database['latency_ms']} ms",
        )

    async def first_report(self) -> tuple[bool, str]:
        self.result.report_before = report = await self.report()
        return True, (
            f"{report['users']} users, {report['accounts']} accounts, "
            f"{report['total_balance_cents'] / 100:,.2f} EUR in total"
        )

    async def register(self) -> dict[str, Any] | None:
        handle = f"demo_{self.run_id}"
        email = f"{handle}@example.com"
        created: dict[str, Any] = {}

        async def create() -> tuple[bool, str]:
            payload = {
                "email": email,
                "name": "Demo Client",
                "handle": handle,
                "phone": "+44 20 7946 0000",
                "initial_deposit_cents": 250_000,
            }
            response = await self.client.post("/users", json=payload)
            created.update(response.json())
            fetched = await self.get(f"/users/{created.get('id')}")
            ok = response.status_code == 201 and fetched.json() == created
            return ok, f"201: user + profile + account in one transaction (id {created.get('id')})"

        async def duplicates() -> tuple[bool, str]:
            users_before = (await self.report())["users"]
            same_email = await self.client.post(
                "/users", json={"email": email, "name": "Again", "handle": f"other_{self.run_id}"}
            )
            # a new email but a taken handle: the user INSERT succeeds, the profile INSERT fails,
            # and the whole registration is rolled back
            same_handle = await self.client.post(
                "/users",
                json={"email": f"other_{self.run_id}@example.com", "name": "X", "handle": handle},
            )
            users_after = (await self.report())["users"]
            ok = (
                same_email.status_code == 409
                and same_handle.status_code == 409
                and same_email.json()["code"] == same_handle.json()["code"] == "duplicate_key"
                and users_after == users_before
            )
            return ok, "409 duplicate_key twice; no partial registration left behind"

        if not await self.step("register a user atomically", create):
            return None
        await self.step("duplicate registrations rejected, nothing written", duplicates)
        return created

    async def profile(self, user: dict[str, Any]) -> tuple[bool, str]:
        url = f"/users/{user['id']}/profile"
        version = user["profile"]["version"]
        first = await self.client.patch(url, json={"version": version, "bio": "Edited once."})
        stale = await self.client.patch(url, json={"version": version, "bio": "Edited twice?"})
        ok = (
            first.status_code == 200
            and first.json()["version"] == version + 1
            and stale.status_code == 409
            and stale.json()["code"] == "conflict"
        )
        return ok, f"200 (version {version} -> {version + 1}), then 409 for stale version {version}"

    async def blog(self, user: dict[str, Any]) -> None:
        slug = f"hello-{self.run_id}"
        article: dict[str, Any] = {}

        async def publish() -> tuple[bool, str]:
            payload = {
                "author_id": user["id"],
                "slug": slug,
                "title": "Hello from the demo",
                "tags": ["demo"],
                "published": True,
            }
            response = await self.client.post("/articles", json=payload)
            article.update(response.json())
            ghost = await self.client.post(
                "/articles",
                json={
                    "author_id": str(uuid.uuid4()),
                    "slug": f"ghost-{self.run_id}",
                    "title": "Nobody wrote this",
                },
            )
            ok = response.status_code == 201 and ghost.status_code == 409
            return ok, "201; unknown author: 409 from the deferred foreign key at COMMIT"

        async def browse() -> tuple[bool, str]:
            published = await self.all_pages(
                "/articles", 5, published="true", order_by=["title", "-id"]
            )
            ids = [item["id"] for item in published]
            titles = [item["title"] for item in published]
            expected = (await self.report())["articles_published"]
            mine = await self.get("/articles", author_id=user["id"], title__icontains="HELLO")
            unknown = await self.get("/articles", password="x")
            bad_cursor = await self.get("/articles", cursor="not-a-cursor")
            ok = (
                len(ids) == len(set(ids)) == expected
                and titles == sorted(titles)
                and [a["slug"] for a in mine.json()["items"]] == [slug]
                and unknown.status_code == 422
                and bad_cursor.status_code == 422
            )
            pages = -(-len(ids) // 5)
            return ok, (
                f"{len(ids)} published articles in {pages} keyset pages, no duplicates; "
                "unknown filter and forged cursor: 422"
            )

        async def soft_delete() -> tuple[bool, str]:
            url = f"/articles/{article['id']}"
            deleted = await self.client.delete(url)
            hidden = await self.get(url)
            restored = await self.client.post(f"{url}/restore")
            back = await self.get(url)
            ok = (deleted.status_code, hidden.status_code, restored.status_code) == (204, 404, 200)
            ok = ok and back.status_code == 200
            return ok, "204, then 404 while deleted, restore 200, visible again"

        if await self.step("publish an article", publish):
            await self.step("filters, ordering, keyset pagination", browse)
            await self.step("soft delete and restore", soft_delete)

    async def transfers(self) -> tuple[bool, str]:
        self.before_transfers = await self.report()
        accounts = await self.all_pages("/accounts", 100)
        self.start_balances = {a["id"]: a["balance_cents"] for a in accounts}
        self.moves: list[tuple[int, int, int]] = []
        ids = sorted(self.start_balances)
        run = self.result.transfers
        gate = asyncio.Semaphore(self.concurrency)
        typical = max(1, statistics.median(self.start_balances.values()) // 10)

        async def one(source: int, target: int, amount: int) -> None:
            payload = {"from_account_id": source, "to_account_id": target, "amount_cents": amount}
            async with gate:
                start = time.perf_counter()
                response = await self.post_honouring_retry_after("/transfers", payload)
                run.latencies_ms.append((time.perf_counter() - start) * 1000)
            run.statuses[response.status_code] += 1
            if response.status_code == 201:
                self.moves.append((source, target, amount))
                run.moved_cents += amount
            else:
                run.codes[response.json().get("code", "?")] += 1

        jobs = []
        for _ in range(self.transfer_count):
            source, target = self.rng.sample(ids, 2)
            amount = int(typical * self.rng.choice([0.1, 0.5, 1, 2, 15]))  # some overdraw
            jobs.append(one(source, target, max(1, amount)))
        jobs.append(one(ids[0], 10**12, 100))  # an account that does not exist: 404
        run.attempted = len(jobs)
        start = time.perf_counter()
        await asyncio.gather(*jobs)
        run.seconds = time.perf_counter() - start
        unexpected = set(run.statuses) - {201, 409, 404}
        ok = not unexpected and run.statuses[404] == 1 and run.accepted > 0
        detail = (
            f"{run.accepted} accepted, {run.statuses[409]} refused (insufficient funds), "
            f"{run.statuses[404]} unknown account; {run.throughput:,.0f} req/s, "
            f"p50 {run.percentile(0.5):.1f} ms, p95 {run.percentile(0.95):.1f} ms"
        )
        if unexpected:
            detail += f"; UNEXPECTED statuses {dict(run.statuses)} codes {dict(run.codes)}"
        return ok, detail

    async def total_unchanged(self) -> tuple[bool, str]:
        before = self.before_transfers
        self.result.report_after = after = await self.report()
        accepted = self.result.transfers.accepted
        ok = (
            after["total_balance_cents"] == before["total_balance_cents"]
            and after["transfers"] - before["transfers"] == accepted
            and after["transferred_cents"] - before["transferred_cents"]
            == self.result.transfers.moved_cents
        )
        return ok, (
            f"{before['total_balance_cents'] / 100:,.2f} EUR before and "
            f"{after['total_balance_cents'] / 100:,.2f} EUR after; "
            f"ledger grew by exactly {accepted} transfers"
        )

    async def balances_match(self) -> tuple[bool, str]:
        expected = dict(self.start_balances)
        for source, target, amount in self.moves:
            expected[source] -= amount
            expected[target] += amount
        accounts = await self.all_pages("/accounts", 100)
        actual = {a["id"]: a["balance_cents"] for a in accounts}
        wrong = [i for i in expected if actual.get(i) != expected[i]]
        negative = [i for i, balance in actual.items() if balance < 0]
        return not wrong and not negative, f"{len(actual)} accounts checked, {len(wrong)} differ"

    async def account_history(self) -> tuple[bool, str]:
        involvement: defaultdict[int, int] = defaultdict(int)
        for source, target, _ in self.moves:
            involvement[source] += 1
            involvement[target] += 1
        if not involvement:
            return False, "no transfer was accepted"
        busiest = max(involvement, key=lambda i: involvement[i])
        history = await self.all_pages(f"/accounts/{busiest}/transfers", 10)
        ids = [t["id"] for t in history]
        ok = ids == sorted(ids, reverse=True) and len(ids) == len(set(ids))
        if self.result.report_before["transfers"] == 0:  # a fresh ledger: exactly ours
            ok = ok and len(ids) == involvement[busiest]
        else:
            ok = ok and len(ids) >= involvement[busiest]
        return ok, f"account {busiest}: {len(ids)} transfers, newest first, in pages of 10"

    async def pool_idle(self) -> tuple[bool, str]:
        response = await self.get("/health")
        self.result.health_after = body = response.json()
        pool = body["databases"][0]["pool"]
        # the health check itself holds one connection while it pings; it is back by now
        ok = response.status_code == 200 and pool["checked_out"] == 0
        return ok, (
            f"{pool.get('pool_class')}: size {pool.get('pool_size')}, "
            f"checked out {pool['checked_out']}, in pool {pool.get('checked_in')}"
        )


async def run_scenario(
    client: httpx.AsyncClient, *, transfers: int = 200, concurrency: int = 20, seed: int = 1
) -> ScenarioResult:
    """Run every step against *client*; never raises for a failed step (see ``result.ok``)."""
    return await Scenario(client, transfers=transfers, concurrency=concurrency, seed=seed).run()
