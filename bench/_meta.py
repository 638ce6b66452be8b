"""Stamp a benchmark's result with the configuration it ran with.

``stamp(...)`` returns one markdown line: versions of Python, SQLAlchemy and the libraries repom
builds on or is compared with, the drivers installed, the repom pool settings in effect (from the
environment, as ``get_config()`` reads them) and anything the benchmark adds (``extra``).
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from importlib import metadata

PACKAGES = (
    "sqlalchemy",
    "repom",
    "pydantic",
    "pydantic-settings",
    "fastapi",
    "starlette",
    "greenlet",
    "psycopg",
    "asyncpg",
    "advanced-alchemy",
)
POOL_FIELDS = ("pool_size", "max_overflow", "pool_timeout", "pool_recycle", "pool_pre_ping")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def pool_settings() -> dict[str, object]:
    try:
        from repom.config import RepomConfig

        config = RepomConfig()
    except Exception as exc:  # a broken environment must not stop the benchmark
        return {"config": f"unavailable ({type(exc).__name__})"}
    return {field: getattr(config, field, None) for field in POOL_FIELDS}


def stamp(extra: Mapping[str, object] | None = None) -> str:
    """One markdown line recording the configuration of this run."""
    parts = [f"{k} {v}" for k, v in versions().items()]
    settings = {**pool_settings(), **(extra or {})}
    config = ", ".join(f"{k}={v}" for k, v in settings.items())
    return f"_Configuration: {', '.join(parts)}; {config}._"
