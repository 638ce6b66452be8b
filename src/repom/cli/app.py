"""The ``repom`` command line: ``repom db ...`` (migrations) and ``repom info``."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Annotated, Any

import typer

from repom.cli._output import (
    RepomCommand,
    RepomGroup,
    console,
    err_console,
    escape,
    mask_secrets,
    remember_url,
    state,
)
from repom.cli.db import ConfigOption, MetadataOption, ModelsOption, UrlOption, db_app

app = typer.Typer(
    name="repom",
    cls=RepomGroup,
    help="repom: migrations and diagnostics for SQLAlchemy services.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(db_app, name="db")


class _WarningLine(logging.Handler):
    """repom's warnings (such as the SQLite fallback of environment=dev) as one line on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        message = mask_secrets(" ".join(record.getMessage().split()))
        err_console.print(f"[yellow]Warning:[/] {escape(message.removeprefix('repom: '))}")


def _show_warnings() -> None:
    logger = logging.getLogger("repom")
    if not any(isinstance(handler, _WarningLine) for handler in logger.handlers):
        handler = _WarningLine(logging.WARNING)
        logger.addHandler(handler)


def _importable_working_directory() -> None:
    """Modules named by CONFIG_HOOK (an application's settings) import from the working
    directory, as they do under ``python -m`` and as the models do (Alembic's
    ``prepend_sys_path = .``): the command builds the configuration the application builds."""
    cwd = os.getcwd()
    if cwd not in sys.path and os.path.realpath(cwd) not in map(os.path.realpath, sys.path):
        sys.path.insert(0, cwd)


def _version(value: bool) -> None:
    if value:
        from repom import __version__

        console.print(f"repom {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks (also REPOM_DEBUG=1).")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Show the version and exit.", callback=_version, is_eager=True
        ),
    ] = False,
) -> None:
    """repom: migrations and diagnostics for SQLAlchemy services."""
    if debug:
        state.debug = True
    _show_warnings()
    _importable_working_directory()


@app.command(cls=RepomCommand)
def info(
    url: UrlOption = None,
    models: ModelsOption = None,
    metadata: MetadataOption = None,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Show configuration, server, models, tables and the current revision.

    The URL is shown with its password masked. Nothing is created: a SQLite file that does not
    exist yet is reported as such. Exit code 1 when the database cannot be reached.
    """
    from repom.migrations.admin import database_info
    from repom.migrations.project import find_project
    from repom.urls import validate_url

    if url is not None:
        validate_url(url)
        remember_url(url)
    else:
        from repom.config import get_config

        remember_url(get_config().url)
    settings = find_project(config, url=url, models=models, metadata=metadata)
    if url is None and settings.url:
        remember_url(settings.url)
    data = database_info(settings)
    # a driver's error may echo part of a password (e.g. a host name after an unescaped "@")
    shown = mask_secrets(data.as_dict())
    if as_json:
        console.print_json(json.dumps(shown, default=str))
    else:
        _print_info(shown)
    if data.connect_error is not None:
        raise typer.Exit(1)


def _line(label: str, value: Any, style: str = "") -> None:
    text = escape(str(value))
    console.print(f"[bold]{label:<16}[/]{f'[{style}]{text}[/]' if style else text}")


def _print_info(data: dict[str, Any]) -> None:
    _line("database", data["url"])
    _line("driver", f"{data['backend']}+{data['driver']}")
    if data["async_url"]:
        _line("async url", data["async_url"])
    _line("environment", data["environment"])
    for replica in data.get("replicas") or []:
        _line("replica", replica)
    pool = dict(data["pool"])
    pool_text = pool.pop("class") + "".join(f", {key}={value}" for key, value in pool.items())
    _line("pool", pool_text)
    if data["connect_error"]:
        _line("server", f"unreachable: {data['connect_error']}", "red")
    elif data.get("missing_file"):
        where = f"{data['missing_file']} does not exist yet (created on first use)"
        _line("server", f"{data['backend']}: {where}", "yellow")
    else:
        _line("server", f"{data['backend']} {data['server_version'] or '?'}")
        if data.get("connections_text"):
            fits = (data.get("connections") or {}).get("fits")
            _line("connections", data["connections_text"], "red" if fits is False else "")
    if data["models_error"]:
        _line("models", data["models_error"], "red")
    elif data["models"]:
        _line("models", ", ".join(data["models"]))
        _line("metadata", ", ".join(data["metadata"]))
        for table in data["tables"]:
            exists = table["in_database"]
            mark = "" if exists is None else (" (in database)" if exists else " (missing)")
            model = f" <- {table['model']}" if table["model"] else ""
            _line("  table", f"{table['table']}{model}{mark}")
    else:
        _line("models", "not configured ([repom] models in alembic.ini, REPOM_MODELS, --models)")
    if data["migrations_error"]:
        _line("migrations", data["migrations_error"], "red")
    elif data["migrations"]:
        _line("migrations", data["migrations"])
        _line("heads", ", ".join(data["heads"]) or "none")
        if data["current"] is not None:
            current = ", ".join(data["current"]) or "base (nothing applied)"
            at_head = sorted(data["current"]) == sorted(data["heads"])
            _line("current", f"{current}{' (head)' if at_head and data['heads'] else ''}")
    else:
        _line("migrations", "none (repom db init)")
