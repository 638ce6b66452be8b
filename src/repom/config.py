"""repom's configuration: one settings object, resolved on first use.

Values come from (highest first) keyword arguments, environment variables (``REPOM_*``, plus
``DATABASE_URL`` and ``CONFIG_HOOK`` without prefix), a ``.env`` file in the working directory, and
the defaults below.  Nothing is read at import time: the first call to :func:`get_config` (usually
made by the first engine that is needed) builds the object, and ``CONFIG_HOOK`` may then replace it.

``CONFIG_HOOK="package.module:function"`` names a function that returns the configuration to use
(typically an instance of a :class:`RepomConfig` subclass that overrides :attr:`engine_kwargs`).
The function may take the configuration built so far as its one argument, or no argument at all
(as in seed 004's ``get_repom_config()``).
"""

from __future__ import annotations

import importlib
import inspect
import math
import threading
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from repom.exceptions import ConfigurationError

__all__ = [
    "Environment",
    "RepomConfig",
    "get_config",
    "milliseconds",
    "on_config_change",
    "reset_config",
    "set_config",
]

Environment = Literal["dev", "test", "production"]

_ENV_ALIASES = {"development": "dev", "prod": "production", "testing": "test"}

# PostgreSQL's statement_timeout and SQLite's busy_timeout are 32-bit counts of milliseconds
_MAX_MS = 2**31 - 1
_MAX_SECONDS = _MAX_MS / 1000


def milliseconds(seconds: float, *, name: str = "timeout") -> int:
    """*seconds* as whole milliseconds, rounded **up**: a positive duration never becomes 0
    (which PostgreSQL's ``statement_timeout`` reads as "no timeout").  ``0`` stays ``0``.

    A value that is not a finite number from 0 to 2**31-1 ms raises :class:`ConfigurationError`
    naming *name* (a value set around validation, e.g. by ``model_copy(update=...)``).
    """
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not math.isfinite(seconds)
        or not 0 <= seconds <= _MAX_SECONDS
    ):
        raise ConfigurationError(
            f"{name} must be a finite number of seconds from 0 to {_MAX_SECONDS}, got {seconds!r}",
            variable=name,
        )
    # round to the nanosecond first: 0.07 * 1000 is 70.00000000000001, which is 70 ms, not 71
    ms = math.ceil(round(seconds * 1000, 6))
    return max(ms, 1) if seconds > 0 else 0


class RepomConfig(BaseSettings):
    """All of repom's settings.  Subclass it to change :attr:`engine_kwargs` (seed 004)."""

    model_config = SettingsConfigDict(
        env_prefix="REPOM_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
        populate_by_name=True,
        # never echo an input (a URL with its password) in a ValidationError's text
        hide_input_in_errors=True,
    )

    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REPOM_DATABASE_URL", "DATABASE_URL"),
        description="SQLAlchemy URL. Default: sqlite:///./repom.sqlite3 (in memory when "
        "environment=test).",
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
    max_page_size: int = Field(default=1000, ge=1, description="Cap on repository limits.")
    config_hook: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REPOM_CONFIG_HOOK", "CONFIG_HOOK"),
    )

    def __init__(self, **values: Any) -> None:
        # pydantic's ValidationError never leaves the constructor: a typed error naming the
        # setting, whose text holds no URL password, and with no chain (cause nor context)
        try:
            super().__init__(**values)
        except ValidationError as exc:
            error = _settings_error(exc)
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
        from repom.urls import validate_url

        validate_url(value)
        return value

    # ------------------------------------------------------------------ derived values

    @property
    def url(self) -> str:
        """The synchronous database URL in effect (default applied)."""
        if self.database_url:
            return self.database_url
        if self.environment == "test":
            return "sqlite://"
        return "sqlite:///repom.sqlite3"

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

        Override in a subclass to tune the pool (seed 004)::

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


def _settings_error(exc: ValidationError) -> ConfigurationError:
    first = exc.errors()[0]
    loc = ".".join(str(part) for part in first.get("loc", ())) or "config"
    key = loc.lower().removeprefix("repom_")
    variable = f"REPOM_{key.upper()}" if loc != "config" else None
    if key == "database_url":
        variable = "DATABASE_URL / REPOM_DATABASE_URL"
    msg = first.get("msg", "invalid value")
    ctx_error = first.get("ctx", {}).get("error")
    if isinstance(ctx_error, ConfigurationError):
        msg = str(ctx_error)
    if key == "environment":
        msg += " (allowed: dev, test, production)"
    label = variable or loc
    if variable and key != "database_url":
        label = f"{key} ({variable})"
    return ConfigurationError(f"invalid configuration {label}: {msg}", variable=variable)


def build_config(**overrides: Any) -> RepomConfig:
    """Build a :class:`RepomConfig` from the environment and ``.env``; apply ``CONFIG_HOOK``."""
    try:
        config = RepomConfig(**overrides)
    except ValidationError as exc:
        raise _settings_error(exc) from None
    hook = config.config_hook
    if hook:
        config = _apply_hook(hook, config)
    return config


def _apply_hook(hook: str, config: RepomConfig) -> RepomConfig:
    module_name, sep, attr = hook.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(
            f"CONFIG_HOOK must look like 'package.module:function', got {hook!r}",
            variable="CONFIG_HOOK",
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"CONFIG_HOOK {hook!r}: cannot import module {module_name!r} ({exc})",
            variable="CONFIG_HOOK",
        ) from exc
    func = getattr(module, attr, None)
    if func is None or not callable(func):
        raise ConfigurationError(
            f"CONFIG_HOOK {hook!r}: module {module_name!r} has no callable {attr!r}",
            variable="CONFIG_HOOK",
        )
    try:
        takes_arg = bool(inspect.signature(func).parameters)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        takes_arg = True
    try:
        result = func(config) if takes_arg else func()
    except ValidationError as exc:
        raise _settings_error(exc) from None
    if not isinstance(result, RepomConfig):
        raise ConfigurationError(
            f"CONFIG_HOOK {hook!r} returned {type(result).__name__}, expected a RepomConfig "
            "(or subclass) instance",
            variable="CONFIG_HOOK",
        )
    return result


_lock = threading.Lock()
_config: RepomConfig | None = None


def get_config() -> RepomConfig:
    """The process-wide configuration, built on first call."""
    global _config
    config = _config
    if config is not None:
        return config
    with _lock:
        if _config is None:
            _config = build_config()
        return _config


_change_listeners: list[Callable[[], None]] = []


def set_config(config: RepomConfig | None) -> None:
    """Replace the process-wide configuration.

    The default :class:`~repom.database.Database` objects built from the old configuration are
    disposed and dropped, so the next use builds them from *config*.  ``None`` resets to
    "build from the environment on next use".
    """
    global _config
    if config is not None and not isinstance(config, RepomConfig):
        raise ConfigurationError(f"set_config() expects a RepomConfig, got {type(config).__name__}")
    with _lock:
        _config = config
    for listener in list(_change_listeners):
        listener()


def on_config_change(listener: Callable[[], None]) -> None:
    """Call *listener* after every :func:`set_config` (the databases layer registers the reset of
    the default databases here: configuration sits below it and does not import it)."""
    if listener not in _change_listeners:
        _change_listeners.append(listener)


def reset_config() -> None:
    """Forget the configuration (and the default databases); rebuilt on next use."""
    set_config(None)
