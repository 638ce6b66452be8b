"""docs/first-service.md, run as written: its files written into an empty folder, its commands
run in order (migrations through the ``repom`` command, the project's own pytest run on SQLite and
on PostgreSQL), then the service started with uvicorn and called over HTTP.

The install step is the environment running this test (the project's venv, or the compatibility
venvs of ``.ci/run``); everything after it is typed as the page shows.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support import require_postgres

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "first-service.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
FILE_HEADER = re.compile(r"^# ((?:[\w.-]+/)*[\w.-]+\.\w+|\.env)$")
SETUP = ("python -m venv", ". .venv/bin/activate", "pip install")


def blocks() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(GUIDE.read_text())]


def files() -> dict[str, str]:
    found = {}
    for lang, body in blocks():
        first = body.split("\n", 1)[0]
        match = FILE_HEADER.match(first)
        if lang in ("python", "toml", "text") and match:
            found[match.group(1)] = body
    return found


def commands() -> list[str]:
    return [
        line[2:].strip()
        for lang, body in blocks()
        if lang == "console"
        for line in body.splitlines()
        if line.startswith("$ ")
    ]


def test_the_guide_names_every_file_of_its_layout() -> None:
    written = files()
    for path in ("shop/settings.py", "shop/models.py", "shop/main.py", "tests/test_api.py"):
        assert path in written
    assert ".env" in written and "pyproject.toml" in written
    assert [c for c in commands() if not c.startswith(SETUP)][:3] == [
        "repom db init --models shop.models",
        'repom db revision --autogenerate -m "authors and books"',
        "repom db upgrade",
    ]


def _env(project: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("REPOM_", "DATABASE_URL", "CONFIG_HOOK", "PYTEST_"))
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    return env


def _run(command: str, project: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        shlex.split(command), cwd=project, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"$ {command}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


def test_first_service_end_to_end(tmp_path: Path) -> None:
    from bench.demo_runs import _pg_admin

    server_url = require_postgres()
    database = f"repom_first_service_{os.getpid()}"  # a database of its own, like a new user's
    _pg_admin(server_url, f'DROP DATABASE IF EXISTS "{database}"')
    _pg_admin(server_url, f'CREATE DATABASE "{database}"')
    try:
        run_the_guide(tmp_path, f"{server_url.rsplit('/', 1)[0]}/{database}")
    finally:
        _pg_admin(server_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def run_the_guide(tmp_path: Path, pg_url: str) -> None:
    project = tmp_path / "shop"
    project.mkdir()
    for relative, body in files().items():
        target = project / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body)
    env = _env(project)
    outputs = {}
    for command in commands():
        if command.startswith(SETUP):
            continue  # the environment running this test is the installed one
        command = command.replace("postgresql://postgres@127.0.0.1:5432/test", pg_url)
        outputs[command] = _run(command, project, env)

    migration = list((project / "migrations" / "versions").glob("*.py"))
    assert len(migration) == 1
    assert "create_table('books'" in migration[0].read_text().replace('"', "'")
    assert (project / "shop.sqlite3").exists()
    runs = [out for cmd, out in outputs.items() if cmd.startswith("pytest")]
    assert len(runs) == 2  # SQLite, then PostgreSQL
    for out in runs:
        assert re.search(r"\b4 passed\b", out.stdout), out.stdout[-2000:]

    # the service, as `uvicorn shop.main:app` runs it, on the migrated SQLite database
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "shop.main:app", "--port", str(port)],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                ready = httpx.get(f"{base}/health/ready", timeout=2)
                break
            except httpx.TransportError:
                assert server.poll() is None, server.communicate()[0]
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert ready.status_code == 200
        author = httpx.post(f"{base}/authors", json={"name": "Ada", "email": "a@example.com"})
        assert author.status_code == 201, author.text
        book = {"title": "Notes", "year": 1843, "author_id": author.json()["id"]}
        created = httpx.post(f"{base}/books", json=book)
        assert created.status_code == 201, created.text
        assert created.json()["author"]["name"] == "Ada"
        listed = httpx.get(f"{base}/books").json()
        assert listed["total"] == 1 and listed["items"][0]["title"] == "Notes"
    finally:
        server.terminate()
        server.communicate(timeout=30)


@pytest.mark.parametrize("lang", ["python"])
def test_guide_python_files_compile(lang: str) -> None:
    for path, body in files().items():
        if path.endswith(".py"):
            compile(body, path, "exec")
