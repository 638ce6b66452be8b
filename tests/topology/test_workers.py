"""Several worker processes: keyset cursors made by one worker are accepted by every other
(the secret comes from ``.env`` through RepomConfig), and production refuses to start without a
secret instead of signing with a per-process random one."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from repom.config import RepomConfig, set_config
from repom.database import Database
from repom.exceptions import ConfigurationError
from repom.fastapi import Lifespan
from tests.support.topology import free_port

APP = """
import os

from fastapi import FastAPI
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from repom.database import Database
from repom.fastapi import DbSession, Lifespan
from repom.repository import Repository


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "worker_items"
    id: Mapped[int] = mapped_column(primary_key=True)


db = Database()  # DATABASE_URL and REPOM_CURSOR_SECRET come from .env
app = FastAPI(lifespan=Lifespan(database=db))


@app.get("/items")
def items(session: DbSession, after: str | None = None) -> dict:
    page = Repository(session, Item).keyset(after=after, limit=2, order_by="id")
    return {"ids": [i.id for i in page.items], "next": page.next_cursor, "pid": os.getpid()}
"""


def test_cursors_cross_workers_with_the_secret_in_dotenv(tmp_path: Path) -> None:
    database = tmp_path / "items.sqlite3"
    seed = Database(f"sqlite:///{database}")
    with seed.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE worker_items (id INTEGER PRIMARY KEY)")
        conn.exec_driver_sql(
            "INSERT INTO worker_items (id) VALUES " + ",".join(f"({i})" for i in range(1, 200))
        )
    seed.dispose()
    (tmp_path / "worker_app.py").write_text(textwrap.dedent(APP))
    (tmp_path / ".env").write_text(
        f"DATABASE_URL=sqlite:///{database}\nREPOM_CURSOR_SECRET=shared-by-every-worker-0123\n"
    )
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REPOM_DATABASE_URL", "REPOM_CURSOR_SECRET", "CONFIG_HOOK")
    }
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), os.getcwd()])
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "worker_app:app", "--port", str(port), "--workers", "4"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/items", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail("uvicorn --workers 4 did not start")
            time.sleep(0.2)
        rejected = 0
        pids: set[int] = set()
        cursor: str | None = None
        for _ in range(60):
            # a new connection each time: the next page is served by whichever worker accepts it
            response = httpx.get(
                base + "/items",
                params={"after": cursor} if cursor else None,
                headers={"Connection": "close"},
                timeout=10,
            )
            if response.status_code != 200:
                rejected += 1
                cursor = None
                continue
            body = response.json()
            pids.add(body["pid"])
            cursor = body["next"]
    finally:
        server.terminate()
        server.wait(timeout=20)
    assert rejected == 0
    assert len(pids) > 1, "every request went to one worker: the test proves nothing"


def test_production_refuses_to_start_without_a_cursor_secret(tmp_path: Path) -> None:
    set_config(
        RepomConfig(environment="production", database_url=f"sqlite:///{tmp_path / 'p.sqlite3'}")
    )
    try:
        app = FastAPI(lifespan=Lifespan())
        with pytest.raises(ConfigurationError, match="REPOM_CURSOR_SECRET"), TestClient(app):
            pass
        set_config(
            RepomConfig(
                environment="production",
                database_url=f"sqlite:///{tmp_path / 'p.sqlite3'}",
                cursor_secret="s3cret-for-all-workers",
            )
        )
        with TestClient(FastAPI(lifespan=Lifespan())):
            pass
    finally:
        set_config(None)
