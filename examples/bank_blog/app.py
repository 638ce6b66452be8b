"""``create_app()``: the demo's FastAPI application, and its database configuration.

The application uses repom's default databases (``DATABASE_URL`` / ``REPOM_DATABASE_URL``, or the
SQLite file :data:`DEFAULT_URL` when neither is set, see :func:`configure`), like a real service
would: request sessions, services and the lifespan all find the same database.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from examples.bank_blog.api import bank, blog, users
from examples.bank_blog.services import InsufficientFunds
from repom.config import RepomConfig, set_config
from repom.fastapi import create_health_router, install_exception_handlers, lifespan

#: where the demo keeps its SQLite database when no DATABASE_URL is set
DEFAULT_URL = "sqlite:///.demo/bank_blog.sqlite3"


def database_url(explicit: str | None = None) -> str:
    """The URL the demo uses: *explicit*, else the environment, else :data:`DEFAULT_URL`."""
    url = explicit or os.environ.get("REPOM_DATABASE_URL") or os.environ.get("DATABASE_URL")
    return url or DEFAULT_URL


def configure(url: str | None = None, **settings: Any) -> RepomConfig:
    """Make *url* (see :func:`database_url`) repom's configuration; create the SQLite folder."""
    chosen = database_url(url)
    if chosen.startswith("sqlite:///") and not chosen.startswith("sqlite:////"):
        Path(chosen.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    settings.setdefault("application_name", "repom-demo")
    config = RepomConfig(database_url=chosen, **settings)
    set_config(config)
    return config


async def insufficient_funds(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, InsufficientFunds)
    return JSONResponse(
        {"detail": str(error), "code": "insufficient_funds", "account_id": error.account_id},
        status_code=409,
    )


def create_app() -> FastAPI:
    app = FastAPI(
        title="repom demo: a small bank and a blog",
        summary="Every endpoint commits before it answers; errors are typed and leak no SQL.",
        version="1.0",
        lifespan=lifespan,  # verify the database at startup, dispose the pools at shutdown
    )
    install_exception_handlers(app)
    app.add_exception_handler(InsufficientFunds, insufficient_funds)
    # /health/live, /health/ready (and /health); the demo shows its pool figures, which a
    # production service keeps behind its own access control (details=False, the default)
    app.include_router(create_health_router(details=True))
    app.include_router(users)
    app.include_router(bank)
    app.include_router(blog)
    return app
