"""Console output and error reporting for the ``repom`` command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup, TyperOption

__all__ = [
    "RepomCommand",
    "RepomGroup",
    "confirm",
    "console",
    "describe_error",
    "err_console",
    "escape",
    "interactive",
    "mask_secrets",
    "print_error",
    "remember_url",
    "state",
]


class _State:
    debug: bool = os.environ.get("REPOM_DEBUG", "").lower() in ("1", "true", "yes")
    target: str | None = None  # masked URL of the database the command works on
    secrets: tuple[str, ...] = ()
    config: Path | None = None  # `repom db -c FILE ...`: the project of every db command


state = _State()
console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def _collapse(text: str) -> str:
    text = " ".join(text.split())
    return text.split(" (Background on this error at:")[0]


def _mask_secrets(text: str) -> str:
    """Remove a password that a driver may have echoed back."""
    for secret in state.secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def mask_secrets(value: Any) -> Any:
    """*value* (a string, or lists/dicts of them) without the remembered passwords."""
    if isinstance(value, str):
        return _mask_secrets(value)
    if isinstance(value, dict):
        return {key: mask_secrets(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask_secrets(item) for item in value]
    return value


def remember_url(url: str) -> None:
    """Note the database URL in use: error messages name it (masked) and never show its password."""
    from repom.urls import mask_url, url_secrets

    state.target = mask_url(url)
    # every candidate: a password with an unescaped "@" is cut short by SQLAlchemy's parser
    state.secrets = (*state.secrets, *url_secrets(url))


def describe_error(exc: BaseException) -> str:
    """One readable line for *exc* (no traceback, no SQL, no secrets)."""
    from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

    from repom.exceptions import ConnectionLost, RepomError

    if isinstance(exc, DBAPIError):
        orig: Any = exc.orig
        lines = str(orig if orig is not None else exc).splitlines()
        # PostgreSQL appends the statement ("LINE 1: ...") and a caret line: not for users
        kept = [ln for ln in lines if not ln.startswith("LINE ") and ln.strip() != "^"]
        detail = _collapse("\n".join(kept))
        where = f" ({state.target})" if state.target else ""
        # no statement: the failure happened while connecting (refused, unknown host, auth, ...)
        connecting = isinstance(exc, OperationalError) and exc.statement is None
        if connecting or isinstance(exc, ConnectionLost) or exc.connection_invalidated:
            return _mask_secrets(f"database connection failed{where}: {detail}")
        return _mask_secrets(f"database error{where}: {detail}")
    if isinstance(exc, RepomError):
        return _mask_secrets(_collapse(str(exc)) or type(exc).__name__)
    if isinstance(exc, SQLAlchemyError):
        return _mask_secrets(f"{type(exc).__name__}: {_collapse(str(exc))}")
    if isinstance(exc, OSError):
        return _mask_secrets(_collapse(str(exc)))
    text = _mask_secrets(_collapse(str(exc)))
    return f"unexpected error: {type(exc).__name__}: {text} (run with --debug for the traceback)"


def print_error(message: str) -> None:
    err_console.print(f"[bold red]Error:[/] {escape(message)}")


# --------------------------------------------------------------------------- help without <bool>


def _plain_flags(params: list[Any]) -> list[Any]:
    """Flags (``--yes``, ``--sql``, ``--help``) take no value: show no type for them.  typer's
    rich help labels every option with its type, so flags would read ``--yes <bool>``."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    return params


class RepomCommand(TyperCommand):
    """A command whose help shows flags as plain flags."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_flags(super().get_params(ctx))


class RepomGroup(TyperGroup):
    """A command group whose help shows flags as plain flags."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_flags(super().get_params(ctx))


# --------------------------------------------------------------------------- confirmation


def interactive() -> bool:
    """Whether someone can answer a question (standard input is a terminal)."""
    return sys.stdin is not None and sys.stdin.isatty()


def confirm(question: str, *, yes: bool, refusal: str) -> None:
    """Go on when *yes* (``--yes``) or when the person at the terminal answers yes.

    Without a terminal, :class:`~repom.migrations.errors.MigrationError` (``refusal``, naming
    ``--yes``); a "no" ends the command with exit code 1 and nothing changed.
    """
    import typer

    from repom.migrations.errors import MigrationError

    if yes:
        return
    if not interactive():
        raise MigrationError(f"{refusal}: no terminal to confirm on; pass --yes to go ahead")
    if not typer.confirm(question, default=False, err=True):
        print_error("aborted: nothing was changed")
        raise typer.Exit(1)
