"""Configuration: defaults, environment, .env, CONFIG_HOOK (seed 004), validation, masking."""

from __future__ import annotations

import importlib
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import pool, text

from repom.config import RepomConfig, get_config, reset_config, set_config
from repom.database import AsyncDatabase, Database, get_async_database, get_database
from repom.engine import build_engine, engine_arguments
from repom.exceptions import ConfigurationError
from tests.support import maybe_await, require_postgres

SECRET = "s3cr3t-pa55"


def test_defaults() -> None:
    config = RepomConfig()
    assert config.url == "sqlite:///repom.sqlite3"
    assert config.engine_kwargs == {
        "pool_size": 10,
        "max_overflow": 20,
        "pool_timeout": 30.0,
        "pool_recycle": 3600,
        "pool_pre_ping": True,
        "echo": False,
    }
    assert RepomConfig(environment="test").url == "sqlite://"


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db/app")
    monkeypatch.setenv("REPOM_POOL_SIZE", "3")
    monkeypatch.setenv("REPOM_ENVIRONMENT", "production")
    config = get_config()
    assert (config.url, config.pool_size, config.environment) == (
        "postgresql://app@db/app",
        3,
        "production",
    )
    assert config.async_url == "postgresql+asyncpg://app@db/app"
    monkeypatch.setenv("REPOM_DATABASE_URL", "sqlite:///other.db")
    reset_config()
    assert get_config().url == "sqlite:///other.db"  # REPOM_ prefix wins


def test_dotenv_read_on_first_use_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("DATABASE_URL=sqlite:///from-dotenv.db\nREPOM_ECHO=true\n")
    config = get_config()
    assert config.url == "sqlite:///from-dotenv.db" and config.echo is True


@pytest.mark.parametrize(
    ("env", "value", "named"),
    [
        ("REPOM_POOL_SIZE", "-1", "REPOM_POOL_SIZE"),
        ("REPOM_ENVIRONMENT", "staging", "REPOM_ENVIRONMENT"),
        ("DATABASE_URL", "not a url", "DATABASE_URL"),
        ("DATABASE_URL", "nosuchdb://u@h/x", "DATABASE_URL"),
        ("REPOM_POOL_TIMEOUT", "0", "REPOM_POOL_TIMEOUT"),
    ],
)
def test_invalid_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, named: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigurationError) as info:
        get_config()
    assert named in str(info.value)
    assert isinstance(info.value, ValueError)


def test_password_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"postgresql://app:{SECRET}@db.example/app"
    monkeypatch.setenv("DATABASE_URL", url)
    config = get_config()
    assert SECRET not in repr(config) and SECRET not in str(config)
    assert SECRET not in repr(get_database())
    monkeypatch.setenv("DATABASE_URL", f"nosuchdb://app:{SECRET}@h/x")
    reset_config()
    with pytest.raises(ConfigurationError) as info:
        get_config()
    assert SECRET not in str(info.value)


def _write_hook(tmp_path: Path, body: str) -> None:
    for name in [m for m in sys.modules if m.split(".")[0] == "your_project"]:
        del sys.modules[name]
    importlib.invalidate_caches()
    pkg = tmp_path / "your_project"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text(textwrap.dedent(body))


SEED_004_CONFIG = """
    from repom.config import RepomConfig

    class MyConfig(RepomConfig):
        @property
        def engine_kwargs(self) -> dict:
            kwargs = super().engine_kwargs
            kwargs['pool_size'] = 20  # 接続プールを増やす
            return kwargs

    def get_repom_config():
        return MyConfig()
"""


def test_seed_004_config_hook_from_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seed 004's example as written: a RepomConfig subclass + CONFIG_HOOK in .env."""
    _write_hook(tmp_path, SEED_004_CONFIG)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / ".env").write_text(
        "CONFIG_HOOK=your_project.config:get_repom_config\n"
        f"DATABASE_URL=sqlite:///{tmp_path / 'hook.db'}\n"
    )
    config = get_config()
    assert type(config).__name__ == "MyConfig"
    assert config.engine_kwargs["pool_size"] == 20
    engine = get_database().engine
    assert isinstance(engine.pool, pool.QueuePool) and engine.pool.size() == 20


def test_hook_receiving_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_hook(
        tmp_path,
        """
        def hook(config):
            return config.model_copy(update={"pool_size": 4})
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CONFIG_HOOK", "your_project.config:hook")
    assert get_config().pool_size == 4


@pytest.mark.parametrize(
    ("hook", "message"),
    [
        ("no_colon_here", "must look like"),
        ("missing_module_xyz:f", "cannot import module"),
        ("your_project.config:nope", "no callable"),
        ("your_project.config:wrong", "returned dict"),
    ],
)
def test_bad_hooks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hook: str, message: str
) -> None:
    _write_hook(tmp_path, "def wrong():\n    return {}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CONFIG_HOOK", hook)
    with pytest.raises(ConfigurationError, match=message) as info:
        get_config()
    assert info.value.variable == "CONFIG_HOOK"


def test_set_config_replaces_default_databases(tmp_path: Path) -> None:
    first = get_database()
    set_config(RepomConfig(database_url=f"sqlite:///{tmp_path / 'b.db'}"))
    second = get_database()
    assert first is not second
    assert str(second.url).endswith("b.db")
    assert get_async_database().config is get_config()
    with pytest.raises(ConfigurationError):
        set_config({"database_url": "x"})  # type: ignore[arg-type]


def test_pool_policy_per_environment() -> None:
    file_url = "sqlite:///x.db"
    pg = "postgresql+psycopg://u@h/db"
    sync_pool = engine_arguments(RepomConfig(), file_url, is_async=False)["poolclass"]
    assert issubclass(sync_pool, pool.QueuePool)
    async_pool = engine_arguments(RepomConfig(), pg, is_async=True)["poolclass"]
    assert issubclass(async_pool, pool.AsyncAdaptedQueuePool)
    test_args = engine_arguments(RepomConfig(environment="test"), pg, is_async=False)
    assert test_args["poolclass"] is pool.NullPool and "pool_size" not in test_args
    memory = engine_arguments(RepomConfig(), "sqlite://", is_async=False)
    assert memory["poolclass"] is pool.StaticPool and "max_overflow" not in memory
    engine = build_engine("sqlite://")
    assert isinstance(engine.pool, pool.StaticPool)


def test_import_has_no_side_effects(tmp_path: Path) -> None:
    """``import repom`` (and its core modules) reads no .env, creates nothing, needs no greenlet."""
    (tmp_path / ".env").write_text("DATABASE_URL=this is not a url\nCONFIG_HOOK=nope:nope\n")
    code = textwrap.dedent(
        """
        import os, sys
        sys.modules["greenlet"] = None  # as if greenlet were not installed: import must still work
        import repom
        import repom.config, repom.database, repom.session, repom.async_session
        import repom.transactions, repom.retry, repom.exceptions, repom.urls
        assert repom.config._config is None, "config built at import"
        print(sorted(os.listdir(".")))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "['.env']"


# --------------------------------------------------------------------------- no URL configured

URL_VARIABLES = "DATABASE_URL / REPOM_DATABASE_URL"


def _fallback_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "repom.config" and "falls back" in r.message]


def test_dev_falls_back_to_a_sqlite_file_and_says_so_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.WARNING, logger="repom.config")
    config = get_config()
    assert (config.environment, config.has_database_url) == ("dev", False)
    assert config.url == "sqlite:///repom.sqlite3"
    assert config.async_url == "sqlite+aiosqlite:///repom.sqlite3"
    assert get_config().url == "sqlite:///repom.sqlite3"
    (record,) = _fallback_records(caplog)
    assert record.levelno == logging.WARNING
    assert URL_VARIABLES in record.getMessage()
    assert "sqlite:///repom.sqlite3" in record.getMessage()
    assert os.listdir(tmp_path) == []  # reading the configuration creates nothing


def test_the_dev_fallback_reaches_stderr_without_logging_set_up(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if "DATABASE_URL" not in k}
    env.pop("REPOM_ENVIRONMENT", None)
    env.pop("CONFIG_HOOK", None)
    code = "from repom.config import get_config\nfor _ in range(3): print(get_config().url)"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.split() == ["sqlite:///repom.sqlite3"] * 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and URL_VARIABLES in lines[0] and "environment=dev" in lines[0]


@pytest.mark.parametrize("environment", ["production", "prod"])
async def test_production_without_a_url_is_an_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    environment: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REPOM_ENVIRONMENT", environment)
    # building the configuration is fine (a CONFIG_HOOK or Database(url) may bring the URL) ...
    config = get_config()
    assert config.environment == "production"
    # ... using the missing URL is not
    for use in (lambda: config.url, lambda: config.async_url):
        with pytest.raises(ConfigurationError) as info:
            use()
        assert info.value.variable == URL_VARIABLES
        assert "DATABASE_URL" in str(info.value) and "REPOM_DATABASE_URL" in str(info.value)
        assert "environment=production" in str(info.value)
    with pytest.raises(ConfigurationError, match="no database URL"):
        get_database().engine  # noqa: B018
    with pytest.raises(ConfigurationError, match="no database URL"):
        get_async_database().engine  # noqa: B018
    assert os.listdir(tmp_path) == []
    assert _fallback_records(caplog) == []
    # an explicit URL is all production needs
    explicit = Database(f"sqlite:///{tmp_path / 'explicit.sqlite3'}")
    assert explicit.ping() >= 0
    explicit.dispose()


def test_test_environment_uses_memory_quietly(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    config = RepomConfig(environment="test")
    assert config.url == "sqlite://" and config.async_url == "sqlite+aiosqlite://"
    assert caplog.records == []


def test_an_async_url_alone_is_the_database_url() -> None:
    config = RepomConfig(environment="production", async_database_url="postgres+asyncpg://u@h/d")
    assert config.has_database_url
    assert config.async_url == "postgresql+asyncpg://u@h/d"
    assert config.url == "postgresql+psycopg://u@h/d"


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_heroku_style_postgres_url_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, flavour: str
) -> None:
    rest = require_postgres().split("://", 1)[1]
    monkeypatch.setenv("DATABASE_URL", f"postgres://{rest}")
    config = get_config()
    assert config.database_url == config.url == f"postgresql://{rest}"
    db: Database | AsyncDatabase = get_database() if flavour == "sync" else get_async_database()
    driver = "psycopg" if flavour == "sync" else "asyncpg"
    session = db.session()
    try:
        assert db.url.drivername == f"postgresql+{driver}"
        result = await maybe_await(session.execute(text("SELECT current_database()")))
        assert result.scalar() == db.url.database
    finally:
        await maybe_await(session.close())
        await maybe_await(db.dispose())


# --------------------------------------------------------------------------- app settings

APP_SETTINGS = """
    from pydantic import Field
    from pydantic_settings import SettingsConfigDict

    from repom.config import RepomConfig


    class Settings(RepomConfig):
        model_config = SettingsConfigDict(env_prefix="SHOP_")

        greeting: str = "hello"
        max_items: int = Field(default=10, ge=1)
        pool_size: int = 3  # repom's setting with another default: still REPOM_POOL_SIZE


    settings = Settings(greeting="instance")


    def make():
        return Settings()
"""


def _settings_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> type[RepomConfig]:
    _write_hook(tmp_path, APP_SETTINGS)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("your_project.config")
    cls: type[RepomConfig] = module.Settings
    return cls


def test_app_settings_subclass_reads_its_fields_with_its_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydantic_settings import BaseSettings

    monkeypatch.chdir(tmp_path)
    settings_cls = _settings_class(tmp_path, monkeypatch)
    monkeypatch.setenv("SHOP_GREETING", "hi")
    monkeypatch.setenv("REPOM_ENVIRONMENT", "production")  # repom's variables keep working
    monkeypatch.setenv("DATABASE_URL", "postgres://shop@db/shop")
    settings = settings_cls()
    assert isinstance(settings, BaseSettings) and isinstance(settings, RepomConfig)
    assert settings.greeting == "hi"  # type: ignore[attr-defined]
    assert (settings.pool_size, settings.echo) == (3, False)  # the subclass's default
    assert (settings.environment, settings.url) == ("production", "postgresql://shop@db/shop")
    assert "greeting" not in RepomConfig.model_fields
    # the application's prefix reaches repom's settings too; REPOM_<NAME> wins when both are set
    monkeypatch.setenv("SHOP_POOL_SIZE", "5")
    monkeypatch.setenv("SHOP_ECHO", "true")
    assert (settings_cls().pool_size, settings_cls().echo) == (5, True)
    monkeypatch.setenv("REPOM_POOL_SIZE", "7")
    monkeypatch.setenv("REPOM_ECHO", "false")
    assert (settings_cls().pool_size, settings_cls().echo) == (7, False)
    assert settings_cls(pool_size=2, greeting="kw").pool_size == 2  # keywords by field name
    # a bad value names the variable it came from
    monkeypatch.setenv("SHOP_MAX_ITEMS", "0")
    with pytest.raises(ConfigurationError) as info:
        settings_cls()
    assert info.value.variable == "SHOP_MAX_ITEMS" and info.value.__context__ is None
    monkeypatch.delenv("SHOP_MAX_ITEMS")
    monkeypatch.setenv("REPOM_POOL_SIZE", "many")
    with pytest.raises(ConfigurationError) as info:
        settings_cls()
    assert info.value.variable == "REPOM_POOL_SIZE"
    monkeypatch.delenv("REPOM_POOL_SIZE")
    monkeypatch.setenv("SHOP_POOL_SIZE", "many")
    with pytest.raises(ConfigurationError) as info:
        settings_cls()
    assert info.value.variable == "SHOP_POOL_SIZE"


@pytest.mark.parametrize(
    ("target", "greeting"),
    [("Settings", "from-dotenv"), ("settings", "instance"), ("make", "from-dotenv")],
    ids=["class", "instance", "function"],
)
def test_config_hook_names_the_app_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, greeting: str
) -> None:
    """One URL, one place: the application's settings object is repom's configuration."""
    monkeypatch.chdir(tmp_path)
    db_file = tmp_path / "shop.sqlite3"
    (tmp_path / ".env").write_text(
        f"CONFIG_HOOK=your_project.config:{target}\n"
        "SHOP_GREETING=from-dotenv\n"
        f"DATABASE_URL=sqlite:///{db_file}\n"
    )
    settings_cls = _settings_class(tmp_path, monkeypatch)
    settings = get_config(settings_cls)
    assert type(settings) is settings_cls and get_config() is settings
    assert settings.greeting == greeting  # type: ignore[attr-defined]
    assert settings.url == f"sqlite:///{db_file}"
    db = get_database()
    assert db.config is settings and db.engine.pool.size() == 3
    with db.transaction() as session:
        session.execute(text("CREATE TABLE shop_note (body TEXT)"))
        session.execute(text("INSERT INTO shop_note VALUES ('written by the app')"))
    with sqlite3.connect(db_file) as conn:
        assert conn.execute("SELECT body FROM shop_note").fetchall() == [("written by the app",)]


def test_get_config_of_a_settings_class_that_is_not_in_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings_cls = _settings_class(tmp_path, monkeypatch)
    with pytest.raises(ConfigurationError) as info:
        get_config(settings_cls)
    assert info.value.variable == "CONFIG_HOOK"
    assert "CONFIG_HOOK=your_project.config:Settings" in str(info.value)
    mine = settings_cls(greeting="set")
    set_config(mine)
    assert get_config(settings_cls) is mine and get_config(RepomConfig) is mine
