"""Real installs of the checkout: a bare ``pip install repom``, and resolution beside old releases.

These run pip against the package index, so they carry the ``packaging`` marker
(``-m "not packaging"`` leaves them out).  The checkout is built into a wheel once per session.
The bare-install venv is cached in the temporary directory, keyed by ``requirements/dev.lock``
and ``pyproject.toml``; only repom itself is reinstalled into it on every run.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "dev.lock"
PYPROJECT = ROOT / "pyproject.toml"
PROJECT = tomllib.loads(PYPROJECT.read_text())["project"]
HINT = 'pip install "repom[migrations]"'

pytestmark = pytest.mark.packaging


def pip(python: Path | str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and done.returncode != 0:
        pytest.fail(f"pip {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """repom built from a clean copy of the checkout (no build files left in the work tree)."""
    source = tmp_path_factory.mktemp("checkout")
    shutil.copy(PYPROJECT, source)
    shutil.copy(ROOT / "README.md", source)
    shutil.copytree(
        ROOT / "src",
        source / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"),
    )
    out = tmp_path_factory.mktemp("wheel")
    pip(sys.executable, "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(source))
    (built,) = out.glob("repom-*.whl")
    return built


@pytest.fixture(scope="session")
def bare_venv(wheel: Path) -> Iterator[Path]:
    """A venv with repom and only its base dependencies, at the versions of the lock."""
    key = hashlib.sha256(LOCK.read_bytes() + PYPROJECT.read_bytes()).hexdigest()[:16]
    home = Path(tempfile.gettempdir()) / "repom-packaging"
    home.mkdir(exist_ok=True)
    venv = home / f"bare-{key}"
    with open(home / f"bare-{key}.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # another test session may be building the same venv
        ready = venv / ".repom-base-dependencies"
        if not ready.exists():
            for stale in home.glob("bare-*"):  # built for another lock or pyproject.toml
                if stale.is_dir() and stale != venv:
                    shutil.rmtree(stale, ignore_errors=True)
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            pip(venv / "bin" / "python", "install", "--quiet", "-c", str(LOCK),
                *PROJECT["dependencies"])  # fmt: skip
            ready.write_text(key)
        pip(venv / "bin" / "python", "install", "--quiet", "--no-deps", "--force-reinstall",
            str(wheel))  # fmt: skip
        yield venv


def run(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REPOM_", "PYTHON"))}
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=venv,
    )


def test_bare_install_has_none_of_the_extras(bare_venv: Path) -> None:
    """The premise of the next test: nothing of the migrations (or any other) extra is there."""
    probe = (
        "import importlib.util as u; "
        "print(','.join(m for m in ('typer', 'rich', 'alembic', 'click', 'fastapi', 'psycopg', "
        "'asyncpg', 'aiosqlite', 'cryptography', 'pytest') if u.find_spec(m)))"
    )
    done = run(bare_venv, "python", "-c", probe)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


@pytest.mark.parametrize(
    "command",
    [["repom", "--help"], ["repom", "db", "upgrade"], ["python", "-m", "repom.cli", "info"]],
    ids=["help", "db-upgrade", "python-m"],
)
def test_cli_without_the_extra_names_it(bare_venv: Path, command: list[str]) -> None:
    done = run(bare_venv, *command)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr  # one line, no traceback
    assert HINT in lines[0]
    assert "typer, rich, alembic are not installed" in lines[0]


def test_bare_install_works_without_extras(bare_venv: Path) -> None:
    """Sync SQLite needs no extra: a database, a transaction, a repository."""
    code = """
from sqlalchemy import String, select
from sqlalchemy.orm import Mapped, mapped_column
from repom.database import Database
from repom.models import Base
from repom.repository import Repository

class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(20))

db = Database("sqlite://")
db.create_all(Base.metadata)
with db.transaction() as session:
    Repository(session, Note).create({"text": "hello"})
with db.transaction() as session:
    print(session.scalars(select(Note.text)).all())
"""
    done = run(bare_venv, "python", "-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['hello']"


def declared_minimum(package: str) -> str:
    """The lower bound pyproject.toml declares for *package* (base dependency or extra)."""
    groups = [PROJECT["dependencies"], *PROJECT["optional-dependencies"].values()]
    for group in groups:
        for requirement in group:
            name = requirement.split(">=")[0].split("[")[0].strip()
            if name.lower() == package and ">=" in requirement:
                return requirement.split(">=")[1].split(",")[0].strip()
    raise AssertionError(f"no lower bound for {package} in pyproject.toml")


def resolve(wheel: Path, report: Path, *pins: str) -> subprocess.CompletedProcess[str]:
    """``pip install --dry-run`` of repom[fastapi,asyncpg,migrations] beside *pins*."""
    return pip(
        sys.executable,
        "install",
        "--dry-run",
        "--ignore-installed",
        "--quiet",
        "--report",
        str(report),
        f"{wheel}[fastapi,asyncpg,migrations]",
        *pins,
        check=False,
    )


@pytest.mark.parametrize(
    ("fastapi", "pydantic"),
    [
        ("0.121.*", "2.10.*"),  # an app one release behind (the example)
        ("declared", "declared"),  # exactly the lower bounds pyproject.toml declares
    ],
)
def test_resolves_beside_old_fastapi_and_pydantic(
    wheel: Path, tmp_path: Path, fastapi: str, pydantic: str
) -> None:
    fastapi = declared_minimum("fastapi") if fastapi == "declared" else fastapi
    pydantic = declared_minimum("pydantic") if pydantic == "declared" else pydantic
    report = tmp_path / "report.json"
    done = resolve(wheel, report, f"fastapi=={fastapi}", f"pydantic=={pydantic}")
    assert done.returncode == 0, done.stderr[-4000:]
    chosen = {
        item["metadata"]["name"].lower(): Version(item["metadata"]["version"])
        for item in json.loads(report.read_text())["install"]
    }
    assert chosen["repom"] == Version(PROJECT["version"])
    assert chosen["fastapi"] in SpecifierSet(f"=={fastapi}")
    assert chosen["pydantic"] in SpecifierSet(f"=={pydantic}")
    for package in ("sqlalchemy", "pydantic-settings", "asyncpg", "greenlet", "alembic", "typer"):
        assert package in chosen, sorted(chosen)


def test_a_fastapi_older_than_the_minimum_is_refused(wheel: Path, tmp_path: Path) -> None:
    """The control: the resolver does read repom's bounds (FastAPI 0.120 has no ``scope=``)."""
    done = resolve(wheel, tmp_path / "report.json", "fastapi==0.120.*")
    assert done.returncode != 0
    assert "ResolutionImpossible" in done.stderr or "conflict" in done.stderr.lower()
