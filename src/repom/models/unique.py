"""Uniqueness among live rows: :func:`unique_live` for models with soft delete.

A plain ``unique=True`` column also counts soft-deleted rows, so a value that a client can no
longer see still blocks a new row.  ``unique_live("email")`` in ``__table_args__`` declares the
column unique among rows that are *not* soft-deleted:

* PostgreSQL and SQLite: a partial unique index, ``CREATE UNIQUE INDEX ... WHERE is_deleted =
  false`` (``postgresql_where`` / ``sqlite_where``);
* MySQL/MariaDB have no partial indexes.  There the same index is emitted as one ``ALTER TABLE``
  that adds a virtual generated column ``<index name>__live``, ``IF(is_deleted, NULL, 1)``, and
  a unique index over ``(email, <index name>__live)``: a deleted row holds NULL in the marker,
  and NULLs never collide, while live rows all hold 1, so their emails must differ.  The marker
  needs no knowledge of the column types (a migration's ``op.create_index`` knows only names),
  and it is invisible to the models (it is not in the ``MetaData``).

Everything travels as ``Index`` arguments (``postgresql_where``, ``sqlite_where`` and the
``mysql_live_flag`` option registered here), so ``create_all`` and migrations rendered by Alembic
autogenerate build the same index.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, Index, Table, event, false
from sqlalchemy import column as column_clause
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import CreateIndex, DropIndex
from sqlalchemy.sql.compiler import DDLCompiler
from sqlalchemy.sql.naming import conv

from repom.exceptions import ConfigurationError

__all__ = ["LIVE_FLAG_OPTION", "is_live_index", "unique_live"]

#: the ``Index`` option that marks a live-unique index for MySQL/MariaDB (value: the flag column)
LIVE_FLAG_OPTION = "mysql_live_flag"

Index.argument_for("mysql", "live_flag", None)


def unique_live(
    *columns: str | Column[Any], name: str | None = None, flag: str = "is_deleted"
) -> Index:
    """A unique index over *columns* that ignores soft-deleted rows (``flag`` true).

    Use it in ``__table_args__`` of a model with :class:`~repom.models.SoftDeleteMixin`::

        __table_args__ = (unique_live("email"),)

    *name* defaults to ``uq_<table>_<columns>_live``.  The table must have the *flag* column
    (:class:`~repom.exceptions.ConfigurationError` otherwise).
    """
    if not columns:
        raise ConfigurationError("unique_live() needs at least one column")
    names: list[str] = []
    for item in columns:
        key = item if isinstance(item, str) else getattr(item, "name", None)
        if not isinstance(key, str) or not key:
            raise ConfigurationError(
                f"unique_live() takes column names or Column objects, got {item!r}"
            )
        names.append(key)
    where = column_clause(flag) == false()
    index = Index(
        conv(name) if name else None,
        *names,
        unique=True,
        postgresql_where=where,
        sqlite_where=where,
        mysql_live_flag=flag,
    )

    @event.listens_for(index, "after_parent_attach")
    def _attached(target: Index, table: Table) -> None:
        if flag not in table.c:
            raise ConfigurationError(
                f"unique_live({', '.join(names)}) on table {table.name!r}: the table has no "
                f"{flag!r} column (use it with SoftDeleteMixin, or pass flag=)"
            )
        if not name:  # replaces the metadata's ``ix_`` naming convention
            target.name = conv(f"uq_{table.name}_{'_'.join(names)}_live")

    return index


def is_live_index(index: Index) -> bool:
    """Whether *index* was made by :func:`unique_live` (or carries its option)."""
    return bool(index.dialect_kwargs.get(LIVE_FLAG_OPTION))


# --------------------------------------------------------------------------- MySQL / MariaDB


def _marker_name(index: Index) -> str:
    return f"{index.name}__live"[:64]


@compiles(CreateIndex, "mysql")
@compiles(CreateIndex, "mariadb")
def _create_live_index(element: CreateIndex, compiler: DDLCompiler, **kw: Any) -> str:
    index = element.element
    flag = index.dialect_kwargs.get(LIVE_FLAG_OPTION)
    if not flag or index.table is None:
        return str(compiler.visit_create_index(element, **kw))  # type: ignore[no-untyped-call]
    quote = compiler.preparer.quote
    marker = quote(_marker_name(index))
    columns = ", ".join([*(quote(c.name) for c in index.columns), marker])
    return (
        f"ALTER TABLE {compiler.preparer.format_table(index.table)} "
        f"ADD COLUMN {marker} TINYINT AS (IF({quote(flag)}, NULL, 1)) VIRTUAL, "
        f"ADD UNIQUE INDEX {compiler._prepared_index_name(index)} ({columns})"
    )


@compiles(DropIndex, "mysql")
@compiles(DropIndex, "mariadb")
def _drop_live_index(element: DropIndex, compiler: DDLCompiler, **kw: Any) -> str:
    index = element.element
    flag = index.dialect_kwargs.get(LIVE_FLAG_OPTION)
    if not flag or index.table is None:
        return str(compiler.visit_drop_index(element, **kw))  # type: ignore[no-untyped-call]
    return (
        f"ALTER TABLE {compiler.preparer.format_table(index.table)} "
        f"DROP INDEX {compiler._prepared_index_name(index)}, "
        f"DROP COLUMN {compiler.preparer.quote(_marker_name(index))}"
    )
