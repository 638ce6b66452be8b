"""Servers for the topology tests: one PostgreSQL instance of our own and a PgBouncer in front of
it (transaction mode, default settings), built once per test session and torn down at the end."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support import IN_CI
from tests.support.topology import PgBouncer, PostgresInstance, make_root, topology_available


@dataclass
class Topology:
    server: PostgresInstance
    bouncer: PgBouncer


@pytest.fixture(scope="session")
def topology() -> Iterator[Topology]:
    missing = topology_available()
    if missing is not None:
        if IN_CI:
            pytest.fail(f"topology tests cannot run: {missing}")
        pytest.skip(missing)
    root = make_root("repom-topology-")
    server = PostgresInstance(root / "pg")
    bouncer = PgBouncer(server, root / "bouncer")
    try:
        server.start()
        bouncer.start()
        yield Topology(server, bouncer)
    finally:
        bouncer.stop()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
