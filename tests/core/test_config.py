"""Configuration: defaults, environment, .env, CONFIG_HOOK (seed 004), validation, masking."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import pool

from repom.config import RepomConfig, get_config, reset_config, set_config
from repom.database import get_async_database, get_database
from repom.engine import build_engine, engine_arguments
from repom.exceptions import ConfigurationError

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
