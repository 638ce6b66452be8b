"""FastAPI integration: lifespan, request sessions, error responses, health, query parameters.

::

    from repom.fastapi import AsyncDbSession, health_router, install_exception_handlers, lifespan

    app = FastAPI(lifespan=lifespan)
    install_exception_handlers(app)
    app.include_router(health_router)

    @app.post("/articles", status_code=201)
    async def create(data: ArticleIn, session: AsyncDbSession) -> ArticleOut:
        ...  # committed before the response is sent; a failed commit is an error response

See ``docs/fastapi.md``.
"""

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
