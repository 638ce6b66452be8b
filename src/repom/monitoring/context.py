"""Which request holds a connection: a route label carried in a context variable.

The long-checkout warning names the route that held the connection when one is known, and the
stack otherwise.  Set it around a unit of work with :func:`route_context`, or for a whole ASGI app
with :class:`RouteContextMiddleware` (the route template, e.g. ``GET /users/{user_id}``, is read
lazily from the ASGI scope once routing has happened).  Context variables follow the request into
FastAPI's threadpool and into SQLAlchemy's async greenlets, so sync and async code see the same.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any

__all__ = [
    "RouteContextMiddleware",
    "current_route",
    "reset_route",
    "route_context",
    "set_route",
]

# a plain label, or the ASGI scope of the request (resolved when a connection is checked out)
_route: ContextVar[str | Mapping[str, Any] | None] = ContextVar("repom_route", default=None)


def set_route(route: str | Mapping[str, Any] | None) -> Token[str | Mapping[str, Any] | None]:
    """Label what runs in this context (a string, or an ASGI scope); returns the reset token."""
    return _route.set(route)


def reset_route(token: Token[str | Mapping[str, Any] | None]) -> None:
    _route.reset(token)


@contextmanager
def route_context(route: str | Mapping[str, Any]) -> Iterator[None]:
    """``with route_context("nightly-report"): ...`` labels the connections checked out inside."""
    token = _route.set(route)
    try:
        yield
    finally:
        _route.reset(token)


def current_route() -> str | None:
    """The label of this context: ``"METHOD /route/{template}"`` for an ASGI request."""
    return resolve_route(_route.get())


def route_value() -> str | Mapping[str, Any] | None:
    """The raw value (a label or an ASGI scope): cheap to keep, resolved when needed."""
    return _route.get()


def resolve_route(value: str | Mapping[str, Any] | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return _route_from_scope(value)


def _route_from_scope(scope: Mapping[str, Any]) -> str | None:
    route = scope.get("route")
    path = getattr(route, "path", None) or scope.get("path")
    if path is None:
        return None
    method = scope.get("method")
    return f"{method} {path}" if method else str(path)


_ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


class RouteContextMiddleware:
    """Pure ASGI middleware: connections checked out while serving a request are labelled with
    the request's method and route template (``app.add_middleware(RouteContextMiddleware)``)."""

    def __init__(self, app: _ASGIApp) -> None:
        self.app = app

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        token = _route.set(scope)
        try:
            await self.app(scope, receive, send)
        finally:
            _route.reset(token)
