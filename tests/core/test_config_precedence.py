"""Keyword arguments win over the environment, on every pydantic-settings repom supports.

pydantic-settings before 2.12 let an environment variable override a keyword argument given by
field name (``RepomConfig(database_url=...)`` lost to ``DATABASE_URL``); its declared minimum in
pyproject.toml is 2.12, and the suite runs on that minimum (requirements/min.lock).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from repom.config import RepomConfig


def test_keywords_win_over_environment_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("DATABASE_URL", "postgresql://env@db/env")
    monkeypatch.setenv("REPOM_POOL_SIZE", "7")
    monkeypatch.setenv("REPOM_MAX_OVERFLOW", "3")
    config = RepomConfig(database_url="sqlite:///kw.sqlite3", pool_size=2)
    assert (config.database_url, config.pool_size) == ("sqlite:///kw.sqlite3", 2)
    assert config.max_overflow == 3  # what the keywords leave out still comes from the environment
    assert RepomConfig().pool_size == 7
