"""Alembic support: render repom types (and repom server defaults) into migrations.

Wire it in ``env.py``::

    import repom.types
    context.configure(..., render_item=repom.types.render_item)

A migration then contains ``repom.types.EncryptedType(sa.String(length=200))`` and the header
``import repom.types``.  Keys are never rendered.  Type comparison needs no hook: Alembic compares
the DDL each repom type compiles to (``JSONB``, ``CHAR(32)``, ``BYTEA``...) with the reflected type.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy.schema import DefaultClause
from sqlalchemy.sql.elements import False_, True_
from sqlalchemy.types import TypeEngine

from repom.types._base import RepomType
from repom.types._datetime import sql_utcnow

if TYPE_CHECKING:
    from alembic.autogenerate.api import AutogenContext

__all__ = ["render_item", "render_type"]

_IMPORT = "import repom.types"


def render_type(type_: TypeEngine[Any] | RepomType, autogen_context: AutogenContext | None) -> str:
    """Python source that rebuilds *type_* in a migration (``repr`` when no context)."""
    if isinstance(type_, RepomType):
        if autogen_context is None:
            return repr(type_)
        autogen_context.imports.add(_IMPORT)
        return "repom.types." + type_.render(autogen_context)
    if autogen_context is None:
        return repr(type_)
    try:
        from alembic.autogenerate.render import _repr_type
    except ImportError:  # pragma: no cover - a future Alembic without the helper
        prefix = autogen_context.opts.get("sqlalchemy_module_prefix") or "sa."
        return f"{prefix}{type_!r}"
    return _repr_type(type_, autogen_context)


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Alembic ``render_item`` hook for repom column types and server defaults.

    Returns ``False`` for everything else, so Alembic renders it as usual.  To combine it with a
    hook of your own, call this one first and fall back to yours when it returns ``False``.
    """
    if type_ == "type" and isinstance(obj, RepomType):
        return render_type(obj, autogen_context)
    if type_ == "server_default" and isinstance(obj, DefaultClause):
        arg = obj.arg
        prefix = autogen_context.opts.get("sqlalchemy_module_prefix") or "sa."
        if isinstance(arg, sql_utcnow):
            autogen_context.imports.add(_IMPORT)
            return "repom.types.sql_utcnow()"
        if isinstance(arg, False_):  # portable: 'false' on PostgreSQL, 0 on SQLite/MySQL
            return f"{prefix}false()"
        if isinstance(arg, True_):
            return f"{prefix}true()"
    return False
