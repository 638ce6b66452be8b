"""Per-request overhead of the request session over HTTP: repom vs plain SQLAlchemy vs
advanced-alchemy (issue 17, item 4).

Three FastAPI apps with the same model, table, rows and SQL, each served by uvicorn in a process
of its own (one worker), PostgreSQL through asyncpg:

* ``repom`` -- repom's defaults as its guide shows them: ``AsyncDatabase(url)`` with
  ``RepomConfig()``, ``Lifespan``, ``install_exception_handlers``, the ``AsyncDbSession``
  dependency (one transaction per request, committed before the response) and an
  ``AsyncRepository`` (``get_by_id``, ``list(order_by="id", limit=20)``);
* ``SQLAlchemy`` -- plain FastAPI + SQLAlchemy: a ``yield`` session dependency that commits
  after the endpoint (``Depends(..., scope="function")``: also before the response), with
  ``session.get`` and ``select(...).order_by(id).limit(20)``;
* ``advanced-alchemy`` -- its FastAPI extension (``commit_mode="autocommit"``) and repository
  (``get_one_or_none``, ``list``).

Every app gets a pool of 10 + 20 connections (repom's default size) so that pool capacity is
not what differs; everything else is each library's default.  Two endpoints are measured:
``GET /items/{id}`` (a random id per request) and ``GET /items`` (first page of 20).

The load comes from ``wrk`` (a native HTTP benchmarking tool; ``./run bench`` installs it with
apt-get), ``--connections`` keep-alive connections on one thread.  Without ``wrk`` (or with
``--generator processes``) several client processes with a minimal keep-alive HTTP/1.1 client
take its place.  The generator's CPU use is measured (its ``rusage``) and reported next to the
server's, to show that the server, not the load generator, is the bottleneck.

Rounds are interleaved: each round measures every (endpoint, app) pair once for
``--duration`` seconds, the app order rotating from round to round.  A ratio is the median over
rounds of the app's req/s divided by plain SQLAlchemy's req/s in the same round; the same is
reported for requests per CPU-second of the server process (what a request costs the server,
which holds up better than req/s when other work shares the machine).

Then, when valgrind is installed, each server runs once more under callgrind and the
instructions it executes per request (uvicorn included) are counted over ``--instructions``
sequential requests per endpoint: figures that a busy machine does not disturb (they vary by
about 1% from run to run, with the garbage collector's timing).

Target for repom: >= 0.97x on both endpoints.

Run: ``python -m bench.http_overhead [--rounds 5] [--duration 5] [--connections 32]
[--generator wrk|processes] [--instructions 300] [--url URL] [--no-write]`` (PostgreSQL:
``REPOM_BENCH_PG_URL``, default ``postgresql://postgres@127.0.0.1:5432/test``; the table lives in
a schema of its own, dropped at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict
from sqlalchemy import String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bench._meta import stamp
from repom.fastapi import AsyncDbSession

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
APPS = ("repom", "SQLAlchemy", "advanced-alchemy")
BASELINE = "SQLAlchemy"
ENDPOINTS = {"GET /items/{id}": "get", "GET /items (first page)": "list"}
SCHEMA = "bench_http_overhead"
UVICORN = [sys.executable, "-m", "uvicorn", "bench.http_overhead:app_factory", "--factory"]
POOL = {"pool_size": 10, "max_overflow": 20}  # repom's defaults, given to all three
PAGE = 20
TICKS = os.sysconf("SC_CLK_TCK")


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "http_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(60))
    price_cents: Mapped[int]
    note: Mapped[str] = mapped_column(String(200))


class ItemOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    price_cents: int
    note: str


# =========================================================================== the three apps
# Built in the server process by ``app_factory`` from HTTP_OVERHEAD_* environment variables.


def _settings() -> tuple[str, str | None]:
    from repom.urls import convert_to_async_uri

    url = convert_to_async_uri(os.environ["HTTP_OVERHEAD_URL"])
    return url, os.environ.get("HTTP_OVERHEAD_SCHEMA") or None


def _connect_args(schema: str | None) -> dict[str, Any]:
    return {"server_settings": {"search_path": schema}} if schema else {}


def repom_app() -> Any:
    from repom.database import AsyncDatabase
    from repom.exceptions import NotFoundError
    from repom.fastapi import Lifespan, install_exception_handlers
    from repom.repository import AsyncRepository

    class ItemRepository(AsyncRepository[Item]):
        model = Item

    url, schema = _settings()
    db = AsyncDatabase(url, connect_args=_connect_args(schema), **POOL)
    app = FastAPI(lifespan=Lifespan(async_database=db))
    install_exception_handlers(app)

    @app.get("/items/{item_id}")
    async def get_item(item_id: int, session: AsyncDbSession) -> ItemOut:
        found = await ItemRepository(session).get_by_id(item_id)
        if found is None:
            raise NotFoundError(f"item {item_id} not found", model="Item", identity=item_id)
        return ItemOut.model_validate(found)

    @app.get("/items")
    async def list_items(session: AsyncDbSession) -> list[ItemOut]:
        rows = await ItemRepository(session).list(order_by="id", limit=PAGE)
        return [ItemOut.model_validate(row) for row in rows]

    return app


def sqlalchemy_app() -> Any:
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    url, schema = _settings()
    engine = create_async_engine(url, connect_args=_connect_args(schema), **POOL)
    maker = async_sessionmaker(engine, expire_on_commit=False)
    app = FastAPI()

    async def get_db() -> AsyncIterator[AsyncSession]:
        async with maker() as session:
            yield session
            await session.commit()

    Session = Depends(get_db, scope="function")

    @app.get("/items/{item_id}")
    async def get_item(item_id: int, session: AsyncSession = Session) -> ItemOut:
        found = await session.get(Item, item_id)
        if found is None:
            raise HTTPException(404, f"item {item_id} not found")
        return ItemOut.model_validate(found)

    @app.get("/items")
    async def list_items(session: AsyncSession = Session) -> list[ItemOut]:
        rows = await session.scalars(select(Item).order_by(Item.id).limit(PAGE))
        return [ItemOut.model_validate(row) for row in rows]

    return app


def advanced_alchemy_app() -> Any:
    from advanced_alchemy.config import EngineConfig
    from advanced_alchemy.extensions.fastapi import AdvancedAlchemy, SQLAlchemyAsyncConfig
    from advanced_alchemy.filters import LimitOffset
    from advanced_alchemy.repository import SQLAlchemyAsyncRepository

    class ItemRepository(SQLAlchemyAsyncRepository[Item]):
        model_type = Item

    url, schema = _settings()
    config = SQLAlchemyAsyncConfig(
        connection_string=url,
        commit_mode="autocommit",
        engine_config=EngineConfig(connect_args=_connect_args(schema), **POOL),
    )
    app = FastAPI()
    alchemy = AdvancedAlchemy(config=config, app=app)
    Session = Depends(alchemy.provide_session())

    @app.get("/items/{item_id}")
    async def get_item(item_id: int, session: AsyncSession = Session) -> ItemOut:
        found = await ItemRepository(session=session).get_one_or_none(id=item_id)
        if found is None:
            raise HTTPException(404, f"item {item_id} not found")
        return ItemOut.model_validate(found)

    @app.get("/items")
    async def list_items(session: AsyncSession = Session) -> list[ItemOut]:
        rows = await ItemRepository(session=session).list(
            LimitOffset(limit=PAGE, offset=0), order_by=[(Item.id, False)]
        )
        return [ItemOut.model_validate(row) for row in rows]

    return app


def app_factory() -> Any:
    """uvicorn ``--factory`` entry point: the app named by ``HTTP_OVERHEAD_APP``."""
    return {
        "repom": repom_app,
        "SQLAlchemy": sqlalchemy_app,
        "advanced-alchemy": advanced_alchemy_app,
    }[os.environ["HTTP_OVERHEAD_APP"]]()


# =========================================================================== servers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class Server:
    def __init__(
        self, app: str, url: str, schema: str | None, prefix: tuple[str, ...] = ()
    ) -> None:
        self.app = app
        self.port = _free_port()
        env = dict(os.environ)
        env.update(
            HTTP_OVERHEAD_APP=app,
            HTTP_OVERHEAD_URL=url,
            HTTP_OVERHEAD_SCHEMA=schema or "",
            PYTHONPATH=str(ROOT),
        )
        for name in ("DATABASE_URL", "REPOM_DATABASE_URL"):
            env.pop(name, None)
        self.process = subprocess.Popen(
            [
                *prefix,
                *UVICORN,
                "--port",
                str(self.port),
                "--log-level",
                "error",
                "--no-access-log",
            ],
            cwd=ROOT,
            env=env,
            stderr=subprocess.DEVNULL if prefix else None,
        )

    def wait_ready(self, path: str) -> None:
        deadline = time.monotonic() + 120
        while True:
            try:
                status, _ = _get_once("127.0.0.1", self.port, path)
                if status == 200:
                    return
                raise RuntimeError(f"{self.app}: GET {path} answered {status}")
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.app} server did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self.process.kill()
            self.process.wait()


def _get_once(host: str, port: int, path: str) -> tuple[int, bytes]:
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


# =========================================================================== load generators


@dataclass
class Load:
    requests: int = 0
    seconds: float = 0.0
    errors: int = 0  # socket errors, timeouts and non-2xx answers
    generator_cpu: float = 0.0  # CPU seconds used by the load generator
    server_cpu: float = 0.0  # CPU seconds used by the server process

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def per_cpu(self) -> float:
        """Requests per CPU-second of the server: what a request costs the server, whatever
        share of a core it was given (robust on a busy machine; equal to req/s when the server
        saturates its core)."""
        return self.requests / self.server_cpu if self.server_cpu else 0.0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


_WRK_SCRIPT = """
local kind, rows = "{kind}", {rows}
math.randomseed({seed})
request = function()
  if kind == "get" then
    return wrk.format("GET", "/items/" .. math.random(1, rows))
  end
  return wrk.format("GET", "/items")
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("HTTP_OVERHEAD %d %d %d\\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def run_wrk(port: int, kind: str, rows: int, connections: int, duration: float) -> Load:
    seed = random.randrange(1 << 30)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_WRK_SCRIPT.format(kind=kind, rows=rows, seed=seed))
    try:
        before = _children_cpu()
        done = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(duration))}s",
                "--timeout",
                "10s",
                "-s",
                script.name,
                f"http://127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        cpu = _children_cpu() - before
    finally:
        os.unlink(script.name)
    match = re.search(r"HTTP_OVERHEAD (\d+) (\d+) (\d+)", done.stdout)
    if match is None:
        raise RuntimeError(f"unexpected wrk output: {done.stdout!r} {done.stderr!r}")
    requests, micros, errors = (int(g) for g in match.groups())
    return Load(requests=requests, seconds=micros / 1e6, errors=errors, generator_cpu=cpu)


def _client_process(
    port: int, kind: str, rows: int, connections: int, duration: float, out: Any
) -> None:
    """One load process: *connections* keep-alive HTTP/1.1 connections, each sending its next
    request as soon as the previous answer arrived, for *duration* seconds."""

    async def one(stop: float, rng: random.Random, counts: list[int]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop:
                path = f"/items/{rng.randint(1, rows)}" if kind == "get" else "/items"
                writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
                await reader.readexactly(length)
                counts[0] += 1
                if not 200 <= status < 300:
                    counts[1] += 1
        finally:
            writer.close()

    async def main() -> None:
        counts = [0, 0]
        start = time.perf_counter()
        rng = random.Random(os.getpid())
        await asyncio.gather(*(one(start + duration, rng, counts) for _ in range(connections)))
        out.send((counts[0], counts[1], time.perf_counter() - start))

    asyncio.run(main())


def run_processes(
    port: int, kind: str, rows: int, connections: int, duration: float, processes: int
) -> Load:
    context = multiprocessing.get_context("fork")
    before = _children_cpu()
    pipes, workers = [], []
    for index in range(processes):
        share = connections // processes + (1 if index < connections % processes else 0)
        receive, send = context.Pipe(duplex=False)
        worker = context.Process(
            target=_client_process, args=(port, kind, rows, share, duration, send)
        )
        worker.start()
        pipes.append(receive)
        workers.append(worker)
    results = [pipe.recv() for pipe in pipes]
    for worker in workers:
        worker.join()
    load = Load(generator_cpu=_children_cpu() - before)
    load.requests = sum(r[0] for r in results)
    load.errors = sum(r[1] for r in results)
    load.seconds = max(r[2] for r in results)
    return load


# =========================================================================== instructions


def _sequential(port: int, kind: str, rows: int, count: int) -> None:
    """*count* requests one after the other on one keep-alive connection; every answer 200."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        stream = sock.makefile("rb")
        for index in range(count):
            path = f"/items/{index % rows + 1}" if kind == "get" else "/items"
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            status = int(stream.readline().split(b" ", 2)[1])
            length = 0
            while (line := stream.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            stream.read(length)
            if status != 200:
                raise RuntimeError(f"GET {path} answered {status}")


def _callgrind(pid: int, *command: str) -> None:
    subprocess.run(["callgrind_control", *command, str(pid)], capture_output=True, check=True)


def count_instructions(
    url: str, schema: str, rows: int, count: int
) -> dict[tuple[str, str], float]:
    """Instructions per request of each app's server process (uvicorn included), counted by
    valgrind's callgrind: exact and repeatable, whatever else runs on the machine.  Each server
    runs under callgrind with instrumentation off until it is warm; then, per endpoint, *count*
    sequential requests are counted and dumped."""
    found: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory() as folder:
        for app in APPS:
            out = os.path.join(folder, f"{app}.out")
            prefix = ("valgrind", "--tool=callgrind", "--instr-atstart=no")
            server = Server(app, url, schema, (*prefix, f"--callgrind-out-file={out}"))
            try:
                server.wait_ready("/items/1")
                pid = server.process.pid
                for kind in ENDPOINTS.values():
                    _sequential(server.port, kind, rows, 50)  # warm up, not counted
                for dump, (endpoint, kind) in enumerate(ENDPOINTS.items(), start=1):
                    _callgrind(pid, "-i", "on")
                    _sequential(server.port, kind, rows, count)
                    _callgrind(pid, "-d")  # writes <out>.<dump>: what was counted since
                    _callgrind(pid, "-i", "off")
                    with open(f"{out}.{dump}") as handle:
                        totals = next(
                            int(line.split()[1]) for line in handle if line.startswith("totals:")
                        )
                    found[(endpoint, app)] = totals / count
                    print(
                        f"instructions {endpoint:24} {app:17} {totals / count:12,.0f} per request"
                    )
            finally:
                server.stop()
    return found


def instruction_table(found: dict[tuple[str, str], float]) -> str:
    lines = [
        "| endpoint | app | instructions per request | SQLAlchemy's ÷ app's |",
        "|---|---|---:|---:|",
    ]
    for endpoint in ENDPOINTS:
        base = found[(endpoint, BASELINE)]
        for app in APPS:
            mine = found[(endpoint, app)]
            lines.append(f"| {endpoint} | {app} | {mine:,.0f} | {base / mine:.3f}x |")
    return "\n".join(lines)


# =========================================================================== setup


def prepare(url: str, rows: int, schema: str = SCHEMA) -> str:
    """A fresh schema with the table and *rows* rows (PostgreSQL)."""
    from sqlalchemy import create_engine, insert, text
    from sqlalchemy.pool import NullPool

    admin = create_engine(url, poolclass=NullPool)
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        conn.execute(text(f'SET LOCAL search_path = "{schema}"'))
        Base.metadata.create_all(conn)
        conn.execute(
            insert(Item),
            [
                {"id": i, "name": f"item {i}", "price_cents": i * 7, "note": "x" * 40}
                for i in range(1, rows + 1)
            ],
        )
        conn.execute(text(f'ANALYZE "{schema}".http_items'))
    admin.dispose()
    return schema


def cleanup(url: str, schema: str = SCHEMA) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    admin = create_engine(url, poolclass=NullPool)
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    admin.dispose()


# =========================================================================== report


@dataclass
class Results:
    loads: dict[tuple[str, str], list[Load]] = field(default_factory=dict)

    def add(self, endpoint: str, app: str, load: Load) -> None:
        self.loads.setdefault((endpoint, app), []).append(load)

    def ratios(self, endpoint: str, app: str, per_cpu: bool = False) -> list[float]:
        mine, base = self.loads[(endpoint, app)], self.loads[(endpoint, BASELINE)]
        if per_cpu:
            return [m.per_cpu / b.per_cpu for m, b in zip(mine, base, strict=True) if b.per_cpu]
        return [m.rps / b.rps for m, b in zip(mine, base, strict=True) if b.rps]


def table(results: Results) -> str:
    lines = [
        "| endpoint | app | req/s | vs SQLAlchemy | range | req per server CPU-s | "
        "vs SQLAlchemy | errors | generator CPU | server CPU |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for endpoint in ENDPOINTS:
        for app in APPS:
            loads = results.loads.get((endpoint, app))
            if not loads:
                continue
            ratios = results.ratios(endpoint, app)
            cpu_ratios = results.ratios(endpoint, app, per_cpu=True)
            generator = statistics.median(load.generator_cpu / load.seconds for load in loads)
            server = statistics.median(load.server_cpu / load.seconds for load in loads)
            lines.append(
                f"| {endpoint} | {app} | {statistics.median(x.rps for x in loads):,.0f} | "
                f"{statistics.median(ratios):.3f}x | {min(ratios):.2f}-{max(ratios):.2f} | "
                f"{statistics.median(x.per_cpu for x in loads):,.0f} | "
                f"{statistics.median(cpu_ratios):.3f}x | {sum(x.errors for x in loads)} | "
                f"{generator:.0%} | {server:.0%} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http_overhead", description=__doc__)
    default_url = os.environ.get("REPOM_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--url", default=default_url)
    parser.add_argument("--rounds", type=int, default=5, help="0: no load test")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds per app and endpoint")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--schema", default=SCHEMA, help="PostgreSQL schema (dropped at the end)")
    parser.add_argument(
        "--generator",
        choices=("auto", "wrk", "processes"),
        default="auto",
        help="wrk when installed (auto), else client processes",
    )
    parser.add_argument("--processes", type=int, default=2, help="client processes (fallback)")
    parser.add_argument(
        "--instructions",
        type=int,
        default=300,
        help="requests per app and endpoint counted under callgrind (0: none; needs valgrind)",
    )
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results")
    parser.add_argument("--output", type=Path, default=RESULTS / "http_overhead.md")
    args = parser.parse_args(argv if argv is not None else [])  # `python -m bench` passes none

    generator = args.generator
    if generator == "auto":
        generator = "wrk" if shutil.which("wrk") else "processes"
    if generator == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed (./run bench installs it; or --generator processes)")
    counting = args.instructions > 0 and shutil.which("valgrind") is not None

    def load(port: int, kind: str, seconds: float) -> Load:
        if generator == "wrk":
            return run_wrk(port, kind, args.rows, args.connections, seconds)
        return run_processes(port, kind, args.rows, args.connections, seconds, args.processes)

    from repom.urls import convert_to_sync_uri, mask_url

    url = convert_to_sync_uri(args.url)
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    schema = prepare(url, args.rows, args.schema)
    servers: dict[str, Server] = {}
    results = Results()
    instructions: dict[tuple[str, str], float] = {}
    try:
        if args.rounds > 0:
            for app in APPS:
                servers[app] = Server(app, url, schema)
            for server in servers.values():
                server.wait_ready("/items/1")
                for kind in ENDPOINTS.values():  # warm up: pools, statement caches
                    load(server.port, kind, args.warmup)
        for round_ in range(args.rounds):
            order = APPS[round_ % 3 :] + APPS[: round_ % 3]  # rotate who goes first
            for endpoint, kind in ENDPOINTS.items():
                for app in order:
                    server = servers[app]
                    cpu_before = _cpu_seconds(server.process.pid)
                    measured = load(server.port, kind, args.duration)
                    measured.server_cpu = _cpu_seconds(server.process.pid) - cpu_before
                    results.add(endpoint, app, measured)
                    print(
                        f"round {round_ + 1} {endpoint:24} {app:17} {measured.rps:7,.0f} req/s "
                        f"{measured.per_cpu:7,.0f} req/CPU-s  errors {measured.errors}  "
                        f"generator CPU {measured.generator_cpu / measured.seconds:.0%}  "
                        f"server CPU {measured.server_cpu / measured.seconds:.0%}",
                        flush=True,
                    )
        for server in servers.values():
            server.stop()
        servers.clear()
        if counting:
            instructions = count_instructions(url, schema, args.rows, args.instructions)
    finally:
        for server in servers.values():
            server.stop()
        cleanup(url, schema)

    how = (
        f"wrk, 1 thread, {args.connections} keep-alive connections"
        if generator == "wrk"
        else f"{args.processes} client processes, {args.connections} keep-alive connections"
    )
    driver = mask_url(url).split("://")[0].replace("psycopg", "asyncpg")
    parts = [
        "Per-request overhead over HTTP: FastAPI on uvicorn (one worker process per app), "
        f"{driver}, the same table ({args.rows} rows), SQL and pool size (10 + 20) for all "
        "three.  Target: repom >= 0.97x of plain SQLAlchemy on both endpoints.",
    ]
    if args.rounds > 0:
        parts += [
            "",
            f"Load from {how}; {args.rounds} interleaved round(s) of {args.duration:g} s per app "
            "and endpoint.  Ratios are medians over rounds of the app's figure / plain "
            "SQLAlchemy's in the same round.  `req per server CPU-s` divides the requests by "
            "the CPU time the server process used: what a request costs the server, robust when "
            "other work shares the machine (on a quiet machine the server saturates its core "
            "and both ratios agree).  `generator CPU` is the load generator's CPU use (100% = "
            "one core), `server CPU` the uvicorn process's: the generator is not the bottleneck.",
            "",
            table(results),
        ]
    if instructions:
        parts += [
            "",
            f"Instructions per request in the server process (uvicorn included), counted by "
            f"valgrind's callgrind over {args.instructions} sequential requests per app and "
            "endpoint after a warm-up: undisturbed by other work on the machine (about 1% from "
            "run to run, with the garbage collector's timing).  `SQLAlchemy's ÷ "
            "app's` is the throughput a CPU-bound server would reach relative to plain "
            "SQLAlchemy.",
            "",
            instruction_table(instructions),
        ]
    elif args.instructions > 0:
        parts += ["", "(Instruction counts skipped: valgrind is not installed.)"]
    parts += [
        "",
        f"Command: `python -m bench.http_overhead --rounds {args.rounds} --duration "
        f"{args.duration:g} --connections {args.connections} --generator {generator} "
        f"--instructions {args.instructions if counting else 0}`",
        "",
        stamp(
            {
                "driver": "asyncpg",
                "app pool": "10+20",
                "load generator": how,
                "cpus": os.cpu_count(),
            }
        ),
    ]
    report = "\n".join(parts)
    print()
    print(report)
    if not args.no_write:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report + "\n", encoding="utf-8")
    errors = sum(x.errors for loads in results.loads.values() for x in loads)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
