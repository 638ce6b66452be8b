"""What a test's database fixture costs inside a real pytest run: repom's plugin fixtures against
a bare ``IsolatedDatabase`` fixture, the hand-written SQLAlchemy recipe and deleting every row
after each test (SQLite and PostgreSQL, sync and async).

The benchmark writes small pytest projects into a temporary directory, one per strategy and
flavour, each with ``2 * N`` generated tests over four models (author, book, tag, review), and
runs pytest on them as subprocesses, as a user does.  The tests come in two bodies:

* *empty* -- the test only requests the fixture: what the isolation alone costs;
* *with work* -- the test inserts an author (its name is unique) and three books, commits, and
  asserts that it sees exactly three books; the assertion (and the unique name) only holds if
  the test started from empty tables, so every strategy is checked for isolation while timed.

Strategies (the fixture is called ``session`` unless said otherwise):

* ``no database fixture`` -- the same test functions without a database: pytest's own cost per
  test, subtracted from every other row;
* ``repom plugin`` -- the plugin's ready ``db_test`` / ``async_db_test`` fixtures, with nothing
  but ``repom_metadata = models:Base`` in the ini file (repom's default configuration);
* ``repom IsolatedDatabase fixture`` -- a hand-written fixture around the bare
  ``IsolatedDatabase.isolated_session()`` / ``AsyncIsolatedDatabase``;
* ``SQLAlchemy recipe fixture`` -- SQLAlchemy's documented "join a session into an external
  transaction" recipe (connection, ``begin()``,
  ``Session(join_transaction_mode="create_savepoint")``, rollback), with the documented
  pysqlite/aiosqlite ``BEGIN`` workaround on SQLite;
* ``delete all rows`` -- a plain ``Session(engine)``; the test really commits, and the fixture
  deletes the rows of every table afterwards (``DELETE FROM``, children first) and commits.

The hand-written fixtures use raw SQLAlchemy engines with the same SQLite settings as repom's
(WAL, ``synchronous=NORMAL``, foreign keys on), so that the strategies differ, not the pragmas.
advanced-alchemy (1.12) ships no pytest plugin and no per-test isolation helper
(``advanced_alchemy.utils.fixtures`` loads seed data files); its users write the SQLAlchemy
recipe, so that row stands for it.

How the figures are made: every project runs at two sizes, ``N`` and ``2N`` tests; a plugin
loaded into the pytest process (``-p _bench_timer``) records the duration of the test loop and
pytest's own per-phase durations (setup, call, teardown).  The *slope* ``(t(2N) - t(N)) / N`` is
the cost of one more test, so start-up, collection and the session-scoped schema set-up drop out;
the slope of the ``no database fixture`` project (pytest's own per-test cost) is subtracted.
*Fixture* columns use the setup + teardown phases only (the fixture's code, not the test body);
*whole test* uses the test loop.  Runs are interleaved (every round runs every project, in a
shuffled order, at its two sizes back to back) and medians over rounds are reported.

Run: ``python -m bench.plugin_suite [--tests N] [--rounds R] [--backends sqlite,postgresql]
[--flavours sync,async] [--url URL]`` (or ``python -m bench plugin_suite``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._meta import stamp
from repom.urls import convert_to_async_uri, convert_to_sync_uri

RESULTS = Path(__file__).resolve().parent / "results"
PER_FILE = 50
TIMER_OUT = "REPOM_BENCH_PLUGIN_SUITE_OUT"

NONE = "no database fixture"
PLUGIN = "repom plugin"
BARE = "repom IsolatedDatabase fixture"
RECIPE = "SQLAlchemy recipe fixture"
DELETE = "delete all rows"
STRATEGIES = (NONE, PLUGIN, BARE, RECIPE, DELETE)
KEYS = {NONE: "none", PLUGIN: "plugin", BARE: "bare", RECIPE: "recipe", DELETE: "delete"}

# --------------------------------------------------------------------------- the project files

MODELS = """
from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "ps_author"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    books: Mapped[list["Book"]] = relationship(back_populates="author")


class Book(Base):
    __tablename__ = "ps_book"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("ps_author.id"))
    title: Mapped[str] = mapped_column(String(100))
    author: Mapped[Author] = relationship(back_populates="books")


class Tag(Base):
    __tablename__ = "ps_tag"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30), unique=True)


class Review(Base):
    __tablename__ = "ps_review"
    id: Mapped[int] = mapped_column(primary_key=True)
    book_id: Mapped[int] = mapped_column(ForeignKey("ps_book.id"))
    stars: Mapped[int]
"""

TIMER = """
import json
import os
import time

import pytest

WALL = {"setup": 0.0, "call": 0.0, "teardown": 0.0}
CPU = {"setup": 0.0, "call": 0.0, "teardown": 0.0}
COUNTS = {"passed": 0, "failed": 0}


def pytest_runtest_logreport(report):
    WALL[report.when] += report.duration  # pytest's own measure of each phase
    if report.failed:
        COUNTS["failed"] += 1
    elif report.when == "call" and report.passed:
        COUNTS["passed"] += 1


def _cpu(phase):
    @pytest.hookimpl(wrapper=True)
    def hook(item, **kwargs):
        start = time.process_time()
        try:
            return (yield)
        finally:
            CPU[phase] += time.process_time() - start

    return hook


pytest_runtest_setup = _cpu("setup")
pytest_runtest_call = _cpu("call")
pytest_runtest_teardown = _cpu("teardown")


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session):
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        return (yield)
    finally:
        figures = {
            "wall": {"loop": time.perf_counter() - wall, **WALL},
            "cpu": {"loop": time.process_time() - cpu, **CPU},
            **COUNTS,
        }
        with open(os.environ["TIMER_OUT"], "w") as out:
            json.dump(figures, out)
""".replace("TIMER_OUT", TIMER_OUT)

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = session
asyncio_default_test_loop_scope = session
addopts = -p no:cacheprovider
repom_metadata = models:Base
"""

RAW_ENGINE = """
from sqlalchemy import create_engine, event
from sqlalchemy.ext.asyncio import create_async_engine

URL = {url!r}
SCHEMA = {schema!r}


def raw_engine(is_async):
    args = {{}}
    if SCHEMA:
        if is_async:
            args = {{"server_settings": {{"search_path": SCHEMA}}}}
        else:
            args = {{"options": f"-c search_path={{SCHEMA}}"}}
    engine = (create_async_engine if is_async else create_engine)(URL, connect_args=args)
    sync_engine = engine.sync_engine if is_async else engine
    if sync_engine.dialect.name == "sqlite":
        # SQLAlchemy's documented SAVEPOINT workaround for pysqlite/aiosqlite, and the same
        # pragmas as repom's SQLite engines (so that commits cost the same)
        @event.listens_for(sync_engine, "connect")
        def connect(dbapi_connection, record):
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(sync_engine, "begin")
        def begin(conn):
            conn.exec_driver_sql("BEGIN")

    return engine


def create_schema(conn):
    from models import Base

    if SCHEMA:
        conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {{SCHEMA}} CASCADE")
        conn.exec_driver_sql(f"CREATE SCHEMA {{SCHEMA}}")
    Base.metadata.drop_all(conn)
    Base.metadata.create_all(conn)


def drop_schema(conn):
    from models import Base

    if SCHEMA:
        conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {{SCHEMA}} CASCADE")
    else:
        Base.metadata.drop_all(conn)
"""

RAW_ENGINE_FIXTURES = {
    "sync": """
import pytest


@pytest.fixture(scope="session")
def engine():
    engine = raw_engine(False)
    with engine.begin() as conn:
        create_schema(conn)
    yield engine
    with engine.begin() as conn:
        drop_schema(conn)
    engine.dispose()
""",
    "async": """
import pytest_asyncio


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def engine():
    engine = raw_engine(True)
    async with engine.begin() as conn:
        await conn.run_sync(create_schema)
    yield engine
    async with engine.begin() as conn:
        await conn.run_sync(drop_schema)
    await engine.dispose()
""",
}

SESSION_FIXTURES = {
    (RECIPE, "sync"): """
from sqlalchemy.orm import Session


@pytest.fixture
def session(engine):
    conn = engine.connect()
    outer = conn.begin()
    session = Session(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)
    yield session
    session.close()
    outer.rollback()
    conn.close()
""",
    (RECIPE, "async"): """
from sqlalchemy.ext.asyncio import AsyncSession


@pytest_asyncio.fixture(loop_scope="session")
async def session(engine):
    conn = await engine.connect()
    outer = await conn.begin()
    session = AsyncSession(
        bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False
    )
    yield session
    await session.close()
    await outer.rollback()
    await conn.close()
""",
    (DELETE, "sync"): """
from sqlalchemy.orm import Session

from models import Base

TABLES = list(reversed(Base.metadata.sorted_tables))


@pytest.fixture
def session(engine):
    with Session(engine, expire_on_commit=False) as session:
        yield session
    with engine.begin() as conn:
        for table in TABLES:
            conn.execute(table.delete())
""",
    (DELETE, "async"): """
from sqlalchemy.ext.asyncio import AsyncSession

from models import Base

TABLES = list(reversed(Base.metadata.sorted_tables))


@pytest_asyncio.fixture(loop_scope="session")
async def session(engine):
    async with AsyncSession(engine, expire_on_commit=False) as session:
        yield session
    async with engine.begin() as conn:
        for table in TABLES:
            await conn.execute(table.delete())
""",
}

BARE_FIXTURES = {
    "sync": """
import pytest

from models import Base
from repom.testing import IsolatedDatabase


@pytest.fixture(scope="session")
def isolated():
    database = IsolatedDatabase({url!r}, Base.metadata, schema={schema!r})
    database.start()
    yield database
    database.stop()


@pytest.fixture
def session(isolated):
    with isolated.isolated_session() as session:
        yield session
""",
    "async": """
import pytest_asyncio

from models import Base
from repom.testing import AsyncIsolatedDatabase


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def isolated():
    database = AsyncIsolatedDatabase({url!r}, Base.metadata, schema={schema!r})
    await database.start()
    yield database
    await database.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def session(isolated):
    async with isolated.isolated_session() as session:
        yield session
""",
}

TEST_HEADER = """
from sqlalchemy import func, select

from models import Author, Book

COUNT_BOOKS = select(func.count()).select_from(Book)
"""

BODIES = {
    ("empty", "sync"): "def test_{n}({fixture}):\n    pass\n",
    ("empty", "async"): "async def test_{n}({fixture}):\n    pass\n",
    ("work", "sync"): """
def test_{n}({fixture}):
    author = Author(name="author")
    {fixture}.add(author)
    {fixture}.add_all([Book(author=author, title=f"book {{i}}") for i in range(3)])
    {fixture}.commit()
    assert {fixture}.scalar(COUNT_BOOKS) == 3
""",
    ("work", "async"): """
async def test_{n}({fixture}):
    author = Author(name="author")
    {fixture}.add(author)
    {fixture}.add_all([Book(author=author, title=f"book {{i}}") for i in range(3)])
    await {fixture}.commit()
    assert await {fixture}.scalar(COUNT_BOOKS) == 3
""",
}


def _source(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def conftest(strategy: str, flavour: str, url: str, schema: str | None) -> str:
    if strategy in (NONE, PLUGIN):
        return ""
    if strategy == BARE:
        return _source(BARE_FIXTURES[flavour].format(url=url, schema=schema))
    parts = [
        RAW_ENGINE.format(url=flavour_url(url, flavour), schema=schema),
        RAW_ENGINE_FIXTURES[flavour],
        SESSION_FIXTURES[strategy, flavour],
    ]
    return "\n".join(_source(part) for part in parts)


def flavour_url(url: str, flavour: str) -> str:
    """*url* with the driver of *flavour* (psycopg 3 / asyncpg, pysqlite / aiosqlite)."""
    return convert_to_async_uri(url) if flavour == "async" else convert_to_sync_uri(url)


def test_module(strategy: str, flavour: str, body: str, first: int, count: int) -> str:
    if strategy == NONE:
        fixture = ""
        body = "empty"
    elif strategy == PLUGIN:
        fixture = "async_db_test" if flavour == "async" else "db_test"
    else:
        fixture = "session"
    template = BODIES[body, flavour]
    tests = [template.format(n=n, fixture=fixture) for n in range(first, first + count)]
    return _source(TEST_HEADER) + "\n\n" + "\n\n".join(_source(t) for t in tests)


# --------------------------------------------------------------------------- projects and runs


@dataclass(eq=False)
class Project:
    backend: str
    flavour: str
    strategy: str
    root: Path
    args: list[str]
    bodies: tuple[str, ...]

    def files(self, body: str, tests: int) -> list[str]:
        folder = self.root / body
        return [str(folder / f"test_{body}_{i:03d}.py") for i in range(tests // PER_FILE)]


def make_project(
    root: Path, backend: str, flavour: str, strategy: str, url: str, tests: int
) -> Project:
    key = KEYS[strategy]
    folder = root / f"{backend}_{flavour}_{key}"
    folder.mkdir(parents=True)
    schema = None
    args: list[str] = []
    if backend == "sqlite":
        db_url = f"sqlite:///{folder / 'bench.sqlite3'}"
    else:
        db_url = url
        schema = f"bench_ps_{flavour}_{key}"
    if strategy == PLUGIN and schema is not None:
        args = ["--repom-db-url", db_url, "--repom-schema", schema]
    # the plugin's SQLite database is its default: a file in pytest's temporary directory
    (folder / "pytest.ini").write_text(_source(INI))
    (folder / "models.py").write_text(_source(MODELS))
    (folder / "_bench_timer.py").write_text(_source(TIMER))
    (folder / "conftest.py").write_text(conftest(strategy, flavour, db_url, schema))
    bodies = ("empty",) if strategy == NONE else ("empty", "work")
    for body in bodies:
        (folder / body).mkdir()
        for index in range(2 * tests // PER_FILE):
            source = test_module(strategy, flavour, body, index * PER_FILE, PER_FILE)
            (folder / body / f"test_{body}_{index:03d}.py").write_text(source)
    return Project(backend, flavour, strategy, folder, args, bodies)


def _environment(folder: Path, out: Path) -> dict[str, str]:
    """The pytest process's environment: no database settings of the caller's, byte-code cached
    beside the projects, the timer's output file."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REPOM_TEST_DATABASE_URL", "DATABASE_URL", "REPOM_DATABASE_URL")
        and not k.startswith("PYTEST_")
    }
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(folder.parent / "pycache")
    env[TIMER_OUT] = str(out)
    env["PYTHONPATH"] = str(folder)
    return env


def run_pytest(project: Project, body: str, tests: int, clock: str = "wall") -> dict[str, float]:
    """One pytest process on the first *tests* tests of *body*; returns the timer's figures for
    *clock* (``wall``, or ``cpu``: this process's CPU time)."""
    out = project.root / "timer.json"
    out.unlink(missing_ok=True)
    env = _environment(project.root, out)
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "_bench_timer",
        "--basetemp", str(project.root / "tmp"), *project.args, *project.files(body, tests),
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=project.root, env=env, capture_output=True, text=True, check=False
    )
    figures: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    if done.returncode != 0 or figures.get("passed") != tests or figures.get("failed"):
        tail = (done.stdout + done.stderr)[-3000:]
        raise RuntimeError(
            f"pytest failed for {project.root.name}/{body} ({tests} tests, exit "
            f"{done.returncode}):\n{tail}"
        )
    return dict(figures[clock])


@dataclass
class Slopes:
    """Per-round slopes (seconds per test) of one project and body."""

    fixture: list[float] = field(default_factory=list)  # setup + teardown phases
    whole: list[float] = field(default_factory=list)  # the test loop

    def add(self, small: dict[str, float], large: dict[str, float], tests: int) -> None:
        def phases(figures: dict[str, float]) -> float:
            return figures["setup"] + figures["teardown"]

        self.fixture.append((phases(large) - phases(small)) / tests)
        self.whole.append((large["loop"] - small["loop"]) / tests)


def measure(
    projects: list[Project], tests: int, rounds: int, clock: str
) -> dict[tuple[Project, str], Slopes]:
    slopes = {(p, body): Slopes() for p in projects for body in p.bodies}
    for project, body in slopes:  # warm-up: byte-code caches, the OS file cache
        run_pytest(project, body, tests, clock)
    shuffle = random.Random(17)
    for round_no in range(rounds):
        # every project and body once per round, in a shuffled order; its two sizes back to back
        # (in a random order), so that the slope compares runs made under the same load
        keys = list(slopes)
        shuffle.shuffle(keys)
        for project, body in keys:
            sizes = [tests, 2 * tests]
            shuffle.shuffle(sizes)
            figures = {size: run_pytest(project, body, size, clock) for size in sizes}
            slopes[project, body].add(figures[tests], figures[2 * tests], tests)
        print(f"  round {round_no + 1}/{rounds} done", flush=True)
    return slopes


# --------------------------------------------------------------------------- interleaved run
# A steadier view on a busy machine: every strategy's tests in ONE pytest process, interleaved
# test by test in a shuffled order, each test's setup + teardown timed; per-test medians.  Load
# that drifts during the run hits every strategy alike, and a median ignores the spikes.

MIX_TIMER = """
import json
import os
import time

import pytest

TIMES = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        return (yield)
    finally:
        kind = item.name.rsplit("_", 1)[0].removeprefix("test_")
        entry = TIMES.setdefault(kind, {"wall": [], "cpu": []})
        entry["wall"].append(time.perf_counter() - wall)
        entry["cpu"].append(time.process_time() - cpu)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        return (yield)
    finally:
        kind = item.name.rsplit("_", 1)[0].removeprefix("test_")
        entry = TIMES[kind]
        entry["wall"][-1] += time.perf_counter() - wall
        entry["cpu"][-1] += time.process_time() - cpu


def pytest_sessionfinish(session, exitstatus):
    with open(os.environ["TIMER_OUT"], "w") as out:
        json.dump({"exit": int(exitstatus), "times": TIMES}, out)
""".replace("TIMER_OUT", TIMER_OUT)

MIX_FIXTURES = {NONE: "", PLUGIN: "", BARE: "bare", RECIPE: "recipe", DELETE: "delete"}


def mixed_conftest(
    flavour: str, bare_url: str, raw_url: str, schemas: dict[str, str | None]
) -> str:
    """The bare, recipe and delete-all fixtures of one flavour side by side (renamed ``bare``,
    ``recipe``, ``delete``); the plugin's come from the plugin."""
    parts = [
        RAW_ENGINE.format(url=flavour_url(raw_url, flavour), schema=schemas["raw"]),
        RAW_ENGINE_FIXTURES[flavour],
        SESSION_FIXTURES[RECIPE, flavour].replace("def session(", "def recipe("),
        SESSION_FIXTURES[DELETE, flavour].replace("def session(", "def delete("),
        BARE_FIXTURES[flavour]
        .format(url=bare_url, schema=schemas["bare"])
        .replace("def session(", "def bare("),
    ]
    return "\n".join(_source(part) for part in parts)


def mixed_tests(flavour: str, strategies: list[str], count: int, seed: int) -> str:
    shuffle = random.Random(seed)
    kinds = [(s, "empty") for s in strategies] + [(s, "work") for s in strategies if s != NONE]
    tests = []
    for n in range(count):
        shuffle.shuffle(kinds)
        for strategy, body in kinds:
            fixture = MIX_FIXTURES[strategy]
            if strategy == PLUGIN:
                fixture = "async_db_test" if flavour == "async" else "db_test"
            name = f"{KEYS[strategy]}_{body}_{n}"
            tests.append(_source(BODIES[body, flavour].format(n=name, fixture=fixture)))
    return _source(TEST_HEADER) + "\n\n" + "\n\n".join(tests)


def run_mixed(
    root: Path, backend: str, flavour: str, strategies: list[str], url: str, count: int
) -> dict[str, dict[str, float]]:
    """Per-test median (ms) of setup + teardown for each ``strategy body`` kind, wall and CPU,
    minus the median of the test without a database fixture."""
    folder = root / f"mixed_{backend}_{flavour}"
    folder.mkdir(parents=True)
    schemas: dict[str, str | None] = {"raw": None, "bare": None}
    args: list[str] = []
    if backend == "sqlite":
        db_url = f"sqlite:///{folder / 'bench.sqlite3'}"
        raw_url = f"sqlite:///{folder / 'raw.sqlite3'}"
    else:
        db_url = raw_url = url
        schemas = {k: f"bench_ps_mix_{flavour}_{k}" for k in schemas}
        args = ["--repom-db-url", url, "--repom-schema", f"bench_ps_mix_{flavour}_plugin"]
    (folder / "pytest.ini").write_text(_source(INI))
    (folder / "models.py").write_text(_source(MODELS))
    (folder / "_bench_timer.py").write_text(_source(MIX_TIMER))
    (folder / "conftest.py").write_text(mixed_conftest(flavour, db_url, raw_url, schemas))
    (folder / "test_mixed.py").write_text(mixed_tests(flavour, strategies, count, seed=17))
    out = folder / "timer.json"
    env = _environment(folder, out)
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "_bench_timer",
        "--basetemp", str(folder / "tmp"), *args, "test_mixed.py",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, check=False)
    result: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    if done.returncode != 0 or result.get("exit") != 0:
        tail = (done.stdout + done.stderr)[-3000:]
        raise RuntimeError(f"pytest failed for {folder.name} (exit {done.returncode}):\n{tail}")
    times: dict[str, dict[str, list[float]]] = result["times"]
    medians = {
        kind: {clock: statistics.median(values[clock][5:]) * 1000 for clock in ("wall", "cpu")}
        for kind, values in times.items()
    }
    base = medians.pop(f"{KEYS[NONE]}_empty")
    return {
        kind: {clock: value - base[clock] for clock, value in figures.items()}
        for kind, figures in medians.items()
    }


# --------------------------------------------------------------------------- report


@dataclass
class Row:
    backend: str
    flavour: str
    strategy: str
    fixture_empty: float  # ms per test, pytest's own cost subtracted
    fixture_work: float
    whole_work: float


def summarise(slopes: dict[tuple[Project, str], Slopes]) -> tuple[list[Row], dict[str, float]]:
    def ms(values: list[float]) -> float:
        return statistics.median(values) * 1000

    baselines: dict[tuple[str, str], tuple[float, float]] = {}
    for (project, _body), slope in slopes.items():
        if project.strategy == NONE:
            baselines[project.backend, project.flavour] = (ms(slope.fixture), ms(slope.whole))
    rows = []
    for (project, body), slope in slopes.items():
        if project.strategy == NONE or body != "empty":
            continue
        base_fixture, base_whole = baselines[project.backend, project.flavour]
        work = slopes[project, "work"]
        rows.append(
            Row(
                project.backend,
                project.flavour,
                project.strategy,
                ms(slope.fixture) - base_fixture,
                ms(work.fixture) - base_fixture,
                ms(work.whole) - base_whole,
            )
        )
    pytest_cost = {f"{b} {f}": whole for (b, f), (_fixture, whole) in baselines.items()}
    return rows, pytest_cost


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.1f}" if base > 0 else "n/a"


def _find(rows: list[Row], like: Row, strategy: str) -> Row | None:
    for row in rows:
        if (row.backend, row.flavour, row.strategy) == (like.backend, like.flavour, strategy):
            return row
    return None


def report(
    rows: list[Row], pytest_cost: dict[str, float], tests: int, rounds: int, clock: str = "wall"
) -> str:
    what = "wall time" if clock == "wall" else "CPU time of the pytest process"
    lines = [
        f"Per-test cost ({what}) of a database fixture in a real pytest run: generated projects "
        f"of {tests} and {2 * tests} tests (4 models), one pytest process per run, {rounds} "
        "interleaved rounds, medians. Cost per test = slope between the two sizes (start-up, "
        "collection and the schema set-up drop out) minus the slope of the same tests without a "
        "database fixture (pytest's own cost). *Fixture*: the setup and teardown phases; *whole "
        "test*: the test loop. *Empty*: the test only requests the fixture; *with work*: it "
        "inserts 4 rows, commits and reads them back. × plugin: the strategy's cost / the "
        "plugin's. advanced-alchemy has no pytest plugin or per-test isolation helper: its users "
        "write the SQLAlchemy recipe.",
        "",
        "| backend | flavour | strategy | fixture, empty (ms) | fixture, with work (ms) "
        "| whole test, with work (ms) | × plugin, fixture empty | × plugin, fixture with work "
        "| × plugin, whole test |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for row in rows:
        plugin = _find(rows, row, PLUGIN)
        label = row.strategy
        if row.strategy == PLUGIN:
            label += " (async_db_test)" if row.flavour == "async" else " (db_test)"
        ratios = (
            [
                _ratio(row.fixture_empty, plugin.fixture_empty),
                _ratio(row.fixture_work, plugin.fixture_work),
                _ratio(row.whole_work, plugin.whole_work),
            ]
            if plugin is not None
            else ["n/a"] * 3
        )
        lines.append(
            f"| {row.backend} | {row.flavour} | {label} | {row.fixture_empty:.3f} "
            f"| {row.fixture_work:.3f} | {row.whole_work:.3f} | {' | '.join(ratios)} |"
        )
        bare, delete = _find(rows, row, BARE), _find(rows, row, DELETE)
        if row.strategy == PLUGIN and bare is not None:
            notes.append(
                f"- {row.backend}, {row.flavour}: the plugin's fixture costs "
                f"{_ratio(row.fixture_empty, bare.fixture_empty)}× the bare IsolatedDatabase "
                f"fixture's (empty test; {_ratio(row.fixture_work, bare.fixture_work)}× with "
                "work; target <= 2)."
            )
        if row.strategy == PLUGIN and delete is not None:
            notes.append(
                f"- {row.backend}, {row.flavour}: deleting all rows costs "
                f"{_ratio(delete.fixture_empty, row.fixture_empty)}× the plugin's fixture (empty "
                f"test; {_ratio(delete.fixture_work, row.fixture_work)}× with work, "
                f"{_ratio(delete.whole_work, row.whole_work)}× for the whole test; target >= 5)."
            )
    own = ", ".join(f"{k} {v:.3f} ms" for k, v in sorted(pytest_cost.items()))
    notes.append(f"- pytest's own cost per test (subtracted above): {own}.")
    return "\n".join([*lines, "", *notes]) + "\n"


def _mixed_cost(
    kinds: dict[str, dict[str, float]], strategy: str, body: str, clock: str
) -> float | None:
    figures = kinds.get(f"{KEYS[strategy]}_{body}")
    return None if figures is None else figures[clock]


def report_mixed(
    mixed: dict[tuple[str, str], dict[str, dict[str, float]]],
    strategies: list[str],
    count: int,
    clock: str,
) -> str:
    what = "wall time" if clock == "wall" else "CPU time"
    lines = [
        f"Interleaved in one pytest run per backend and flavour ({what}): {count} tests of each "
        "strategy and body, shuffled test by test; the median of each test's setup + teardown, "
        "minus the median of a test without a database fixture. Steadier than the slopes above "
        "when the machine is busy.",
        "",
        "| backend | flavour | strategy | fixture, empty (ms) | fixture, with work (ms) "
        "| × plugin, empty | × plugin, with work |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    notes = []
    for (backend, flavour), kinds in mixed.items():
        costs = {
            strategy: (
                _mixed_cost(kinds, strategy, "empty", clock),
                _mixed_cost(kinds, strategy, "work", clock),
            )
            for strategy in strategies
            if strategy != NONE
        }
        plugin = costs.get(PLUGIN)
        for strategy, (empty, work) in costs.items():
            if empty is None or work is None:
                continue
            ratios = ["n/a", "n/a"]
            if plugin is not None and plugin[0] is not None and plugin[1] is not None:
                ratios = [_ratio(empty, plugin[0]), _ratio(work, plugin[1])]
            label = strategy
            if strategy == PLUGIN:
                label += " (async_db_test)" if flavour == "async" else " (db_test)"
            lines.append(
                f"| {backend} | {flavour} | {label} | {empty:.3f} | {work:.3f} "
                f"| {' | '.join(ratios)} |"
            )
        if plugin is None or plugin[0] is None or plugin[1] is None:
            continue
        bare, delete = costs.get(BARE), costs.get(DELETE)
        if bare is not None and bare[0] is not None and bare[1] is not None:
            notes.append(
                f"- {backend}, {flavour}, interleaved: the plugin's fixture costs "
                f"{_ratio(plugin[0], bare[0])}× the bare IsolatedDatabase fixture's (empty; "
                f"{_ratio(plugin[1], bare[1])}× with work; target <= 2)."
            )
        if delete is not None and delete[0] is not None and delete[1] is not None:
            notes.append(
                f"- {backend}, {flavour}, interleaved: deleting all rows costs "
                f"{_ratio(delete[0], plugin[0])}× the plugin's fixture (empty; "
                f"{_ratio(delete[1], plugin[1])}× with work; target >= 5)."
            )
    return "\n".join([*lines, "", *notes]) + "\n"


def _choices(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in allowed]
    if unknown or not chosen:
        raise SystemExit(f"unknown {what} {', '.join(unknown) or value!r} ({', '.join(allowed)})")
    return chosen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.plugin_suite")
    parser.add_argument(
        "--tests", type=int, default=250, help=f"N: the smaller size (a multiple of {PER_FILE})"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--flavours", default="sync,async")
    parser.add_argument(
        "--strategies",
        default=",".join(KEYS[s] for s in STRATEGIES if s != NONE),
        help="which fixtures to measure besides the baseline (plugin, bare, recipe, delete)",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get(
            "REPOM_BENCH_PG_URL",
            os.environ.get("REPOM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        ),
        help="PostgreSQL URL (each strategy gets a schema of its own)",
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time (default), or the pytest process's CPU time: steadier on a busy "
        "machine, but blind to the database server's work (PostgreSQL)",
    )
    parser.add_argument(
        "--interleaved",
        type=int,
        default=300,
        help="tests of each strategy and body in the interleaved run (0: no interleaved run)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "plugin_suite.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv if argv is not None else [])
    if args.tests < PER_FILE or args.tests % PER_FILE:
        parser.error(f"--tests must be a positive multiple of {PER_FILE}")
    backends = _choices(args.backends, ("sqlite", "postgresql"), "backend")
    flavours = _choices(args.flavours, ("sync", "async"), "flavour")
    by_key = {key: strategy for strategy, key in KEYS.items()}
    keys = _choices(args.strategies, tuple(k for k in by_key if k != "none"), "strategy")
    strategies = [NONE, *(by_key[k] for k in keys)]
    with tempfile.TemporaryDirectory(prefix="repom-bench-suite-") as tmp:
        projects = [
            make_project(Path(tmp), backend, flavour, strategy, args.url, args.tests)
            for backend in backends
            for flavour in flavours
            for strategy in strategies
        ]
        slopes = measure(projects, args.tests, args.rounds, args.clock)
        mixed = {
            (backend, flavour): run_mixed(
                Path(tmp), backend, flavour, strategies, args.url, args.interleaved
            )
            for backend in backends
            for flavour in flavours
            if args.interleaved > 0
        }
    rows, pytest_cost = summarise(slopes)
    command = (
        f"python -m bench.plugin_suite --tests {args.tests} --rounds {args.rounds} "
        f"--backends {','.join(backends)} --flavours {','.join(flavours)} "
        f"--strategies {','.join(keys)} --clock {args.clock} --interleaved {args.interleaved}"
    )
    table = (
        report(rows, pytest_cost, args.tests, args.rounds, args.clock)
        + ("\n" + report_mixed(mixed, strategies, args.interleaved, args.clock) if mixed else "")
        + f"\nCommand: `{command}`\n\n"
        + stamp(
            {
                "backends": ", ".join(backends),
                "tests": f"{args.tests}/{2 * args.tests}",
                "clock": args.clock,
            }
        )
        + "\n"
    )
    print()
    print(table)
    if not args.no_write:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(table)


if __name__ == "__main__":
    main(sys.argv[1:])
