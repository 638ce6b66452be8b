"""The ``repom`` command line (typer + rich).

``main()`` is the console-script entry point.  A user mistake (bad URL, unknown revision, no
migration folder, models that do not import) ends with one line on stderr and exit code 1;
``--debug`` (or ``REPOM_DEBUG=1``) shows the traceback instead.  Usage errors exit with 2.
"""

from __future__ import annotations

from collections.abc import Sequence

from repom.cli._output import describe_error, print_error, state
from repom.cli.app import app

__all__ = ["app", "main"]


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print_error(str(code))
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with *argv* (default: ``sys.argv[1:]``); return the exit code."""
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
