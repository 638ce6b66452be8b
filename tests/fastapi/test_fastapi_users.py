"""FastAPI Users on repom's async session: register, log in (JWT), /users/me.

Two wirings of ``get_user_db``:

* ``seed_004`` -- exactly as seed 004 shows: a generator depending on
  ``repom.async_session.get_async_db_session``;
* ``repom_fastapi`` -- ``AsyncDbSession`` (commit before the response is sent).  FastAPI refuses a
  ``yield`` dependency of the default "request" scope that depends on a "function"-scoped one, so
  this ``get_user_db`` returns instead of yielding.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi_users import BaseUserManager, FastAPIUsers, IntegerIDMixin, schemas
from fastapi_users.authentication import AuthenticationBackend, BearerTransport, JWTStrategy
from fastapi_users_db_sqlalchemy import SQLAlchemyBaseUserTable, SQLAlchemyUserDatabase
from sqlalchemy import Integer
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from repom.async_session import get_async_db_session
from repom.database import set_async_database
from repom.fastapi import AsyncDbSession, install_exception_handlers
from tests.fastapi._support import Backend, sync_engine_of

SECRET = "test-only-jwt-secret-0123456789abcdef"


class Base(DeclarativeBase):
    pass


class User(SQLAlchemyBaseUserTable[int], Base):
    """Declared exactly as FastAPI Users documents it for integer ids."""

    __tablename__ = "fa_auth_users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)


class UserRead(schemas.BaseUser[int]):
    pass


class UserCreate(schemas.BaseUserCreate):
    pass


class UserUpdate(schemas.BaseUserUpdate):
    pass


class UserManager(IntegerIDMixin, BaseUserManager[User, int]):
    reset_password_token_secret = SECRET
    verification_token_secret = SECRET


# seed 004, verbatim
async def get_user_db(
    session: AsyncSession = Depends(get_async_db_session),
) -> AsyncGenerator[SQLAlchemyUserDatabase, None]:  # type: ignore[type-arg]
    yield SQLAlchemyUserDatabase(session, User)


# repom.fastapi: committed before the response is sent
async def get_user_db_committed_first(
    session: AsyncDbSession,
) -> SQLAlchemyUserDatabase:  # type: ignore[type-arg]
    return SQLAlchemyUserDatabase(session, User)


def build_app(wiring: str) -> FastAPI:
    user_db_dependency = get_user_db if wiring == "seed_004" else get_user_db_committed_first

    async def get_user_manager(
        user_db: SQLAlchemyUserDatabase = Depends(user_db_dependency),  # type: ignore[type-arg]
    ) -> AsyncIterator[UserManager]:
        yield UserManager(user_db)

    def get_jwt_strategy() -> JWTStrategy:  # type: ignore[type-arg]
        return JWTStrategy(secret=SECRET, lifetime_seconds=3600)

    auth_backend = AuthenticationBackend(
        name="jwt",
        transport=BearerTransport(tokenUrl="auth/jwt/login"),
        get_strategy=get_jwt_strategy,
    )
    fastapi_users = FastAPIUsers[User, int](get_user_manager, [auth_backend])
    app = FastAPI()
    install_exception_handlers(app)
    app.include_router(fastapi_users.get_auth_router(auth_backend), prefix="/auth/jwt")
    app.include_router(fastapi_users.get_register_router(UserRead, UserCreate), prefix="/auth")
    app.include_router(fastapi_users.get_users_router(UserRead, UserUpdate), prefix="/users")
    return app


@pytest.mark.parametrize("wiring", ["seed_004", "repom_fastapi"])
async def test_register_login_me(backend: Backend, wiring: str) -> None:
    db = backend.async_database()
    await db.create_all(Base.metadata)
    set_async_database(db)  # what get_async_db_session uses (the default async database)
    app = build_app(wiring)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        credentials = {"email": "ada@example.com", "password": "correct horse battery"}
        registered = await client.post("/auth/register", json=credentials)
        assert registered.status_code == 201, registered.text
        assert registered.json()["email"] == "ada@example.com"
        again = await client.post("/auth/register", json=credentials)
        assert again.status_code == 400
        assert again.json()["detail"] == "REGISTER_USER_ALREADY_EXISTS"

        bad = await client.post(
            "/auth/jwt/login", data={"username": "ada@example.com", "password": "wrong"}
        )
        assert bad.status_code == 400
        login = await client.post(
            "/auth/jwt/login",
            data={"username": "ada@example.com", "password": "correct horse battery"},
        )
        assert login.status_code == 200, login.text
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}

        me = await client.get("/users/me", headers=headers)
        assert me.status_code == 200
        body: dict[str, Any] = me.json()
        assert (body["email"], body["is_active"], body["is_superuser"]) == (
            "ada@example.com",
            True,
            False,
        )
        assert (await client.get("/users/me")).status_code == 401

        patched = await client.patch(
            "/users/me", headers=headers, json={"email": "ada.lovelace@example.com"}
        )
        assert patched.status_code == 200, patched.text

    rows = backend.rows("SELECT email, is_active FROM fa_auth_users")
    assert rows == [("ada.lovelace@example.com", True)]
    assert sync_engine_of(db).pool.checkedout() == 0
