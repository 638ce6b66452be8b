"""Repositories: CRUD, validated filters, offset and keyset pagination, bulk writes, upserts.

``Repository[Model]`` works with a sync ``Session`` and ``AsyncRepository[Model]`` with an
``AsyncSession``; both run one implementation (:mod:`repom.repository.core`,
:mod:`repom.repository.bulk`).  Repositories never commit: they flush, and whoever owns the
transaction commits.  See ``docs/repositories.md``.
"""

from repom.repository.base import (
    AsyncBaseRepository,
    AsyncRepository,
    BaseRepository,
    Repository,
)
from repom.repository.cursor import CursorCodec
from repom.repository.errors import InvalidOptionError, UnknownFieldError
from repom.repository.filters import (
    OPERATORS,
    escape_like,
    split_filter_key,
    validate_filters,
    validate_order_by,
)
from repom.repository.meta import ModelInfo, model_info
from repom.repository.pagination import CursorPage, Page

__all__ = [
    "OPERATORS",
    "AsyncBaseRepository",
    "AsyncRepository",
    "BaseRepository",
    "CursorCodec",
    "CursorPage",
    "InvalidOptionError",
    "ModelInfo",
    "Page",
    "Repository",
    "UnknownFieldError",
    "escape_like",
    "model_info",
    "split_filter_key",
    "validate_filters",
    "validate_order_by",
]
