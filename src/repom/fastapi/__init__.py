"""FastAPI integration: lifespan, request sessions, error responses, health, query parameters.

::

    from repom.fastapi import AsyncDbSession, health_router, install_exception_handlers, lifespan

    app = FastAPI(lifespan=lifespan)
    install_exception_handlers(app)
    app.include_router(health_router)

    @app.post("/articles", status_code=201)
    async def create(data: ArticleIn, session: AsyncDbSession) -> ArticleOut:
        ...  # committed before the response is sent; a failed commit is an error response

Importing this package is cheap: each name is imported from its submodule on first access (FastAPI,
Starlette and the databases layer load then), so ``import repom.fastapi`` alone loads none of
them.  See ``docs/fastapi.md``.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from repom.fastapi._databases import AppDatabases, databases_in_use, use_databases
    from repom.fastapi.causality import ReadYourWritesMiddleware
    from repom.fastapi.dependencies import (
        AsyncDbSession,
        AsyncReadOnlyDbSession,
        DbSession,
        ReadOnlyDbSession,
        async_session_dependency,
        get_async_read_only_request_session,
        get_async_request_session,
        get_read_only_request_session,
        get_request_session,
        session_dependency,
    )
    from repom.fastapi.errors import (
        ErrorMapping,
        error_mapping,
        error_payload,
        install_exception_handlers,
    )
    from repom.fastapi.health import (
        DatabaseHealth,
        HealthReport,
        create_health_router,
        health_router,
    )
    from repom.fastapi.lifespan import Lifespan, lifespan
    from repom.fastapi.params import (
        CursorParams,
        Filters,
        PageParams,
        cursor_params,
        filter_params,
        order_params,
        page_params,
        reject_unknown_query_parameters,
    )

_LAZY: dict[str, str] = {
    "AppDatabases": "repom.fastapi._databases",
    "AsyncDbSession": "repom.fastapi.dependencies",
    "AsyncReadOnlyDbSession": "repom.fastapi.dependencies",
    "CursorParams": "repom.fastapi.params",
    "DatabaseHealth": "repom.fastapi.health",
    "DbSession": "repom.fastapi.dependencies",
    "ErrorMapping": "repom.fastapi.errors",
    "Filters": "repom.fastapi.params",
    "HealthReport": "repom.fastapi.health",
    "Lifespan": "repom.fastapi.lifespan",
    "PageParams": "repom.fastapi.params",
    "ReadOnlyDbSession": "repom.fastapi.dependencies",
    "ReadYourWritesMiddleware": "repom.fastapi.causality",
    "async_session_dependency": "repom.fastapi.dependencies",
    "create_health_router": "repom.fastapi.health",
    "cursor_params": "repom.fastapi.params",
    "databases_in_use": "repom.fastapi._databases",
    "error_mapping": "repom.fastapi.errors",
    "error_payload": "repom.fastapi.errors",
    "filter_params": "repom.fastapi.params",
    "get_async_read_only_request_session": "repom.fastapi.dependencies",
    "get_async_request_session": "repom.fastapi.dependencies",
    "get_read_only_request_session": "repom.fastapi.dependencies",
    "get_request_session": "repom.fastapi.dependencies",
    "health_router": "repom.fastapi.health",
    "install_exception_handlers": "repom.fastapi.errors",
    "lifespan": "repom.fastapi.lifespan",
    "order_params": "repom.fastapi.params",
    "page_params": "repom.fastapi.params",
    "reject_unknown_query_parameters": "repom.fastapi.params",
    "session_dependency": "repom.fastapi.dependencies",
    "use_databases": "repom.fastapi._databases",
}

__all__ = [
    "AppDatabases",
    "AsyncDbSession",
    "AsyncReadOnlyDbSession",
    "CursorParams",
    "DatabaseHealth",
    "DbSession",
    "ErrorMapping",
    "Filters",
    "HealthReport",
    "Lifespan",
    "PageParams",
    "ReadOnlyDbSession",
    "ReadYourWritesMiddleware",
    "async_session_dependency",
    "create_health_router",
    "cursor_params",
    "databases_in_use",
    "error_mapping",
    "error_payload",
    "filter_params",
    "get_async_read_only_request_session",
    "get_async_request_session",
    "get_read_only_request_session",
    "get_request_session",
    "health_router",
    "install_exception_handlers",
    "lifespan",
    "order_params",
    "page_params",
    "reject_unknown_query_parameters",
    "session_dependency",
    "use_databases",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'repom.fastapi' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Keeps ``repom.fastapi.lifespan`` the function, as the eager imports used to.

    Importing a submodule binds it on its package under its own name; for a submodule named like
    the function it exports (``lifespan``), the function is bound instead.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _LAZY.get(name) == value.__name__:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
