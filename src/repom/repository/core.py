"""The one implementation of every repository operation.

Each ``op_*`` function takes a *sync* ``Session`` first.  :class:`~repom.repository.Repository`
calls it directly; :class:`~repom.repository.AsyncRepository` calls it through
``AsyncSession.run_sync`` (SQLAlchemy's greenlet bridge), so both flavours run the very same
statement building, validation and bookkeeping, with one greenlet switch per method call.

Nothing here commits: writes are flushed, and the transaction owner commits.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, Generic, Literal, TypeVar, cast

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    bindparam,
    delete,
    func,
    inspect,
    literal_column,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import InstanceState, Session, joinedload, selectinload
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.sql.base import Executable, ExecutableOption
from sqlalchemy.sql.elements import ClauseElement

from repom.config import get_config
from repom.exceptions import (
    ConflictError,
    DataValidationError,
    DeletedRowConflict,
    DuplicateKeyError,
    InvalidFilterError,
    NotFoundError,
    RepomError,
    translate,
)
from repom.repository.cursor import CursorCodec, cursor_secret
from repom.repository.errors import InvalidOptionError, UnknownFieldError
from repom.repository.filters import OrderItem, coerce_value, compile_filters, compile_order_by
from repom.repository.meta import ModelInfo
from repom.repository.pagination import (
    CursorPage,
    Page,
    check_limit,
    check_offset,
    page_count,
    page_window,
    total_from_page,
)
from repom.repository.validation import validator

__all__ = ["Query", "RepoContext"]

M = TypeVar("M")

_FOR_UPDATE_KEYS = frozenset({"nowait", "skip_locked", "read", "key_share", "of"})
_IN_CHUNK = 500


@dataclasses.dataclass(frozen=True, eq=False)
class RepoContext(Generic[M]):
    """A repository class's settings bound to its model (built once per class and model)."""

    info: ModelInfo[M]
    filterable: frozenset[str]
    orderable: frozenset[str]
    default_options: tuple[ExecutableOption, ...]
    max_page_size: int | None
    cursor_secret: str | bytes | None
    _loader_cache: dict[str, ExecutableOption] = dataclasses.field(default_factory=dict)

    @property
    def model(self) -> type[M]:
        return self.info.model

    def cap(self) -> int:
        return self.max_page_size if self.max_page_size is not None else get_config().max_page_size


@dataclasses.dataclass(slots=True)
class Query:
    """The read arguments, as given (validated when the statement is built).

    ``filters`` are *caller-supplied* (a ``filters=`` mapping or a positional mapping: data that
    may come from a request) and are checked against the repository's ``filterable_fields``;
    ``code_filters`` are the keyword filters written in the application's code, which may use
    any mapped column (the whitelist is for callers, not for the code that owns the repository).
    """

    where: tuple[Any, ...] = ()
    filters: Mapping[str, Any] | None = None
    options: Sequence[Any] | None = None
    for_update: Any = False
    include_deleted: bool = False
    code_filters: Mapping[str, Any] | None = None


# --------------------------------------------------------------------------- helpers


def split_where(
    args: Sequence[Any], filters: Mapping[str, Any] | None, kw: Mapping[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any] | None, dict[str, Any] | None]:
    """``(expressions, caller filters, code filters)`` from a read's arguments.

    Positional criteria may be SQLAlchemy expressions or filter mappings (the
    compatibility ``count(filters)``).  Mappings, positional or ``filters=``, are caller-supplied
    filters (checked against ``filterable_fields``); keyword filters are the application's own
    (any mapped column).
    """
    exprs: list[Any] = []
    merged: dict[str, Any] = {}
    for arg in args:
        if arg is None:
            continue
        if isinstance(arg, Mapping):
            merged.update(arg)
        elif isinstance(arg, ColumnElement) or hasattr(arg, "__clause_element__"):
            exprs.append(arg)
        else:
            raise InvalidFilterError(
                f"positional criteria must be SQLAlchemy expressions or filter mappings, "
                f"got {arg!r}"
            )
    if filters:
        if not isinstance(filters, Mapping):
            raise InvalidFilterError(
                f"filters must be a mapping of field[__op] to value, got {type(filters).__name__}"
            )
        merged.update(filters)
    return tuple(exprs), (merged or None), (dict(kw) or None)


def _loader_option(
    ctx: RepoContext[Any], spec: Any, *, join_scalars: bool = False
) -> ExecutableOption:
    """A loader option from a relationship name (``"posts"``, nested ``"posts.comments"``):
    ``selectinload`` at every level, or, with *join_scalars*, ``joinedload`` for the
    many-to-one levels (the related row comes with the same SELECT)."""
    if isinstance(spec, ExecutableOption):
        return spec
    if not isinstance(spec, str):
        raise InvalidOptionError(
            f"options must be loader options (selectinload(...)) or relationship names, "
            f"got {spec!r}",
            option="options",
        )
    cache_key = f"join:{spec}" if join_scalars else spec
    cached = ctx._loader_cache.get(cache_key)
    if cached is not None:
        return cached
    from repom.repository.meta import model_info

    info: ModelInfo[Any] = ctx.info
    option: Any = None
    for part in spec.split("."):
        rel = info.relationships.get(part)
        if rel is None:
            names = ", ".join(sorted(info.relationships)) or "(none)"
            raise InvalidFilterError(
                f"unknown relationship {part!r} in {spec!r} for {info.name}; allowed: {names}",
                field=part,
                allowed=sorted(info.relationships),
            )
        attr = getattr(info.model, part)
        strategy = "joinedload" if join_scalars and not rel.uselist else "selectinload"
        if option is None:
            option = joinedload(attr) if strategy == "joinedload" else selectinload(attr)
        else:
            option = getattr(option, strategy)(attr)
        info = model_info(rel.mapper.class_)
    ctx._loader_cache[cache_key] = option
    return cast(ExecutableOption, option)


def loader_options(
    ctx: RepoContext[Any], options: Sequence[Any] | None, *, join_scalars: bool = False
) -> list[ExecutableOption]:
    """The repository's ``default_options`` plus *options*.  An option given here replaces the
    default options that start from the same relationship (a write's joined many-to-one, an
    explicit ``joinedload``), so the two never ask SQLAlchemy for conflicting strategies."""
    if not options:
        return list(ctx.default_options)
    if isinstance(options, (str, ExecutableOption)):
        options = [options]
    explicit = [_loader_option(ctx, o, join_scalars=join_scalars) for o in options]
    if not ctx.default_options:
        return explicit
    named = {_first_relationship(ctx, o) for o in explicit} - {None}
    kept = [d for d in ctx.default_options if _first_relationship(ctx, d) not in named]
    return kept + explicit


def for_update_kwargs(value: Any) -> dict[str, Any] | None:
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if isinstance(value, Mapping):
        unknown = set(value) - _FOR_UPDATE_KEYS
        if unknown:
            raise InvalidOptionError(
                f"unknown for_update option(s) {', '.join(sorted(map(str, unknown)))}; allowed: "
                f"{', '.join(sorted(_FOR_UPDATE_KEYS))}",
                option="for_update",
            )
        return dict(value)
    raise InvalidOptionError(
        f"for_update must be True, False or a dict of with_for_update() options, got {value!r}",
        option="for_update",
    )


def filter_criteria(ctx: RepoContext[Any], q: Query) -> list[Any]:
    """The WHERE criteria of *q*'s expressions and filters: caller-supplied filters checked
    against the whitelist, the code's keyword filters against every mapped column."""
    found: list[Any] = list(q.where)
    found.extend(compile_filters(ctx.info, q.filters, ctx.filterable))
    found.extend(compile_filters(ctx.info, q.code_filters))
    return found


def criteria(ctx: RepoContext[Any], q: Query) -> list[Any]:
    found = filter_criteria(ctx, q)
    if not q.include_deleted and not ctx.info.filtered_by_listener:
        hidden = ctx.info.not_deleted()
        if hidden is not None:
            found.append(hidden)
    return found


def build_select(ctx: RepoContext[M], q: Query) -> Select[Any]:
    stmt = select(ctx.info.model)
    where = criteria(ctx, q)
    if where:
        stmt = stmt.where(*where)
    options = loader_options(ctx, q.options)
    if options:
        stmt = stmt.options(*options)
    lock = for_update_kwargs(q.for_update)
    if lock is not None:
        # the lock is taken now: objects already in the session get the values read under it
        stmt = stmt.with_for_update(**lock).execution_options(populate_existing=True)
    if q.include_deleted:
        stmt = stmt.execution_options(include_deleted=True)
    return stmt


def identity(ctx: RepoContext[Any], value: Any, name: str = "id") -> tuple[Any, ...]:
    """Normalize a primary-key value (scalar, tuple or mapping) into a tuple."""
    info = ctx.info
    keys = info.pk_keys
    if len(keys) == 1:
        py = info.python_types[keys[0]]
        if py is not None and type(value) is py:  # the common case: nothing to check
            return (value,)
    if isinstance(value, info.model):
        return info.identity_of(value)
    if isinstance(value, Mapping):
        missing = [k for k in keys if k not in value]
        extra = [k for k in value if k not in keys]
        if missing or extra:
            raise InvalidFilterError(
                f"{name} for {info.name} needs exactly the keys {', '.join(keys)}",
                field=name,
                allowed=list(keys),
            )
        values = tuple(value[k] for k in keys)
    elif len(keys) > 1:
        if not isinstance(value, (tuple, list)) or len(value) != len(keys):
            raise InvalidFilterError(
                f"{name} for {info.name} must be a tuple of {len(keys)} values "
                f"({', '.join(keys)}), got {value!r}",
                field=name,
            )
        values = tuple(value)
    else:
        if isinstance(value, (tuple, list)):
            if len(value) != 1:
                raise InvalidFilterError(
                    f"{name} for {info.name} must be a single value, got {value!r}", field=name
                )
            value = value[0]
        values = (value,)
    result = []
    for key, item in zip(keys, values, strict=True):
        if item is None:
            raise InvalidFilterError(f"{name} for {info.name}: {key} must not be None", field=key)
        result.append(coerce_value(item, info.python_types[key], key, key))
    return tuple(result)


def pk_criterion(ctx: RepoContext[Any], ident: tuple[Any, ...]) -> ColumnElement[bool]:
    attrs = ctx.info.pk_attrs
    if len(attrs) == 1:
        single: ColumnElement[bool] = attrs[0] == ident[0]
        return single
    return and_(*(a == v for a, v in zip(attrs, ident, strict=True)))


def flush(session: Session) -> None:
    """Flush; a stale version becomes :class:`~repom.exceptions.ConflictError`."""
    try:
        session.flush()
    except StaleDataError as exc:
        raise ConflictError(
            "the row was changed or deleted by another transaction since it was read "
            "(optimistic lock conflict)"
        ) from exc


def _is_deleted(info: ModelInfo[Any], obj: Any) -> bool:
    if info.soft_delete_key is not None:
        return bool(getattr(obj, info.soft_delete_key))
    if info.deleted_at_key is not None:
        return getattr(obj, info.deleted_at_key) is not None
    return False


def _scalars(session: Session, stmt: Any) -> list[Any]:
    return list(session.scalars(stmt).unique().all())


# --------------------------------------------------------------------------- reads


def op_get_by_id(session: Session, ctx: RepoContext[M], ident_value: Any, q: Query) -> M | None:
    info = ctx.info
    ident = identity(ctx, ident_value)
    options = loader_options(ctx, q.options)
    lock = for_update_kwargs(q.for_update)
    obj: M | None
    if not options and lock is None:
        # identity-map lookup first: no SQL when the object is already in the session
        obj = session.get(
            info.model,
            info.pk_value(ident),
            execution_options={"include_deleted": True} if q.include_deleted else {},
        )
    else:
        stmt = build_select(ctx, q).where(pk_criterion(ctx, ident))
        obj = session.scalars(stmt).unique().one_or_none()
    if obj is not None and not q.include_deleted and _is_deleted(info, obj):
        return None
    return obj


def op_get_by_ids(session: Session, ctx: RepoContext[M], ids: Iterable[Any], q: Query) -> list[M]:
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise InvalidFilterError(f"ids must be a list of primary keys, got {ids!r}", field="ids")
    wanted: dict[tuple[Any, ...], None] = {}
    for value in ids:
        wanted.setdefault(identity(ctx, value, "ids"), None)
    if not wanted:
        return []
    info = ctx.info
    base = build_select(ctx, q)
    found: dict[tuple[Any, ...], M] = {}
    keys = list(wanted)
    for start in range(0, len(keys), _IN_CHUNK):
        chunk = keys[start : start + _IN_CHUNK]
        if len(info.pk_attrs) == 1:
            cond = info.pk_attrs[0].in_([k[0] for k in chunk])
        else:
            cond = tuple_(*info.pk_attrs).in_(chunk)
        for obj in _scalars(session, base.where(cond)):
            found[info.identity_of(obj)] = obj
    return [found[k] for k in keys if k in found]


def _ordered(ctx: RepoContext[Any], order_by: Any, default_pk: bool) -> list[OrderItem]:
    items = compile_order_by(ctx.info, order_by, ctx.orderable)
    if not items and default_pk and order_by is None:
        items = [
            OrderItem(attr, key, False)
            for attr, key in zip(ctx.info.pk_attrs, ctx.info.pk_keys, strict=True)
        ]
    return items


def op_list(
    session: Session,
    ctx: RepoContext[M],
    q: Query,
    order_by: Any,
    limit: Any,
    offset: Any,
    default_order: bool,
) -> list[M]:
    off = check_offset(offset)
    lim = None if limit is None else check_limit(limit, ctx.cap())
    stmt = build_select(ctx, q)
    order = _ordered(ctx, order_by, default_order or bool(off) or lim is not None)
    if order:
        stmt = stmt.order_by(*(item.clause() for item in order))
    if lim is not None:
        stmt = stmt.limit(lim)
    if off:
        stmt = stmt.offset(off)
    return _scalars(session, stmt)


def op_get_one_or_none(session: Session, ctx: RepoContext[M], q: Query) -> M | None:
    stmt = build_select(ctx, q).limit(2)
    rows = _scalars(session, stmt)
    if len(rows) > 1:
        from sqlalchemy.exc import MultipleResultsFound

        raise MultipleResultsFound(
            f"more than one {ctx.info.name} matches; add criteria or use list()"
        )
    return rows[0] if rows else None


def op_get_one(session: Session, ctx: RepoContext[M], q: Query) -> M:
    obj = op_get_one_or_none(session, ctx, q)
    if obj is None:
        raise NotFoundError(f"{ctx.info.name} not found", model=ctx.info.name)
    return obj


def build_count(ctx: RepoContext[Any], q: Query) -> Select[Any]:
    stmt = select(func.count()).select_from(ctx.info.mapper)
    where = criteria(ctx, q)
    if where:
        stmt = stmt.where(*where)
    if q.include_deleted:
        stmt = stmt.execution_options(include_deleted=True)
    return stmt


def build_exists(ctx: RepoContext[Any], q: Query) -> Select[Any]:
    inner: Select[Any] = select(literal_column("1")).select_from(ctx.info.mapper)
    where = criteria(ctx, q)
    if where:
        inner = inner.where(*where)
    stmt = select(inner.exists())
    if q.include_deleted:
        stmt = stmt.execution_options(include_deleted=True)
    return stmt


def op_count(session: Session, ctx: RepoContext[Any], q: Query) -> int:
    value: Any = session.execute(build_count(ctx, q)).scalar_one()
    return int(value)


def op_exists(session: Session, ctx: RepoContext[Any], q: Query) -> bool:
    return bool(session.execute(build_exists(ctx, q)).scalar_one())


#: ``paginate(count=...)``: how the total is obtained (see docs/repositories.md).
CountMode = Literal["exact", "estimated", "none"]
COUNT_MODES: tuple[str, ...] = ("exact", "estimated", "none")
#: With ``count="estimated"``, a planner estimate below this is replaced by an exact COUNT
#: (small results stay exact; a COUNT over a thousand rows costs little).
ESTIMATE_MIN_ROWS = 1_000


class _ExplainJSON(Executable, ClauseElement):
    """``EXPLAIN (FORMAT JSON) <select>`` (PostgreSQL), bound parameters rendered as usual."""

    inherit_cache = False

    def __init__(self, element: Select[Any]) -> None:
        self.element = element


@compiles(_ExplainJSON)
def _compile_explain(element: _ExplainJSON, compiler: Any, **kw: Any) -> str:
    return "EXPLAIN (FORMAT JSON) " + str(compiler.process(element.element, **kw))


def check_count_mode(value: Any) -> str:
    if not isinstance(value, str) or value not in COUNT_MODES:
        raise InvalidOptionError(
            f"count must be one of {', '.join(repr(m) for m in COUNT_MODES)}; got {value!r}",
            option="count",
        )
    return value


def op_estimate(session: Session, ctx: RepoContext[Any], q: Query) -> int | None:
    """PostgreSQL's planner estimate of the rows *q* matches (``None`` on other backends)."""
    if session.get_bind(mapper=ctx.info.mapper).dialect.name != "postgresql":
        return None
    inner: Select[Any] = select(literal_column("1")).select_from(ctx.info.mapper)
    where = criteria(ctx, q)
    if not q.include_deleted and ctx.info.filtered_by_listener:
        hidden = ctx.info.not_deleted()  # the listener does not see EXPLAIN; add it here
        if hidden is not None:
            where.append(hidden)
    if where:
        inner = inner.where(*where)
    plan: Any = session.execute(_ExplainJSON(inner)).scalar_one()
    if isinstance(plan, (str, bytes)):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


def op_paginate(
    session: Session,
    ctx: RepoContext[M],
    q: Query,
    page: Any,
    per_page: Any,
    order_by: Any,
    count: Any = "exact",
) -> Page[M]:
    mode = check_count_mode(count)
    number, size, offset = page_window(page, per_page, ctx.cap())
    stmt = build_select(ctx, q)
    order = _ordered(ctx, order_by, True)
    if order:
        stmt = stmt.order_by(*(item.clause() for item in order))
    if mode == "exact":
        items = _scalars(session, stmt.limit(size).offset(offset))
        total = total_from_page(items, offset, size)
        if total is None:
            total = op_count(session, ctx, dataclasses.replace(q, options=None, for_update=False))
        return Page(items, total, number, size, page_count(total, size))
    # one row beyond the page tells whether another page follows, without a total
    rows = _scalars(session, stmt.limit(size + 1).offset(offset))
    more = len(rows) > size
    items = rows[:size]
    if mode == "none":
        return Page(items, None, number, size, None, False, more)
    known = None if more else total_from_page(items, offset, size + 1)
    if known is not None:
        return Page(items, known, number, size, page_count(known, size), False, more)
    bare = dataclasses.replace(q, options=None, for_update=False)
    estimate = op_estimate(session, ctx, bare)
    if estimate is None or estimate < ESTIMATE_MIN_ROWS:
        exact = op_count(session, ctx, bare)
        return Page(items, exact, number, size, page_count(exact, size), False, more)
    # never below what this page proves: the rows before it, on it, and one after it
    total = max(estimate, offset + len(items) + (1 if more else 0))
    return Page(items, total, number, size, page_count(total, size), True, more)


def _keyset_order(ctx: RepoContext[Any], order_by: Any) -> list[OrderItem]:
    info = ctx.info
    items = compile_order_by(info, order_by, ctx.orderable) if order_by is not None else []
    for item in items:
        if item.key is None:
            raise InvalidFilterError(
                f"keyset() orders by columns only, got the expression {item.expression!r}; "
                f"use a field name or a mapped column",
                field="order_by",
            )
        column = info.columns[item.key]
        if column.nullable and item.key not in info.pk_keys:
            raise InvalidFilterError(
                f"keyset() cannot order by the nullable column {item.key!r} (NULLs have no "
                f"position in a keyset); make it NOT NULL or use paginate()",
                field=item.key,
            )
    seen = {item.key for item in items}
    descending = items[-1].descending if items else False
    for attr, key in zip(info.pk_attrs, info.pk_keys, strict=True):
        if key not in seen:
            items.append(OrderItem(attr, key, descending))
    return items


def _enum_class(info: ModelInfo[Any], key: str) -> Any:
    return getattr(info.columns[key].type, "enum_class", None)


def keyset_predicate(order: Sequence[OrderItem], values: Sequence[Any]) -> ColumnElement[bool]:
    """Rows strictly after *values* in *order* (row-value comparison when directions agree)."""
    binds = [
        bindparam(None, value, type_=item.expression.type)
        for item, value in zip(order, values, strict=True)
    ]
    directions = {item.descending for item in order}
    if len(directions) == 1:
        left = tuple_(*(item.expression for item in order))
        right = tuple_(*binds)
        return left < right if order[0].descending else left > right
    clauses = []
    for i, item in enumerate(order):
        equal = [order[j].expression == binds[j] for j in range(i)]
        step = item.expression < binds[i] if item.descending else item.expression > binds[i]
        clauses.append(and_(*equal, step))
    return or_(*clauses)


def _codec(ctx: RepoContext[Any], order: Sequence[OrderItem]) -> CursorCodec:
    info = ctx.info
    return CursorCodec(
        info.name,
        [(cast(str, item.key), item.descending) for item in order],
        cursor_secret(ctx.cursor_secret),
        [_enum_class(info, cast(str, item.key)) for item in order],
    )


def make_cursor(ctx: RepoContext[Any], item: Any, order_by: Any) -> str:
    """The cursor that continues a keyset walk right after *item*."""
    if not isinstance(item, ctx.info.model):
        raise InvalidOptionError(
            f"cursor_for() needs a {ctx.info.name} instance, got {type(item).__name__}",
            option="item",
        )
    order = _keyset_order(ctx, order_by)
    return _codec(ctx, order).encode([getattr(item, cast(str, o.key)) for o in order])


def op_keyset(
    session: Session, ctx: RepoContext[M], q: Query, after: Any, limit: Any, order_by: Any
) -> CursorPage[M]:
    size = check_limit(limit, ctx.cap(), minimum=1)
    order = _keyset_order(ctx, order_by)
    keys = [item.key for item in order]
    codec = _codec(ctx, order)
    stmt = build_select(ctx, q)
    if after is not None:
        stmt = stmt.where(keyset_predicate(order, codec.decode(after)))
    stmt = stmt.order_by(*(item.clause() for item in order)).limit(size + 1)
    rows = _scalars(session, stmt)
    next_cursor = None
    if len(rows) > size:
        rows = rows[:size]
        last = rows[-1]
        next_cursor = codec.encode([getattr(last, cast(str, key)) for key in keys])
    return CursorPage(rows, next_cursor)


# --------------------------------------------------------------------------- writes


def _as_dict(data: Any, *, exclude_unset: bool, what: str, model_name: str) -> dict[str, Any]:
    if isinstance(data, Mapping):
        return dict(data)
    dump = getattr(data, "model_dump", None)
    if dump is not None and callable(dump):
        result = dump(exclude_unset=exclude_unset)
        if isinstance(result, dict):
            return result
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        return {f.name: getattr(data, f.name) for f in dataclasses.fields(data)}
    raise InvalidOptionError(
        f"{what} expects a {model_name} instance, a mapping or a pydantic model, "
        f"got {type(data).__name__}",
        option="data",
    )


def check_fields(info: ModelInfo[Any], data: Mapping[str, Any], allowed: Collection[str]) -> None:
    for key in data:
        if key not in allowed:
            raise UnknownFieldError(
                f"{info.name} has no writable field {key!r}; allowed: {', '.join(sorted(allowed))}",
                field=str(key),
                allowed=sorted(allowed),
            )


def build_instance(info: ModelInfo[M], data: Mapping[str, Any]) -> M:
    check_fields(info, data, info.writable)
    init = {k: v for k, v in data.items() if k not in info.no_init}
    try:
        obj = info.model(**init)
    except TypeError as exc:
        raise DataValidationError(f"cannot build {info.name} from the data: {exc}") from exc
    for key in info.no_init:
        if key in data:
            setattr(obj, key, data[key])
    return obj


def to_instance(ctx: RepoContext[M], data: Any, what: str = "create()") -> M:
    info = ctx.info
    if isinstance(data, info.model):
        return data
    if isinstance(data, type) or (hasattr(data, "__mapper__") and not isinstance(data, Mapping)):
        raise InvalidOptionError(
            f"{what} expects a {info.name} instance, a mapping or a pydantic model, "
            f"got {type(data).__name__}",
            option="data",
        )
    return build_instance(
        info, _as_dict(data, exclude_unset=False, what=what, model_name=info.name)
    )


def write_options(ctx: RepoContext[Any], options: Sequence[Any] | None) -> list[ExecutableOption]:
    """The loader options a write loads into its object (none unless asked: no extra SELECT).

    Relationship names load many-to-one relationships with a join (the one object needs one
    related row: no second round trip) and collections with ``selectinload``.  Checked before
    the write, so an unknown relationship name writes nothing."""
    if options is None or (isinstance(options, Sequence) and not options):
        return []
    return loader_options(ctx, options, join_scalars=True)


def _first_relationship(ctx: RepoContext[Any], option: ExecutableOption) -> str | None:
    """The relationship of *ctx*'s model an option starts from (``selectinload(Post.author)``
    -> ``"author"``), when it tells."""
    try:
        prop = option.path[1]  # type: ignore[attr-defined]
    except (AttributeError, IndexError, TypeError, KeyError):
        return None
    key = getattr(prop, "key", None)
    return key if isinstance(key, str) and key in ctx.info.relationships else None


def load_after_write(
    session: Session, ctx: RepoContext[M], obj: M, options: Sequence[ExecutableOption]
) -> None:
    """Load *options* (relationships) into the just-flushed *obj*, so that it can be read
    without lazy loads afterwards -- in an async response model, say, where a lazy load fails.

    One ``SELECT`` of the row (many-to-one relationships joined to it) plus one per collection
    level (a ``selectinload``).  The
    relationships the options start from are expired first, so a changed foreign key shows its
    new target; anything else already loaded stays as it is (the flush left nothing unsaved),
    and what the flush expired (server defaults) is read too.  A soft-deleted row stays hidden,
    as from any read.
    """
    if not options:
        return
    first = {key for key in (_first_relationship(ctx, o) for o in options) if key is not None}
    if first:
        session.expire(obj, sorted(first))
    stmt = (
        select(ctx.info.model).where(pk_criterion(ctx, ctx.info.identity_of(obj))).options(*options)
    )
    session.scalars(stmt).unique().all()


def op_create(
    session: Session, ctx: RepoContext[M], data: Any, options: Sequence[Any] | None = None
) -> M:
    load = write_options(ctx, options)
    obj = to_instance(ctx, data)
    validator(ctx.info).check_object(obj)
    session.add(obj)
    try:
        flush(session)
    except sa_exc.IntegrityError as exc:
        error = translate(exc)
        if isinstance(error, DuplicateKeyError) and ctx.info.soft_delete:
            deleted = _deleted_row_conflict(session, ctx.info, obj, error)
            if deleted is not None:
                raise deleted from error
        if error is exc:
            raise
        raise error from exc.orig
    load_after_write(session, ctx, obj, load)
    return obj


def _deleted_row_conflict(
    session: Session, info: ModelInfo[Any], obj: Any, error: DuplicateKeyError
) -> DeletedRowConflict | None:
    """A :class:`DeletedRowConflict` when every row holding one of *obj*'s unique values is
    soft-deleted (so the conflict is with a row no read shows); ``None`` otherwise.

    Runs only on this error path, one ``SELECT``.  The failed INSERT has ended the session's
    transaction (PostgreSQL aborts it; the session needs a rollback anyway), so the check cannot
    use it: it reads through a connection of its own from the session's engine (committed rows),
    or, for a session bound to an external connection (``repom.testing``, where the session's
    savepoint was rolled back and the outer transaction lives on), inside a savepoint on that
    connection.  Any failure of the check keeps the original error.
    """
    table = info.table
    if table is None:
        return None
    values = inspect(obj).dict
    matches = []
    for keys in info.unique_sets:
        if all(values.get(k) is not None for k in keys):
            matches.append(and_(*(info.columns[k] == values[k] for k in sorted(keys))))
    if not matches:
        return None
    if info.soft_delete_key is not None:
        deleted: ColumnElement[bool] = info.columns[info.soft_delete_key].is_(True)
    else:
        deleted = info.columns[cast(str, info.deleted_at_key)].is_not(None)
    stmt = select(deleted).select_from(table).where(or_(*matches)).limit(20)
    try:
        bind = session.get_bind(mapper=info.mapper)
        if isinstance(bind, Connection):
            with bind.begin_nested() if bind.in_transaction() else bind.begin():
                flags = list(bind.execute(stmt).scalars())
        else:
            with bind.connect() as conn:
                flags = list(conn.execute(stmt).scalars())
                conn.rollback()
    except (sa_exc.SQLAlchemyError, RepomError):
        return None
    if not flags or not all(flags):
        return None
    names = [
        f"{what} {name!r}"
        for what, name in (("constraint", error.constraint_name), ("column", error.column_name))
        if name
    ]
    where = f" ({', '.join(names)})" if names else ""
    conflict = DeletedRowConflict(
        f"{info.name}: the unique value belongs to a soft-deleted {info.name} row, which reads "
        f"do not show{where}; restore that row, or declare the column unique among live rows "
        "(repom.models.unique_live)",
        statement=error.statement,
        params=error.params,
        orig=error.orig,
        sqlstate=error.sqlstate,
        constraint_name=error.constraint_name,
        table_name=error.table_name,
        column_name=error.column_name,
    )
    return conflict


def op_update(
    session: Session,
    ctx: RepoContext[M],
    entity: M,
    data: Any,
    options: Sequence[Any] | None = None,
) -> M:
    info = ctx.info
    load = write_options(ctx, options)
    if not isinstance(entity, info.model):
        raise InvalidOptionError(
            f"update() expects a {info.name} instance, got {type(entity).__name__}",
            option="entity",
        )
    values: dict[str, Any] = {}
    if data is not None:
        values = _as_dict(data, exclude_unset=True, what="update()", model_name=info.name)
        check_fields(info, values, info.writable)
        validator(info).check_row(values)
    state = cast("InstanceState[Any]", inspect(entity))
    if state.transient:
        raise InvalidOptionError(
            f"update() got a {info.name} that was never saved; use create()", option="entity"
        )
    if state.detached:
        identity_key = state.key
        if identity_key is not None and session.identity_map.get(identity_key) is not None:
            entity = session.merge(entity)
        else:
            session.add(entity)
    elif state.session is not None and state.session is not session:
        raise InvalidOptionError(
            f"update() got a {info.name} that belongs to another session", option="entity"
        )
    if values:
        version_key = info.version_key
        if version_key is not None and version_key in values:
            expected = values.pop(version_key)
            current = getattr(entity, version_key)
            if expected is not None and expected != current:
                raise ConflictError(
                    f"{info.name} was changed since version {expected!r} was read "
                    f"(current version {current!r})",
                    model=info.name,
                    identity=info.pk_value(info.identity_of(entity)),
                )
        for key in info.pk_keys:
            if key in values:
                if values[key] != getattr(entity, key):
                    raise UnknownFieldError(
                        f"update() cannot change the primary key {key!r} of {info.name}",
                        field=key,
                    )
                del values[key]
        for key, value in values.items():
            setattr(entity, key, value)
    flush(session)
    load_after_write(session, ctx, entity, load)
    return entity


def now_for(info: ModelInfo[Any], key: str) -> dt.datetime:
    """The current UTC time, naive when the column stores naive datetimes."""
    now = dt.datetime.now(dt.UTC)
    column_type = info.columns[key].type
    if getattr(column_type, "timezone", True) is False:
        return now.replace(tzinfo=None)
    return now


def soft_delete_values(info: ModelInfo[Any], *, deleted: bool) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if info.soft_delete_key is not None:
        values[info.soft_delete_key] = deleted
    if info.deleted_at_key is not None:
        values[info.deleted_at_key] = now_for(info, info.deleted_at_key) if deleted else None
    return values


def _deleted_criterion(info: ModelInfo[Any]) -> ColumnElement[bool]:
    if info.soft_delete_key is not None:
        return info.attributes[info.soft_delete_key].is_(True)
    return info.attributes[cast(str, info.deleted_at_key)].is_not(None)


def _require_soft(info: ModelInfo[Any], what: str) -> None:
    if not info.soft_delete:
        raise InvalidOptionError(
            f"{what}: {info.name} has no soft delete (add SoftDeleteMixin: is_deleted/deleted_at)",
            option=what,
        )


def _soft_update(
    session: Session, ctx: RepoContext[Any], where: Sequence[Any], *, deleted: bool
) -> int:
    info = ctx.info
    values: dict[Any, Any] = {
        info.attributes[k]: v for k, v in soft_delete_values(info, deleted=deleted).items()
    }
    if info.version_key is not None and info.mapper.version_id_generator is not False:
        attr = info.attributes[info.version_key]
        values[attr] = attr + 1
    guard = cast(ColumnElement[bool], info.not_deleted()) if deleted else _deleted_criterion(info)
    stmt = (
        update(info.model)
        .where(*where, guard)
        .values(values)
        .execution_options(include_deleted=True, synchronize_session="auto")
    )
    result = session.execute(stmt)
    return int(getattr(result, "rowcount", 0) or 0)


def _hard_delete(session: Session, ctx: RepoContext[Any], where: Sequence[Any]) -> int:
    stmt = (
        delete(ctx.info.model)
        .where(*where)
        .execution_options(include_deleted=True, synchronize_session="auto")
    )
    result = session.execute(stmt)
    return int(getattr(result, "rowcount", 0) or 0)


def op_delete(session: Session, ctx: RepoContext[Any], target: Any, hard: bool) -> bool:
    info = ctx.info
    soft = info.soft_delete and not hard
    if isinstance(target, info.model):
        state = inspect(target)
        if state.transient or state.pending:
            raise InvalidOptionError(
                f"delete() got a {info.name} that was never saved", option="entity"
            )
        if state.detached:
            key = state.key
            existing = session.identity_map.get(key) if key is not None else None
            if existing is not None:
                target = existing
            else:
                session.add(target)
        if soft:
            if _is_deleted(info, target):
                return False
            for key, value in soft_delete_values(info, deleted=True).items():
                setattr(target, key, value)
        else:
            session.delete(target)
        flush(session)
        return True
    where = [pk_criterion(ctx, identity(ctx, target))]
    if soft:
        return _soft_update(session, ctx, where, deleted=True) > 0
    return _hard_delete(session, ctx, where) > 0


def op_restore(session: Session, ctx: RepoContext[Any], target: Any) -> bool:
    info = ctx.info
    _require_soft(info, "restore()")
    if isinstance(target, info.model):
        if not _is_deleted(info, target):
            return False
        for key, value in soft_delete_values(info, deleted=False).items():
            setattr(target, key, value)
        flush(session)
        return True
    where = [pk_criterion(ctx, identity(ctx, target))]
    return _soft_update(session, ctx, where, deleted=False) > 0


def op_delete_where(session: Session, ctx: RepoContext[Any], q: Query, hard: bool) -> int:
    info = ctx.info
    where = filter_criteria(ctx, q)
    if not where:
        raise InvalidFilterError(
            "delete_where() needs at least one criterion; pass sqlalchemy.true() to delete "
            "every row on purpose"
        )
    if info.soft_delete and not hard:
        return _soft_update(session, ctx, where, deleted=True)
    return _hard_delete(session, ctx, where)
