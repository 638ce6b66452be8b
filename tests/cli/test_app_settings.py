"""One URL, one place: an application's settings class (a ``RepomConfig`` subclass named by
``CONFIG_HOOK`` in ``.env``) is what the ``repom`` command, the application and repom's pytest
plugin all read.  Run on SQLite and on PostgreSQL, the latter with a Heroku-style ``postgres://``
URL."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from repom.urls import convert_to_sync_uri, mask_url, normalize_scheme
from tests.cli._support import cli_env, db_state, run, write_migration

SETTINGS = """
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from repom.config import RepomConfig


class Settings(RepomConfig):
    \"\"\"The shop's settings: its own fields, and repom's.\"\"\"

    model_config = SettingsConfigDict(env_prefix="SHOP_")

    greeting: str = "hello"
    application_name: str = Field(default="shop-app", max_length=63)
    sqlite_busy_timeout: float = Field(default=1.5, ge=0)
    pool_size: int = Field(default=3, ge=0)
"""

MODELS = """
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "shop_items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
"""

APP = """
from fastapi import FastAPI
from sqlalchemy import text

from repom.config import get_config
from repom.fastapi import DbSession, lifespan
from repom.urls import mask_url
from shop.models import Item
from shop.settings import Settings

app = FastAPI(lifespan=lifespan)


@app.post("/items", status_code=201)
def create(name: str, session: DbSession) -> dict[str, str]:
    session.add(Item(name=name))
    return {"name": name}


@app.get("/settings")
def settings(session: DbSession) -> dict[str, object]:
    settings = get_config(Settings)
    return {
        "greeting": settings.greeting,
        "url": mask_url(settings.url),
        "pool_size": settings.pool_size,
        "session": session_setting(session),
    }


def session_setting(session) -> str:
    if session.get_bind().dialect.name == "postgresql":
        return str(session.execute(text("SHOW application_name")).scalar())
    return str(session.execute(text("PRAGMA busy_timeout")).scalar())
"""

RUN_APP = """
import json

from fastapi.testclient import TestClient

from shop.app import app

with TestClient(app) as client:
    assert client.post("/items", params={"name": "from the app"}).status_code == 201
    print(json.dumps(client.get("/settings").json()))
"""

PLUGIN_TESTS = """
from sqlalchemy import select

from repom.config import get_config
from shop.app import session_setting
from shop.models import Item
from shop.settings import Settings


def test_the_tests_read_the_app_settings(db_test, db_engine):
    settings = get_config(Settings)
    assert settings.greeting == "hello from .env"
    assert db_engine.pool.size() == 3
    expected = "shop-app" if db_engine.dialect.name == "postgresql" else "1500"
    assert session_setting(db_test) == expected
    db_test.add(Item(name="from a test"))
    db_test.flush()
    assert db_test.scalars(select(Item.name)).all() == ["from a test"]
"""

MIGRATION = """
op.create_table(
    "shop_items",
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("name", sa.String(50), nullable=False, unique=True),
)
"""


def _write_shop(root: Path, url: str) -> Path:
    package = root / "shop"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for name, source in [("settings", SETTINGS), ("models", MODELS), ("app", APP)]:
        (package / f"{name}.py").write_text(textwrap.dedent(source))
    (root / "run_app.py").write_text(RUN_APP)
    (root / "test_shop.py").write_text(PLUGIN_TESTS)
    (root / ".env").write_text(
        f"CONFIG_HOOK=shop.settings:Settings\nDATABASE_URL={url}\nSHOP_GREETING=hello from .env\n"
    )
    return root


def _url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "postgresql":
        scratch: str = request.getfixturevalue("pg_scratch")
        return "postgres://" + scratch.split("://", 1)[1]  # as Heroku writes it
    return f"sqlite:///{tmp_path / 'shop' / 'shop.sqlite3'}"


def _names(url: str) -> list[str]:
    engine = create_engine(convert_to_sync_uri(url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return list(conn.scalars(text("SELECT name FROM shop_items ORDER BY name")))
    finally:
        engine.dispose()


def _python(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{args}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    return done


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_cli_app_and_tests_read_one_settings_object(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = _url(backend, tmp_path, request)
    project = _write_shop(tmp_path / "shop", url)
    env = cli_env()  # no DATABASE_URL in the environment: it is in .env, read through Settings
    env.pop("REPOM_TEST_DATABASE_URL", None)

    # the command line
    if backend == "postgresql":
        assert "Created" in run(["db", "create"], project, env).stdout
    run(["db", "init", "--models", "shop.models"], project, env)
    write_migration(project, "a1", None, MIGRATION, 'op.drop_table("shop_items")')
    info = json.loads(run(["info", "--json"], project, env).stdout)
    assert (info["url"], info["pool"]["pool_size"]) == (mask_url(convert_to_sync_uri(url)), 3)
    assert info["current"] == [] and info["heads"] == ["a1"]
    run(["db", "upgrade"], project, env)
    assert "shop_items" in db_state(convert_to_sync_uri(url)).tables
    assert json.loads(run(["info", "--json"], project, env).stdout)["current"] == ["a1"]

    # the application
    served = json.loads(_python(["run_app.py"], project, env).stdout.strip().splitlines()[-1])
    assert served["greeting"] == "hello from .env" and served["pool_size"] == 3
    assert served["url"] == mask_url(normalize_scheme(url))  # postgres:// read as postgresql://
    assert served["session"] == ("shop-app" if backend == "postgresql" else "1500")
    assert _names(url) == ["from the app"]

    # the tests (repom's pytest plugin): a test database of their own, the same settings
    plugin_env = dict(env)
    if backend == "postgresql":
        plugin_env["REPOM_TEST_DATABASE_URL"] = convert_to_sync_uri(url)
    pytest_args = ["-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider"]
    pytest_args += ["--repom-metadata", "shop.models:Base", "test_shop.py"]
    if backend == "postgresql":
        pytest_args += ["--repom-schema", "shop_tests"]
    done = _python(pytest_args, project, plugin_env)
    assert "1 passed" in done.stdout
    assert _names(url) == ["from the app"]  # the test's row was rolled back, elsewhere


def test_the_settings_class_must_be_importable_from_the_working_directory(tmp_path: Path) -> None:
    """The command puts the working directory on ``sys.path`` (as ``python -m`` does), so the
    CONFIG_HOOK module is found the way the application finds it."""
    project = _write_shop(tmp_path / "shop", f"sqlite:///{tmp_path / 'x.sqlite3'}")
    env = cli_env()
    env.pop("PYTHONPATH", None)
    info = json.loads(run(["info", "--json"], project, env).stdout)
    assert info["pool"]["pool_size"] == 3
    (project / ".env").write_text("CONFIG_HOOK=shop.nothing_here:Settings\n")
    result = run(["info"], project, env, expect=1)
    assert "CONFIG_HOOK" in result.stderr and "shop.nothing_here" in result.stderr
