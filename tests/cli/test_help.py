"""Every command's --help: flags read as flags (no `<bool>`), and the new commands are there."""

from __future__ import annotations

import re
from typing import Any

import pytest

from repom.cli import app, main


def _commands(group: Any, prefix: list[str]) -> list[list[str]]:
    found = [prefix]
    for name, command in getattr(group, "commands", {}).items():
        found.extend(_commands(command, [*prefix, name]))
    return found


def test_no_bool_placeholder_in_any_help(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import typer.main

    monkeypatch.setenv("COLUMNS", "200")
    paths = _commands(typer.main.get_command(app), [])
    for new in ("merge", "show", "heads", "history", "current"):
        assert ["db", new] in paths
    flags_seen = 0
    for path in paths:
        assert main([*path, "--help"]) == 0, path
        out = capsys.readouterr().out
        assert "<bool>" not in out and "BOOLEAN" not in out, (path, out)
        # the flags are listed, with their help, and without any value placeholder after them
        help_line = next(line for line in out.splitlines() if "--help" in line)
        assert re.search(r"--help\s+-h\s+Show this message and exit\.", help_line), help_line
        flags_seen += sum("--yes" in line or "--sql" in line for line in out.splitlines())
    assert flags_seen >= 4  # downgrade --yes/--sql, upgrade --sql, drop --yes


def test_flags_still_work_and_take_no_value(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "drop", "--yes=1"]) == 2
    assert "does not take a value" in capsys.readouterr().err
