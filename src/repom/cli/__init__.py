"""The ``repom`` command line (typer + rich).

``main()`` is the console-script entry point.  A user mistake (bad URL, unknown revision, no
migration folder, models that do not import) ends with one line on stderr and exit code 1;
``--debug`` (or ``REPOM_DEBUG=1``) shows the traceback instead.  Usage errors exit with 2.

The command line needs the ``migrations`` extra (Alembic, typer, rich), which a bare
``pip install repom`` does not bring.  Without it this package still imports, and ``main()``
prints which extra to install and exits with 1 instead of a ``ModuleNotFoundError`` traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.util import find_spec

__all__ = ["app", "main"]

#: what the command line imports beyond repom's own dependencies: the ``migrations`` extra
CLI_REQUIREMENTS = ("typer", "rich", "alembic")
INSTALL_HINT = 'pip install "repom[migrations]"'


def missing_requirements() -> list[str]:
    """The modules of the ``migrations`` extra that cannot be imported here."""
    missing = []
    for name in CLI_REQUIREMENTS:
        try:
            found = find_spec(name) is not None
        except (ImportError, ValueError):  # a broken or half-imported installation
            found = False
        if not found:
            missing.append(name)
    return missing


def _not_installed(error: ModuleNotFoundError) -> list[str]:
    """What *error* says is missing, when it is a third-party module (else re-raise it)."""
    name = error.name or ""
    if not name or name.partition(".")[0] == "repom":
        raise error
    return missing_requirements() or [name]


try:
    from repom.cli._output import describe_error, print_error, state
    from repom.cli.app import app
except ModuleNotFoundError as exc:  # a bare `pip install repom`: main() says what to install
    _MISSING: list[str] = _not_installed(exc)
else:
    _MISSING = []


def _missing_extra(modules: Sequence[str]) -> int:
    verb = "is" if len(modules) == 1 else "are"
    sys.stderr.write(
        f"repom: the command line needs the 'migrations' extra ({', '.join(modules)} {verb} not "
        f"installed): {INSTALL_HINT}\n"
    )
    return 1


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print_error(str(code))
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with *argv* (default: ``sys.argv[1:]``); return the exit code."""
    missing = _MISSING or missing_requirements()  # Alembic is imported only by the commands
    if missing:
        return _missing_extra(missing)
    import typer.main

    command = typer.main.get_command(app)
    try:
        command.main(
            args=list(argv) if argv is not None else None, prog_name="repom", standalone_mode=True
        )
    except SystemExit as exc:
        return _exit_code(exc.code)
    except KeyboardInterrupt:
        print_error("interrupted")
        return 130
    except Exception as exc:
        if state.debug:
            raise
        print_error(describe_error(exc))
        return 1
    return 0  # pragma: no cover - standalone mode always exits
