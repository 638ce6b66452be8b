"""Pools are fork-safe: a child process never uses a connection its parent opened
(``gunicorn --preload`` forks workers after the application, and its pools, were created)."""

from __future__ import annotations

import os
import sys

import pytest
from sqlalchemy import text

from repom.database import Database
from repom.transactions import transaction
from tests.support import require_postgres

ROUNDS = 200


def _work(db: Database, tag: int) -> int:
    """Transactions whose answers must be their own; returns the number of wrong/failed ones."""
    bad = 0
    for n in range(ROUNDS):
        try:
            with transaction(database=db) as session:
                got = session.execute(
                    text("SELECT CAST(:a AS integer) * 1000 + CAST(:b AS integer)"),
                    {"a": tag, "b": n},
                ).scalar_one()
                if got != tag * 1000 + n:
                    bad += 1
        except Exception:
            bad += 1
    return bad


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_forked_child_never_uses_the_parents_connections() -> None:
    db = Database(require_postgres(), pool_size=2, max_overflow=0)
    assert _work(db, 1) == 0  # the parent's pool now holds an open connection
    parent_pid_conns = db.pool_status()["checked_in"]
    assert parent_pid_conns >= 1
    pid = os.fork()
    if pid == 0:  # the child: same Database object, inherited pool
        code = 1
        try:
            code = 0 if _work(db, 2) == 0 else 3
        finally:
            os._exit(code)
    parent_bad = _work(db, 3)
    _, status = os.waitpid(pid, 0)
    db.dispose()
    assert parent_bad == 0
    assert os.waitstatus_to_exitcode(status) == 0, "the child got answers meant for another process"


def test_child_disposal_does_not_close_the_parents_connections() -> None:
    """The child drops the inherited pool without closing the sockets (closing them would end
    the parent's sessions: the server sees a Terminate message on a shared socket)."""
    if not hasattr(os, "fork"):
        pytest.skip("os.fork is POSIX only")
    db = Database(require_postgres(), pool_size=1, max_overflow=0)
    with db.engine.connect() as conn:
        before = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    pid = os.fork()
    if pid == 0:
        try:
            with db.engine.connect() as conn:  # a connection of its own
                child = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            os._exit(0 if child != before else 4)
        finally:
            os._exit(5)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with db.engine.connect() as conn:  # the parent's pooled connection still works
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() == before
    db.dispose()
    sys.stdout.flush()
