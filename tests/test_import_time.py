"""Import cost, checked by structure rather than by the clock (``bench/import_time.py`` times it).

Each check runs a fresh interpreter and looks at ``sys.modules``: it fails if someone brings back
an eager import that ``import repom.fastapi`` or ``import repom.database`` does not need.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# never needed to import the FastAPI integration or the databases, even when every name is used
OPTIONAL = (
    "prometheus_client",
    "alembic",
    "typer",
    "rich",
    "cryptography",
    "repom.cli",
    "repom.migrations",
    "repom.monitoring.prometheus",
)
# loaded on first use, by the code that needs them
DEFERRED = (
    "repom.monitoring._tracker",
    "repom.monitoring.pool",
    "repom.monitoring.queries",
    "repom.session",
    "repom.async_session",
)
# the settings class: loaded when a configuration is built (get_config(), RepomConfig(...)),
# not when the modules that use one are imported
SETTINGS = ("pydantic_settings", "dotenv", "repom._settings")


def loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_import_repom_fastapi_loads_nothing_heavy() -> None:
    loaded = loaded_after("import repom.fastapi")
    heavy = {
        "fastapi",
        "starlette",
        "pydantic",
        "pydantic_settings",
        "sqlalchemy",
        "sqlalchemy.ext.asyncio",
        "greenlet",
        "repom.database",
        "repom.config",
        *OPTIONAL,
        *DEFERRED,
    }
    assert sorted(heavy & loaded) == []


def test_every_fastapi_name_without_optional_or_deferred_modules() -> None:
    loaded = loaded_after("from repom.fastapi import *")
    assert "fastapi" in loaded  # the names did load
    assert sorted(set(OPTIONAL + DEFERRED + SETTINGS) & loaded) == []


def test_import_repom_database_does_not_load_the_web_stack_or_monitors() -> None:
    loaded = loaded_after("import repom.database")
    assert sorted({"fastapi", "starlette", *OPTIONAL, *DEFERRED} & loaded) == []


@pytest.mark.parametrize(
    "code",
    [
        "import repom.config",
        "from repom.config import get_config, set_config, milliseconds, build_config",
        "import repom.database, repom.session, repom.async_session, repom.transactions",
    ],
)
def test_the_settings_class_loads_on_first_use(code: str) -> None:
    """Neither pydantic-settings nor pydantic is imported until a configuration is built."""
    loaded = loaded_after(code)
    assert sorted({"pydantic", *SETTINGS} & loaded) == []


def test_the_lazy_settings_class_is_the_real_one() -> None:
    code = """
import sys
import repom.config
from repom.config import RepomConfig
assert "pydantic_settings" in sys.modules
from pydantic_settings import BaseSettings, SettingsConfigDict
from repom._settings import RepomConfig as defined
assert RepomConfig is defined and repom.config.RepomConfig is defined
assert issubclass(RepomConfig, BaseSettings)

class Settings(RepomConfig):
    model_config = SettingsConfigDict(env_prefix="APP_")
    greeting: str = "hi"

repom.config.set_config(Settings(database_url="postgres://u@h/d"))
assert repom.config.get_config(Settings).url == "postgresql://u@h/d"
assert repom.config.Environment.__args__ == ("dev", "test", "production")
"""
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("package", ["repom.fastapi", "repom.monitoring"])
def test_lazy_names_resolve_to_the_submodule_objects(package: str) -> None:
    code = f"""
import importlib
pkg = importlib.import_module({package!r})
for name in pkg.__all__:
    value = getattr(pkg, name)
    if name in pkg._LAZY:
        assert value is getattr(importlib.import_module(pkg._LAZY[name]), name), name
assert set(pkg._LAZY) <= set(pkg.__all__)
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def test_fastapi_lazy_names_cover_all() -> None:
    import repom.fastapi

    assert set(repom.fastapi._LAZY) == set(repom.fastapi.__all__)
    with pytest.raises(AttributeError):
        repom.fastapi.does_not_exist  # noqa: B018


def test_lifespan_stays_the_function_after_its_submodule_is_imported() -> None:
    code = """
import types
import repom.fastapi.lifespan
import repom.fastapi
assert not isinstance(repom.fastapi.lifespan, types.ModuleType)
from repom.fastapi import lifespan
assert lifespan is repom.fastapi.lifespan
"""
    subprocess.run([sys.executable, "-c", code], check=True)
