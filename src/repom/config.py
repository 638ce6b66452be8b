"""repom's configuration: one settings object, resolved on first use.

Values come from (highest first) keyword arguments, environment variables (``REPOM_*``, plus
``DATABASE_URL`` and ``CONFIG_HOOK`` without prefix), a ``.env`` file in the working directory, and
the defaults.  Nothing is read at import time: the first call to :func:`get_config` (usually
made by the first engine that is needed) builds the object, and ``CONFIG_HOOK`` may then replace it.

``CONFIG_HOOK="package.module:name"`` names the configuration to use: a function returning it
(which may take the configuration built so far as its one argument, or no argument at all), a
:class:`RepomConfig` subclass (built from the environment with its own rules: an application's
settings class), or an instance of one.

Importing this module is cheap: :class:`RepomConfig` (pydantic-settings) is loaded from
:mod:`repom._settings` the first time it is used.
"""

from __future__ import annotations

import importlib
import inspect
import math
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

from repom.exceptions import ConfigurationError

if TYPE_CHECKING:
    from repom._settings import Environment, RepomConfig

__all__ = [
    "Environment",
    "RepomConfig",
    "build_config",
    "get_config",
    "milliseconds",
    "on_config_change",
    "reset_config",
    "set_config",
]

_LAZY = ("Environment", "RepomConfig")

# PostgreSQL's statement_timeout and SQLite's busy_timeout are 32-bit counts of milliseconds
_MAX_MS = 2**31 - 1
_MAX_SECONDS = _MAX_MS / 1000

C = TypeVar("C", bound="RepomConfig")


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'repom.config' has no attribute {name!r}")
    from repom import _settings

    value = getattr(_settings, name)
    globals()[name] = value
    return value


def _settings_class() -> type[RepomConfig]:
    from repom._settings import RepomConfig

    return RepomConfig


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


def build_config(**overrides: Any) -> RepomConfig:
    """Build a :class:`RepomConfig` from the environment and ``.env``; apply ``CONFIG_HOOK``."""
    from pydantic import ValidationError

    from repom._settings import settings_error

    cls = _settings_class()
    try:
        config = cls(**overrides)
    except ValidationError as exc:  # pragma: no cover - the constructor converts its own
        raise settings_error(exc, cls) from None
    hook = config.config_hook
    if hook:
        config = _apply_hook(hook, config)
    return config


def _apply_hook(hook: str, config: RepomConfig) -> RepomConfig:
    from pydantic import ValidationError

    from repom._settings import settings_error

    module_name, sep, attr = hook.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(
            f"CONFIG_HOOK must look like 'package.module:name', got {hook!r}",
            variable="CONFIG_HOOK",
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"CONFIG_HOOK {hook!r}: cannot import module {module_name!r} ({exc})",
            variable="CONFIG_HOOK",
        ) from exc
    target: Any = getattr(module, attr, None)
    if isinstance(target, _settings_class()):
        return target  # an instance: the application's settings object
    if inspect.isclass(target) and issubclass(target, _settings_class()):
        return target()  # a settings class: built from the environment with its own rules
    if target is None or not callable(target):
        raise ConfigurationError(
            f"CONFIG_HOOK {hook!r}: module {module_name!r} has no callable {attr!r} (a "
            "function, a RepomConfig subclass or an instance of one)",
            variable="CONFIG_HOOK",
        )
    try:
        takes_arg = bool(inspect.signature(target).parameters)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        takes_arg = True
    try:
        result = target(config) if takes_arg else target()
    except ValidationError as exc:
        raise settings_error(exc) from None
    if not isinstance(result, _settings_class()):
        raise ConfigurationError(
            f"CONFIG_HOOK {hook!r} returned {type(result).__name__}, expected a RepomConfig "
            "(or subclass) instance",
            variable="CONFIG_HOOK",
        )
    return result


_lock = threading.Lock()
_config: RepomConfig | None = None


@overload
def get_config() -> RepomConfig: ...


@overload
def get_config(expected: type[C]) -> C: ...


def get_config(expected: type[RepomConfig] | None = None) -> RepomConfig:
    """The process-wide configuration, built on first call.

    ``get_config(Settings)`` returns it typed as your :class:`RepomConfig` subclass, and raises
    :class:`ConfigurationError` when the configuration in use is not one (``CONFIG_HOOK`` does
    not name it): the application, the ``repom`` command and the tests then read one object.
    """
    global _config
    config = _config
    if config is None:
        with _lock:
            if _config is None:
                _config = build_config()
            config = _config
    if expected is not None and not isinstance(config, expected):
        raise ConfigurationError(
            f"the configuration in use is a {type(config).__name__}, not a {expected.__name__}: "
            f"set CONFIG_HOOK={expected.__module__}:{expected.__name__} (environment or .env) "
            f"so that the application, the repom command and the tests all build it, or call "
            f"set_config({expected.__name__}(...))",
            variable="CONFIG_HOOK",
        )
    return config


_change_listeners: list[Callable[[], None]] = []


def set_config(config: RepomConfig | None) -> None:
    """Replace the process-wide configuration.

    The default :class:`~repom.database.Database` objects built from the old configuration are
    disposed and dropped, so the next use builds them from *config*.  ``None`` resets to
    "build from the environment on next use".
    """
    global _config
    if config is not None:
        # a RepomConfig instance exists only once its module is loaded
        settings = sys.modules.get("repom._settings")
        if settings is None or not isinstance(config, settings.RepomConfig):
            raise ConfigurationError(
                f"set_config() expects a RepomConfig, got {type(config).__name__}"
            )
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
