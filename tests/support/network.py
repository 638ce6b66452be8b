"""Real network faults for the error-translation tests (no mocked connections).

* :func:`terminate_backend` ends a session's server process from another connection
  (``pg_terminate_backend``), as an administrator or a failover would;
* :class:`CommitDropProxy` is a TCP proxy in front of PostgreSQL that, once armed, lets the next
  COMMIT reach the server, waits for the server's answer -- so the transaction *is* committed --
  throws that answer away and closes the client's side: the one failure where the client cannot
  know that its write was applied;
* :class:`StartupRefusingServer` answers every startup packet the way PgBouncer answers one with
  a parameter it does not track (``FATAL: unsupported startup parameter: <name>``, SQLSTATE
  08P01), so the drivers' real connect code sees what they would see behind PgBouncer;
* :func:`connection_limited_role` creates a login role with ``CONNECTION LIMIT 1`` (a second
  connection gets SQLSTATE 53300) and drops it afterwards;
* :func:`free_port` finds a TCP port nothing listens on (connections to it are refused).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from sqlalchemy import URL, Engine, create_engine, text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def terminate_backend(admin: Engine, pid: int, *, timeout: float = 5.0) -> None:
    """``pg_terminate_backend(pid)`` from *admin*'s connection; returns once the process is gone
    (so the next statement of the terminated session meets a closed connection)."""
    with admin.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
        conn.commit()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            gone = not conn.execute(
                text("SELECT 1 FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
            ).first()
            conn.commit()
            if gone:
                return
            time.sleep(0.01)
    raise AssertionError(f"backend {pid} did not terminate")


@contextlib.contextmanager
def connection_limited_role(admin_url: URL) -> Iterator[str]:
    """A login role allowed one connection at a time; its sessions are ended and the role
    dropped afterwards."""
    role = f"repom_limited_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 1')
    try:
        yield role
    finally:
        with admin.connect() as conn:
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r"),
                {"r": role},
            )
            for _ in range(250):
                if not conn.execute(
                    text("SELECT 1 FROM pg_stat_activity WHERE usename = :r"), {"r": role}
                ).first():
                    break
                time.sleep(0.02)
            conn.exec_driver_sql(f'DROP ROLE "{role}"')
        admin.dispose()


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class CommitDropProxy:
    """``127.0.0.1:<port>`` forwarding to PostgreSQL at *host*:*port* (plain TCP: give the
    clients ``sslmode=disable`` / ``ssl=False`` so the COMMIT can be seen)."""

    def __init__(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = int(self._listener.getsockname()[1])
        self._armed = threading.Event()
        self.dropped = threading.Event()  #: set once a COMMIT's answer was thrown away
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self) -> None:
        """Drop the answer to the next COMMIT that passes through (once)."""
        self.dropped.clear()
        self._armed.set()

    def close(self) -> None:
        self._closed = True
        _close(self._listener)
        for sock in self._sockets:
            _close(sock)

    def __enter__(self) -> CommitDropProxy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._upstream)
            self._sockets += [client, upstream]
            state = {"dropping": False}
            threading.Thread(
                target=self._client_to_server, args=(client, upstream, state), daemon=True
            ).start()
            threading.Thread(
                target=self._server_to_client, args=(upstream, client, state), daemon=True
            ).start()

    def _client_to_server(
        self, client: socket.socket, upstream: socket.socket, state: dict[str, bool]
    ) -> None:
        try:
            while chunk := client.recv(65536):
                if self._armed.is_set() and b"COMMIT" in chunk.upper():
                    self._armed.clear()
                    state["dropping"] = True  # before the server can possibly answer
                upstream.sendall(chunk)
        except OSError:
            pass
        finally:
            _close(upstream)

    def _server_to_client(
        self, upstream: socket.socket, client: socket.socket, state: dict[str, bool]
    ) -> None:
        try:
            while chunk := upstream.recv(65536):
                if state["dropping"]:
                    # the server has answered the COMMIT: it committed; the client never hears
                    self.dropped.set()
                    _close(client)
                    _close(upstream)
                    return
                client.sendall(chunk)
        except OSError:
            pass
        finally:
            _close(client)


# the parameters PgBouncer accepts in a startup packet by default (it tracks these itself)
_POOLER_PARAMETERS = {
    "user",
    "database",
    "application_name",
    "client_encoding",
    "datestyle",
    "timezone",
    "standard_conforming_strings",
}


class StartupRefusingServer:
    """Speaks the startup phase of the PostgreSQL protocol like PgBouncer: declines SSL/GSS
    encryption, reads the startup packet and refuses the first parameter it does not track with
    ``FATAL 08P01 unsupported startup parameter: <name>``.  ``seen`` records the parameters."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = int(self._listener.getsockname()[1])
        self.seen: list[dict[str, str]] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed = True
        _close(self._listener)

    def __enter__(self) -> StartupRefusingServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    @staticmethod
    def _read(sock: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("client went away")
            data += chunk
        return data

    def _serve(self, client: socket.socket) -> None:
        try:
            while True:
                length, code = struct.unpack("!ii", self._read(client, 8))
                body = self._read(client, length - 8)
                if code in (80877103, 80877104):  # SSLRequest, GSSENCRequest: not here
                    client.sendall(b"N")
                    continue
                break
            items = body.split(b"\0")
            params = {items[i].decode(): items[i + 1].decode() for i in range(0, len(items) - 1, 2)}
            params.pop("", None)
            self.seen.append(params)
            refused = next((k for k in params if k.lower() not in _POOLER_PARAMETERS), None)
            fields = [("S", "FATAL"), ("V", "FATAL"), ("C", "08P01")]
            if refused is not None:
                fields.append(("M", f"unsupported startup parameter: {refused}"))
            else:
                fields.append(("M", "no such database: test"))
            payload = b"".join(k.encode() + v.encode() + b"\0" for k, v in fields) + b"\0"
            client.sendall(b"E" + struct.pack("!i", len(payload) + 4) + payload)
        except OSError:
            pass
        finally:
            _close(client)
