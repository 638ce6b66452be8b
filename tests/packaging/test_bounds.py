"""pyproject.toml's dependency bounds, its extras and the locks agree with each other.

CI runs the suite on ``requirements/min.lock``; that proves the declared lower bounds only while
the lock pins exactly those versions, which is what these checks hold on to.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]
CANONICAL = (
    "postgres",
    "asyncpg",
    "sqlite",
    "mysql",
    "crypto",
    "migrations",
    "fastapi",
    "prometheus",
)
ALIASES = {"async": {"sqlite"}, "async-all": {"sqlite", "asyncpg"}}


def read_lock(name: str) -> dict[str, Version]:
    """``{canonical name: pinned version}`` of ``requirements/NAME.lock``."""
    pins: dict[str, Version] = {}
    for raw in (ROOT / "requirements" / name).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;]+)", line)
        assert match, f"{name}: not an exact pin: {raw!r}"
        pins[canonicalize_name(match[1])] = Version(match[3])
    return pins


def self_extras(requirement: Requirement) -> set[str]:
    assert requirement.name == "repom", requirement
    return set(requirement.extras)


def third_party(group: list[str]) -> list[Requirement]:
    return [r for r in map(Requirement, group) if r.name != "repom"]


def lower_bound(requirement: Requirement) -> Version:
    lows = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    assert len(lows) == 1, f"{requirement}: one '>=' lower bound expected"
    return lows[0]


def user_requirements() -> list[Requirement]:
    """What a user can get: the base dependencies, every canonical extra and `testing`."""
    found = [Requirement(r) for r in PROJECT["dependencies"]]
    for extra in (*CANONICAL, "testing"):
        found.extend(third_party(EXTRAS[extra]))
    return found


def test_extras_are_one_per_purpose() -> None:
    assert set(EXTRAS) == {*CANONICAL, "testing", "all", "dev", *ALIASES}
    # `all` is every runtime extra, and neither the contributor tools nor the test tools
    (everything,) = map(Requirement, EXTRAS["all"])
    assert self_extras(everything) == set(CANONICAL)
    # the compatibility names are aliases of canonical extras, nothing of their own
    for alias, targets in ALIASES.items():
        (only,) = map(Requirement, EXTRAS[alias])
        assert self_extras(only) == targets, alias
    # no package is listed by two canonical extras, except greenlet (each async driver needs it)
    seen: dict[str, str] = {}
    for extra in (*CANONICAL, "testing"):
        for requirement in third_party(EXTRAS[extra]):
            name = canonicalize_name(requirement.name)
            if name != "greenlet":
                assert name not in seen, f"{name} in both {seen.get(name)} and {extra}"
            seen[name] = extra
    # `dev` is reached from no other extra
    for extra, group in EXTRAS.items():
        for requirement in map(Requirement, group):
            if requirement.name == "repom":
                assert "dev" not in requirement.extras, extra


def test_async_drivers_bring_greenlet_and_the_base_does_not() -> None:
    base = {canonicalize_name(Requirement(r).name) for r in PROJECT["dependencies"]}
    assert "greenlet" not in base
    for extra in ("asyncpg", "sqlite", "mysql"):
        assert "greenlet" in {canonicalize_name(r.name) for r in third_party(EXTRAS[extra])}


@pytest.mark.parametrize("requirement", user_requirements(), ids=str)
def test_min_lock_pins_each_declared_lower_bound(requirement: Requirement) -> None:
    pins = read_lock("min.lock")
    name = canonicalize_name(requirement.name)
    assert name in pins, f"requirements/min.lock does not pin {name}"
    assert pins[name] == lower_bound(requirement), (
        f"pyproject declares {requirement}, requirements/min.lock pins {name}=={pins[name]}: "
        "the suite would not prove the declared minimum"
    )


@pytest.mark.parametrize("lock", ["dev.lock", "min.lock", "sa21.lock"])
def test_every_lock_satisfies_pyproject(lock: str) -> None:
    pins = read_lock(lock)
    for requirement in user_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{lock} does not pin {name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{lock} pins {name}=={pins[name]}, pyproject declares {requirement}"
        )


def test_locks_cover_both_sqlalchemy_series() -> None:
    assert read_lock("dev.lock")["sqlalchemy"].release[:2] == (2, 0)
    assert read_lock("min.lock")["sqlalchemy"].release[:2] == (2, 0)
    assert read_lock("sa21.lock")["sqlalchemy"].release[:2] == (2, 1)


def test_sa21_lock_is_the_dev_lock_on_sqlalchemy_21() -> None:
    """sa21.lock differs from dev.lock only where SQLAlchemy 2.1 forces it."""
    dev, sa21 = read_lock("dev.lock"), read_lock("sa21.lock")
    dropped = {"fastapi-users-db-sqlalchemy"}  # 7.x requires SQLAlchemy < 2.1
    assert set(dev) - set(sa21) == dropped
    assert set(sa21) == set(dev) - dropped
    changed = {name for name in sa21 if sa21[name] != dev[name]}
    assert changed == {"sqlalchemy"}
