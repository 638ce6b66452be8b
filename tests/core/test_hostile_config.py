"""Issue 14, items 1 and 2: no password in any error, repr, log line or CLI output; timeouts that
cannot switch themselves off (rounded up to whole ms) and non-finite durations refused, typed."""

from __future__ import annotations

import logging
import math
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import text

from repom.config import RepomConfig, build_config, get_config
from repom.database import AsyncDatabase, Database
from repom.exceptions import ConfigurationError, InvalidTransactionOption
from repom.transactions import transaction
from repom.urls import convert_to_async_uri, convert_to_sync_uri, mask_url, validate_url
from tests.cli._support import REPOM, cli_env, run
from tests.core.conftest import Flavor

# two halves: a password with an unescaped "@" is cut short by SQLAlchemy's URL parser, which
# then takes the second half for part of the host name
HALF_1, HALF_2 = "Hunter2xQ", "Zq9vW"
SECRET = f"{HALF_1}@{HALF_2}"
MALFORMED = [
    f"postgresql://app:{HALF_1}@h:notaport/x",  # the example: a port that is not a number
    f"postgresql//app:{HALF_1}@h/x",  # "://" mistyped: not parsed at all
    f"postgresql://app:{SECRET}@h:notaport/x",
]


def _leaks(text_: str) -> bool:
    return HALF_1 in text_ or HALF_2 in text_


def _chain(exc: BaseException | None) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _assert_clean(exc: BaseException, caplog: pytest.LogCaptureFixture | None = None) -> None:
    for link in _chain(exc):
        assert not _leaks(str(link)), f"{type(link).__name__}: {link}"
        assert not _leaks(repr(link)), repr(link)
    if caplog is not None:
        for record in caplog.records:
            assert not _leaks(record.getMessage()), record.getMessage()


# --------------------------------------------------------------------------- item 1: secrets


@pytest.mark.parametrize("url", MALFORMED)
def test_constructor_raises_a_typed_error_without_the_password(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConfigurationError) as info:
        RepomConfig(database_url=url)
    assert info.value.variable == "DATABASE_URL / REPOM_DATABASE_URL"
    assert "malformed database URL" in str(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None
    _assert_clean(info.value, caplog)
    # build_config(), which the guides and `repom info` use, says the same
    with pytest.raises(ConfigurationError) as built:
        build_config(database_url=url)
    _assert_clean(built.value, caplog)


@pytest.mark.parametrize("variable", ["DATABASE_URL", "REPOM_DATABASE_URL"])
@pytest.mark.parametrize("url", MALFORMED)
def test_environment_url(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, variable: str, url: str
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(variable, url)
    with pytest.raises(ConfigurationError) as info:
        get_config()
    assert "DATABASE_URL" in str(info.value)
    _assert_clean(info.value, caplog)


@pytest.mark.parametrize("url", MALFORMED)
def test_dotenv_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, url: str
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(f"DATABASE_URL={url}\n")
    with pytest.raises(ConfigurationError) as info:
        get_config()
    _assert_clean(info.value, caplog)


def test_config_hook_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pkg = tmp_path / "hostile_hook_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "conf.py").write_text(
        textwrap.dedent(
            f"""
            from repom.config import RepomConfig

            def make():
                return RepomConfig(database_url={MALFORMED[0]!r})
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CONFIG_HOOK", "hostile_hook_pkg.conf:make")
    with pytest.raises(ConfigurationError) as info:
        get_config()
    assert "malformed database URL" in str(info.value)
    _assert_clean(info.value, caplog)


def test_validate_url_errors_are_masked_and_unchained() -> None:
    for url in [*MALFORMED, f"nosuchdb://app:{SECRET}@h/x"]:
        with pytest.raises(ConfigurationError) as info:
            validate_url(url)
        assert info.value.__cause__ is None and info.value.__suppress_context__
        _assert_clean(info.value)
    with pytest.raises(ConfigurationError, match="notaport"):
        validate_url(MALFORMED[0])  # the reason is still given when it holds no secret


def test_reprs_and_masking_hide_the_whole_password() -> None:
    url = f"postgresql+psycopg://app:{SECRET}@127.0.0.1:1/x"
    assert not _leaks(repr(RepomConfig(database_url=url)))
    assert not _leaks(repr(Database(url)))
    assert not _leaks(repr(AsyncDatabase(convert_to_async_uri(url))))
    assert mask_url(url) == "postgresql+psycopg://app:***@127.0.0.1:1/x"
    assert mask_url(f"postgresql://h/x?sslmode=disable&password={HALF_1}") == (
        "postgresql://h/x?sslmode=disable&password=***"
    )
    assert mask_url(MALFORMED[1]) == "postgresql//***@h/x"
    assert mask_url("postgresql://u:p@h/d") == "postgresql://u:***@h/d"


@pytest.mark.parametrize("url", MALFORMED)
def test_cli_info_url_flag(tmp_path: Path, url: str) -> None:
    result = run(["info", "--url", url], cwd=tmp_path, env=cli_env(), expect=1)
    assert "malformed database URL" in result.stderr
    assert not _leaks(result.output), result.output


def test_cli_info_env_url_with_at_in_password(tmp_path: Path) -> None:
    """A URL SQLAlchemy parses (wrongly, host "Zq9vW@127.0.0.1"): printed masked all the same."""
    url = f"postgresql+psycopg://app:{SECRET}@127.0.0.1:1/x"
    result = run(["info"], cwd=tmp_path, env=cli_env(url), expect=None)
    assert REPOM and "127.0.0.1" in result.output
    assert not _leaks(result.output), result.output


# --------------------------------------------------------------------------- item 2: timeouts


async def test_tiny_transaction_timeout_is_one_millisecond(flavor: Flavor) -> None:
    if flavor.backend != "postgresql":
        pytest.skip("timeout= is PostgreSQL only")
    from repom.exceptions import StatementTimeout

    for seconds, shown in [(0.0004, "1ms"), (0.07, "70ms"), (1.0000001, "1001ms")]:
        try:
            async with flavor.enter(transaction(database=flavor.db, timeout=seconds)) as s:
                value = (await flavor.run(s.execute(text("SHOW statement_timeout")))).scalar()
        except StatementTimeout:
            # on a loaded machine 1 ms can cancel the SHOW itself: the timeout is on, not 0
            assert shown == "1ms"
            continue
        assert value == shown, (seconds, value)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 0, 0.0, -0.5, 1e12, True, "1"])
async def test_bad_transaction_timeouts_are_refused(flavor: Flavor, bad: object) -> None:
    flavor.statements.clear()
    with pytest.raises(InvalidTransactionOption) as info:
        async with flavor.enter(transaction(database=flavor.db, timeout=bad)):  # type: ignore[arg-type]
            pass
    assert info.value.option == "timeout"
    assert "timeout" in str(info.value)
    assert flavor.statements == []  # refused before anything reached the database


async def _show_statement_timeout(url: str, mode: str, config: RepomConfig) -> str:
    query = text("SHOW statement_timeout")
    if mode == "sync":
        db = Database(convert_to_sync_uri(url), config=config)
        try:
            with db.engine.connect() as conn:
                return str(conn.execute(query).scalar())
        finally:
            db.dispose()
    adb = AsyncDatabase(convert_to_async_uri(url), config=config)
    try:
        async with adb.engine.connect() as aconn:
            return str((await aconn.execute(query)).scalar())
    finally:
        await adb.dispose()


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_tiny_config_statement_timeout_is_one_millisecond(pg_url: str, mode: str) -> None:
    # 1 ms is short enough to cancel the dialect's own first-connect queries now and then
    # (asyncpg's type introspection): that, too, shows the timeout is on; before the fix the
    # setting was 0, "no timeout", and nothing was ever cancelled
    outcomes = []
    for _ in range(5):
        try:
            outcomes.append(
                await _show_statement_timeout(pg_url, mode, RepomConfig(statement_timeout=0.0004))
            )
        except Exception as exc:
            assert "statement timeout" in str(exc), exc
            outcomes.append("cancelled")
    assert set(outcomes) <= {"1ms", "cancelled"}, outcomes
    assert await _show_statement_timeout(pg_url, mode, RepomConfig(statement_timeout=0.07)) == (
        "70ms"
    )


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("statement_timeout", math.nan),
        ("statement_timeout", math.inf),
        ("statement_timeout", 0),
        ("statement_timeout", -1),
        ("statement_timeout", 1e12),
        ("pool_timeout", math.nan),
        ("pool_timeout", math.inf),
        ("pool_timeout", -1),
        ("sqlite_busy_timeout", math.nan),
        ("sqlite_busy_timeout", math.inf),
        ("sqlite_busy_timeout", -1),
        ("pool_recycle", math.inf),
    ],
)
def test_bad_config_durations_are_refused(option: str, value: float) -> None:
    with pytest.raises(ConfigurationError) as info:
        RepomConfig(**{option: value})
    assert option in str(info.value)
    assert info.value.variable == f"REPOM_{option.upper()}"
    assert info.value.__context__ is None


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0"])
def test_bad_statement_timeout_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("REPOM_STATEMENT_TIMEOUT", value)
    with pytest.raises(ConfigurationError, match="statement_timeout") as info:
        get_config()
    assert info.value.variable == "REPOM_STATEMENT_TIMEOUT"


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(("seconds", "expected"), [(0.0004, 1), (0, 0), (2.5, 2500)])
async def test_sqlite_busy_timeout_rounds_up(
    tmp_path: Path, mode: str, seconds: float, expected: int
) -> None:
    url = f"sqlite:///{tmp_path / 'busy.sqlite3'}"
    config = RepomConfig(sqlite_busy_timeout=seconds)
    query = text("PRAGMA busy_timeout")
    if mode == "sync":
        db = Database(url, config=config)
        with db.engine.connect() as conn:
            value = conn.execute(query).scalar()
        db.dispose()
    else:
        adb = AsyncDatabase(convert_to_async_uri(url), config=config)
        async with adb.engine.connect() as aconn:
            value = (await aconn.execute(query)).scalar()
        await adb.dispose()
    assert value == expected
