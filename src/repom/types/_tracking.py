"""In-place mutation tracking for JSON documents and arrays (nested, both dicts and lists).

``obj.settings["theme"]["dark"] = True`` or ``obj.tags.append("x")`` marks ``obj`` dirty, so the
next flush writes the column.  Values of tracked columns are held as :class:`TrackedDict` /
:class:`TrackedList` (subclasses of ``dict``/``list``; JSON encoders, ``==`` and ``isinstance``
treat them as the plain types).  A nested container knows its parent; the root knows the ORM
objects (weakly) and the attribute it is stored in.  Scalars (strings, numbers) need no tracking.
Pickling or copying a tracked value gives plain ``dict``/``list`` objects.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any, SupportsIndex

from sqlalchemy import event
from sqlalchemy.orm import InstanceState
from sqlalchemy.orm.attributes import QueryableAttribute, flag_modified

__all__ = ["TrackedDict", "TrackedList", "adopt", "track_attribute"]


class _Node:
    __slots__ = ()
    _parent: _Node | None
    _owners: weakref.WeakKeyDictionary[InstanceState[Any], str] | None

    def _changed(self) -> None:
        node: _Node = self
        while node._parent is not None:
            node = node._parent
        owners = node._owners
        if owners:
            for state, key in list(owners.items()):
                obj = state.obj()
                if obj is not None:
                    flag_modified(obj, key)


class TrackedDict(_Node, dict[Any, Any]):
    """A ``dict`` that reports in-place changes (at any depth) to the ORM objects holding it."""

    __slots__ = ("_owners", "_parent")

    def __setitem__(self, key: Any, value: Any) -> None:
        dict.__setitem__(self, key, adopt(value, self))
        self._changed()

    def __delitem__(self, key: Any) -> None:
        dict.__delitem__(self, key)
        self._changed()

    def clear(self) -> None:
        dict.clear(self)
        self._changed()

    def pop(self, key: Any, *default: Any) -> Any:
        had = key in self
        result = dict.pop(self, key, *default)
        if had:
            self._changed()
        return result

    def popitem(self) -> tuple[Any, Any]:
        result = dict.popitem(self)
        self._changed()
        return result

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return dict.__getitem__(self, key)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            dict.__setitem__(self, key, adopt(value, self))
        self._changed()

    def __ior__(self, other: Any) -> TrackedDict:  # type: ignore[misc]
        self.update(other)
        return self

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        return (dict, (plain(self),))


class TrackedList(_Node, list[Any]):
    """A ``list`` that reports in-place changes (at any depth) to the ORM objects holding it."""

    __slots__ = ("_owners", "_parent")

    def __setitem__(self, index: Any, value: Any) -> None:
        if isinstance(index, slice):
            list.__setitem__(self, index, [adopt(v, self) for v in value])
        else:
            list.__setitem__(self, index, adopt(value, self))
        self._changed()

    def __delitem__(self, index: Any) -> None:
        list.__delitem__(self, index)
        self._changed()

    def append(self, value: Any) -> None:
        list.append(self, adopt(value, self))
        self._changed()

    def extend(self, values: Iterable[Any]) -> None:
        list.extend(self, [adopt(v, self) for v in values])
        self._changed()

    def insert(self, index: SupportsIndex, value: Any) -> None:
        list.insert(self, index, adopt(value, self))
        self._changed()

    def pop(self, index: SupportsIndex = -1) -> Any:
        result = list.pop(self, index)
        self._changed()
        return result

    def remove(self, value: Any) -> None:
        list.remove(self, value)
        self._changed()

    def clear(self) -> None:
        list.clear(self)
        self._changed()

    def sort(self, *args: Any, **kwargs: Any) -> None:
        list.sort(self, *args, **kwargs)
        self._changed()

    def reverse(self) -> None:
        list.reverse(self)
        self._changed()

    def __iadd__(self, values: Iterable[Any]) -> TrackedList:  # type: ignore[misc]
        self.extend(values)
        return self

    def __imul__(self, count: SupportsIndex) -> TrackedList:
        list.__imul__(self, count)
        self._changed()
        return self

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        return (list, (plain(self),))


def adopt(value: Any, parent: _Node | None) -> Any:
    """*value* as a tracked container whose parent is *parent* (scalars are returned as-is).

    A container already tracked under the same parent is kept; one from anywhere else is copied,
    so a nested container never has two parents.
    """
    if isinstance(value, _Node) and value._parent is parent:
        return value
    if isinstance(value, dict):
        node_d = TrackedDict()
        node_d._parent = parent
        node_d._owners = None
        for key, item in value.items():
            dict.__setitem__(node_d, key, adopt(item, node_d))
        return node_d
    if isinstance(value, (list, tuple)):
        node_l = TrackedList()
        node_l._parent = parent
        node_l._owners = None
        list.extend(node_l, [adopt(item, node_l) for item in value])
        return node_l
    return value


def plain(value: Any) -> Any:
    """A deep copy of *value* made of plain ``dict`` and ``list`` objects."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def _attach(value: Any, state: InstanceState[Any], key: str) -> Any:
    if not isinstance(value, (dict, list, tuple)):
        return value
    root = adopt(value, None)
    if root._owners is None:
        root._owners = weakref.WeakKeyDictionary()
    root._owners[state] = key
    return root


def track_attribute(attribute: QueryableAttribute[Any]) -> None:
    """Wrap the values of *attribute* in tracked containers on load, refresh and assignment."""
    key = attribute.key
    class_ = attribute.class_

    def on_set(state: InstanceState[Any], value: Any, oldvalue: Any, initiator: Any) -> Any:
        if value is oldvalue:
            return value
        if isinstance(oldvalue, _Node) and oldvalue._owners:
            oldvalue._owners.pop(state, None)
        return _attach(value, state, key)

    def on_load(state: InstanceState[Any], *args: Any) -> None:
        value = state.dict.get(key)
        if value is not None:
            state.dict[key] = _attach(value, state, key)

    def on_refresh(state: InstanceState[Any], context: Any, attrs: Iterable[str] | None) -> None:
        if not attrs or key in attrs:
            on_load(state)

    event.listen(attribute, "set", on_set, raw=True, retval=True, propagate=True)
    event.listen(class_, "load", on_load, raw=True, propagate=True)
    event.listen(class_, "refresh", on_refresh, raw=True, propagate=True)
    event.listen(class_, "refresh_flush", on_refresh, raw=True, propagate=True)
    event.listen(class_, "unpickle", on_load, raw=True, propagate=True)
