"""Where a project's migration settings come from.

A project is the directory that holds ``alembic.ini`` (written by ``repom db init``).  Its
settings are resolved in this order, first match wins:

1. explicit values (``--url``, ``--models``, ``--metadata`` on the command line, or arguments
   of :func:`find_project`);
2. environment variables ``REPOM_MODELS`` and ``REPOM_METADATA``;
3. the ``[repom]`` section of ``alembic.ini`` (keys ``models`` and ``metadata``);
4. the ``[tool.repom]`` table of ``pyproject.toml`` next to it (same keys).

The database URL is never stored in these files.  ``url_env`` (in ``[repom]`` or
``[tool.repom]``; ``repom db init`` writes ``url_env = DATABASE_URL`` unless told another name)
records which database the project migrates: the environment variable (or ``.env`` entry) that
holds its URL.  ``DATABASE_URL``/``REPOM_DATABASE_URL`` go through repom's configuration (``.env``,
``CONFIG_HOOK``); any other name is read as it is, and when it is not set the command stops
instead of falling back to another database's URL.  ``--url`` overrides all of this.  Projects
without ``url_env`` (written before it existed) use repom's configuration.
"""

from __future__ import annotations

import configparser
import os
import re
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repom.exceptions import ConfigurationError
from repom.migrations.errors import NoMigrationFolderError

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "CONFIG_ENV",
    "METADATA_ENV",
    "MODELS_ENV",
    "ProjectSettings",
    "alembic_config",
    "check_url_env",
    "find_project",
    "find_projects",
    "settings_from_alembic",
]

MODELS_ENV = "REPOM_MODELS"
METADATA_ENV = "REPOM_METADATA"
CONFIG_ENV = "ALEMBIC_CONFIG"
SETTINGS_ATTRIBUTE = "repom.settings"


@dataclass(frozen=True)
class ProjectSettings:
    """The resolved settings of one project (see the module docstring for the sources)."""

    root: Path
    """Directory of the Alembic configuration file (the working directory when there is none)."""
    config_file: Path
    """``alembic.ini`` (it may not exist yet, e.g. before ``repom db init``)."""
    models: tuple[str, ...] = ()
    """Modules that define the models; packages are imported with all their submodules."""
    metadata: str | None = None
    """Where the ``MetaData`` is when it cannot be found on its own: ``"pkg.mod:Base.metadata"``."""
    url: str | None = None
    """Database URL override (``--url``, or the value of *url_env*); ``None`` means repom's
    configuration."""
    url_env: str | None = None
    """The environment variable naming the database this project migrates (``url_env``)."""
    toml_file: Path | None = None
    """``pyproject.toml`` when it has a ``[tool.alembic]`` table (Alembic >= 1.16 style)."""
    sources: Mapping[str, str] = field(default_factory=dict)
    """Where ``models``/``metadata`` came from (for ``repom info``)."""

    @property
    def has_alembic_config(self) -> bool:
        return self.config_file.is_file() or self.toml_file is not None

    def with_overrides(
        self, *, url: str | None = None, models: str | None = None, metadata: str | None = None
    ) -> ProjectSettings:
        changes: dict[str, Any] = {}
        sources = dict(self.sources)
        if url:
            changes["url"] = url
        if models:
            changes["models"] = split_modules(models)
            sources["models"] = "argument"
        if metadata:
            changes["metadata"] = metadata.strip()
            sources["metadata"] = "argument"
        if not changes:
            return self
        changes["sources"] = sources
        return replace(self, **changes)


def split_modules(value: str | list[Any] | tuple[Any, ...]) -> tuple[str, ...]:
    """``"a.models, b.models"`` or ``["a.models", "b.models"]`` -> ``("a.models", "b.models")``."""
    items = value.split(",") if isinstance(value, str) else [str(item) for item in value]
    modules = tuple(item.strip() for item in items if item.strip())
    for name in modules:
        if not all(part.isidentifier() for part in name.split(".")):
            raise ConfigurationError(
                f"models: {name!r} is not a module name (expected e.g. 'app.models')",
                variable="models",
            )
    return modules


def _read_ini(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    parser = configparser.ConfigParser(defaults={"here": str(path.parent)})
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error as exc:
        message = " ".join(str(exc).split())
        raise ConfigurationError(f"cannot read {path}: {message}") from exc
    if not parser.has_section("repom"):
        return {}
    return {key: value for key, value in parser.items("repom") if key != "here" and value}


def _read_pyproject(path: Path) -> tuple[dict[str, Any], bool]:
    """The ``[tool.repom]`` table and whether ``[tool.alembic]`` exists."""
    if not path.is_file():
        return {}, False
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from exc
    tool = data.get("tool", {})
    if not isinstance(tool, dict):
        return {}, False
    repom = tool.get("repom", {})
    if not isinstance(repom, dict):
        raise ConfigurationError(f"{path}: [tool.repom] must be a table")
    return repom, isinstance(tool.get("alembic"), dict)


def find_project(
    config_file: str | os.PathLike[str] | None = None,
    *,
    url: str | None = None,
    models: str | None = None,
    metadata: str | None = None,
    cwd: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ProjectSettings:
    """Resolve the project's settings (nothing is imported and nothing connects)."""
    env = os.environ if environ is None else environ
    base = Path(cwd) if cwd is not None else Path.cwd()
    chosen = config_file or env.get(CONFIG_ENV) or "alembic.ini"
    ini = Path(chosen)
    if not ini.is_absolute():
        ini = base / ini
    ini = ini.resolve()
    root = ini.parent
    ini_settings = _read_ini(ini)
    tool_repom, has_tool_alembic = _read_pyproject(root / "pyproject.toml")

    sources: dict[str, str] = {}
    found_models: tuple[str, ...] = ()
    found_metadata: str | None = None
    for source, values in (
        (
            f"env {MODELS_ENV}/{METADATA_ENV}",
            {"models": env.get(MODELS_ENV), "metadata": env.get(METADATA_ENV)},
        ),
        (f"{ini.name} [repom]", ini_settings),
        ("pyproject.toml [tool.repom]", tool_repom),
    ):
        raw_models = values.get("models")
        if not found_models and raw_models:
            found_models = split_modules(raw_models)
            sources["models"] = source
        raw_metadata = values.get("metadata")
        if found_metadata is None and raw_metadata:
            if not isinstance(raw_metadata, str):
                raise ConfigurationError(f"{source}: metadata must be a string")
            found_metadata = raw_metadata.strip()
            sources["metadata"] = source
    url_env: str | None = None
    for source, values in ((f"{ini.name} [repom]", ini_settings), ("pyproject.toml", tool_repom)):
        raw = values.get("url_env")
        if raw:
            url_env = check_url_env(raw, source=source)
            sources["url_env"] = source
            break
    settings = ProjectSettings(
        root=root,
        config_file=ini,
        models=found_models,
        metadata=found_metadata,
        url_env=url_env,
        toml_file=root / "pyproject.toml" if has_tool_alembic else None,
        sources=sources,
    )
    if not url and url_env and url_env not in _CONFIG_URL_VARIABLES:
        url = _url_from(url_env, env, base, ini)
    return settings.with_overrides(url=url, models=models, metadata=metadata)


def find_projects(directory: str | os.PathLike[str] | None = None) -> list[Path]:
    """The Alembic configuration files in *directory* (default: the working directory): every
    ``*.ini`` with an ``[alembic]`` section naming a ``script_location``, ``alembic.ini`` first.
    A service with several databases has one per database (see ``url_env``)."""
    folder = Path(directory) if directory is not None else Path.cwd()
    found: list[Path] = []
    for path in sorted(folder.glob("*.ini"), key=lambda p: (p.name != "alembic.ini", p.name)):
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError):
            continue
        if parser.has_option("alembic", "script_location"):
            found.append(path.resolve())
    return found


#: variables repom's configuration reads itself (with .env and CONFIG_HOOK)
_CONFIG_URL_VARIABLES = ("DATABASE_URL", "REPOM_DATABASE_URL")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_url_env(value: Any, *, source: str = "url_env") -> str:
    """*value* as an environment variable name, or :class:`ConfigurationError`."""
    name = value.strip() if isinstance(value, str) else ""
    if not _ENV_NAME.fullmatch(name):
        raise ConfigurationError(f"{source}: url_env must be an environment variable name")
    return name


def _url_from(name: str, env: Mapping[str, str], cwd: Path, ini: Path) -> str:
    """The URL in environment variable *name* (or a ``.env`` next to the project or in the
    working directory); the project's own database or nothing."""
    value = env.get(name)
    if not value:
        from dotenv import dotenv_values

        for folder in dict.fromkeys((cwd, ini.parent)):
            found = (
                dotenv_values(folder / ".env").get(name) if (folder / ".env").is_file() else None
            )
            if found:
                value = found
                break
    if not value:
        raise ConfigurationError(
            f"{ini.name} migrates the database named by {name} (url_env), and {name} is not set "
            "(environment or .env); set it, or pass --url to run against another database",
            variable=name,
        )
    return value


def import_paths(settings: ProjectSettings) -> list[str]:
    """Where models are imported from: the working directory (as with ``python -m`` and
    Alembic's ``prepend_sys_path = .``) and the directory of ``alembic.ini``."""
    paths = [str(Path.cwd().resolve())]
    root = str(settings.root)
    if root not in paths:
        paths.append(root)
    return paths


def ensure_importable(settings: ProjectSettings) -> None:
    """Put :func:`import_paths` on ``sys.path`` so that the models package can be imported."""
    for path in reversed(import_paths(settings)):
        if path not in sys.path:
            sys.path.insert(0, path)


def alembic_config(settings: ProjectSettings, **attributes: Any) -> Config:
    """An Alembic ``Config`` for *settings*; the env.py templates read the settings from it.

    Raises :class:`NoMigrationFolderError` when there is no configuration or migration folder.
    """
    from argparse import Namespace

    from alembic.config import Config

    if not settings.has_alembic_config:
        raise NoMigrationFolderError(
            f"no migration folder: {settings.config_file} not found "
            "(run 'repom db init' first, or point --config at your alembic.ini)"
        )
    config = Config(
        str(settings.config_file) if settings.config_file.is_file() else None,
        toml_file=str(settings.toml_file) if settings.toml_file is not None else None,
        cmd_opts=Namespace(quiet=True),
    )
    location = config.get_alembic_option("script_location")
    if not location:
        raise NoMigrationFolderError(
            f"no migration folder: {settings.config_file} has no script_location "
            "(run 'repom db init' to write a complete configuration)"
        )
    if ":" not in location or Path(location).drive:
        folder = Path(location)
        if not folder.is_absolute():
            folder = Path.cwd() / folder
        if not (folder / "env.py").is_file():
            raise NoMigrationFolderError(
                f"no migration folder: {folder} has no env.py "
                f"(script_location in {settings.config_file.name}; run 'repom db init')"
            )
    ensure_importable(settings)
    config.attributes[SETTINGS_ATTRIBUTE] = settings
    config.attributes.setdefault("configure_logger", False)
    config.attributes.update(attributes)
    return config


def settings_from_alembic(config: Config) -> ProjectSettings:
    """The project settings for an Alembic ``Config`` (set by repom's CLI, or found from the file).

    When Alembic's own command line runs the env.py, the settings are read from the files and
    the environment, and ``-x url=...``/``-x models=...``/``-x metadata=...`` override them.
    """
    settings = config.attributes.get(SETTINGS_ATTRIBUTE)
    if isinstance(settings, ProjectSettings):
        return settings
    file_name = config.config_file_name
    settings = find_project(file_name if file_name else None)
    x_args = _x_arguments(config)
    settings = settings.with_overrides(
        url=x_args.get("url"), models=x_args.get("models"), metadata=x_args.get("metadata")
    )
    ensure_importable(settings)
    config.attributes[SETTINGS_ATTRIBUTE] = settings
    return settings


def _x_arguments(config: Config) -> dict[str, str]:
    values = getattr(config.cmd_opts, "x", None) or []
    result: dict[str, str] = {}
    for item in values:
        key, sep, value = str(item).partition("=")
        if sep:
            result[key.strip()] = value.strip()
    return result
