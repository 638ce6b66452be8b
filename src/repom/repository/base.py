"""``Repository`` (sync) and ``AsyncRepository``: thin faces over :mod:`repom.repository.core`.

Every method of both classes calls the same ``op_*`` function: directly with a ``Session``, or
through ``AsyncSession.run_sync`` (one greenlet switch per call) with an ``AsyncSession``.  The
classes hold no logic of their own beyond packing arguments.
"""

from __future__ import annotations

import builtins
import typing
from collections.abc import Collection, Iterable, Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar, overload

from sqlalchemy import Select
from sqlalchemy.orm import Session, scoped_session

from repom.exceptions import ConfigurationError
from repom.repository import bulk, core
from repom.repository.core import Query, RepoContext
from repom.repository.filters import compile_order_by
from repom.repository.meta import model_info
from repom.repository.pagination import CursorPage, Page

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["AsyncBaseRepository", "AsyncRepository", "BaseRepository", "Repository"]

M = TypeVar("M")

Returning = Literal["objects", "keys"] | None
Method = Literal["auto", "insert", "copy"]


def _model_from_generic(cls: type[Any]) -> type[Any] | None:
    for klass in cls.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            origin = typing.get_origin(base)
            if isinstance(origin, type) and issubclass(origin, _RepositoryBase):
                args = typing.get_args(base)
                if args and isinstance(args[0], type):
                    return args[0]
    return None


class _RepositoryBase(Generic[M]):
    """Construction, model resolution and class-level settings shared by both flavours."""

    #: the mapped class (or give it as the generic parameter: ``Repository[User]``)
    model: ClassVar[type[Any] | None] = None
    #: fields callers may filter on through ``filters=`` / a positional mapping (``None``: every
    #: column); keyword filters written in code (``get_one(id=...)``) may use any column
    filterable_fields: ClassVar[Collection[str] | None] = None
    #: fields callers may order by (``None``: every column)
    orderable_fields: ClassVar[Collection[str] | None] = None
    #: loader options (or relationship names) applied to every read
    default_options: ClassVar[Sequence[Any]] = ()
    #: cap on ``limit``/``per_page`` (``None``: ``RepomConfig.max_page_size``, default 1000)
    max_page_size: ClassVar[int | None] = None
    #: secret that signs keyset cursors (``None``: RepomConfig.cursor_secret, REPOM_CURSOR_SECRET)
    cursor_secret: ClassVar[str | bytes | None] = None

    _contexts: ClassVar[dict[type[Any], RepoContext[Any]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("model") is None:
            found = _model_from_generic(cls)
            if found is not None:
                cls.model = found
        cls._contexts = {}

    def __init__(
        self,
        session: Any = None,
        model: type[M] | None = None,
        *,
        model_class: type[M] | None = None,
        cursor_secret: str | bytes | None = None,
    ) -> None:
        """``Repo(session)``, ``Repository(session, Model)`` (the compatibility form
        ``AsyncRepository(session, model_class)``) or, inside ``transaction()``, ``Repo()``."""
        if model is None:
            model = model_class
        if session is None:
            from repom.transactions import current_session

            session = current_session()
        self.session = self._check_session(session)
        self._model = model
        self._cursor_secret = cursor_secret

    def _check_session(self, session: Any) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    # -- model and settings ------------------------------------------------------------

    @property
    def model_class(self) -> type[M]:
        """The mapped class this repository works on (compatibility name)."""
        return self._ctx.info.model

    def _resolve_model(self) -> type[M]:
        model: Any = self._model or type(self).model
        if model is None:
            orig = getattr(self, "__orig_class__", None)
            args = typing.get_args(orig) if orig is not None else ()
            if args and isinstance(args[0], type):
                model = args[0]
        if model is None:
            name = type(self).__name__
            raise ConfigurationError(
                f"{name} has no model: declare 'class {name}(Repository[MyModel])', set "
                f"'model = MyModel', or pass it: {name}(session, MyModel)"
            )
        return typing.cast(type[M], model)

    @cached_property
    def _ctx(self) -> RepoContext[M]:
        model = self._resolve_model()
        cls = type(self)
        ctx = cls._contexts.get(model)
        if ctx is None:
            ctx = cls._build_context(model)
            cls._contexts[model] = ctx
        if self._cursor_secret is not None:
            import dataclasses

            ctx = dataclasses.replace(ctx, cursor_secret=self._cursor_secret, _loader_cache={})
        return ctx

    @classmethod
    def _build_context(cls, model: type[M]) -> RepoContext[M]:
        info = model_info(model)
        columns = set(info.attributes)

        def fields(value: Collection[str] | None, what: str) -> frozenset[str]:
            if value is None:
                return frozenset(columns)
            if isinstance(value, str):
                value = [value]
            unknown = set(value) - columns
            if unknown:
                raise ConfigurationError(
                    f"{cls.__name__}.{what} names unknown column(s) "
                    f"{', '.join(sorted(unknown))} of {info.name}; columns: "
                    f"{', '.join(sorted(columns))}"
                )
            return frozenset(value)

        cap = cls.max_page_size
        if cap is not None and (not isinstance(cap, int) or cap < 1):
            raise ConfigurationError(f"{cls.__name__}.max_page_size must be a positive int")
        ctx: RepoContext[M] = RepoContext(
            info=info,
            filterable=fields(cls.filterable_fields, "filterable_fields"),
            orderable=fields(cls.orderable_fields, "orderable_fields"),
            default_options=(),
            max_page_size=cap,
            cursor_secret=cls.cursor_secret,
        )
        defaults = tuple(core.loader_options(ctx, list(cls.default_options)))
        import dataclasses

        return dataclasses.replace(ctx, default_options=defaults)

    @classmethod
    def allowed_filter_fields(cls, model: type[Any] | None = None) -> builtins.list[str]:
        """The fields callers may filter on (for query-parameter helpers)."""
        return sorted(cls._class_context(model).filterable)

    @classmethod
    def allowed_order_fields(cls, model: type[Any] | None = None) -> builtins.list[str]:
        """The fields callers may order by."""
        return sorted(cls._class_context(model).orderable)

    @classmethod
    def _class_context(cls, model: type[Any] | None) -> RepoContext[Any]:
        target = model or cls.model
        if target is None:
            raise ConfigurationError(f"{cls.__name__} has no model")
        ctx = cls._contexts.get(target)
        if ctx is None:
            ctx = cls._build_context(target)
            cls._contexts[target] = ctx
        return ctx

    # -- statement building (no I/O: usable from both flavours) ------------------------

    def select(
        self,
        *where: Any,
        filters: Mapping[str, Any] | None = None,
        order_by: Any = None,
        options: Sequence[Any] | None = None,
        for_update: Any = False,
        include_deleted: bool = False,
        **kw_filters: Any,
    ) -> Select[Any]:
        """``SELECT`` of the model with the repository's rules applied (validated filters,
        default options, soft-delete criterion) for custom queries::

            stmt = self.select(email=email).limit(1)
            user = (await self.session.scalars(stmt)).first()
        """
        ctx = self._ctx
        stmt = core.build_select(
            ctx, self._query(where, filters, kw_filters, options, for_update, include_deleted)
        )
        order = compile_order_by(ctx.info, order_by, ctx.orderable)
        if order:
            stmt = stmt.order_by(*(item.clause() for item in order))
        return stmt

    def cursor_for(self, item: M, order_by: Any = None) -> str:
        """A keyset cursor that continues right after *item* (``keyset(after=...)``), for the
        same ``order_by``.  Builds no SQL."""
        return core.make_cursor(self._ctx, item, order_by)

    @staticmethod
    def _query(
        where: Sequence[Any],
        filters: Mapping[str, Any] | None,
        kw_filters: Mapping[str, Any],
        options: Sequence[Any] | None = None,
        for_update: Any = False,
        include_deleted: bool = False,
    ) -> Query:
        exprs, caller, code = core.split_where(where, filters, kw_filters)
        return Query(exprs, caller, options, for_update, bool(include_deleted), code)

    def __repr__(self) -> str:
        model = self._model or type(self).model
        name = getattr(model, "__name__", "?")
        return f"{type(self).__name__}({name})"


class Repository(_RepositoryBase[M]):
    """Data access for one mapped class with a sync ``Session``.  Never commits: writes are
    flushed and the transaction owner commits."""

    session: Session

    def _check_session(self, session: Any) -> Session:
        if isinstance(session, scoped_session):
            session = session()
        if not isinstance(session, Session):
            hint = " (use AsyncRepository)" if hasattr(session, "run_sync") else ""
            raise ConfigurationError(
                f"{type(self).__name__} needs a sqlalchemy.orm.Session, got "
                f"{type(session).__name__}{hint}"
            )
        return session

    # -- reads -------------------------------------------------------------------------

    def get_by_id(
        self,
        id: Any,
        *,
        options: Sequence[Any] | None = None,
        for_update: Any = False,
        include_deleted: bool = False,
    ) -> M | None:
        """The row with this primary key (scalar, tuple or mapping for composite keys), or None."""
        q = Query((), None, options, for_update, include_deleted)
        return core.op_get_by_id(self.session, self._ctx, id, q)

    def get_by_ids(
        self,
        ids: Iterable[Any],
        *,
        options: Sequence[Any] | None = None,
        include_deleted: bool = False,
    ) -> builtins.list[M]:
        """The rows with these keys, in the order of *ids* (missing ones skipped, repeats once)."""
        q = Query((), None, options, False, include_deleted)
        return core.op_get_by_ids(self.session, self._ctx, ids, q)

    def get_one(
        self,
        *where: Any,
        filters: Mapping[str, Any] | None = None,
        options: Sequence[Any] | None = None,
        for_update: Any = False,
        include_deleted: bool = False,
        **kw_filters: Any,
    ) -> M:
        """The one matching row; ``NotFoundError`` when there is none."""
        q = self._query(where, filters, kw_filters, options, for_update, include_deleted)
        return core.op_get_one(self.session, self._ctx, q)

    def get_one_or_none(
        self,
        *where: Any,
        filters: Mapping[str, Any] | None = None,
        options: Sequence[Any] | None = None,
        for_update: Any = False,
        include_deleted: bool = False,
        **kw_filters: Any,
    ) -> M | None:
        q = self._query(where, filters, kw_filters, options, for_update, include_deleted)
        return core.op_get_one_or_none(self.session, self._ctx, q)

    def list(
        self,
        *where: Any,
        filters: Mapping[str, Any] | None = None,
        order_by: Any = None,
        limit: int | None = None,
        offset: int = 0,
        options: Sequence[Any] | None = None,
        for_update: Any = False,
        include_deleted: bool = False,
        **kw_filters: Any,
    ) -> builtins.list[M]:
        q = self._query(where, filters, kw_filters, options, for_update, include_deleted)
        return core.op_list(self.session, self._ctx, q, order_by, limit, offset, False)

    def get_all(
        self,
        limit: int = 100,
        offset: int = 0,
        filters: Mapping[str, Any] | None = None,
        *,
        skip: int | None = None,
        order_by: Any = None,
        options: Sequence[Any] | None = None,
        include_deleted: bool = False,
    ) -> builtins.list[M]:
        """Seed signature: ``get_all(limit=100, offset=0, filters=None)``; ``skip`` = offset."""
        q = self._query((), filters, {}, options, False, include_deleted)
        return core.op_list(
            self.session, self._ctx, q, order_by, limit, offset if skip is None else skip, True
        )

    def count(
        self,
        *where: Any,
        filters: Mapping[str, Any] | None = None,
        include_deleted: bool = False,
        **kw_filters: Any,
    ) -> int:
        q = self._query(where, filters, kw_filters, None, False, include_deleted)
        return core.op_count(self.session, self._ctx, q)

    def exists(
        self,
        *where: Any,
        filters: Mapping[str, Any] | None = None,
        include_deleted: bool = False,
        **kw_filters: Any,
    ) -> bool:
        """``SELECT EXISTS (SELECT 1 ... WHERE ...)``."""
        q = self._query(where, filters, kw_filters, None, False, include_deleted)
        return core.op_exists(self.session, self._ctx, q)

    def paginate(
        self,
        page: int = 1,
        per_page: int = 20,
        *where: Any,
        filters: Mapping[str, Any] | None = None,
        order_by: Any = None,
        options: Sequence[Any] | None = None,
        include_deleted: bool = False,
        count: core.CountMode = "exact",
        **kw_filters: Any,
    ) -> Page[M]:
        q = self._query(where, filters, kw_filters, options, False, include_deleted)
        return core.op_paginate(self.session, self._ctx, q, page, per_page, order_by, count)

    def keyset(
        self,
        *where: Any,
        after: str | None = None,
        limit: int = 20,
        order_by: Any = None,
        filters: Mapping[str, Any] | None = None,
        options: Sequence[Any] | None = None,
        include_deleted: bool = False,
        **kw_filters: Any,
    ) -> CursorPage[M]:
        q = self._query(where, filters, kw_filters, options, False, include_deleted)
        return core.op_keyset(self.session, self._ctx, q, after, limit, order_by)

    # -- writes ------------------------------------------------------------------------

    def create(self, data: Any, *, options: Sequence[Any] | None = None) -> M:
        """Insert a model instance, a mapping or a pydantic model; flushed, key populated.

        ``options`` (relationship names or loader options, as for reads) are loaded into the
        returned object after the flush -- one ``SELECT`` of the row, many-to-one relationships
        joined to it, plus one per collection level -- so a response model can read them
        without a lazy load."""
        return core.op_create(self.session, self._ctx, data, options)

    def update(self, entity: M, data: Any = None, *, options: Sequence[Any] | None = None) -> M:
        """Apply *data* (only the fields given; pydantic ``exclude_unset``) and flush;
        ``options`` as for :meth:`create`."""
        return core.op_update(self.session, self._ctx, entity, data, options)

    def delete(self, id: Any) -> bool:
        """Delete by key or instance (soft delete when the model has it); True if a row went."""
        return core.op_delete(self.session, self._ctx, id, False)

    def hard_delete(self, id: Any) -> bool:
        return core.op_delete(self.session, self._ctx, id, True)

    def restore(self, id: Any) -> bool:
        return core.op_restore(self.session, self._ctx, id)

    def delete_where(
        self,
        *where: Any,
        filters: Mapping[str, Any] | None = None,
        hard: bool = False,
        **kw_filters: Any,
    ) -> int:
        q = self._query(where, filters, kw_filters)
        return core.op_delete_where(self.session, self._ctx, q, hard)

    @overload
    def bulk_create(
        self,
        items: Iterable[Any],
        *,
        returning: Literal["objects"] = ...,
        method: Method = ...,
        chunk_size: int | None = ...,
    ) -> builtins.list[M]: ...

    @overload
    def bulk_create(
        self,
        items: Iterable[Any],
        *,
        returning: Literal["keys"],
        method: Method = ...,
        chunk_size: int | None = ...,
    ) -> builtins.list[Any]: ...

    @overload
    def bulk_create(
        self,
        items: Iterable[Any],
        *,
        returning: None,
        method: Method = ...,
        chunk_size: int | None = ...,
    ) -> int: ...

    def bulk_create(
        self,
        items: Iterable[Any],
        *,
        returning: Returning = "objects",
        method: Method = "auto",
        chunk_size: int | None = None,
    ) -> builtins.list[Any] | int:
        return bulk.op_bulk_create(self.session, self._ctx, items, returning, method, chunk_size)

    def bulk_update(self, items: Iterable[Any], *, chunk_size: int | None = None) -> int:
        return bulk.op_bulk_update(self.session, self._ctx, items, chunk_size)

    def upsert(self, data: Any, *, conflict_on: Any = None, update_fields: Any = None) -> M:
        return bulk.op_upsert(self.session, self._ctx, data, conflict_on, update_fields)

    def bulk_upsert(
        self,
        items: Iterable[Any],
        *,
        conflict_on: Any = None,
        update_fields: Any = None,
        chunk_size: int | None = None,
    ) -> int:
        return bulk.op_bulk_upsert(
            self.session, self._ctx, items, conflict_on, update_fields, chunk_size
        )


class AsyncRepository(_RepositoryBase[M]):
    """The same repository for an ``AsyncSession``: every method awaits
    ``session.run_sync(<the sync implementation>)``."""

    session: AsyncSession

    def _check_session(self, session: Any) -> AsyncSession:
        from sqlalchemy.ext.asyncio import AsyncSession, async_scoped_session

        if isinstance(session, async_scoped_session):
            session = session()
        if not isinstance(session, AsyncSession):
            hint = " (use Repository)" if isinstance(session, (Session, scoped_session)) else ""
            raise ConfigurationError(
                f"{type(self).__name__} needs a sqlalchemy.ext.asyncio.AsyncSession, got "
                f"{type(session).__name__}{hint}"
            )
        return session

    # -- reads -------------------------------------------------------------------------

    async def get_by_id(
        self,
        id: Any,
        *,
        options: Sequence[Any] | None = None,
        for_update: Any = False,
        include_deleted: bool = False,
    ) -> M | None:
        q = Query((), None, options, for_update, include_deleted)
        return await self.session.run_sync(core.op_get_by_id, self._ctx, id, q)

    async def get_by_ids(
        self,
        ids: Iterable[Any],
        *,
        options: Sequence[Any] | None = None,
        include_deleted: bool = False,
    ) -> builtins.list[M]:
        q = Query((), None, options, False, include_deleted)
        return await self.session.run_sync(core.op_get_by_ids, self._ctx, ids, q)

    async def get_one(
        self,
        *where: Any,
        filters: Mapping[str, Any] | None = None,
        options: Sequence[Any] | None = None,
        for_update: Any = False,
        include_deleted: bool = False,
        **kw_filters: Any,
    ) -> M:
        q = self._query(where, filters, kw_filters, options, for_update, include_deleted)
        return await self.session.run_sync(core.op_get_one, self._ctx, q)

    async def get_one_or_none(
        self,
        *where: Any,
        filters: Mapping[str, Any] | None = None,
        options: Sequence[Any] | None = None,
        for_update: Any = False,
        include_deleted: bool = False,
        **kw_filters: Any,
    ) -> M | None:
        q = self._query(where, filters, kw_filters, options, for_update, include_deleted)
        return await self.session.run_sync(core.op_get_one_or_none, self._ctx, q)

    async def list(
        self,
        *where: Any,
        filters: Mapping[str, Any] | None = None,
        order_by: Any = None,
        limit: int | None = None,
        offset: int = 0,
        options: Sequence[Any] | None = None,
        for_update: Any = False,
        include_deleted: bool = False,
        **kw_filters: Any,
    ) -> builtins.list[M]:
        q = self._query(where, filters, kw_filters, options, for_update, include_deleted)
        return await self.session.run_sync(
            core.op_list, self._ctx, q, order_by, limit, offset, False
        )

    async def get_all(
        self,
        limit: int = 100,
        offset: int = 0,
        filters: Mapping[str, Any] | None = None,
        *,
        skip: int | None = None,
        order_by: Any = None,
        options: Sequence[Any] | None = None,
        include_deleted: bool = False,
    ) -> builtins.list[M]:
        q = self._query((), filters, {}, options, False, include_deleted)
        return await self.session.run_sync(
            core.op_list, self._ctx, q, order_by, limit, offset if skip is None else skip, True
        )

    async def count(
        self,
        *where: Any,
        filters: Mapping[str, Any] | None = None,
        include_deleted: bool = False,
        **kw_filters: Any,
    ) -> int:
        q = self._query(where, filters, kw_filters, None, False, include_deleted)
        return await self.session.run_sync(core.op_count, self._ctx, q)

    async def exists(
        self,
        *where: Any,
        filters: Mapping[str, Any] | None = None,
        include_deleted: bool = False,
        **kw_filters: Any,
    ) -> bool:
        q = self._query(where, filters, kw_filters, None, False, include_deleted)
        return await self.session.run_sync(core.op_exists, self._ctx, q)

    async def paginate(
        self,
        page: int = 1,
        per_page: int = 20,
        *where: Any,
        filters: Mapping[str, Any] | None = None,
        order_by: Any = None,
        options: Sequence[Any] | None = None,
        include_deleted: bool = False,
        count: core.CountMode = "exact",
        **kw_filters: Any,
    ) -> Page[M]:
        q = self._query(where, filters, kw_filters, options, False, include_deleted)
        return await self.session.run_sync(
            core.op_paginate, self._ctx, q, page, per_page, order_by, count
        )

    async def keyset(
        self,
        *where: Any,
        after: str | None = None,
        limit: int = 20,
        order_by: Any = None,
        filters: Mapping[str, Any] | None = None,
        options: Sequence[Any] | None = None,
        include_deleted: bool = False,
        **kw_filters: Any,
    ) -> CursorPage[M]:
        q = self._query(where, filters, kw_filters, options, False, include_deleted)
        return await self.session.run_sync(core.op_keyset, self._ctx, q, after, limit, order_by)

    # -- writes ------------------------------------------------------------------------

    async def create(self, data: Any, *, options: Sequence[Any] | None = None) -> M:
        return await self.session.run_sync(core.op_create, self._ctx, data, options)

    async def update(
        self, entity: M, data: Any = None, *, options: Sequence[Any] | None = None
    ) -> M:
        return await self.session.run_sync(core.op_update, self._ctx, entity, data, options)

    async def delete(self, id: Any) -> bool:
        return await self.session.run_sync(core.op_delete, self._ctx, id, False)

    async def hard_delete(self, id: Any) -> bool:
        return await self.session.run_sync(core.op_delete, self._ctx, id, True)

    async def restore(self, id: Any) -> bool:
        return await self.session.run_sync(core.op_restore, self._ctx, id)

    async def delete_where(
        self,
        *where: Any,
        filters: Mapping[str, Any] | None = None,
        hard: bool = False,
        **kw_filters: Any,
    ) -> int:
        q = self._query(where, filters, kw_filters)
        return await self.session.run_sync(core.op_delete_where, self._ctx, q, hard)

    @overload
    async def bulk_create(
        self,
        items: Iterable[Any],
        *,
        returning: Literal["objects"] = ...,
        method: Method = ...,
        chunk_size: int | None = ...,
    ) -> builtins.list[M]: ...

    @overload
    async def bulk_create(
        self,
        items: Iterable[Any],
        *,
        returning: Literal["keys"],
        method: Method = ...,
        chunk_size: int | None = ...,
    ) -> builtins.list[Any]: ...

    @overload
    async def bulk_create(
        self,
        items: Iterable[Any],
        *,
        returning: None,
        method: Method = ...,
        chunk_size: int | None = ...,
    ) -> int: ...

    async def bulk_create(
        self,
        items: Iterable[Any],
        *,
        returning: Returning = "objects",
        method: Method = "auto",
        chunk_size: int | None = None,
    ) -> builtins.list[Any] | int:
        return await self.session.run_sync(
            bulk.op_bulk_create, self._ctx, items, returning, method, chunk_size
        )

    async def bulk_update(self, items: Iterable[Any], *, chunk_size: int | None = None) -> int:
        return await self.session.run_sync(bulk.op_bulk_update, self._ctx, items, chunk_size)

    async def upsert(self, data: Any, *, conflict_on: Any = None, update_fields: Any = None) -> M:
        return await self.session.run_sync(
            bulk.op_upsert, self._ctx, data, conflict_on, update_fields
        )

    async def bulk_upsert(
        self,
        items: Iterable[Any],
        *,
        conflict_on: Any = None,
        update_fields: Any = None,
        chunk_size: int | None = None,
    ) -> int:
        return await self.session.run_sync(
            bulk.op_bulk_upsert, self._ctx, items, conflict_on, update_fields, chunk_size
        )


#: compatibility names
BaseRepository = Repository
AsyncBaseRepository = AsyncRepository
