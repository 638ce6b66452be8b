"""The ``repom`` command without the ``migrations`` extra, simulated in this environment.

tests/packaging/test_install.py proves it on a real bare install; these run everywhere, fast: a
fresh interpreter in which the extra's modules cannot be imported (``sys.modules[name] = None``).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

HINT = 'pip install "repom[migrations]"'


def repom_without(
    *modules: str, args: tuple[str, ...] = ("--help",)
) -> subprocess.CompletedProcess[str]:
    blocked = "".join(f"sys.modules[{name!r}] = None; " for name in modules)
    code = f"import sys; {blocked}from repom.cli import main; sys.exit(main({list(args)!r}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("modules", "named"),
    [
        (("typer", "rich", "alembic"), "typer, rich, alembic are not installed"),
        (("typer",), "typer is not installed"),
        (("alembic",), "alembic is not installed"),  # typer and rich alone do not run a command
    ],
)
def test_one_line_naming_the_extra(modules: tuple[str, ...], named: str) -> None:
    done = repom_without(*modules)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"repom: the command line needs the 'migrations' extra ({named}): {HINT}"
    ]


def test_with_the_extra_the_command_runs() -> None:
    done = repom_without(args=("--version",))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("repom ")


def test_a_missing_repom_module_is_not_blamed_on_the_extra() -> None:
    """Only a third-party module gets the install hint; a broken repom shows its real error."""
    done = repom_without("repom.cli.db")
    assert done.returncode != 0
    assert HINT not in done.stderr
    assert "ModuleNotFoundError" in done.stderr and "repom.cli.db" in done.stderr
