"""Bulk writes: ``bulk_create``, ``bulk_update``, ``upsert`` and ``bulk_upsert``.

Every function runs against a *sync* ``Session`` (the async repository runs it through
``AsyncSession.run_sync``); nothing commits.  Input is consumed in chunks, so an iterator of a
million rows keeps memory flat.

PostgreSQL fast paths (the table must be a single-table mapping):

* ``COPY`` (asyncpg ``copy_records_to_table``, psycopg ``cursor.copy``) for ``bulk_create``.
  Keys are known before the rows are sent: taken from the rows, computed from Python-side
  defaults, or reserved from the key's sequence with one ``SELECT array_agg(nextval(...))``.
* ``INSERT ... SELECT ... FROM unnest(:col1, :col2, ...)``: one statement and one parameter per
  column for a whole chunk, used by ``bulk_create(method="insert")``, ``bulk_upsert``
  (with ``ON CONFLICT``) and ``bulk_update`` (``UPDATE ... FROM unnest(...)``).

Elsewhere (SQLite, MySQL/MariaDB) the same operations use executemany / insertmanyvalues.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sqlalchemy import (
    Column,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    UniqueConstraint,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy import exc as sa_exc
from sqlalchemy import inspect as orm_inspect
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import Session, attributes, make_transient_to_detached
from sqlalchemy.orm.base import NO_VALUE
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.sql.sqltypes import JSON, Enum, TypeDecorator
from sqlalchemy.types import TypeEngine

from repom.exceptions import ConflictError, InvalidFilterError, translate
from repom.repository.core import (
    RepoContext,
    _as_dict,
    build_instance,
    check_fields,
    flush,
    identity,
)
from repom.repository.errors import InvalidOptionError, UnknownFieldError
from repom.repository.filters import coerce_value
from repom.repository.meta import ModelInfo
from repom.repository.validation import validator

if TYPE_CHECKING:
    from sqlalchemy.sql.elements import ColumnElement

__all__ = ["op_bulk_create", "op_bulk_update", "op_bulk_upsert", "op_upsert"]

M = TypeVar("M")

DEFAULT_CHUNK = 10_000
COPY_CHUNK = 50_000
RETURNING = ("objects", "keys", None)
METHODS = ("auto", "insert", "copy")
_COPY_DRIVERS = frozenset({"asyncpg", "psycopg"})  # psycopg: sync and async connections


# --------------------------------------------------------------------------- input

#: SQLAlchemy keeps ``rowcount`` of INSERT statements only when asked
_ROWCOUNT: dict[str, Any] = {"preserve_rowcount": True}


def _count(result: Any, sent: int) -> int:
    """The driver's row count; the number of rows sent when the driver cannot tell
    (asyncpg ``executemany``)."""
    count = int(result.rowcount)
    return count if count >= 0 else sent


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while True:
        chunk = list(itertools.islice(iterator, size))
        if not chunk:
            return
        yield chunk


def _chunk_size(value: Any) -> int:
    if value is None:
        return DEFAULT_CHUNK
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidOptionError(
            f"chunk_size must be a positive integer, got {value!r}", option="chunk_size"
        )
    return value


def _row(info: ModelInfo[Any], item: Any, what: str) -> dict[str, Any]:
    """One input item as a dict of column attribute keys (validated).  A plain dict is used as
    given (never modified)."""
    if type(item) is dict:
        data = item
    elif isinstance(item, info.model):
        state = orm_inspect(item)
        data = {k: v for k, v in state.dict.items() if k in info.columns}
    elif isinstance(item, Mapping):
        data = dict(item)
    else:
        data = _as_dict(item, exclude_unset=False, what=what, model_name=info.name)
    if not info.column_keys.issuperset(data):
        check_fields(info, data, info.columns.keys())
    return data


def _groups(
    rows: Sequence[dict[str, Any]],
) -> Iterator[tuple[tuple[str, ...], list[dict[str, Any]]]]:
    """Consecutive rows with the same keys (input order is kept)."""

    def keys_of(row: dict[str, Any]) -> tuple[str, ...]:
        return tuple(row)

    for keys, group in itertools.groupby(rows, key=keys_of):
        yield keys, list(group)


# --------------------------------------------------------------------------- column defaults


class _DefaultContext:
    """The little of SQLAlchemy's execution context that context-aware defaults use."""

    __slots__ = ("current_parameters",)

    def __init__(self, params: dict[str, Any]) -> None:
        self.current_parameters = params

    def get_current_parameters(self, isolate_multiinsert_groups: bool = True) -> dict[str, Any]:
        return self.current_parameters


def _python_default(
    column: Column[Any], *, onupdate: bool = False
) -> Callable[[dict[str, Any]], Any] | bool | None:
    """A function computing *column*'s Python-side default for one row; ``None`` when the
    column has no client-side default (the server fills it); ``False`` when the default is a
    SQL expression or a sequence that cannot be computed here."""
    default = column.onupdate if onupdate else column.default
    if default is None:
        return None
    if getattr(default, "is_scalar", False):
        value = default.arg  # type: ignore[attr-defined]

        def constant(params: dict[str, Any]) -> Any:
            return value

        constant.constant = True  # type: ignore[attr-defined]
        return constant
    if getattr(default, "is_callable", False):
        fn = default.arg  # type: ignore[attr-defined]
        return lambda params: fn(_DefaultContext(params))
    return False


def _sql_onupdate(column: Column[Any]) -> Any:
    default = column.onupdate
    if default is not None and getattr(default, "is_clause_element", False):
        return default.arg  # type: ignore[attr-defined]
    return None


# --------------------------------------------------------------------------- dialect helpers


def _translate_map(conn: Connection) -> Mapping[str | None, str | None]:
    found = conn.get_execution_options().get("schema_translate_map")
    return found or {}


def _schema(conn: Connection, table: Table) -> str | None:
    mapping = _translate_map(conn)
    return mapping.get(table.schema, table.schema) if mapping else table.schema


_NO_ARRAY = (ARRAY, JSON)


def _base_type(type_: TypeEngine[Any]) -> TypeEngine[Any]:
    while isinstance(type_, TypeDecorator):
        type_ = type_.impl_instance
    return type_


def _array_ok(column: Column[Any]) -> bool:
    """Can this column travel as one PostgreSQL array parameter (unnest)?"""
    type_ = column.type
    if _sql_side(type_):
        return False
    base = _base_type(type_)
    if isinstance(base, _NO_ARRAY):
        return False
    return not (isinstance(base, Enum) and base.native_enum)


def _sql_side(type_: TypeEngine[Any]) -> bool:
    """Does the type wrap its parameter in SQL (``bind_expression``)?  Such values cannot be
    sent by COPY or as array elements."""
    return bool(getattr(type_, "_has_bind_expression", True))


def _copy_ok(column: Column[Any]) -> bool:
    return not _sql_side(column.type)


def _autoincrement(table: Table) -> Column[Any] | None:
    column = table.autoincrement_column
    if column is None:
        return None
    identity = column.identity
    if identity is not None and identity.always:
        return None  # GENERATED ALWAYS refuses explicit values
    return column


def _unnest(columns: Sequence[Column[Any]], arrays: Sequence[list[Any]], prefix: str) -> Any:
    names = [f"c{i}" for i in range(len(columns))]
    params = [
        sql_cast(bindparam(f"{prefix}{i}", values, type_=ARRAY(col.type)), ARRAY(col.type))
        for i, (col, values) in enumerate(zip(columns, arrays, strict=True))
    ]
    return func.unnest(*params).table_valued(*names, with_ordinality="ord").render_derived(name="u")


def _driver_error(conn: Connection, exc: Exception, statement: str) -> BaseException:
    dbapi = conn.dialect.loaded_dbapi
    orig: BaseException = exc
    adapter = conn.connection.dbapi_connection
    handler = getattr(adapter, "_handle_exception", None)
    if handler is not None and not isinstance(exc, dbapi.Error):
        try:
            handler(exc)
        except Exception as adapted:  # the adapter raises its DBAPI-style error
            orig = adapted
    if isinstance(orig, dbapi.Error):
        wrapped = sa_exc.DBAPIError.instance(
            statement, None, cast(Exception, orig), dbapi.Error, hide_parameters=True
        )
        return translate(wrapped)
    return exc


def _copy(
    conn: Connection,
    table: Table,
    columns: Sequence[Column[Any]],
    records: Iterable[tuple[Any, ...]],
) -> int:
    """Send *records* with COPY on the session's connection (inside its transaction)."""
    await_ = _await_in_greenlet()

    driver = conn.dialect.driver
    schema = _schema(conn, table)
    names = [c.name for c in columns]
    fairy = conn.connection
    raw = fairy.driver_connection
    label = f"COPY {table.name}"
    try:
        if driver == "asyncpg":
            adapter: Any = fairy.dbapi_connection

            async def run_asyncpg() -> str:
                # SQLAlchemy's asyncpg adapter begins its transaction lazily, on the first
                # statement: begin it now so that COPY is part of the session's transaction.
                async with adapter._execute_mutex:
                    if adapter._transaction is None and adapter.isolation_level != "autocommit":
                        await adapter._start_transaction()
                    return str(
                        await cast(Any, raw).copy_records_to_table(
                            table.name, records=records, columns=names, schema_name=schema
                        )
                    )

            status = await_(run_asyncpg())
            return int(status.rsplit(" ", 1)[-1]) if status.startswith("COPY") else -1
        from psycopg import sql

        target = sql.Identifier(schema, table.name) if schema else sql.Identifier(table.name)
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            target, sql.SQL(", ").join(sql.Identifier(n) for n in names)
        )
        if not conn.dialect.is_async:
            with cast(Any, raw).cursor() as cursor:
                with cursor.copy(statement) as copy:
                    for record in records:
                        copy.write_row(record)
                return int(cursor.rowcount)

        async def run_psycopg() -> int:
            async with cast(Any, raw).cursor() as cursor:
                async with cursor.copy(statement) as copy:
                    for record in records:
                        await copy.write_row(record)
                return int(cursor.rowcount)

        return int(await_(run_psycopg()))
    except sa_exc.SQLAlchemyError:
        raise
    except Exception as exc:
        translated = _driver_error(conn, exc, label)
        if translated is exc:
            raise
        raise translated from exc


# --------------------------------------------------------------------------- row preparation


class _Shape:
    """How one group of rows (same keys) is written: target columns, defaults, key plan."""

    def __init__(self, info: ModelInfo[Any], table: Table, keys: Sequence[str]) -> None:
        self.info = info
        self.table = table
        self.keys = list(keys)
        self.columns = [info.columns[k] for k in keys]
        self.defaults: list[tuple[str, Callable[[dict[str, Any]], Any]]] = []
        self.computable = True  # every missing column is server-side or computable here
        serial = _autoincrement(table)
        self.serial_key: str | None = None
        self.serial_column: Column[Any] | None = None
        for key, column in info.columns.items():
            if key in keys:
                continue
            if serial is not None and column is serial:
                self.serial_key, self.serial_column = key, column
                continue
            fn = _python_default(column)
            if fn is False:
                self.computable = False
            elif fn is not None:
                self.defaults.append((key, cast(Callable[[dict[str, Any]], Any], fn)))
        self.all_keys = self.keys + [k for k, _ in self.defaults]
        self.all_columns = [info.columns[k] for k in self.all_keys]
        missing_pk = [k for k in info.pk_keys if k not in self.all_keys]
        #: keys are known before the INSERT (given or computed client-side)
        self.keys_known = not missing_pk
        #: keys can be reserved from the key's sequence
        self.prefetchable = missing_pk == [self.serial_key] if self.serial_key else False

    def column_values(self, rows: Sequence[dict[str, Any]]) -> list[list[Any]]:
        """One list per column of ``all_keys`` (column-major), Python-side defaults applied."""
        columns = [[row[key] for row in rows] for key in self.keys]
        if not self.defaults:
            return columns
        if all(getattr(fn, "constant", False) for _, fn in self.defaults):
            return columns + [[fn({})] * len(rows) for _, fn in self.defaults]
        computed: list[list[Any]] = [[] for _ in self.defaults]
        for row in rows:
            params = dict(row)
            for i, (key, fn) in enumerate(self.defaults):
                value = params[key] = fn(params)
                computed[i].append(value)
        return columns + computed

    def with_keys(
        self, session: Session, conn: Connection, columns: list[list[Any]], want_keys: bool
    ) -> tuple[list[Column[Any]], list[list[Any]], list[Any]]:
        """Target columns, their values and the keys to return (reserved when needed)."""
        targets = list(self.all_columns)
        if not want_keys:
            return targets, columns, []
        if not self.keys_known:
            reserved = _reserve_keys(session, conn, self, len(columns[0]) if columns else 0)
            return [*targets, cast(Column[Any], self.serial_column)], [*columns, reserved], reserved
        positions = [self.all_keys.index(k) for k in self.info.pk_keys]
        if len(positions) == 1:
            return targets, columns, list(columns[positions[0]])
        return targets, columns, list(zip(*(columns[p] for p in positions), strict=True))


def _sequence_name(conn: Connection, shape: _Shape) -> str | None:
    """The sequence behind the serial/identity key, looked up once per connection."""
    table = shape.table
    column = cast(Column[Any], shape.serial_column)
    schema = _schema(conn, table)
    cache: dict[Any, str | None] = conn.info.setdefault("repom_sequences", {})
    cache_key = (schema, table.name, column.name)
    if cache_key not in cache:
        preparer = conn.dialect.identifier_preparer
        qualified = preparer.quote(table.name)
        if schema:
            qualified = f"{preparer.quote_schema(schema)}.{qualified}"
        lookup = select(func.pg_get_serial_sequence(literal(qualified), literal(column.name)))
        cache[cache_key] = conn.execute(lookup).scalar_one()
    return cache[cache_key]


def _reserve_keys(session: Session, conn: Connection, shape: _Shape, count: int) -> list[Any]:
    """*count* fresh keys from the key's sequence, in one statement.

    The sequence name is a bound parameter (``nextval($1)``): PostgreSQL resolves it once per
    statement, where ``nextval(pg_get_serial_sequence(...))`` would look it up for every row.
    """
    column = cast(Column[Any], shape.serial_column)
    default = column.default
    if default is not None and getattr(default, "is_sequence", False):
        next_value: Any = cast(Any, default).next_value()
    else:
        name = _sequence_name(conn, shape)
        if name is None:
            raise InvalidOptionError(
                f"{table_name(shape)} has no sequence to reserve keys from", option="method"
            )
        next_value = func.nextval(bindparam("repom_seq", name, type_=String()))
    stmt = select(func.array_agg(next_value)).select_from(
        func.generate_series(1, bindparam("repom_n", count, type_=Integer()))
    )
    keys = conn.execute(stmt).scalar_one()
    if not keys or len(keys) != count or any(k is None for k in keys):
        raise InvalidOptionError(
            f"could not reserve keys from the sequence of {table_name(shape)}", option="method"
        )
    return list(keys)


def table_name(shape: _Shape) -> str:
    return f"{shape.table.name}.{shape.serial_key}"


def _processed(
    dialect: Dialect, targets: Sequence[Column[Any]], columns: list[list[Any]]
) -> list[list[Any]]:
    """Column values passed through the dialect's bind processors (what SQLAlchemy would send
    as parameters), column by column."""
    out = []
    for column, values in zip(targets, columns, strict=True):
        proc = column.type.dialect_impl(dialect).bind_processor(dialect)
        if proc is None:
            out.append(values)
        else:
            out.append([None if v is None else proc(v) for v in values])
    return out


# --------------------------------------------------------------------------- bulk_create


def _check_bulk_options(returning: Any, method: Any) -> None:
    if returning not in RETURNING:
        raise InvalidOptionError(
            f"returning must be 'objects', 'keys' or None, got {returning!r}", option="returning"
        )
    if method not in METHODS:
        raise InvalidOptionError(
            f"method must be 'auto', 'insert' or 'copy', got {method!r}", option="method"
        )


def op_bulk_create(
    session: Session,
    ctx: RepoContext[M],
    items: Iterable[Any],
    returning: Any,
    method: Any,
    chunk_size: Any,
) -> list[Any] | int:
    _check_bulk_options(returning, method)
    size = _chunk_size(chunk_size)
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
        raise InvalidOptionError(
            f"bulk_create() expects an iterable of rows, got {type(items).__name__}",
            option="items",
        )
    info = ctx.info
    flush(session)  # pending ORM work first: COPY/Core statements bypass the unit of work
    results: list[Any] = []
    total = 0
    conn: Connection | None = None
    iterator = iter(items)
    first = next(iterator, None)
    if first is None:
        return 0 if returning is None else []
    items = itertools.chain((first,), iterator)
    if chunk_size is None and method != "insert":
        if returning != "objects" or isinstance(first, info.model):
            bind = session.get_bind(info.mapper)
            if bind.dialect.name == "postgresql":
                size = COPY_CHUNK  # COPY: fewer, larger batches
    plan: _InstancePlan | bool | None = False  # False: not looked at yet
    for chunk in _chunks(items, size):
        instances = [item for item in chunk if isinstance(item, info.model)]
        if instances:
            if len(instances) != len(chunk):
                raise InvalidOptionError(
                    "bulk_create() got model instances mixed with other rows; pass one kind",
                    option="items",
                )
            validator(info).check_objects(instances)
            if plan is False:
                plan = _instance_plan(session, info)
            fast = plan.rows(instances) if isinstance(plan, _InstancePlan) else None
            if fast is not None:
                if conn is None:
                    conn = session.connection(bind_arguments={"mapper": info.mapper})
                new_keys = _insert_instances(session, conn, info, instances, fast, method)
            else:
                if method == "copy":
                    raise InvalidOptionError(
                        "method='copy' cannot write these model instances: they need the unit "
                        "of work (relationships, insert events, server-side values); use "
                        "method='auto'",
                        option="method",
                    )
                session.add_all(instances)
                flush(session)
                new_keys = None
            total += len(instances)
            if returning == "objects":
                results.extend(instances)
            elif returning == "keys":
                if new_keys is None:
                    new_keys = [info.pk_value(info.identity_of(obj)) for obj in instances]
                results.extend(new_keys)
            continue
        rows = [_row(info, item, "bulk_create()") for item in chunk]
        validator(info).check_rows(rows)
        if conn is None:
            conn = session.connection(bind_arguments={"mapper": info.mapper})
        if returning == "objects":
            if method == "copy":
                raise InvalidOptionError(
                    "method='copy' returns keys or a count, not objects; use returning='keys' "
                    "or returning=None",
                    option="method",
                )
            results.extend(_insert_objects(session, conn, info, rows))
            total += len(rows)
            continue
        for keys, group in _groups(rows):
            created = _insert_rows(session, conn, info, keys, group, returning, method)
            total += len(group)
            if returning == "keys":
                results.extend(cast(list[Any], created))
    return total if returning is None else results


# --------------------------------------------------------------------------- model instances

_MISSING: Any = object()
_DEFAULT, _NULL, _REQUIRED = 0, 1, 2
#: session events that expect to see every flushed object
_FLUSH_EVENTS = ("before_flush", "after_flush", "after_flush_postexec")


class _InstancePlan:
    """How plain model instances of one class become rows of the dict path.

    Per column (in mapper order): the instance's value; when it has none (or ``None``, which
    the ORM leaves out of its INSERT as well), the column's Python-side default computed as the
    ORM computes it, ``None`` for a column with no default at all, or "unit of work needed"
    for a column whose value only the server knows (server default, SQL-expression default,
    sequence).  The serial key is left to the database (reserved or returned); the version
    counter gets ``version_id_generator(None)``, as the ORM sets it on INSERT.
    """

    def __init__(self, info: ModelInfo[Any], table: Table) -> None:
        mapper = info.mapper
        serial = _autoincrement(table)
        eval_none = mapper._insert_cols_evaluating_none[table]
        self.info = info
        self.serial_key: str | None = None
        self.version_key = info.version_key
        self.version_fn: Any = mapper.version_id_generator
        self.relationships = tuple(info.relationships)
        self.steps: list[tuple[str, int, Any, bool]] = []
        for key, column in info.columns.items():
            if key == self.version_key:
                continue
            if serial is not None and column is serial and key in info.pk_keys:
                self.serial_key = key
                continue
            fn = _python_default(column)
            if callable(fn):
                self.steps.append((key, _DEFAULT, fn, column in eval_none))
            elif fn is None and column.server_default is None:
                self.steps.append((key, _NULL, None, column in eval_none))
            else:
                self.steps.append((key, _REQUIRED, None, column in eval_none))

    def row(self, obj: Any) -> dict[str, Any] | None:
        """The row of one instance; ``None`` when it needs the unit of work."""
        state = attributes.instance_state(obj)
        if state.key is not None or state.session_id is not None:
            return None  # not transient: the session already knows it
        data = state.dict
        for key in self.relationships:
            if key in data:
                return None  # a relationship was set (or a collection touched)
        row: dict[str, Any] = {}
        for key, kind, fn, eval_none in self.steps:
            value = data.get(key, _MISSING)
            if value is None and not eval_none:
                value = _MISSING
            if value is not _MISSING:
                if _is_clause(value):
                    return None
                row[key] = value
            elif kind == _DEFAULT:
                row[key] = fn(row)
            elif kind == _NULL:
                row[key] = None
            else:
                return None
        if self.serial_key is not None:
            value = data.get(self.serial_key)
            if value is not None:
                if _is_clause(value):
                    return None
                row[self.serial_key] = value
        if self.version_key is not None:
            row[self.version_key] = self.version_fn(None)
        return row

    def rows(self, objects: Sequence[Any]) -> list[dict[str, Any]] | None:
        """The rows of a chunk; ``None`` when any instance needs the unit of work (the whole
        chunk then goes through it, so rows keep their input order)."""
        out = []
        for obj in objects:
            row = self.row(obj)
            if row is None:
                return None
            out.append(row)
        return out


#: value types that are never SQL expressions (skips the check for the common case)
_PLAIN: frozenset[type] = frozenset(
    {str, int, float, bool, bytes, Decimal, uuid.UUID, dt.datetime, dt.date, dt.time, dict, list}
)


def _is_clause(value: Any) -> bool:
    if type(value) in _PLAIN:
        return False
    return isinstance(value, ClauseElement) or hasattr(value, "__clause_element__")


def _instance_plan(session: Session, info: ModelInfo[Any]) -> _InstancePlan | None:
    """The row path for instances of *info*'s class, or ``None`` when the class needs the unit
    of work: not a single-table mapping, ``before_insert``/``after_insert`` mapper listeners,
    flush listeners on the session, or a version counter the server sets."""
    mapper = info.mapper
    table = info.table
    if table is None or mapper.inherits is not None or mapper.polymorphic_on is not None:
        return None
    if mapper.dispatch.before_insert or mapper.dispatch.after_insert:
        return None
    if any(getattr(session.dispatch, name) for name in _FLUSH_EVENTS):
        return None
    if info.version_key is not None and not callable(mapper.version_id_generator):
        return None
    return _InstancePlan(info, table)


def _insert_instances(
    session: Session,
    conn: Connection,
    info: ModelInfo[Any],
    instances: Sequence[Any],
    rows: list[dict[str, Any]],
    method: Any,
) -> list[Any]:
    """Write the rows of *instances* as dict rows are written (COPY, unnest or executemany),
    then make the instances persistent: values and keys set, nothing pending, in the identity
    map (``make_transient_to_detached`` + ``add``).  Returns the keys, in input order."""
    keys: list[Any] = []
    for group_keys, group in _groups(rows):
        created = _insert_rows(session, conn, info, group_keys, group, "keys", method)
        keys.extend(cast(list[Any], created))
    pk_keys = info.pk_keys
    single = len(pk_keys) == 1
    for obj, row, key in zip(instances, rows, keys, strict=True):
        data = attributes.instance_state(obj).dict
        data.update(row)
        if single and data.get(pk_keys[0]) is None:
            data[pk_keys[0]] = key  # generated by the database
        make_transient_to_detached(obj)
    session.add_all(instances)
    return keys


def _insert_objects(
    session: Session, conn: Connection, info: ModelInfo[Any], rows: list[dict[str, Any]]
) -> list[Any]:
    if conn.dialect.insert_executemany_returning_sort_by_parameter_order:
        objects: list[Any] = []
        for _, group in _groups(rows):
            serial = _sqlite_serial(conn, info, group)
            if serial is not None:
                found = session.scalars(insert(info.model).returning(info.model), group).all()
                objects.extend(sorted(found, key=lambda obj: getattr(obj, serial)))
            else:
                stmt = insert(info.model).returning(info.model, sort_by_parameter_order=True)
                objects.extend(session.scalars(stmt, group).all())
        return objects
    objects = [build_instance(info, row) for row in rows]
    session.add_all(objects)
    flush(session)
    return objects


def _sqlite_serial(
    conn: Connection, info: ModelInfo[Any], rows: list[dict[str, Any]]
) -> str | None:
    """On SQLite, the key of rows that take an INTEGER PRIMARY KEY from the database.

    SQLAlchemy sends such rows one INSERT at a time when their order must be kept.  SQLite
    numbers the rows of one multi-row INSERT in order (largest rowid + 1, under the database
    write lock, so nothing interleaves), so the keys it returns, sorted, are in input order:
    the rows go in batches, as on PostgreSQL.
    """
    if conn.dialect.name != "sqlite" or info.table is None or len(info.pk_keys) != 1:
        return None
    key = info.pk_keys[0]
    serial = _autoincrement(info.table)
    if serial is None or info.columns[key] is not serial or not rows or key in rows[0]:
        return None
    return key


def _insert_rows(
    session: Session,
    conn: Connection,
    info: ModelInfo[Any],
    keys: Sequence[str],
    rows: list[dict[str, Any]],
    returning: Any,
    method: Any,
) -> list[Any] | int:
    dialect = conn.dialect
    table = info.table
    want_keys = returning == "keys"
    if dialect.name == "postgresql" and table is not None:
        shape = _Shape(info, table, keys)
        usable = shape.computable and (not want_keys or shape.keys_known or shape.prefetchable)
        if method in ("auto", "copy"):
            if (
                usable
                and dialect.driver in _COPY_DRIVERS
                and all(_copy_ok(c) for c in shape.all_columns)
            ):
                return _copy_rows(session, conn, shape, rows, want_keys)
            if method == "copy":
                raise InvalidOptionError(
                    _copy_refusal(info, shape, dialect, want_keys), option="method"
                )
        if shape.computable and all(_array_ok(c) for c in shape.all_columns):
            if shape.keys_known or shape.prefetchable or not want_keys:
                return _unnest_insert(session, conn, shape, rows, want_keys)
            if shape.serial_key is not None and len(info.pk_keys) == 1:
                return _unnest_insert_returning(conn, shape, rows)
    elif method == "copy":
        raise InvalidOptionError(
            f"method='copy' needs PostgreSQL (psycopg or asyncpg) and a single-table model; "
            f"this is {dialect.name}+{dialect.driver}",
            option="method",
        )
    return _core_insert(conn, info, rows, want_keys)


def _copy_refusal(info: ModelInfo[Any], shape: _Shape, dialect: Dialect, want_keys: bool) -> str:
    if dialect.driver not in _COPY_DRIVERS:
        return f"method='copy' needs the psycopg or asyncpg driver, not {dialect.driver}"
    if not shape.computable:
        return (
            f"method='copy' cannot compute a SQL-expression default of {info.name}; "
            "provide the value in every row or use method='insert'"
        )
    if want_keys:
        return (
            f"method='copy' cannot return the keys of {info.name}: they are generated by the "
            "server and not from a sequence; use returning=None or method='insert'"
        )
    return f"method='copy' cannot send a column type of {info.name} (SQL-side bind expression)"


def _copy_rows(
    session: Session, conn: Connection, shape: _Shape, rows: list[dict[str, Any]], want_keys: bool
) -> list[Any] | int:
    targets, columns, keys = shape.with_keys(session, conn, shape.column_values(rows), want_keys)
    records = zip(*_processed(conn.dialect, targets, columns), strict=True)
    count = _copy(conn, shape.table, targets, records)
    return keys if want_keys else count


def _unnest_source(targets: Sequence[Column[Any]], columns: list[list[Any]]) -> Any:
    u = _unnest(targets, columns, "a")
    return select(*(u.c[f"c{i}"] for i in range(len(targets)))).order_by(u.c.ord)


def _unnest_insert(
    session: Session, conn: Connection, shape: _Shape, rows: list[dict[str, Any]], want_keys: bool
) -> list[Any] | int:
    targets, columns, keys = shape.with_keys(session, conn, shape.column_values(rows), want_keys)
    stmt = insert(shape.table).from_select(targets, _unnest_source(targets, columns))
    result = conn.execute(stmt, execution_options=_ROWCOUNT)
    return keys if want_keys else _count(result, len(rows))


def _unnest_insert_returning(
    conn: Connection, shape: _Shape, rows: list[dict[str, Any]]
) -> list[Any]:
    targets = list(shape.all_columns)
    source = _unnest_source(targets, shape.column_values(rows))
    pk = shape.info.columns[shape.info.pk_keys[0]]
    stmt = insert(shape.table).from_select(targets, source).returning(pk)
    # rows are inserted in input order (ORDER BY ordinality), so the sequence hands out
    # increasing keys in that order: sorting the returned keys restores the input order
    return sorted(conn.execute(stmt).scalars().all())


def _core_insert(
    conn: Connection, info: ModelInfo[Any], rows: list[dict[str, Any]], want_keys: bool
) -> list[Any] | int:
    table = cast(Table, info.table if info.table is not None else info.mapper.local_table)
    params = [{info.columns[k].key: v for k, v in row.items()} for row in rows]
    pk_cols = [info.columns[k] for k in info.pk_keys]
    if not want_keys:
        result = conn.execute(insert(table), params, execution_options=_ROWCOUNT)
        return _count(result, len(params))
    if _sqlite_serial(conn, info, rows) is not None:
        return sorted(conn.execute(insert(table).returning(*pk_cols), params).scalars().all())
    if conn.dialect.insert_executemany_returning_sort_by_parameter_order:
        result = conn.execute(
            insert(table).returning(*pk_cols, sort_by_parameter_order=True), params
        )
        found: list[tuple[Any, ...]] = [tuple(r) for r in result.all()]
    else:  # MySQL: no RETURNING; one statement per row, keys from lastrowid
        found = []
        stmt = insert(table)
        for param in params:
            found.append(tuple(conn.execute(stmt, param).inserted_primary_key or ()))
    if len(pk_cols) == 1:
        return [row[0] for row in found]
    return [tuple(row) for row in found]


# --------------------------------------------------------------------------- bulk_update


def _identity_key(info: ModelInfo[Any], ident: tuple[Any, ...]) -> Any:
    return info.mapper.identity_key_from_primary_key(tuple(ident))


def _changes_of(info: ModelInfo[Any], obj: Any) -> dict[str, Any] | None:
    state = orm_inspect(obj)
    if state.key is None:
        raise InvalidOptionError(
            f"bulk_update() got a {info.name} that was never saved; use bulk_create()",
            option="items",
        )
    row: dict[str, Any] = {}
    for key in info.columns:
        if key in info.pk_keys or key == info.version_key:
            continue
        history = state.attrs[key].history
        if history.added or history.deleted:
            row[key] = history.added[0] if history.added else None
    if not row:
        return None
    for key, value in zip(info.pk_keys, state.key[1], strict=True):
        row[key] = value
    if info.version_key is not None:
        committed = state.committed_state.get(info.version_key, NO_VALUE)
        row[info.version_key] = (
            committed if committed is not NO_VALUE else getattr(obj, info.version_key)
        )
    return row


def op_bulk_update(
    session: Session, ctx: RepoContext[Any], items: Iterable[Any], chunk_size: Any
) -> int:
    size = _chunk_size(chunk_size)
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
        raise InvalidOptionError(
            f"bulk_update() expects an iterable of rows or {ctx.info.name} instances, "
            f"got {type(items).__name__}",
            option="items",
        )
    info = ctx.info
    version_key = info.version_key
    generator = info.mapper.version_id_generator if version_key else None
    if version_key is not None and not callable(generator):
        raise InvalidOptionError(
            f"bulk_update() cannot compute the next version of {info.name} (server-side "
            "version counter); update the objects and flush instead",
            option="items",
        )
    matched = 0
    for chunk in _chunks(items, size):
        rows: dict[tuple[Any, ...], dict[str, Any]] = {}
        instances: dict[tuple[Any, ...], Any] = {}
        for item in chunk:
            if isinstance(item, info.model):
                row = _changes_of(info, item)
                if row is None:
                    continue
            else:
                row = _row(info, item, "bulk_update()")
            missing = [k for k in info.pk_keys if k not in row]
            if missing:
                raise UnknownFieldError(
                    f"bulk_update() rows need the primary key of {info.name}: "
                    f"missing {', '.join(missing)}",
                    field=missing[0],
                )
            if version_key is not None and row.get(version_key) is None:
                raise UnknownFieldError(
                    f"bulk_update() rows of the versioned {info.name} need the version read "
                    f"({version_key!r}) for the optimistic lock check",
                    field=version_key,
                )
            ident = identity(ctx, {k: row[k] for k in info.pk_keys})
            for k, v in zip(info.pk_keys, ident, strict=True):
                row[k] = v
            if ident in rows:
                if version_key is not None:
                    raise InvalidOptionError(
                        f"bulk_update() got {info.name} {info.pk_value(ident)!r} twice in one "
                        "chunk of a versioned model",
                        option="items",
                    )
                rows[ident] = {**rows[ident], **row}
            else:
                rows[ident] = row
            if isinstance(item, info.model):
                instances[ident] = item
        if not rows:
            continue
        validator(info).check_rows(rows.values())
        # the objects' changes are written by this bulk statement, not by the flush below (which
        # writes any other pending work first); on error the owner's rollback expires them
        for ident, obj in instances.items():
            for key in rows[ident]:
                if key not in info.pk_keys and key != version_key:
                    attributes.set_committed_value(obj, key, rows[ident][key])
        if session.new or session.deleted or session.dirty:
            flush(session)
        conn = session.connection(bind_arguments={"mapper": info.mapper})
        by_keys: dict[tuple[str, ...], list[tuple[tuple[Any, ...], dict[str, Any]]]] = {}
        # rows go in key order (see _key_order): concurrent batches over the same keys lock
        # them in the same order and never deadlock each other
        for row in _key_order(rows):
            ident = tuple(row[k] for k in info.pk_keys)
            fields = tuple(sorted(k for k in row if k not in info.pk_keys and k != version_key))
            if not fields:
                continue
            by_keys.setdefault(fields, []).append((ident, row))
        for fields, group in by_keys.items():
            matched += _update_group(session, conn, ctx, fields, group, instances)
    return matched


def _update_group(
    session: Session,
    conn: Connection,
    ctx: RepoContext[Any],
    fields: tuple[str, ...],
    group: list[tuple[tuple[Any, ...], dict[str, Any]]],
    instances: Mapping[tuple[Any, ...], Any],
) -> int:
    info = ctx.info
    table = info.table
    version_key = info.version_key
    # Python-side onupdate values (e.g. updated_at) are computed per row, so the objects in the
    # session can be given the same values; SQL-side ones are set in the statement.
    extra: list[tuple[str, Callable[[dict[str, Any]], Any]]] = []
    sql_extra: dict[str, Any] = {}
    for key, column in info.columns.items():
        if key in fields or key in info.pk_keys or key == version_key:
            continue
        fn = _python_default(column, onupdate=True)
        if callable(fn):
            extra.append((key, fn))
        elif fn is False:
            expr = _sql_onupdate(column)
            if expr is not None:
                sql_extra[key] = expr
    set_keys = list(fields) + [k for k, _ in extra]
    new_rows: list[dict[str, Any]] = []
    for _, row in group:
        values = {k: row[k] for k in fields}
        for key, fn in extra:
            values[key] = fn(values)
        if version_key is not None:
            generator = cast(Callable[[Any], Any], info.mapper.version_id_generator)
            values[version_key] = generator(row[version_key])
        new_rows.append(values)
    pk_cols = [info.columns[k] for k in info.pk_keys]
    set_cols = [info.columns[k] for k in set_keys]
    version_col = info.columns[version_key] if version_key else None
    idents = [ident for ident, _ in group]
    if table is None:
        raise InvalidOptionError(
            f"bulk_update() supports single-table models; {info.name} spans several tables",
            option="items",
        )
    dialect = conn.dialect
    updated: list[tuple[Any, ...]] | None = None
    count: int
    check_cols = (
        pk_cols + set_cols + ([version_col, version_col] if version_col is not None else [])
    )
    if dialect.name == "postgresql" and all(_array_ok(c) for c in check_cols):
        arrays: list[list[Any]] = [[ident[i] for ident in idents] for i in range(len(pk_cols))]
        arrays += [[values[k] for values in new_rows] for k in set_keys]
        columns: list[Column[Any]] = pk_cols + set_cols
        if version_col is not None:
            arrays.append([row[cast(str, version_key)] for _, row in group])
            arrays.append([values[cast(str, version_key)] for values in new_rows])
            columns += [version_col, version_col]
        u = _unnest(columns, arrays, "b")
        n_pk, n_set = len(pk_cols), len(set_cols)
        assignments: dict[Any, Any] = {col: u.c[f"c{n_pk + i}"] for i, col in enumerate(set_cols)}
        conditions: list[ColumnElement[bool]] = [
            col == u.c[f"c{i}"] for i, col in enumerate(pk_cols)
        ]
        if version_col is not None:
            conditions.append(version_col == u.c[f"c{n_pk + n_set}"])
            assignments[version_col] = u.c[f"c{n_pk + n_set + 1}"]
        for key, expr in sql_extra.items():
            assignments[info.columns[key]] = expr
        stmt = update(table).values(assignments).where(and_(*conditions))
        if version_col is not None:
            result = conn.execute(stmt.returning(*pk_cols))
            updated = [tuple(r) for r in result.all()]
            count = len(updated)
        else:
            count = int(conn.execute(stmt).rowcount)
    else:
        where = [col == bindparam(f"_k{i}", type_=col.type) for i, col in enumerate(pk_cols)]
        values_clause: dict[Any, Any] = {
            col: bindparam(f"_s{i}", type_=col.type) for i, col in enumerate(set_cols)
        }
        if version_col is not None:
            where.append(version_col == bindparam("_v_old", type_=version_col.type))
            values_clause[version_col] = bindparam("_v_new", type_=version_col.type)
        for key, expr in sql_extra.items():
            values_clause[info.columns[key]] = expr
        stmt = update(table).where(*where).values(values_clause)
        params = []
        for (ident, row), values in zip(group, new_rows, strict=True):
            param = {f"_k{i}": v for i, v in enumerate(ident)}
            param.update({f"_s{i}": values[k] for i, k in enumerate(set_keys)})
            if version_key is not None:
                param["_v_old"] = row[version_key]
                param["_v_new"] = values[version_key]
            params.append(param)
        if version_col is not None and not dialect.supports_sane_multi_rowcount:
            count = 0
            updated = []
            for ident, param in zip(idents, params, strict=True):
                if conn.execute(stmt, param).rowcount == 1:
                    updated.append(ident)
                    count += 1
        else:
            result = conn.execute(stmt, params, execution_options=_ROWCOUNT)
            count = _count(result, len(params))
            if version_col is not None and count != len(params):
                raise ConflictError(
                    f"bulk_update(): {len(params) - count} of {len(params)} {info.name} row(s) "
                    "were changed or deleted since they were read (optimistic lock conflict)",
                    model=info.name,
                )
    if updated is not None and version_col is not None and len(updated) != len(idents):
        stale = [info.pk_value(i) for i in idents if i not in set(updated)]
        shown = ", ".join(repr(s) for s in stale[:5]) + (" ..." if len(stale) > 5 else "")
        raise ConflictError(
            f"bulk_update(): {len(stale)} of {len(idents)} {info.name} row(s) were changed or "
            f"deleted since they were read (optimistic lock conflict): {shown}",
            model=info.name,
            identity=stale[0],
        )
    _sync_session(session, info, group, new_rows, instances, sql_extra)
    return count


def _sync_session(
    session: Session,
    info: ModelInfo[Any],
    group: Sequence[tuple[tuple[Any, ...], dict[str, Any]]],
    new_rows: Sequence[dict[str, Any]],
    instances: Mapping[tuple[Any, ...], Any],
    sql_extra: Mapping[str, Any],
) -> None:
    """Objects in the session get the values just written (no reload needed)."""
    identity_map = session.identity_map
    for (ident, _), values in zip(group, new_rows, strict=True):
        obj = instances.get(ident)
        if obj is None:
            obj = identity_map.get(_identity_key(info, ident))
        if obj is None:
            continue
        for key, value in values.items():
            attributes.set_committed_value(obj, key, value)
        if sql_extra:
            session.expire(obj, list(sql_extra))


# --------------------------------------------------------------------------- upserts


def _dialect_insert(dialect: Dialect) -> Callable[[Any], Any]:
    if dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    if dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert
    if dialect.name in ("mysql", "mariadb"):
        from sqlalchemy.dialects.mysql import insert as mysql_insert

        return mysql_insert
    raise InvalidOptionError(
        f"upsert is not supported on {dialect.name} (PostgreSQL, SQLite, MySQL/MariaDB are)",
        option="upsert",
    )


def _conflict_target(info: ModelInfo[Any], conflict_on: Any) -> list[str]:
    if conflict_on is None:
        return list(info.pk_keys)
    keys = [conflict_on] if isinstance(conflict_on, str) else list(conflict_on)
    resolved = []
    for key in keys:
        name = getattr(key, "key", key)
        if not isinstance(name, str) or name not in info.columns:
            raise InvalidFilterError(
                f"conflict_on: {info.name} has no column {name!r}; columns: "
                f"{', '.join(sorted(info.columns))}",
                field=str(name),
                allowed=sorted(info.columns),
            )
        resolved.append(name)
    if frozenset(resolved) not in info.unique_sets:
        shown = "; ".join(", ".join(sorted(s)) for s in info.unique_sets)
        raise InvalidFilterError(
            f"conflict_on ({', '.join(resolved)}) is not a primary key or unique constraint of "
            f"{info.name}; unique sets: {shown}",
            field=resolved[0],
        )
    return resolved


def _update_keys(
    info: ModelInfo[Any], row_keys: Iterable[str], target: Sequence[str], update_fields: Any
) -> list[str]:
    if update_fields is None:
        return [
            k
            for k in row_keys
            if k not in target and k not in info.pk_keys and k != info.version_key
        ]
    fields = [update_fields] if isinstance(update_fields, str) else list(update_fields)
    for key in fields:
        if key not in info.columns or key == info.version_key:
            allowed = sorted(k for k in info.columns if k != info.version_key)
            raise UnknownFieldError(
                f"update_fields: {info.name} has no updatable column {key!r}; allowed: "
                f"{', '.join(allowed)}",
                field=str(key),
                allowed=allowed,
            )
    return fields


def _upsert_statement(
    conn: Connection,
    info: ModelInfo[Any],
    target: Sequence[str],
    update_keys: Sequence[str],
    base: Any,
    insert_keys: Sequence[str] = (),
) -> Any:
    """Add the dialect's conflict clause to *base* (an insert from the dialect module)."""
    dialect = conn.dialect
    table = cast(Table, info.table if info.table is not None else info.mapper.local_table)
    source = base.inserted if dialect.name in ("mysql", "mariadb") else base.excluded
    set_: dict[Any, Any] = {
        table.c[info.columns[k].key]: source[info.columns[k].key] for k in update_keys
    }
    restore, was_deleted = _restore_assignments(
        info, table, source, target, update_keys, insert_keys
    )
    #: nothing to update on a live row: only a deleted one is written (restored)
    only_restore = bool(restore) and not update_keys
    if restore:
        update_keys = [*update_keys, *(k for k in restore if k not in update_keys)]
        set_.update({table.c[info.columns[k].key]: v for k, v in restore.items()})
    if update_keys:
        for key, column in info.columns.items():
            if key in update_keys or key in info.pk_keys or key == info.version_key:
                continue
            fn = _python_default(column, onupdate=True)
            if callable(fn):
                set_[table.c[column.key]] = fn({})
            elif fn is False and _sql_onupdate(column) is not None:
                set_[table.c[column.key]] = _sql_onupdate(column)
        if info.version_key is not None and callable(info.mapper.version_id_generator):
            version = table.c[info.columns[info.version_key].key]
            set_[version] = version + 1
    for flag_key in (info.soft_delete_key, info.deleted_at_key):
        if restore and flag_key is not None:  # last: MySQL assigns left to right
            flag_column = table.c[info.columns[flag_key].key]
            set_[flag_column] = set_.pop(flag_column)
    if dialect.name in ("mysql", "mariadb"):
        if only_restore:
            set_ = {col: case((was_deleted, value), else_=col) for col, value in set_.items()}
        if not set_:
            first = table.c[info.columns[target[0]].key]
            set_ = {first: first}  # MySQL has no DO NOTHING: a no-op assignment
        return base.on_duplicate_key_update(set_)
    index_elements = [table.c[info.columns[k].key] for k in target]
    index_where = _partial_index_where(dialect, info, table, target)
    if not set_:
        return base.on_conflict_do_nothing(index_elements=index_elements, index_where=index_where)
    return base.on_conflict_do_update(
        index_elements=index_elements,
        index_where=index_where,
        set_=set_,
        where=was_deleted if only_restore else None,
    )


def _restore_assignments(
    info: ModelInfo[Any],
    table: Table,
    source: Any,
    target: Sequence[str],
    update_keys: Sequence[str],
    insert_keys: Sequence[str],
) -> tuple[dict[str, Any], Any]:
    """Soft delete: an upsert that meets a soft-deleted row *restores* it.  A deleted row counts
    as absent, so it gets every value of the inserted row (columns outside ``update_fields``
    too) and loses its deleted mark; a live row is updated as usual.  The restore assignments
    come last: MySQL evaluates ``ON DUPLICATE KEY UPDATE`` left to right.  Returns the
    assignments and the "row was deleted" condition."""
    flag = info.soft_delete_key or info.deleted_at_key
    if flag is None:
        return {}, None
    flag_col = table.c[info.columns[flag].key]
    was_deleted = flag_col.is_(True) if info.soft_delete_key else flag_col.is_not(None)
    assignments: dict[str, Any] = {}
    for key in insert_keys:
        if key in update_keys or key in target or key in info.pk_keys:
            continue
        if key in (info.version_key, info.soft_delete_key, info.deleted_at_key):
            continue
        column = table.c[info.columns[key].key]
        assignments[key] = case((was_deleted, source[column.key]), else_=column)
    if info.soft_delete_key is not None:
        assignments[info.soft_delete_key] = False
    if info.deleted_at_key is not None:
        assignments[info.deleted_at_key] = None
    return assignments, was_deleted


def _partial_index_where(
    dialect: Dialect, info: ModelInfo[Any], table: Table, target: Sequence[str]
) -> Any:
    """The ``WHERE`` of a partial unique index over exactly *target* (``unique_live``), so that
    ``ON CONFLICT (...) WHERE ...`` infers it; ``None`` when a full unique key matches."""
    wanted = {info.columns[k].name for k in target}
    partial = None
    for index in table.indexes:
        if not index.unique or {c.name for c in index.columns} != wanted:
            continue
        where = index.dialect_options[dialect.name].get("where")
        if where is None:
            return None  # a full unique index: no predicate needed
        partial = where
    for constraint in table.constraints:
        if (
            isinstance(constraint, UniqueConstraint | PrimaryKeyConstraint)
            and {c.name for c in constraint.columns} == wanted
        ):
            return None
    return partial


def op_upsert(
    session: Session, ctx: RepoContext[M], data: Any, conflict_on: Any, update_fields: Any
) -> M:
    info = ctx.info
    row = _row(info, data, "upsert()")
    validator(info).check_row(row)
    target = _conflict_target(info, conflict_on)
    missing = [k for k in target if k not in row]
    if missing:
        raise UnknownFieldError(
            f"upsert() data needs the conflict column(s) {', '.join(missing)}", field=missing[0]
        )
    update_keys = _update_keys(info, row, target, update_fields)
    flush(session)
    conn = session.connection(bind_arguments={"mapper": info.mapper})
    dialect = conn.dialect
    insert_fn = _dialect_insert(dialect)
    base = insert_fn(info.model).values(row)
    stmt = _upsert_statement(conn, info, target, update_keys, base, list(row))
    options = {"populate_existing": True}
    if dialect.insert_returning and dialect.name != "mysql" and dialect.name != "mariadb":
        obj = session.scalars(stmt.returning(info.model), execution_options=options).first()
        if obj is not None:
            return obj  # type: ignore[no-any-return]
    else:
        session.execute(stmt)
    # no RETURNING (MySQL) or DO NOTHING hit an existing row: read the row by its unique key
    lookup = select(info.model).where(*(info.attributes[k] == row[k] for k in target))
    live = info.not_deleted()  # an upsert leaves a live row (a deleted one is restored)
    if live is not None:
        lookup = lookup.where(live)
    found: M = session.scalars(
        lookup.execution_options(include_deleted=True, populate_existing=True)
    ).one()
    return found


def op_bulk_upsert(
    session: Session,
    ctx: RepoContext[Any],
    items: Iterable[Any],
    conflict_on: Any,
    update_fields: Any,
    chunk_size: Any,
) -> int:
    size = _chunk_size(chunk_size)
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
        raise InvalidOptionError(
            f"bulk_upsert() expects an iterable of rows, got {type(items).__name__}",
            option="items",
        )
    info = ctx.info
    target = _conflict_target(info, conflict_on)
    if update_fields is not None:
        _update_keys(info, (), target, update_fields)
    flush(session)
    total = 0
    conn: Connection | None = None
    for chunk in _chunks(items, size):
        unique_rows: dict[tuple[Any, ...], dict[str, Any]] = {}
        for item in chunk:
            row = _row(info, item, "bulk_upsert()")
            validator(info).check_row(row)
            missing = [k for k in target if k not in row]
            if missing:
                raise UnknownFieldError(
                    f"bulk_upsert() rows need the conflict column(s) {', '.join(missing)}",
                    field=missing[0],
                )
            # one statement cannot touch a row twice: the last row for a key wins (keys are
            # compared as the column's type: "0190...-..." and the UUID are the same key)
            unique_rows[_normal_key(info, target, row)] = row
        if conn is None:
            conn = session.connection(bind_arguments={"mapper": info.mapper})
        for keys, group in _shape_groups(_key_order(unique_rows)):
            update_keys = _update_keys(info, keys, target, update_fields)
            total += _upsert_group(conn, info, keys, group, target, update_keys)
        _refresh_after_upsert(session, info, target, list(unique_rows.values()))
    return total


def _normal_key(
    info: ModelInfo[Any], keys: Sequence[str], row: Mapping[str, Any]
) -> tuple[Any, ...]:
    """The values of *keys* in *row*, converted to the columns' Python types where possible."""
    out = []
    for key in keys:
        value = row[key]
        try:
            value = coerce_value(value, info.python_types.get(key), key, key)
        except InvalidFilterError:
            pass  # left as given: the value checks report it
        out.append(value)
    return tuple(out)


def _sort_key(ident: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((value is None, value) for value in ident)


def _key_order(rows: Mapping[tuple[Any, ...], dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of a chunk sorted by key.

    Row locks are taken in the order rows are written; two transactions writing the same keys
    in the same order queue behind each other instead of deadlocking (each holding a row the
    other one needs).  Keys of mixed, incomparable types are ordered by their ``repr``.
    """
    try:
        order = sorted(rows, key=_sort_key)
    except TypeError:
        order = sorted(rows, key=lambda ident: tuple(repr(v) for v in ident))
    return [rows[ident] for ident in order]


def _shape_groups(
    rows: Sequence[dict[str, Any]],
) -> Iterator[tuple[tuple[str, ...], list[dict[str, Any]]]]:
    """Rows with the same keys, one group per shape (key order kept inside each group)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row), []).append(row)
    yield from groups.items()


def _same_row_twice(
    exc: sa_exc.DBAPIError,
    info: ModelInfo[Any],
    target: Sequence[str],
    rows: Sequence[dict[str, Any]],
) -> InvalidOptionError | None:
    """PostgreSQL's "ON CONFLICT DO UPDATE command cannot affect row a second time" (SQLSTATE
    21000) as a typed error naming the key: two rows whose keys differ in Python are the same
    key for the database (a case-insensitive or padded type, a collation)."""
    if getattr(exc.orig, "sqlstate", None) != "21000":
        return None
    seen: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    shown = ""
    for row in rows:
        ident = _normal_key(info, target, row)
        loose = tuple(v.strip().casefold() if isinstance(v, str) else v for v in ident)
        if loose in seen:
            shown = f": {seen[loose]!r} and {ident!r}"
            break
        seen[loose] = ident
    return InvalidOptionError(
        f"bulk_upsert() got two {info.name} rows with the same conflict key "
        f"({', '.join(target)}) in one batch{shown}; the database treats their keys as equal, "
        "and one statement cannot write a row twice",
        option="items",
    )


def _upsert_group(
    conn: Connection,
    info: ModelInfo[Any],
    keys: Sequence[str],
    rows: list[dict[str, Any]],
    target: Sequence[str],
    update_keys: Sequence[str],
) -> int:
    dialect = conn.dialect
    insert_fn = _dialect_insert(dialect)
    table = info.table
    if dialect.name == "postgresql" and table is not None:
        shape = _Shape(info, table, keys)
        if shape.computable and all(_array_ok(c) for c in shape.all_columns):
            targets = list(shape.all_columns)
            source = _unnest_source(targets, shape.column_values(rows))
            base = insert_fn(table).from_select(targets, source)
            stmt = _upsert_statement(conn, info, target, update_keys, base, keys)
            try:
                return _count(conn.execute(stmt, execution_options=_ROWCOUNT), len(rows))
            except sa_exc.DBAPIError as exc:
                refused = _same_row_twice(exc, info, target, rows)
                if refused is None:
                    raise
                raise refused from None
    resolved = cast(Table, table if table is not None else info.mapper.local_table)
    base = insert_fn(resolved)
    stmt = _upsert_statement(conn, info, target, update_keys, base, keys)
    params = [{info.columns[k].key: v for k, v in row.items()} for row in rows]
    result = conn.execute(stmt, params, execution_options=_ROWCOUNT)
    return _count(result, len(params))


def _refresh_after_upsert(
    session: Session, info: ModelInfo[Any], target: Sequence[str], rows: Sequence[dict[str, Any]]
) -> None:
    """Keep objects already in the session from showing pre-upsert values."""
    if not session.identity_map:
        return
    if list(target) == list(info.pk_keys):
        for row in rows:
            obj = session.identity_map.get(_identity_key(info, tuple(row[k] for k in info.pk_keys)))
            if obj is not None:
                session.expire(obj)
        return
    for obj in list(session.identity_map.values()):
        if isinstance(obj, info.model):
            session.expire(obj)


def _await_in_greenlet() -> Any:
    """SQLAlchemy's "await from sync code inside the greenlet bridge" (``await_`` since 2.1,
    ``await_only`` in 2.0)."""
    from sqlalchemy import util

    return getattr(util, "await_", None) or util.await_only
