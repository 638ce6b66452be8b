"""Servers the topology tests own: a PostgreSQL instance and a PgBouncer in front of it.

Both run on free loopback ports, from a temporary directory, as the ``postgres`` OS user
(``initdb``, ``pg_ctl`` and ``pgbouncer`` refuse to run as root), and are torn down at the end.
The machine's shared PostgreSQL server is never touched.  PgBouncer runs in transaction mode with
its default configuration otherwise (``ignore_startup_parameters`` empty, 20 server connections
per database/user pair).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def topology_available() -> str | None:
    """None when the servers can be built here, else why not."""
    if not (PG_BIN / "initdb").exists():
        return f"{PG_BIN}/initdb not found (PostgreSQL 15 server binaries)"
    if not Path(PGBOUNCER).exists():
        return "pgbouncer not installed (./run installs it: apt-get install -y pgbouncer)"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no 'postgres' OS user to run the servers as"
    return None


def _as_postgres(args: list[str]) -> str:
    command = args if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--", *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def _wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@dataclass
class PostgresInstance:
    """A PostgreSQL 15 cluster of our own (trust authentication on loopback)."""

    root: Path
    port: int = field(default_factory=free_port)
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres", driver: str = "psycopg") -> str:
        return f"postgresql+{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> PostgresInstance:
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.root, "postgres", "postgres")
        _as_postgres(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(self.data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        )
        options = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "off",
            "max_connections": "200",
            **self.settings,
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            for key, value in options.items():
                conf.write(f"{key} = {value}\n")
        _as_postgres(
            [
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.root / "server.log"),
                "-w",
                "start",
            ]
        )
        _wait_for_port(self.port)
        return self

    def standby(self, root: Path, **settings: str) -> PostgresInstance:
        """A streaming hot standby of this instance (``pg_basebackup -R``), started."""
        replica = PostgresInstance(root, settings=dict(settings))
        replica.root.mkdir(parents=True, exist_ok=True)
        shutil.chown(replica.root, "postgres", "postgres")
        _as_postgres(
            [
                str(PG_BIN / "pg_basebackup"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-D",
                str(replica.data),
                "-R",
                "-X",
                "stream",
                "--no-sync",
            ]
        )
        with (replica.data / "postgresql.conf").open("a") as conf:
            conf.write(f"port = {replica.port}\n")
            conf.write(f"unix_socket_directories = '{replica.root}'\n")
            conf.write("hot_standby = on\n")
            for key, value in replica.settings.items():
                conf.write(f"{key} = {value}\n")
        replica._pg_ctl("start")
        _wait_for_port(replica.port)
        return replica

    def _pg_ctl(self, action: str, *extra: str) -> None:
        _as_postgres(
            [
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.root / "server.log"),
                "-w",
                *extra,
                action,
            ]
        )

    def promote(self) -> None:
        self._pg_ctl("promote")

    def kill(self) -> None:
        """Stop at once (``-m immediate``): the way a crashed primary disappears."""
        self._pg_ctl("stop", "-m", "immediate")

    def restart(self) -> None:
        self._pg_ctl("start")
        _wait_for_port(self.port)

    def stop(self) -> None:
        if self.data.exists():
            try:
                _as_postgres(
                    [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]
                )
            except RuntimeError:
                pass


@dataclass
class PgBouncer:
    """PgBouncer in transaction mode in front of *server* (every database passed through)."""

    server: PostgresInstance
    root: Path
    port: int = field(default_factory=free_port)
    extra: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def url(self, database: str = "postgres", driver: str = "psycopg") -> str:
        return f"postgresql+{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> PgBouncer:
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.root, "postgres", "postgres")
        userlist = self.root / "userlist.txt"
        userlist.write_text('"postgres" ""\n')
        settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(userlist),
            "pool_mode": "transaction",
            "max_client_conn": "500",
            "logfile": str(self.root / "pgbouncer.log"),
            "pidfile": str(self.root / "pgbouncer.pid"),
            **self.extra,
        }
        lines = ["[databases]", f"* = host=127.0.0.1 port={self.server.port}", "", "[pgbouncer]"]
        lines += [f"{key} = {value}" for key, value in settings.items()]
        ini = self.root / "pgbouncer.ini"
        ini.write_text("\n".join(lines) + "\n")
        for path in (userlist, ini):
            shutil.chown(path, "postgres", "postgres")
        command = [PGBOUNCER, str(ini)]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None


def make_root(prefix: str) -> Path:
    """A directory the postgres user can write to (pytest's tmp_path may sit under /root)."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    return root
