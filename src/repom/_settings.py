"""The settings class itself: :class:`RepomConfig`, a pydantic-settings ``BaseSettings``.

Import it from :mod:`repom.config`.  It lives in a module of its own because pydantic-settings
(and the building of the class's validators) is the largest part of repom's import time:
:mod:`repom.config` loads this module the first time ``RepomConfig`` is used, which is when a
configuration is built (``get_config()``, ``RepomConfig(...)``, a subclass being defined).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any, Literal, cast

from pydantic import (
    AliasChoices,
    AliasGenerator,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from repom.exceptions import ConfigurationError

__all__ = ["Environment", "RepomConfig"]

Environment = Literal["dev", "test", "production"]

_ENV_ALIASES = {"development": "dev", "prod": "production", "testing": "test"}

# PostgreSQL's statement_timeout and SQLite's busy_timeout are 32-bit counts of milliseconds
# (repom.config.milliseconds() checks the same bound)
_MAX_MS = 2**31 - 1
_MAX_SECONDS = _MAX_MS / 1000

#: the URL environment=dev falls back to when none is configured
DEV_FALLBACK_URL = "sqlite:///repom.sqlite3"
URL_VARIABLES = "DATABASE_URL / REPOM_DATABASE_URL"

_logger = logging.getLogger("repom.config")

#: the fields RepomConfig defines (set right after the class is built; None while it is built)
_REPOM_FIELDS: frozenset[str] | None = None


def _repom_variable(name: str) -> AliasChoices | None:
    """The environment variable of one of repom's own fields: ``REPOM_<NAME>``, in
    :class:`RepomConfig` and in every subclass, whatever its ``env_prefix`` (which reaches repom's
    fields too, as a fallback: ``REPOM_<NAME>`` wins).  ``None`` for a subclass's own fields:
    its prefix applies."""
    if _REPOM_FIELDS is None or name in _REPOM_FIELDS:
        return AliasChoices(f"REPOM_{name.upper()}")
    return None


class RepomConfig(BaseSettings):
    """All of repom's settings (a pydantic-settings ``BaseSettings``).

    Subclass it to change :attr:`engine_kwargs`, or to make it your application's
    settings class: your fields follow your ``model_config`` (``env_prefix`` included), repom's
    fields keep their ``REPOM_*`` variables (see ``docs/configuration.md``).
    """

    model_config = SettingsConfigDict(
        env_prefix="REPOM_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
        populate_by_name=True,
        # never echo an input (a URL with its password) in a ValidationError's text
        hide_input_in_errors=True,
        # repom's own settings answer to REPOM_<NAME> in every subclass, whatever its env_prefix
        # (None, for a subclass's own field, is allowed at run time: pydantic skips it)
        alias_generator=AliasGenerator(
            validation_alias=cast("Callable[[str], AliasChoices]", _repom_variable)
        ),
    )

    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REPOM_DATABASE_URL", "DATABASE_URL"),
        description="SQLAlchemy URL. Required when environment=production; in dev the default "
        "is the SQLite file ./repom.sqlite3 (announced once), in test an in-memory SQLite.",
    )
    async_database_url: str | None = Field(
        default=None,
        description="URL for the async engine; default: database_url converted by "
        "convert_to_async_uri().",
    )
    environment: Environment = Field(default="dev")
    pool_size: int = Field(default=10, ge=0)
    max_overflow: int = Field(default=20, ge=-1)
    pool_timeout: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    pool_recycle: int = Field(default=3600, ge=-1)
    pool_pre_ping: bool = Field(
        default=True,
        description="Check a pooled connection's liveness at checkout, but only when it sat idle "
        "in the pool longer than pool_ping_idle seconds (a busy pool sends no ping).",
    )
    pool_ping_idle: float = Field(
        default=10.0,
        ge=0,
        le=_MAX_SECONDS,
        allow_inf_nan=False,
        description="With pool_pre_ping: ping a connection at checkout only when it was idle in "
        "the pool longer than this many seconds; 0 pings on every checkout (SQLAlchemy's own "
        "pool_pre_ping).",
    )
    pool_class: Literal["queue", "null", "static"] | None = Field(
        default=None,
        description="Force a pool class. Default: queue, except NullPool for environment=test "
        "on a server database and StaticPool for in-memory SQLite.",
    )
    echo: bool = False
    statement_timeout: float | None = Field(
        default=None,
        gt=0,
        le=_MAX_SECONDS,
        allow_inf_nan=False,
        description="PostgreSQL statement_timeout in seconds (per connection); None: no timeout. "
        "Rounded up to whole milliseconds.",
    )
    application_name: str = Field(default="repom", max_length=63)
    pooler: Literal["pgbouncer"] | None = Field(
        default=None,
        description="A connection pooler in transaction mode in front of PostgreSQL "
        "(REPOM_POOLER=pgbouncer): no startup options, no server-side named prepared "
        "statements, statement_timeout per transaction, migration locks per transaction.",
    )
    replica_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Read replicas (PostgreSQL hot standbys): read-only transactions go to one "
        "of them. Environment: REPOM_REPLICA_URLS='url1,url2'.",
    )
    replica_max_lag: float = Field(
        default=5.0,
        gt=0,
        allow_inf_nan=False,
        description="A replica whose replay is further behind than this (seconds) is skipped.",
    )
    replica_wait: float = Field(
        default=0.5,
        ge=0,
        allow_inf_nan=False,
        description="Read-your-writes: how long a read may wait for a replica to replay the "
        "context's last commit before it goes to the primary instead (seconds).",
    )
    cursor_secret: SecretStr | None = Field(
        default=None,
        description="Secret that signs keyset-pagination cursors; every process of a service "
        "must share it (required when environment=production).",
    )
    sqlite_busy_timeout: float = Field(default=5.0, ge=0, le=_MAX_SECONDS, allow_inf_nan=False)
    sqlite_wal: bool = True
    sqlite_write_queue: bool = Field(
        default=True,
        description="Queue this process's SQLite writers first come, first served before SQLite's "
        "write lock, instead of leaving them to SQLite's sleep-and-poll busy handler.",
    )
    max_page_size: int = Field(default=1000, ge=1, description="Cap on repository limits.")
    config_hook: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REPOM_CONFIG_HOOK", "CONFIG_HOOK"),
    )

    _fallback_announced: bool = PrivateAttr(default=False)

    def __init__(self, **values: Any) -> None:
        # pydantic's ValidationError never leaves the constructor: a typed error naming the
        # setting, whose text holds no URL password, and with no chain (cause nor context)
        try:
            super().__init__(**values)
        except ValidationError as exc:
            error = settings_error(exc, type(self))
        else:
            return
        raise error

    @field_validator("replica_urls", mode="before")
    @classmethod
    def _split_replica_urls(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("pooler", mode="before")
    @classmethod
    def _normalise_pooler(cls, value: Any) -> Any:
        if isinstance(value, str):
            lowered = value.strip().lower()
            return None if lowered in ("", "none", "off") else lowered
        return value

    @field_validator("environment", mode="before")
    @classmethod
    def _normalise_environment(cls, value: Any) -> Any:
        if isinstance(value, str):
            lowered = value.strip().lower()
            return _ENV_ALIASES.get(lowered, lowered)
        return value

    @field_validator("database_url", "async_database_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        from repom.urls import normalize_scheme, validate_url

        validate_url(value)
        # postgres:// (Heroku and others) is stored as postgresql://, which SQLAlchemy reads
        return normalize_scheme(value)

    # ------------------------------------------------------------------ derived values

    @property
    def url(self) -> str:
        """The synchronous database URL in effect.

        ``database_url``; else ``async_database_url`` with its sync driver; else, with no URL
        configured at all: ``environment=test`` uses an in-memory SQLite database,
        ``environment=dev`` the SQLite file ``./repom.sqlite3`` (announced once with a warning on
        the ``repom.config`` logger, which reaches stderr unless logging is configured), and
        ``environment=production`` raises :class:`ConfigurationError` naming
        ``DATABASE_URL / REPOM_DATABASE_URL``.
        """
        if self.database_url:
            return self.database_url
        if self.async_database_url:
            from repom.urls import convert_to_sync_uri

            return convert_to_sync_uri(self.async_database_url)
        if self.environment == "test":
            return "sqlite://"
        if self.environment != "dev":
            raise ConfigurationError(
                f"no database URL configured: set {URL_VARIABLES} (environment, .env or "
                f"CONFIG_HOOK); environment={self.environment} has no default database",
                variable=URL_VARIABLES,
            )
        if not self._fallback_announced:
            self._fallback_announced = True
            _logger.warning(
                "repom: no database URL configured (%s); environment=dev falls back to the SQLite "
                "file %s. Set the URL, or REPOM_ENVIRONMENT=production to make a missing URL an "
                "error.",
                URL_VARIABLES,
                DEV_FALLBACK_URL,
            )
        return DEV_FALLBACK_URL

    @property
    def has_database_url(self) -> bool:
        """Whether a URL is configured (``False``: :attr:`url` is the environment's default)."""
        return bool(self.database_url or self.async_database_url)

    @property
    def async_url(self) -> str:
        """The URL the async engine uses."""
        if self.async_database_url:
            return self.async_database_url
        from repom.urls import convert_to_async_uri

        return convert_to_async_uri(self.url)

    @property
    def engine_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``create_engine``/``create_async_engine``.

        Override in a subclass to tune the pool::

            class MyConfig(RepomConfig):
                @property
                def engine_kwargs(self) -> dict:
                    kwargs = super().engine_kwargs
                    kwargs["pool_size"] = 20
                    return kwargs

        Pool sizing keys are dropped by the engine factory when the pool class in effect does not
        take them (NullPool, StaticPool).
        """
        return {
            "pool_size": self.pool_size,
            "max_overflow": self.max_overflow,
            "pool_timeout": self.pool_timeout,
            "pool_recycle": self.pool_recycle,
            "pool_pre_ping": self.pool_pre_ping,
            "echo": self.echo,
        }

    def __repr_args__(self) -> Any:
        from repom.urls import mask_url

        for name, value in super().__repr_args__():
            if name in {"database_url", "async_database_url"} and isinstance(value, str):
                yield name, mask_url(value)
            elif name == "replica_urls" and isinstance(value, list):
                yield name, [mask_url(url) for url in value]
            else:
                yield name, value


_REPOM_FIELDS = frozenset(RepomConfig.model_fields)


def _aliases(info: Any) -> list[str]:
    alias = info.validation_alias
    if isinstance(alias, str):
        return [alias]
    if isinstance(alias, AliasChoices):
        return [choice for choice in alias.choices if isinstance(choice, str)]
    return []


def _setting_of(loc: str, cls: type[BaseSettings] | None) -> tuple[str, str | None]:
    """``(field name, environment variable)`` for an error's location: the alias an environment
    value came in under (``REPOM_POOL_SIZE``), or a field name (keyword arguments, or the
    variable named by the class's ``env_prefix``)."""
    if loc == "config":
        return loc, None
    fields: dict[str, Any] = dict(cls.model_fields) if cls is not None else {}
    for name, info in fields.items():
        if loc.lower() in (alias.lower() for alias in _aliases(info)):
            return name, URL_VARIABLES if name == "database_url" else loc.upper()
    name = loc if loc in fields else loc.lower().removeprefix("repom_")
    if name == "database_url":
        return name, URL_VARIABLES
    prefix = str(cls.model_config.get("env_prefix") or "") if cls is not None else "REPOM_"
    return name, f"{prefix}{name}".upper()


def settings_error(
    exc: ValidationError, cls: type[BaseSettings] | None = None
) -> ConfigurationError:
    """A typed error naming the setting and its environment variable, for pydantic's *exc*
    (whose text is never shown: it may hold the input, a URL with its password)."""
    first = exc.errors()[0]
    parts = [str(part) for part in first.get("loc", ())]
    loc = parts[0] if parts else "config"
    key, variable = _setting_of(loc, cls)
    msg = first.get("msg", "invalid value")
    ctx_error = first.get("ctx", {}).get("error")
    if isinstance(ctx_error, ConfigurationError):
        msg = str(ctx_error)
    if key == "environment":
        msg += " (allowed: dev, test, production)"
    label = variable or ".".join(parts) or loc
    if variable and key != "database_url":
        label = f"{key} ({variable})"
    return ConfigurationError(f"invalid configuration {label}: {msg}", variable=variable)
