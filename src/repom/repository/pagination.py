"""Result pages: :class:`Page` (offset pagination with a total) and :class:`CursorPage` (keyset)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from repom.exceptions import InvalidFilterError

__all__ = ["CursorPage", "Page", "check_limit", "check_offset", "page_window"]

T = TypeVar("T")
U = TypeVar("U")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of an offset-paginated query.

    ``page`` is 1-based; ``pages`` is the number of pages (0 when there are no rows);
    ``per_page`` is the page size actually used (after the repository's cap).

    ``total`` is exact unless ``total_is_estimate`` is true (``paginate(count="estimated")``
    over a large result); it is ``None``, and so is ``pages``, with ``paginate(count="none")``.
    ``next_known`` is set when the query itself told whether more rows follow (it fetched one
    row beyond the page); ``has_next`` then uses it instead of the total.
    """

    items: list[T]
    total: int | None
    page: int
    per_page: int
    pages: int | None
    total_is_estimate: bool = False
    next_known: bool | None = None

    @property
    def has_next(self) -> bool:
        if self.next_known is not None:
            return self.next_known
        return self.pages is not None and self.page < self.pages

    @property
    def has_prev(self) -> bool:
        return self.page > 1

    def map(self, fn: Callable[[T], U]) -> Page[U]:
        """The same page with every item converted (e.g. to a pydantic schema)."""
        return Page(
            [fn(item) for item in self.items],
            self.total,
            self.page,
            self.per_page,
            self.pages,
            self.total_is_estimate,
            self.next_known,
        )

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True, slots=True)
class CursorPage(Generic[T]):
    """One page of a keyset-paginated query.

    Pass ``next_cursor`` as ``after=`` to get the following page; it is ``None`` on the last page.
    """

    items: list[T]
    next_cursor: str | None

    @property
    def has_next(self) -> bool:
        return self.next_cursor is not None

    def map(self, fn: Callable[[T], U]) -> CursorPage[U]:
        return CursorPage([fn(item) for item in self.items], self.next_cursor)

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_limit(value: Any, cap: int, name: str = "limit", *, minimum: int = 0) -> int:
    """*value* as a page size: an int >= *minimum*, capped at *cap*."""
    if not _is_int(value):
        raise InvalidFilterError(f"{name} must be an integer, got {value!r}", field=name)
    if value < minimum:
        raise InvalidFilterError(f"{name} must be >= {minimum}, got {value}", field=name)
    return min(int(value), cap)


def check_offset(value: Any, name: str = "offset") -> int:
    if not _is_int(value):
        raise InvalidFilterError(f"{name} must be an integer, got {value!r}", field=name)
    if value < 0:
        raise InvalidFilterError(f"{name} must be >= 0, got {value}", field=name)
    return int(value)


def page_window(page: Any, per_page: Any, cap: int) -> tuple[int, int, int]:
    """``(page, per_page, offset)`` for a 1-based *page*; ``per_page`` capped at *cap*."""
    if not _is_int(page) or page < 1:
        raise InvalidFilterError(f"page must be an integer >= 1, got {page!r}", field="page")
    size = check_limit(per_page, cap, "per_page", minimum=1)
    return int(page), size, (int(page) - 1) * size


def page_count(total: int, per_page: int) -> int:
    return (total + per_page - 1) // per_page if per_page else 0


def total_from_page(items: Sequence[Any], offset: int, per_page: int) -> int | None:
    """The total, when the page itself tells it (a non-empty page that is not full)."""
    if 0 < len(items) < per_page:
        return offset + len(items)
    if not items and offset == 0:
        return 0
    return None
