"""Bulk writes: ``bulk_create``, ``bulk_update``, ``upsert`` and ``bulk_upsert``.

Every function runs against a *sync* ``Session`` (the async repository runs it through
``AsyncSession.run_sync``); nothing commits.  Input is consumed in chunks, so an iterator of a
million rows keeps memory flat.

PostgreSQL fast paths (the table must be a single-table mapping):

* ``COPY`` (asyncpg ``copy_records_to_table``, psycopg ``cursor.copy``) for ``bulk_create``.
  Keys are known before the rows are sent: taken from the rows, computed from Python-side
  defaults, or reserved from the key's sequence with one ``SELECT array_agg(nextval(...))``.
  Rows whose keys need no reservation are streamed: one COPY reads the input chunk by chunk
  (checked as it goes, inside a savepoint when it reads beyond the first chunk).
* ``INSERT ... SELECT ... FROM unnest(:col1, :col2, ...)``: one statement and one parameter per
  column for a whole chunk, used by ``bulk_create(method="insert")``, ``bulk_upsert``
  (with ``ON CONFLICT``) and ``bulk_update`` (``UPDATE ... FROM unnest(...)``).

Elsewhere (SQLite, MySQL/MariaDB) the same operations use executemany / insertmanyvalues.

Plain model instances take the same row path, column by column (values read from each
instance's ``__dict__``), and are then made persistent in bulk the way a flush leaves inserted
objects (see :func:`_persist`); instances that need the unit of work go through it.
"""

from __future__ import annotations

import datetime as dt
import gc
import itertools
import operator
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sqlalchemy import (
    Boolean,
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
from sqlalchemy.orm.state import InstanceState
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
#: chunks of rows streamed into one COPY: small enough that the server never waits long for the
#: next one, large enough that the work per chunk stays negligible
STREAM_CHUNK = 2_000
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


def _chunks(items: Iterable[Any], size: int, note: str | None = None) -> Iterator[list[Any]]:
    """*items* in lists of *size*; a SQLAlchemy error raised by reading *items* gets *note*."""
    iterator = iter(items)
    while True:
        try:
            chunk = list(itertools.islice(iterator, size))
        except sa_exc.SQLAlchemyError as exc:
            if note is not None:
                exc.add_note(note)
            raise
        if not chunk:
            return
        yield chunk


#: why reading a streamed input can fail on the database
_STREAM_NOTE = (
    "bulk_create() reads its input while it streams the rows into COPY on the session's "
    "connection; an input that uses that connection as it is read (the same session, lazy "
    "loads, a server-side cursor) must be read between statements: pass chunk_size=N"
)


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


def _uniform(info: ModelInfo[Any], chunk: Sequence[Any], kinds: set[type]) -> _Group | None:
    """A chunk of plain dicts that all have the same column keys, as one group holding its
    rows and one list of values per key (a few C-level passes instead of a loop per row);
    ``None`` for anything else, which the row-by-row path handles (its errors included).

    The rows go to COPY as ``zip(*columns)``: ``zip`` hands out one tuple that the driver has
    let go of before it asks for the next, so no tuple per row is created (building a list of
    row tuples would keep a chunk's worth of them alive for the garbage collector to sift)."""
    if kinds != {dict}:
        return None
    keys = tuple(chunk[0])
    if not info.column_keys.issuperset(keys) or set(map(len, chunk)) != {len(keys)}:
        return None
    try:  # every row has as many keys as the first one, and each of them: the same keys
        columns = [list(map(itemgetter(key), chunk)) for key in keys]
    except KeyError:
        return None
    return _Group(keys, len(chunk), rows=cast(list[dict[str, Any]], chunk), columns=columns)


class _Group:
    """Rows with the same keys, held as dicts, as one list of values per key, or both."""

    __slots__ = ("_columns", "_rows", "checked", "keys", "last", "size")

    def __init__(
        self,
        keys: Sequence[str],
        size: int,
        rows: list[dict[str, Any]] | None = None,
        columns: list[list[Any]] | None = None,
    ) -> None:
        self.keys = tuple(keys)
        self.size = size
        self.last = False  # known to be the last group of the input
        #: the values in ``columns`` passed the column type checks
        self.checked = False
        self._rows = rows
        self._columns = columns

    @property
    def rows(self) -> list[dict[str, Any]]:
        if self._rows is None:
            columns = cast(list[list[Any]], self._columns)
            if not self.keys:
                self._rows = [{} for _ in range(self.size)]
            else:
                self._rows = [
                    dict(zip(self.keys, row, strict=True)) for row in zip(*columns, strict=True)
                ]
        return self._rows

    @property
    def columns(self) -> list[list[Any]]:
        """The given values, one list per key (the caller must not change them)."""
        if self._columns is None:
            rows = self.rows
            self._columns = [list(map(itemgetter(key), rows)) for key in self.keys]
        return self._columns


def _merged(groups: list[_Group]) -> _Group:
    """Consecutive groups with the same keys, as one."""
    if len(groups) == 1:
        return groups[0]
    rows = [row for group in groups for row in group.rows]
    columns = None
    if all(group._columns is not None for group in groups):
        columns = [
            list(itertools.chain.from_iterable(g.columns[i] for g in groups))
            for i in range(len(groups[0].keys))
        ]
    return _Group(groups[0].keys, len(rows), rows=rows, columns=columns)


def _prepare(
    info: ModelInfo[Any], chunk: Sequence[Any], kinds: set[type], first: int
) -> list[_Group]:
    """A chunk of input rows (dicts, mappings, pydantic models, dataclasses; *kinds*: their
    types; *first*: the position of its first row in the input), validated, as groups of
    consecutive rows with the same keys."""
    group = _uniform(info, chunk, kinds)
    if group is not None:
        validator(info).check_columns(group.keys, group.columns, first)
        group.checked = True
        return [group]
    rows = [_row(info, item, "bulk_create()") for item in chunk]
    validator(info).check_rows(rows, first)
    return [_Group(keys, len(group), rows=group) for keys, group in _groups(rows)]


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

    def column_values(self, group: _Group) -> list[list[Any]]:
        """One list per column of ``all_keys`` (column-major), Python-side defaults applied."""
        columns = group.columns
        if not self.defaults:
            return columns
        if all(getattr(fn, "constant", False) for _, fn in self.defaults):
            return columns + [[fn({})] * group.size for _, fn in self.defaults]
        computed: list[list[Any]] = [[] for _ in self.defaults]
        for row in group.rows:
            params = dict(row)
            for i, (key, fn) in enumerate(self.defaults):
                value = params[key] = fn(params)
                computed[i].append(value)
        return columns + computed

    def with_keys(
        self,
        session: Session,
        conn: Connection,
        columns: list[list[Any]],
        size: int,
        want_keys: bool,
    ) -> tuple[list[Column[Any]], list[list[Any]], list[Any]]:
        """Target columns, their values and the keys to return (reserved when needed)."""
        targets = list(self.all_columns)
        if not want_keys:
            return targets, columns, []
        if not self.keys_known:
            reserved = _reserve_keys(session, conn, self, size)
            return [*targets, cast(Column[Any], self.serial_column)], [*columns, reserved], reserved
        return targets, columns, self.keys_in(columns)

    def keys_in(self, columns: list[list[Any]]) -> list[Any]:
        """The primary keys of rows whose keys are known (``keys_known``), in row order."""
        positions = [self.all_keys.index(k) for k in self.info.pk_keys]
        if len(positions) == 1:
            return list(columns[positions[0]])
        return list(zip(*(columns[p] for p in positions), strict=True))


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
    if not keys or len(keys) != count or None in keys:
        raise InvalidOptionError(
            f"could not reserve keys from the sequence of {table_name(shape)}", option="method"
        )
    return list(keys)


def table_name(shape: _Shape) -> str:
    return f"{shape.table.name}.{shape.serial_key}"


_BOOLS = frozenset({bool, type(None)})


def _processed(
    dialect: Dialect,
    targets: Sequence[Column[Any]],
    columns: list[list[Any]],
    checked: Sequence[list[Any]] = (),
) -> list[list[Any]]:
    """Column values passed through the dialect's bind processors (what SQLAlchemy would send
    as parameters), column by column.  ``Boolean``'s processor only checks that each value is
    ``True``/``False``/``None`` on a native-boolean database: a column holding nothing else
    (known from the value checks when it is one of the *checked* lists) is sent as it is."""
    out = []
    native_bool = dialect.supports_native_boolean
    for column, values in zip(targets, columns, strict=True):
        if native_bool and type(column.type) is Boolean:
            if any(values is c for c in checked) or set(map(type, values)) <= _BOOLS:
                out.append(values)
                continue
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


_MIXED = "bulk_create() got model instances mixed with other rows; pass one kind"


def _instances_in(info: ModelInfo[Any], kinds: set[type]) -> bool:
    """Are the items of a chunk (of types *kinds*) model instances (``True``) or rows
    (``False``)?  Both: refused."""
    found = {issubclass(kind, info.model) for kind in kinds}
    if found == {True, False}:
        raise InvalidOptionError(_MIXED, option="items")
    return True in found


def _row_groups(info: ModelInfo[Any], chunks: Iterator[list[Any]], size: int) -> Iterator[_Group]:
    """The groups of each chunk, checked a chunk at a time; the last group of a chunk shorter
    than *size* is marked ``last`` (nothing follows it)."""
    first = 0
    for chunk in chunks:
        kinds = set(map(type, chunk))
        if _instances_in(info, kinds):
            raise InvalidOptionError(_MIXED, option="items")
        groups = _prepare(info, chunk, kinds, first)
        if len(chunk) < size:
            groups[-1].last = True
        first += len(chunk)
        yield from groups


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
    iterator = iter(items)
    first = next(iterator, None)
    if first is None:
        return 0 if returning is None else []
    items = itertools.chain((first,), iterator)
    instances = isinstance(first, info.model)
    copy_default = False
    if chunk_size is None and method != "insert" and (returning != "objects" or instances):
        if session.get_bind(info.mapper).dialect.name == "postgresql":
            size = COPY_CHUNK  # COPY: fewer, larger batches
            copy_default = True
    run = _Run(session, info, returning, method)
    if instances:
        for chunk in _chunks(items, size):
            run.instances(chunk)
    elif copy_default and returning != "objects" and run.can_stream():
        chunks = _chunks(items, STREAM_CHUNK, _STREAM_NOTE)
        run.stream(_row_groups(info, chunks, STREAM_CHUNK))
    else:
        for group in _row_groups(info, _chunks(items, size), size):
            run.rows(group)
    return run.total if returning is None else run.results


class _Run:
    """One ``bulk_create`` call: its connection (taken when the first rows are written), the
    results so far and how instances of the class are written."""

    def __init__(self, session: Session, info: ModelInfo[Any], returning: Any, method: Any) -> None:
        self.session = session
        self.info = info
        self.returning = returning
        self.method = method
        self.results: list[Any] = []
        self.total = 0
        self._conn: Connection | None = None
        self._plan: _InstancePlan | bool | None = False  # False: not looked at yet

    @property
    def conn(self) -> Connection:
        if self._conn is None:
            self._conn = self.session.connection(bind_arguments={"mapper": self.info.mapper})
        return self._conn

    def can_stream(self) -> bool:
        """Can rows be streamed into COPY?  Only through an async driver (asyncpg, psycopg's
        async connection): the input is read while the COPY runs, and an input that uses the
        same connection then fails at once there, where psycopg's sync connection would wait
        for itself forever."""
        dialect = self.conn.dialect
        return (
            self.method in ("auto", "copy")
            and self.info.table is not None
            and dialect.driver in _COPY_DRIVERS
            and dialect.is_async
        )

    # ------------------------------------------------------------------ rows

    def rows(self, group: _Group) -> None:
        """Write one group of rows with its own statement(s)."""
        session, info = self.session, self.info
        if self.returning == "objects":
            if self.method == "copy":
                raise InvalidOptionError(
                    "method='copy' returns keys or a count, not objects; use returning='keys' "
                    "or returning=None",
                    option="method",
                )
            self.results.extend(_insert_objects(session, self.conn, info, group.rows))
        else:
            created = _insert_group(session, self.conn, info, group, self.returning, self.method)
            if self.returning == "keys":
                self.results.extend(cast(list[Any], created))
        self.total += group.size

    def stream(self, groups: Iterator[_Group]) -> None:
        """Write the groups with as few COPY statements as possible: consecutive groups with the
        same keys (the chunks of a long input) go into one COPY, fed chunk by chunk as the driver
        asks for rows, so each chunk is read, checked and converted while the server stores
        the one before.  Groups COPY cannot take as a stream (keys to reserve from the
        sequence, values only SQL can compute) are written one by one as :meth:`rows` writes
        them.

        A COPY that may read more of the input than the chunk checked before it started runs
        inside a savepoint: a bad row in a later chunk (or any other error) rolls it back whole,
        so nothing of the call is written and the transaction stays usable, as when the error
        is found before anything was sent."""
        info = self.info
        table = cast(Table, info.table)
        want_keys = self.returning == "keys"
        current = next(groups, None)
        while current is not None:
            shape = _Shape(info, table, current.keys)
            if (shape.keys_known or not want_keys) and _copy_usable(self.conn, shape):
                current = self._copy_run(shape, current, groups, want_keys)
                continue
            # one statement per COPY_CHUNK rows at most, as without streaming
            batch, size = [current], current.size
            current = None if batch[-1].last else next(groups, None)
            while current is not None and current.keys == batch[0].keys:
                if size + current.size > COPY_CHUNK:
                    break
                batch.append(current)
                size += current.size
                current = None if current.last else next(groups, None)
            self.rows(_merged(batch))

    def _copy_run(
        self, shape: _Shape, first: _Group, groups: Iterator[_Group], want_keys: bool
    ) -> _Group | None:
        """One COPY for *first* and the groups after it with the same keys; returns the group
        that ended the run (other keys), ``None`` at the end of the input."""
        conn = self.conn
        targets = shape.all_columns
        following: _Group | None = None

        def batches() -> Iterator[Iterator[tuple[Any, ...]]]:
            nonlocal following
            group = first
            while True:
                columns = shape.column_values(group)
                if want_keys:
                    self.results.extend(shape.keys_in(columns))
                checked = group.columns if group.checked else ()
                yield zip(*_processed(conn.dialect, targets, columns, checked), strict=True)
                if group.last:
                    return
                upcoming = next(groups, None)  # read and checked while the COPY is open
                if upcoming is None or upcoming.keys != first.keys:
                    following = upcoming
                    return
                group = upcoming

        records = itertools.chain.from_iterable(batches())
        if not first.last and not _autocommit(conn):
            with conn.begin_nested():
                self.total += _copy(conn, shape.table, targets, records)
        else:
            self.total += _copy(conn, shape.table, targets, records)
        return following

    # ------------------------------------------------------------------ instances

    def instances(self, chunk: list[Any]) -> None:
        session, info = self.session, self.info
        kinds = set(map(type, chunk))
        if not _instances_in(info, kinds):
            raise InvalidOptionError(_MIXED, option="items")
        if self._plan is False:
            self._plan = _instance_plan(session, info)
        plan = cast(_InstancePlan | None, self._plan)
        batch = plan.batch(chunk, kinds) if plan is not None else None
        keys: list[Any] | None
        if batch is not None:
            validator(info).check_columns(batch.keys, batch.columns, self.total)
            keys = _insert_instances(
                session, self.conn, info, cast(_InstancePlan, plan), batch, self.method
            )
        else:
            validator(info).check_objects(chunk, self.total)
            if self.method == "copy":
                raise InvalidOptionError(
                    "method='copy' cannot write these model instances: they need the unit "
                    "of work (relationships, insert events, server-side values); use "
                    "method='auto'",
                    option="method",
                )
            session.add_all(chunk)
            flush(session)
            keys = None
        self.total += len(chunk)
        if self.returning == "objects":
            self.results.extend(chunk)
        elif self.returning == "keys":
            if keys is None:
                keys = [info.pk_value(info.identity_of(obj)) for obj in chunk]
            self.results.extend(keys)


def _autocommit(conn: Connection) -> bool:
    """Does the DBAPI connection commit every statement (no transaction to hold a savepoint)?"""
    return bool(getattr(conn.connection.dbapi_connection, "autocommit", False))


# --------------------------------------------------------------------------- model instances


class _Missing:
    """An attribute the instance has no value for (the ORM leaves its column out of the
    INSERT)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()
_NONE_TYPE = type(None)
_NULL, _CONSTANT, _CALLABLE, _REQUIRED = 0, 1, 2, 3
#: session events that expect to see every object go through a flush (attach, pending)
_SESSION_EVENTS = (
    "before_flush",
    "after_flush",
    "after_flush_postexec",
    "before_attach",
    "after_attach",
    "transient_to_pending",
    "pending_to_persistent",
)
#: value types that are never SQL expressions (skips the check for the common case)
_PLAIN: frozenset[type] = frozenset(
    {str, int, float, bool, bytes, Decimal, uuid.UUID, dt.datetime, dt.date, dt.time, dict, list}
    | {_NONE_TYPE, _Missing}
)
_CLAUSE_TYPES: dict[type, bool] = {}
_KEY, _SESSION_ID = attrgetter("key"), attrgetter("session_id")


def _clause_type(kind: type) -> bool:
    """Are values of *kind* SQL expressions (which only the unit of work renders)?"""
    found = _CLAUSE_TYPES.get(kind)
    if found is None:
        found = issubclass(kind, ClauseElement) or hasattr(kind, "__clause_element__")
        _CLAUSE_TYPES[kind] = found
    return found


def _values(dicts: Sequence[dict[str, Any]], key: str) -> list[Any]:
    """The value of *key* in each dict (``_MISSING`` where absent)."""
    try:
        return list(map(itemgetter(key), dicts))
    except KeyError:
        return list(map(dict.get, dicts, itertools.repeat(key), itertools.repeat(_MISSING)))


class _RowContext:
    """The part of SQLAlchemy's execution context that a context-aware column default reads
    (``context.get_current_parameters()``), for row ``index`` of column-major values."""

    __slots__ = ("_columns", "_names", "index")

    def __init__(self, names: Sequence[str], columns: Sequence[list[Any]]) -> None:
        self._names = names
        self._columns = columns
        self.index = 0

    @property
    def current_parameters(self) -> dict[str, Any]:
        i = self.index
        return {
            name: values[i]
            for name, values in zip(self._names, self._columns, strict=True)
            if values[i] is not _MISSING
        }

    def get_current_parameters(self, isolate_multiinsert_groups: bool = True) -> dict[str, Any]:
        return self.current_parameters


class _InstanceBatch:
    """A chunk of plain instances, ready to write: their states and ``__dict__``s, the column
    values (one list per key, defaults filled) and which values were filled in (to be set on
    the instances once written)."""

    __slots__ = ("columns", "dicts", "filled", "keys", "size", "states")

    def __init__(
        self,
        states: list[InstanceState[Any]],
        dicts: list[dict[str, Any]],
        keys: list[str],
        columns: list[list[Any]],
        filled: list[tuple[int, list[int] | None]],
    ) -> None:
        self.states = states
        self.dicts = dicts
        self.keys = keys
        self.columns = columns
        self.filled = filled  # (position in keys, rows filled; None: every row)
        self.size = len(states)


class _InstancePlan:
    """How plain model instances of one class become rows, and persistent objects afterwards.

    Per column (in mapper order): the instance's value; when it has none (or ``None``, which
    the ORM leaves out of its INSERT as well), the column's Python-side default computed as the
    ORM computes it, ``None`` for a column with no default at all, or "unit of work needed"
    for a column whose value only the server knows (server default, SQL-expression default,
    sequence) or a primary-key column without a value.  The serial key is left to the database
    (reserved or returned); the version counter gets ``version_id_generator(None)``, as the ORM
    sets it on INSERT.
    """

    def __init__(self, info: ModelInfo[Any], table: Table) -> None:
        mapper = info.mapper
        serial = _autoincrement(table)
        eval_none = mapper._insert_cols_evaluating_none[table]
        self.info = info
        self.manager = mapper.class_manager
        self.dict_of: Callable[[Any], dict[str, Any]] = self.manager.dict_getter()
        self.identity_class: type[Any] = mapper._identity_class
        self.relationships = tuple(info.relationships)
        self.serial_key: str | None = None
        self.version_key = info.version_key
        self.version_fn: Any = mapper.version_id_generator
        #: (attribute key, column key, kind, default, None is a value)
        self.steps: list[tuple[str, str, int, Any, bool]] = []
        for key, column in info.columns.items():
            if key == self.version_key:
                continue
            if serial is not None and column is serial and key in info.pk_keys:
                self.serial_key = key
                continue
            default = column.default
            kind, arg = _REQUIRED, None
            if default is None:
                if column.server_default is None and key not in info.pk_keys:
                    kind = _NULL
            elif getattr(default, "is_scalar", False):
                kind, arg = _CONSTANT, default.arg  # type: ignore[attr-defined]
            elif getattr(default, "is_callable", False):
                kind, arg = _CALLABLE, default.arg  # type: ignore[attr-defined]
            self.steps.append((key, column.key, kind, arg, column in eval_none))
        #: column properties that are not plain columns: expired after the INSERT, as a flush
        #: expires them
        self.readonly = [prop.key for prop in mapper._readonly_props]
        self.refresh_flush = self.manager.dispatch.refresh_flush

    def batch(self, objects: Sequence[Any], kinds: set[type]) -> _InstanceBatch | None:
        """The rows of a chunk (*kinds*: the types of its items); ``None`` when any instance
        needs the unit of work (the whole chunk then goes through it, so rows keep their input
        order)."""
        if kinds != {self.info.model}:
            return None  # instances of a subclass
        states: list[InstanceState[Any]] = list(map(attributes.instance_state, objects))
        if set(map(_KEY, states)) != {None} or set(map(_SESSION_ID, states)) != {None}:
            return None  # not transient: a session knows it
        dicts = list(map(self.dict_of, objects))
        for rel in self.relationships:
            if any(map(operator.contains, dicts, itertools.repeat(rel))):
                return None  # a relationship was set (or a collection touched)
        keys: list[str] = []
        names: list[str] = []
        columns: list[list[Any]] = []
        holes: list[tuple[int, int, Any, list[int]]] = []
        for key, name, kind, arg, eval_none in self.steps:
            values = _values(dicts, key)
            kinds = set(map(type, values))
            if not kinds <= _PLAIN and any(_clause_type(k) for k in kinds - _PLAIN):
                return None
            none_missing = _NONE_TYPE in kinds and not eval_none
            if none_missing or _Missing in kinds:
                if kind == _REQUIRED:
                    return None
                if none_missing:  # the ORM leaves None out of the INSERT: the default applies
                    values = [_MISSING if v is None else v for v in values]
                missing = [i for i, v in enumerate(values) if v is _MISSING]
                holes.append((len(keys), kind, arg, missing))
            keys.append(key)
            names.append(name)
            columns.append(values)
        filled: list[tuple[int, list[int] | None]] = []
        serial = self.serial_key
        if serial is not None and any(map(operator.contains, dicts, itertools.repeat(serial))):
            values = _values(dicts, serial)
            kinds = set(map(type, values))
            given = kinds - {_NONE_TYPE, _Missing}
            if given:
                if given != kinds or any(_clause_type(k) for k in given - _PLAIN):
                    return None  # some keys given, some not: the unit of work sorts that out
                keys.append(serial)
                names.append(self.info.columns[serial].key)
                columns.append(values)
        context = _RowContext(names, columns)
        for position, kind, arg, missing in holes:
            values = columns[position]
            if kind == _NULL:  # NULL, and the attribute stays unloaded, as after a flush
                for i in missing:
                    values[i] = None
                continue
            if kind == _CONSTANT:
                for i in missing:
                    values[i] = arg
            else:  # computed per row, as the ORM does; a context-aware default sees the row
                for i in missing:
                    context.index = i
                    values[i] = arg(context)
            filled.append((position, missing))
        if self.version_key is not None:
            fn = self.version_fn
            filled.append((len(keys), None))
            keys.append(self.version_key)
            columns.append([fn(None) for _ in range(len(dicts))])
        return _InstanceBatch(states, dicts, keys, columns, filled)


def _instance_plan(session: Session, info: ModelInfo[Any]) -> _InstancePlan | None:
    """The row path for instances of *info*'s class, or ``None`` when the class needs the unit
    of work: not a single-table mapping, ``before_insert``/``after_insert`` mapper listeners,
    flush or attach listeners on the session, a version counter the server sets, or a session
    that picks a connection per object (horizontal sharding)."""
    mapper = info.mapper
    table = info.table
    if table is None or mapper.inherits is not None or mapper.polymorphic_on is not None:
        return None
    if mapper.dispatch.before_insert or mapper.dispatch.after_insert:
        return None
    if any(getattr(session.dispatch, name) for name in _SESSION_EVENTS):
        return None
    if info.version_key is not None and not callable(mapper.version_id_generator):
        return None
    if getattr(session, "connection_callable", None) is not None:
        return None
    return _InstancePlan(info, table)


def _insert_instances(
    session: Session,
    conn: Connection,
    info: ModelInfo[Any],
    plan: _InstancePlan,
    batch: _InstanceBatch,
    method: Any,
) -> list[Any]:
    """Write the rows of a batch as dict rows are written (COPY, unnest or executemany), then
    make the instances persistent.  Returns the keys, in input order."""
    group = _Group(batch.keys, batch.size, columns=batch.columns)
    group.checked = True  # Run.instances checked every column of the batch
    keys = cast(list[Any], _insert_group(session, conn, info, group, "keys", method))
    _persist(session, plan, batch, keys)
    return keys


def _persist(session: Session, plan: _InstancePlan, batch: _InstanceBatch, keys: list[Any]) -> None:
    """Make just-inserted instances persistent, as a flush does for the objects it inserted
    (``Session._register_persistent``), in bulk: the values computed for them (defaults,
    version, the key the database gave) set in their ``__dict__``, identity key set, attribute
    history committed (nothing pending or dirty), in the identity map, attached to the session,
    and recorded as new in the session's transaction, so that a rollback expunges them and makes
    them transient again (their keys removed), as it does for flushed objects.  Column
    properties that are SQL expressions are expired and ``refresh_flush`` listeners get the
    attributes that were filled in, as after a flush."""
    dicts, states, columns = batch.dicts, batch.states, batch.columns
    for position, rows in batch.filled:
        key, values = batch.keys[position], columns[position]
        if rows is None:
            _consume(map(operator.setitem, dicts, itertools.repeat(key), values))
        else:
            for i in rows:
                dicts[i][key] = values[i]
    serial = plan.serial_key
    if serial is not None and serial not in batch.keys:
        _consume(map(operator.setitem, dicts, itertools.repeat(serial), keys))
    identity_map = session.identity_map
    store = getattr(identity_map, "_dict", None)
    transaction = getattr(session, "_transaction", None)
    if not _FAST_PERSIST or not isinstance(store, dict) or transaction is None:
        _persist_public(session, batch)
        return
    with _gc_paused():
        _register(session, plan, batch, keys, store, transaction)
    if plan.readonly:
        for state, data in zip(states, dicts, strict=True):
            state._expire_attributes(data, plan.readonly)
    if plan.refresh_flush:
        _refresh_flush(plan, batch)


def _register(
    session: Session,
    plan: _InstancePlan,
    batch: _InstanceBatch,
    keys: list[Any],
    store: dict[Any, InstanceState[Any]],
    transaction: Any,
) -> None:
    """The bookkeeping of :func:`_persist`: identity keys, committed history, identity map,
    session, transaction."""
    states, identity_map = batch.states, session.identity_map
    cls = plan.identity_class
    if len(plan.info.pk_keys) == 1:
        idents = [(cls, (key,), None) for key in keys]
    else:
        idents = [(cls, tuple(key), None) for key in keys]
    _commit_all(states, batch.dicts)  # first: unmodified states need no bookkeeping in the map
    repeat = itertools.repeat
    _consume(map(setattr, states, repeat("key"), idents))
    _consume(map(setattr, states, repeat("session_id"), repeat(session.hash_key)))
    if store.keys().isdisjoint(idents):  # IdentityMap._add_unpresent, for all of them
        store.update(zip(idents, states, strict=True))
        _consume(map(setattr, states, repeat("_instance_dict"), repeat(identity_map._wr)))
    else:  # a stale object of a row deleted meanwhile has one of the keys
        for state in states:
            identity_map.replace(state)
    new = transaction._new
    data, remove = getattr(new, "data", None), getattr(new, "_remove", None)
    if isinstance(data, dict) and callable(remove):  # WeakKeyDictionary.update, inlined
        data.update(zip(map(weakref.ref, states, repeat(remove)), repeat(True), strict=False))
    else:
        new.update(dict.fromkeys(states, True))


def _consume(iterator: Iterator[Any]) -> None:
    """Run *iterator* to its end (a ``map`` of setters), keeping nothing."""
    deque(iterator, maxlen=0)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector around bookkeeping that allocates a few objects per
    row and frees none (identity keys, weak references): collections triggered in the middle
    of it would only traverse the new, live objects again and again, and the extra young
    collections bring full ones forward.  Nothing in it creates garbage or runs user code.
    The collector is resumed only if it was running (and it can run again at once)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _commit_all(states: list[InstanceState[Any]], dicts: list[dict[str, Any]]) -> None:
    """``InstanceState._commit_all_states`` for transient states that are in no identity map
    yet, without reading each state's ``__dict__`` or adding entries to it (either costs an
    object per row for the garbage collector to count).  The one entry that
    method looks for there, ``_pending_mutations``, belongs to collections changed while
    unloaded, which a transient instance whose relationships are untouched does not have."""
    _consume(map(dict.clear, map(_COMMITTED, states)))  # committed history: none
    if any(map(_EXPIRED_ATTRIBUTES, states)):
        for state, data in zip(states, dicts, strict=True):
            state.expired_attributes.difference_update(data)
    _consume(map(setattr, states, itertools.repeat("modified"), itertools.repeat(False)))
    if any(map(_EXPIRED, states)) or any(map(_STRONG, states)):
        for state in states:
            state.expired = False
            state._strong_obj = None


_COMMITTED, _EXPIRED_ATTRIBUTES = attrgetter("committed_state"), attrgetter("expired_attributes")
_EXPIRED, _STRONG = attrgetter("expired"), attrgetter("_strong_obj")


def _refresh_flush(plan: _InstancePlan, batch: _InstanceBatch) -> None:
    """``refresh_flush`` for the attributes filled in on each instance (the flush context is
    ``None``: no unit of work ran)."""
    filled = [
        (batch.keys[position], None if rows is None else set(rows))
        for position, rows in batch.filled
    ]
    for i, state in enumerate(batch.states):
        names = [key for key, rows in filled if rows is None or i in rows]
        if names:
            plan.refresh_flush(state, None, names)


def _persist_public(session: Session, batch: _InstanceBatch) -> None:
    """The same through public API only (``make_transient_to_detached`` + ``add``), for a
    SQLAlchemy whose internals differ: the instances are persistent, but a rollback leaves them
    in the session (expired) instead of making them transient again."""
    objects = [state.obj() for state in batch.states]
    for obj in objects:
        make_transient_to_detached(obj)
    session.add_all(objects)


#: the SQLAlchemy internals ``_persist`` relies on are there (``_commit_all`` mirrors
#: ``_commit_all_states``)
_FAST_PERSIST = hasattr(InstanceState, "_commit_all_states") and hasattr(
    InstanceState, "_expire_attributes"
)


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


def _copy_usable(conn: Connection, shape: _Shape) -> bool:
    """Can COPY write this shape of rows (values computable here, types COPY can send)?"""
    return (
        shape.computable
        and conn.dialect.driver in _COPY_DRIVERS
        and all(_copy_ok(c) for c in shape.all_columns)
    )


def _insert_group(
    session: Session,
    conn: Connection,
    info: ModelInfo[Any],
    group: _Group,
    returning: Any,
    method: Any,
) -> list[Any] | int:
    dialect = conn.dialect
    table = info.table
    want_keys = returning == "keys"
    if dialect.name == "postgresql" and table is not None:
        shape = _Shape(info, table, group.keys)
        if method in ("auto", "copy"):
            if (not want_keys or shape.keys_known or shape.prefetchable) and _copy_usable(
                conn, shape
            ):
                return _copy_rows(session, conn, shape, group, want_keys)
            if method == "copy":
                raise InvalidOptionError(
                    _copy_refusal(info, shape, dialect, want_keys), option="method"
                )
        if shape.computable and all(_array_ok(c) for c in shape.all_columns):
            if shape.keys_known or shape.prefetchable or not want_keys:
                return _unnest_insert(session, conn, shape, group, want_keys)
            if shape.serial_key is not None and len(info.pk_keys) == 1:
                return _unnest_insert_returning(conn, shape, group)
    elif method == "copy":
        raise InvalidOptionError(
            f"method='copy' needs PostgreSQL (psycopg or asyncpg) and a single-table model; "
            f"this is {dialect.name}+{dialect.driver}",
            option="method",
        )
    return _core_insert(conn, info, group.rows, want_keys)


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
    session: Session, conn: Connection, shape: _Shape, group: _Group, want_keys: bool
) -> list[Any] | int:
    targets, columns, keys = shape.with_keys(
        session, conn, shape.column_values(group), group.size, want_keys
    )
    checked = group.columns if group.checked else ()
    records = zip(*_processed(conn.dialect, targets, columns, checked), strict=True)
    count = _copy(conn, shape.table, targets, records)
    return keys if want_keys else count


def _unnest_source(targets: Sequence[Column[Any]], columns: list[list[Any]]) -> Any:
    u = _unnest(targets, columns, "a")
    return select(*(u.c[f"c{i}"] for i in range(len(targets)))).order_by(u.c.ord)


def _unnest_insert(
    session: Session, conn: Connection, shape: _Shape, group: _Group, want_keys: bool
) -> list[Any] | int:
    targets, columns, keys = shape.with_keys(
        session, conn, shape.column_values(group), group.size, want_keys
    )
    stmt = insert(shape.table).from_select(targets, _unnest_source(targets, columns))
    result = conn.execute(stmt, execution_options=_ROWCOUNT)
    return keys if want_keys else _count(result, group.size)


def _unnest_insert_returning(conn: Connection, shape: _Shape, group: _Group) -> list[Any]:
    targets = list(shape.all_columns)
    source = _unnest_source(targets, shape.column_values(group))
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
            source = _unnest_source(targets, shape.column_values(_Group(keys, len(rows), rows)))
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
