"""Query-parameter dependencies for filters, ordering and pagination, from a whitelist.

Each helper builds a dependency whose parameters are published in OpenAPI with their types and
allowed values, and whose result feeds a repository directly::

    article_filters = filter_params(Article, {"author_id": ("eq", "in"), "title": ("icontains",)})
    article_order = order_params(Article, ("created_at", "title"), default=("-created_at",))

    @app.get("/articles")
    async def list_articles(
        session: AsyncDbSession,
        filters: Annotated[Filters, Depends(article_filters)],
        order_by: Annotated[list[str], Depends(article_order)],
        page: Annotated[CursorParams, Depends(cursor_params(maximum=100))],
    ) -> ...:
        return await ArticleRepository(session).keyset(
            filters=filters, order_by=order_by, limit=page.limit, after=page.cursor
        )

* ``filter_params`` -- one query parameter per allowed ``field`` / ``field__op`` (``author_id``,
  ``author_id__in`` repeated, ``created_at__gte``...), typed from the column; the result is the
  ``{"field__op": value}`` mapping repositories take, with absent parameters left out.  Pass it
  as ``filters=``: that is where a repository checks caller input against its
  ``filterable_fields`` (keyword filters are the application's own and may use any column).
* ``order_params`` -- ``order_by`` (repeatable) restricted to ``field`` / ``-field`` of the allowed
  fields: an enum in OpenAPI, a 422 for anything else.
* ``page_params`` / ``cursor_params`` -- ``page``/``per_page`` or ``limit``/``cursor`` with bounds;
  an invalid cursor is reported under its query parameter's name, ``cursor``.

With ``strict=True`` (the default) ``filter_params`` also rejects query parameters the route
does not declare (``?pasword=x`` is a typo or a probe, not something to ignore) with
:class:`~repom.exceptions.InvalidFilterError`, a 422 once :func:`install_exception_handlers` is
installed.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Query, Request
from pydantic import BaseModel

from repom.exceptions import ConfigurationError, InvalidFilterError

__all__ = [
    "CursorParams",
    "Filters",
    "PageParams",
    "cursor_params",
    "filter_params",
    "order_params",
    "page_params",
]

#: what ``filter_params`` dependencies return: ``{"field__op": value}``
Filters = dict[str, Any]

_LIST_OPS = frozenset({"in", "not_in"})
_TEXT_OPS = frozenset(
    {"like", "ilike", "contains", "icontains", "startswith", "istartswith", "endswith", "iendswith"}
)
_VALUE_OPS = frozenset({"eq", "ne", "lt", "lte", "gt", "gte"})
_KNOWN_OPS = _LIST_OPS | _TEXT_OPS | _VALUE_OPS | {"is_null"}


def _model_and_defaults(source: Any) -> tuple[type[Any], Any, Any]:
    """Accept a mapped class or a repository class (its ``model`` and whitelists)."""
    model = getattr(source, "model", None)
    if isinstance(source, type) and isinstance(model, type):
        return (
            model,
            getattr(source, "filterable_fields", None),
            getattr(source, "orderable_fields", None),
        )
    return source, None, None


def _columns(model: type[Any]) -> dict[str, Any]:
    from repom.repository.meta import model_info

    return dict(model_info(model).attributes)


def _python_type(attribute: Any) -> type[Any]:
    try:
        py = attribute.type.python_type
    except (NotImplementedError, AttributeError):
        return str
    return py if isinstance(py, type) else str


def _normalise_spec(
    fields: Mapping[str, Iterable[str]] | Iterable[str], columns: Mapping[str, Any], model: str
) -> list[tuple[str, str]]:
    spec: list[tuple[str, str]] = []
    if isinstance(fields, Mapping):
        items = [(name, tuple(ops)) for name, ops in fields.items()]
    else:
        items = [(name, ("eq",)) for name in fields]
    for name, ops in items:
        if name not in columns:
            raise ConfigurationError(
                f"filter_params: {model} has no column {name!r}; columns: "
                + ", ".join(sorted(columns))
            )
        if not ops:
            raise ConfigurationError(f"filter_params: no operator given for {name!r}")
        for op in ops:
            if op not in _KNOWN_OPS:
                raise ConfigurationError(
                    f"filter_params: unknown operator {op!r} for {name!r}; allowed: "
                    + ", ".join(sorted(_KNOWN_OPS))
                )
            spec.append((name, op))
    return spec


def _annotation(op: str, py: type[Any]) -> Any:
    if op in _LIST_OPS:
        return list[py] | None  # type: ignore[valid-type]
    if op in _TEXT_OPS:
        return str | None
    if op == "is_null":
        return bool | None
    return py | None


_DESCRIPTIONS = {
    "eq": "equal to",
    "ne": "not equal to",
    "lt": "less than",
    "lte": "at most",
    "gt": "greater than",
    "gte": "at least",
    "in": "one of (repeat the parameter)",
    "not_in": "none of (repeat the parameter)",
    "is_null": "true: no value; false: has a value",
    "like": "contains (case-sensitive)",
    "ilike": "contains (case-insensitive)",
    "contains": "contains (case-sensitive)",
    "icontains": "contains (case-insensitive)",
    "startswith": "starts with",
    "istartswith": "starts with (case-insensitive)",
    "endswith": "ends with",
    "iendswith": "ends with (case-insensitive)",
}

# id(route) -> (weak reference to the route, its query parameter names); routes are unhashable
_route_params: dict[int, tuple[weakref.ref[Any], frozenset[str]]] = {}


def _query_names(route: Any) -> frozenset[str]:
    """Every query parameter the route declares (its dependencies included)."""
    cached = _route_params.get(id(route))
    if cached is not None and cached[0]() is route:
        return cached[1]
    names: set[str] = set()
    stack = [route.dependant]
    while stack:
        node = stack.pop()
        for param in node.query_params:
            annotation = param.field_info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                for key, info in annotation.model_fields.items():
                    names.add(info.alias or key)
            else:
                names.add(param.alias)
        stack.extend(node.dependencies)
    result = frozenset(names)
    route_id = id(route)

    def forget(_: Any) -> None:
        _route_params.pop(route_id, None)

    _route_params[route_id] = (weakref.ref(route, forget), result)
    return result


def reject_unknown_query_parameters(request: Request) -> None:
    """Raise :class:`InvalidFilterError` for a query parameter the route does not declare."""
    route = request.scope.get("route")
    if route is None or not hasattr(route, "dependant"):
        return
    allowed = _query_names(route)
    for name in request.query_params:
        if name not in allowed:
            raise InvalidFilterError(
                f"unknown query parameter {name!r}; allowed: "
                + (", ".join(sorted(allowed)) or "(none)"),
                field=name,
                allowed=sorted(allowed),
            )


def filter_params(
    source: Any,
    fields: Mapping[str, Iterable[str]] | Iterable[str] | None = None,
    *,
    strict: bool = True,
) -> Callable[..., Awaitable[Filters]]:
    """A dependency returning the filters given in the query string (see the module docs).

    *source* is a mapped class, or a repository class whose ``model`` and ``filterable_fields``
    are used.  *fields* maps each allowed field to its operators (a plain list of names means
    equality only); default: the repository's ``filterable_fields`` (equality).
    """
    model, default_fields, _ = _model_and_defaults(source)
    columns = _columns(model)
    chosen = fields if fields is not None else default_fields
    if chosen is None:
        raise ConfigurationError(
            "filter_params needs the allowed fields (or a repository with filterable_fields)"
        )
    spec = _normalise_spec(chosen, columns, model.__name__)
    keys: list[str] = []
    parameters = [inspect.Parameter("request", inspect.Parameter.KEYWORD_ONLY, annotation=Request)]
    for index, (name, op) in enumerate(spec):
        key = name if op == "eq" else f"{name}__{op}"
        keys.append(key)
        py = _python_type(columns[name])
        parameters.append(
            inspect.Parameter(
                f"filter_{index}",
                inspect.Parameter.KEYWORD_ONLY,
                default=Query(None, alias=key, description=f"{name}: {_DESCRIPTIONS[op]}"),
                annotation=_annotation(op, py),
            )
        )

    async def filters_from_query(**values: Any) -> Filters:
        request: Request = values.pop("request")
        if strict:
            reject_unknown_query_parameters(request)
        found: Filters = {}
        for index, key in enumerate(keys):
            value = values[f"filter_{index}"]
            if value is not None:
                found[key] = value
        return found

    filters_from_query.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    return filters_from_query


def order_params(
    source: Any,
    fields: Sequence[str] | None = None,
    *,
    default: Sequence[str] = (),
    name: str = "order_by",
) -> Callable[..., Awaitable[list[str]]]:
    """A dependency returning the ordering (``["-created_at", "title"]``) from a repeatable
    ``order_by`` query parameter whose values are ``field`` or ``-field`` of *fields* (default:
    the repository's ``orderable_fields``).  *default* applies when the parameter is absent."""
    model, _, default_fields = _model_and_defaults(source)
    columns = _columns(model)
    chosen = list(fields if fields is not None else (default_fields or ()))
    if not chosen:
        raise ConfigurationError(
            "order_params needs the allowed fields (or a repository with orderable_fields)"
        )
    for field_name in chosen:
        if field_name not in columns:
            raise ConfigurationError(f"order_params: {model.__name__} has no column {field_name!r}")
    values = tuple(value for f in chosen for value in (f, f"-{f}"))
    for value in default:
        if value not in values:
            raise ConfigurationError(f"order_params: default {value!r} is not an allowed ordering")
    allowed = Literal[values]  # type: ignore[valid-type]
    fallback = list(default)

    async def ordering_from_query(order: list[Any] | None) -> list[str]:
        return [str(v) for v in order] if order else list(fallback)

    ordering_from_query.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                "order",
                inspect.Parameter.KEYWORD_ONLY,
                default=Query(
                    None,
                    alias=name,
                    description="Sort by these fields (repeat for more; '-' for descending)",
                ),
                annotation=list[allowed] | None,
            )
        ]
    )
    return ordering_from_query


@dataclass(frozen=True)
class PageParams:
    """``page`` (1-based) and ``per_page`` from the query string."""

    page: int
    per_page: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page

    @property
    def limit(self) -> int:
        return self.per_page


@dataclass(frozen=True)
class CursorParams:
    """``limit`` and the opaque ``cursor`` of the previous page (``None``: the first page).

    ``cursor`` is a :class:`~repom.repository.cursor.CursorToken` (a ``str``) that remembers it
    came from the ``cursor`` query parameter: pass it as ``keyset(after=page.cursor)`` and an
    invalid one answers 422 ``invalid_cursor`` with ``"field": "cursor"``.
    """

    limit: int
    cursor: str | None


def _check_sizes(default: int, maximum: int) -> None:
    if not 1 <= default <= maximum:
        raise ConfigurationError(f"page sizes need 1 <= default ({default}) <= maximum ({maximum})")


def page_params(*, default: int = 20, maximum: int = 100) -> Callable[..., Awaitable[PageParams]]:
    """A dependency for offset pagination: ``page >= 1``, ``1 <= per_page <= maximum``."""
    _check_sizes(default, maximum)

    async def page_from_query(page: int = 1, per_page: int = default) -> PageParams:
        return PageParams(page=page, per_page=per_page)

    page_from_query.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                "page",
                inspect.Parameter.KEYWORD_ONLY,
                default=Query(1, ge=1, description="Page number, from 1"),
                annotation=int,
            ),
            inspect.Parameter(
                "per_page",
                inspect.Parameter.KEYWORD_ONLY,
                default=Query(default, ge=1, le=maximum, description="Items per page"),
                annotation=int,
            ),
        ]
    )
    return page_from_query


def _cursor_token() -> Any:
    """:class:`~repom.repository.cursor.CursorToken`, imported on first use: importing
    ``repom.fastapi`` does not load the repository layer (and SQLAlchemy's dialects) for it."""
    from repom.repository.cursor import CursorToken

    return CursorToken


def cursor_params(
    *, default: int = 20, maximum: int = 100
) -> Callable[..., Awaitable[CursorParams]]:
    """A dependency for keyset pagination: ``1 <= limit <= maximum`` and ``cursor``."""
    _check_sizes(default, maximum)

    async def cursor_from_query(limit: int = default, cursor: str | None = None) -> CursorParams:
        # a CursorToken: a repository that rejects it names the query parameter, not ``after``
        token = None if cursor is None else _cursor_token()(cursor, parameter="cursor")
        return CursorParams(limit=limit, cursor=token)

    cursor_from_query.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                "limit",
                inspect.Parameter.KEYWORD_ONLY,
                default=Query(default, ge=1, le=maximum, description="Items per page"),
                annotation=int,
            ),
            inspect.Parameter(
                "cursor",
                inspect.Parameter.KEYWORD_ONLY,
                default=Query(
                    None,
                    max_length=4096,
                    description="next_cursor of the previous page; omit for the first page",
                ),
                annotation=str | None,
            ),
        ]
    )
    return cursor_from_query
