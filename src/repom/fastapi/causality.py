"""Read-your-writes across HTTP requests: a client that POSTs and then GETs sees its write, even
when the GET is served from a read replica.

A request that commits a write on a database with replicas records the primary's WAL position
(see :class:`repom.transactions.Causality`).  :class:`ReadYourWritesMiddleware` sends that
position back to the client in a small cookie (``repom-lsn``, HttpOnly) and restores it on the
client's next requests, so their read-only transactions use a replica only once it has replayed
the client's last write (else the primary).  The cookie holds WAL positions only: a client that
alters it can only make its own reads go to the primary, or read slightly older data.

:func:`repom.fastapi.install_exception_handlers` installs the middleware; add it yourself with
``app.add_middleware(ReadYourWritesMiddleware)`` when you do not use those handlers.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from repom.transactions import Causality, use_causality
from repom.transactions.core import _causality

__all__ = ["COOKIE", "ReadYourWritesMiddleware"]

COOKIE = "repom-lsn"
_MAX_COOKIE = 1024
_MAX_AGE = 300  # seconds: replicas catch up long before; an old position only costs a primary read

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _decode(raw: str) -> dict[str, int]:
    if not raw or len(raw) > _MAX_COOKIE:
        return {}
    try:
        data = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, TypeError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        str(name): value
        for name, value in data.items()
        if isinstance(value, int) and 0 <= value < 1 << 63
    }


def _encode(positions: dict[str, int]) -> str:
    data = json.dumps(positions, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _cookie_value(headers: list[tuple[bytes, bytes]]) -> str:
    for key, value in headers:
        if key.lower() != b"cookie":
            continue
        for part in value.decode("latin-1").split(";"):
            name, _, content = part.strip().partition("=")
            if name == COOKIE:
                return content
    return ""


class ReadYourWritesMiddleware:
    """ASGI middleware carrying each client's last commit position between its requests."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        holder = Causality(lsn=_decode(_cookie_value(scope.get("headers") or [])))
        token = use_causality(holder)

        async def send_with_position(message: Message) -> None:
            if message["type"] == "http.response.start" and holder.changed:
                cookie = (
                    f"{COOKIE}={_encode(holder.lsn)}; Path=/; Max-Age={_MAX_AGE}; HttpOnly; "
                    "SameSite=Lax"
                )
                message = dict(message)
                message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_position)
        finally:
            _causality.reset(token)
