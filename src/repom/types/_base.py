"""What every repom column type shares: the error raised for bad values, value coercion on
attribute assignment, and the Alembic rendering protocol.

Errors raised while SQLAlchemy processes bind parameters are normally wrapped in a generic
``StatementError``.  :class:`InvalidValueError` *is* a ``StatementError`` (and a
:class:`repom.exceptions.DataValidationError`), so SQLAlchemy passes it through unchanged and
``except DataValidationError`` works for flushes, Core statements and attribute assignment alike.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import InstanceState, Mapper
from sqlalchemy.orm.attributes import QueryableAttribute

from repom.exceptions import DataValidationError

if TYPE_CHECKING:
    from alembic.autogenerate.api import AutogenContext

__all__ = ["InvalidValueError", "RepomType", "short_repr"]


class InvalidValueError(DataValidationError, sa_exc.StatementError):
    """A value that a repom column type refuses (bad UUID, naive datetime, NUL byte, ...).

    Raised on attribute assignment (``user.id = "garbage"``) and when a statement's parameters
    are processed; nothing is written.  It is a :class:`repom.exceptions.DataValidationError`
    (and ``ValueError``) and also a ``sqlalchemy.exc.StatementError`` so SQLAlchemy never wraps it.
    """

    def __init__(self, message: str) -> None:
        sa_exc.StatementError.__init__(self, message, None, None, None)

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> Any:
        return (type(self), (self.args[0],))


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to *limit* characters (error messages never echo huge input)."""
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


class RepomType:
    """Mixin of repom's ``TypeDecorator`` classes.

    * :meth:`coerce` validates/normalises a Python value; it runs on attribute assignment (so the
      object holds the canonical value and a bad one fails where it is set, naming the attribute)
      and again when a statement is executed (Core statements, ``WHERE`` clauses).
    * :meth:`instrument` may add more attribute listeners (mutation tracking).
    * :meth:`render` returns the constructor call Alembic writes into a migration (see
      :func:`repom.types.render_item`); it never contains key material.
    """

    def coerce(self, value: Any) -> Any:
        return value

    def render(self, autogen_context: AutogenContext | None) -> str:
        """``ClassName(args)``; inner types are rendered for *autogen_context* (or ``repr``)."""
        return f"{type(self).__name__}()"

    def instrument(self, attribute: QueryableAttribute[Any]) -> None:
        """Hook for subclasses: extra listeners on a mapped attribute of this type."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _install_mapper_hook()

    def __repr__(self) -> str:
        return self.render(None)


# --------------------------------------------------------------------------- instrumentation

_hook_lock = threading.Lock()
_hook_installed = False


def _install_mapper_hook() -> None:
    global _hook_installed
    if _hook_installed:
        return
    with _hook_lock:
        if not _hook_installed:
            event.listen(Mapper, "mapper_configured", _on_mapper_configured)
            _hook_installed = True


def _on_mapper_configured(mapper: Mapper[Any], class_: type[Any]) -> None:
    for prop in mapper.column_attrs:
        if prop.parent is not mapper or len(prop.columns) != 1:
            continue  # inherited (listeners propagate) or a multi-column property
        type_ = prop.columns[0].type
        if not isinstance(type_, RepomType):
            continue
        attribute = getattr(class_, prop.key)
        _listen_coerce(attribute, type_)
        type_.instrument(attribute)


def _listen_coerce(attribute: QueryableAttribute[Any], type_: RepomType) -> None:
    key = attribute.key
    owner = attribute.class_.__name__

    def on_set(target: InstanceState[Any], value: Any, oldvalue: Any, initiator: Any) -> Any:
        try:
            return type_.coerce(value)
        except InvalidValueError as exc:
            raise InvalidValueError(f"{owner}.{key}: {exc}") from None

    event.listen(attribute, "set", on_set, raw=True, retval=True, propagate=True)
