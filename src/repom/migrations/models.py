"""Import a project's models and find the ``MetaData`` that autogenerate compares with.

Every module of the configured models packages is imported (so that a model defined in any
submodule is registered) before the metadata is used, then ``configure_mappers()`` runs once, so a
broken relationship is reported here and not in the middle of a migration.
"""

from __future__ import annotations

import importlib
import pkgutil
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from sqlalchemy import MetaData, Table

from repom.migrations.errors import ModelsError
from repom.migrations.project import MODELS_ENV, ProjectSettings, ensure_importable

__all__ = ["LoadedModels", "find_metadata", "import_models", "load_models"]


@dataclass(frozen=True)
class LoadedModels:
    """The outcome of :func:`load_models`."""

    modules: tuple[str, ...]
    """Every module imported, in import order."""
    metadata: tuple[MetaData, ...]
    """The MetaData object(s) autogenerate compares with (usually exactly one)."""
    labels: tuple[str, ...]
    """Where each MetaData was found (``app.models:Base.metadata``)."""
    classes: dict[str, str]
    """Table key -> mapped class name (``"users" -> "app.models.user.User"``)."""

    @property
    def target_metadata(self) -> MetaData | tuple[MetaData, ...]:
        """What to pass to Alembic's ``target_metadata``."""
        return self.metadata[0] if len(self.metadata) == 1 else self.metadata

    @property
    def tables(self) -> list[Table]:
        return [table for meta in self.metadata for table in meta.sorted_tables]


def _describe_exception(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    location = ""
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith("<frozen") and "importlib" not in frame.filename
    ]
    if frames:
        last = frames[-1]
        location = f" ({last.filename}:{last.lineno})"
    return f"{type(exc).__name__}: {text}{location}"


def _import(name: str, parent: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise ModelsError(
                f"cannot import models module {parent!r}: no module named {exc.name!r} "
                "(models are imported from the working directory and the directory of "
                "alembic.ini)",
                variable="models",
            ) from exc
        raise ModelsError(
            f"error while importing models module {name!r}: {_describe_exception(exc)}",
            variable="models",
        ) from exc
    except Exception as exc:
        raise ModelsError(
            f"error while importing models module {name!r}: {_describe_exception(exc)}",
            variable="models",
        ) from exc


def import_models(modules: Sequence[str]) -> list[ModuleType]:
    """Import *modules* and, for packages, every submodule (depth first, sorted by name)."""
    imported: list[ModuleType] = []
    seen: set[str] = set()

    def visit(module: ModuleType) -> None:
        if module.__name__ in seen:
            return
        seen.add(module.__name__)
        imported.append(module)
        path = getattr(module, "__path__", None)
        if path is None:
            return
        children = sorted(pkgutil.iter_modules(path, prefix=module.__name__ + "."))
        for info in children:
            visit(_import(info.name, module.__name__))

    for name in modules:
        visit(_import(name, name))
    return imported


def _resolve_attribute(
    spec: str, default_module: ModuleType, known: dict[str, ModuleType]
) -> tuple[Any, str]:
    module_name, sep, attr_path = spec.partition(":")
    if sep:
        name = module_name.strip()
        module = known.get(name) or _import(name, name)
    else:
        module, attr_path = default_module, module_name
    obj: Any = module
    for part in attr_path.strip().split("."):
        if not part:
            continue
        if not hasattr(obj, part):
            raise ModelsError(
                f"metadata {spec!r}: {module.__name__!r} has no attribute path {attr_path!r}",
                variable="metadata",
            )
        obj = getattr(obj, part)
    return obj, f"{module.__name__}:{attr_path.strip()}"


def _as_metadata(obj: Any) -> MetaData | None:
    if isinstance(obj, MetaData):
        return obj
    candidate = getattr(obj, "metadata", None) if isinstance(obj, type) else None
    return candidate if isinstance(candidate, MetaData) else None


def find_metadata(
    modules: Sequence[ModuleType], spec: str | None = None
) -> list[tuple[MetaData, str]]:
    """Find the target MetaData among the imported *modules*.

    With *spec* (``"mod:Base.metadata"``, ``"Base"``, several separated by commas) exactly that.
    Otherwise, in the first module: ``target_metadata``, ``metadata``, then ``Base.metadata``;
    failing that, the one non-empty MetaData reachable from a declarative class or a module
    attribute of any imported module (several -> :class:`ModelsError` asking for *spec*).
    """
    if not modules:
        raise ModelsError("no models module imported", variable="models")
    root = modules[0]
    if spec:
        known = {module.__name__: module for module in modules}
        found: list[tuple[MetaData, str]] = []
        for part in (item.strip() for item in spec.split(",")):
            if not part:
                continue
            obj, label = _resolve_attribute(part, root, known)
            meta = _as_metadata(obj)
            if meta is None:
                raise ModelsError(
                    f"metadata {part!r} is a {type(obj).__name__}, not a MetaData "
                    "(nor a declarative class with .metadata)",
                    variable="metadata",
                )
            found.append((meta, label))
        return _unique(found)
    for attr in ("target_metadata", "metadata", "Base"):
        meta = _as_metadata(getattr(root, attr, None))
        if meta is not None:
            suffix = ".metadata" if attr == "Base" else ""
            return [(meta, f"{root.__name__}:{attr}{suffix}")]
    candidates: list[tuple[MetaData, str]] = []
    for module in modules:
        for attr, value in sorted(vars(module).items()):
            if attr.startswith("__"):
                continue
            meta = _as_metadata(value)
            if meta is None:
                continue
            if isinstance(value, type) and getattr(value, "registry", None) is None:
                continue
            label = f"{module.__name__}:{attr}" + (
                "" if isinstance(value, MetaData) else ".metadata"
            )
            candidates.append((meta, label))
    unique = _unique(candidates)
    with_tables = [item for item in unique if item[0].tables]
    if len(with_tables) == 1:
        return with_tables
    if not with_tables and len(unique) == 1:
        return unique
    names = ", ".join(label for _, label in (with_tables or unique))
    if not unique:
        raise ModelsError(
            f"no MetaData found in {', '.join(m.__name__ for m in modules[:3])}"
            f"{', ...' if len(modules) > 3 else ''} (looked for target_metadata, metadata, "
            "Base.metadata and declarative classes); set metadata = 'module:Base.metadata'",
            variable="metadata",
        )
    raise ModelsError(
        f"several MetaData objects found ({names}); choose with metadata = "
        "'module:Base.metadata' (several separated by commas)",
        variable="metadata",
    )


def _unique(items: Iterable[tuple[MetaData, str]]) -> list[tuple[MetaData, str]]:
    seen: set[int] = set()
    result = []
    for meta, label in items:
        if id(meta) not in seen:
            seen.add(id(meta))
            result.append((meta, label))
    return result


def _mapped_classes(modules: Sequence[ModuleType], metadata: Sequence[MetaData]) -> dict[str, str]:
    """Table key -> ``module.Class`` for the mapped classes defined in *modules*."""
    from sqlalchemy import inspect as sa_inspect
    from sqlalchemy.orm import Mapper

    wanted = {id(table): key for meta in metadata for key, table in meta.tables.items()}
    classes: dict[str, str] = {}
    for module in modules:
        for value in vars(module).values():
            if not isinstance(value, type) or getattr(value, "__module__", None) != module.__name__:
                continue
            mapper: Any = sa_inspect(value, raiseerr=False)
            if not isinstance(mapper, Mapper):
                continue
            for table in mapper.tables:
                key = wanted.get(id(table))
                if key is not None:
                    classes.setdefault(key, f"{module.__name__}.{value.__qualname__}")
    return classes


def load_models(settings: ProjectSettings, *, required: bool = True) -> LoadedModels | None:
    """Import the configured models, configure the mappers and find the target MetaData.

    Returns ``None`` when no models module is configured and *required* is false.
    """
    if not settings.models:
        if not required:
            return None
        raise ModelsError(
            "no models module configured: set models = 'app.models' under [repom] in "
            f"{settings.config_file.name} or [tool.repom] in pyproject.toml, "
            f"or use {MODELS_ENV} / --models",
            variable="models",
        )
    ensure_importable(settings)
    modules = import_models(settings.models)
    found = find_metadata(modules, settings.metadata)
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.orm import configure_mappers

    try:
        configure_mappers()
    except SQLAlchemyError as exc:
        text = " ".join(str(exc).split())
        text = text.split(" (Background on this error at:")[0]
        raise ModelsError(f"the models' mappers cannot be configured: {text}") from exc
    metadata = tuple(meta for meta, _ in found)
    return LoadedModels(
        modules=tuple(module.__name__ for module in modules),
        metadata=metadata,
        labels=tuple(label for _, label in found),
        classes=_mapped_classes(modules, metadata),
    )
