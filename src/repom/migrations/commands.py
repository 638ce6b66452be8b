"""The migration commands as a Python API (the ``repom db`` CLI is a thin layer over it).

>>> from repom.migrations import Migrations           # doctest: +SKIP
>>> Migrations(url="sqlite:///app.db").upgrade()     # doctest: +SKIP

Every command runs the project's ``env.py`` (so customisations there apply) and reports Alembic's
failures as :class:`~repom.migrations.errors.MigrationError` with a one-line message.
"""

from __future__ import annotations

import os
import string
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from repom.migrations.errors import DatabaseNotUpToDate, MigrationError
from repom.migrations.project import (
    ProjectSettings,
    alembic_config,
    check_url_env,
    find_project,
    split_modules,
)

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext, MigrationInfo
    from alembic.script import Script, ScriptDirectory

__all__ = [
    "AppliedStep",
    "Migrations",
    "RevisionInfo",
    "RevisionResult",
    "describe_diff",
    "init_project",
    "template_path",
]


def template_path(name: str = "") -> Path:
    """Path of repom's Alembic templates (``env_sync.py``, ``env_async.py``, ``script.py.mako``)."""
    base = Path(str(resources.files("repom.migrations").joinpath("templates")))
    return base / name if name else base


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class AppliedStep:
    """One step of an upgrade, downgrade or stamp."""

    kind: Literal["upgrade", "downgrade", "stamp"]
    source: tuple[str, ...]
    destination: tuple[str, ...]
    message: str


@dataclass(frozen=True)
class RevisionInfo:
    """A migration file."""

    revision: str
    down_revisions: tuple[str, ...]
    message: str
    path: Path
    is_head: bool
    is_base: bool
    is_branch_point: bool
    is_merge_point: bool


@dataclass(frozen=True)
class RevisionResult:
    """What ``revision`` wrote (``revision is None`` when autogenerate found nothing to do)."""

    revision: str | None
    path: Path | None
    operations: tuple[str, ...]


def _revision_info(script: Script) -> RevisionInfo:
    return RevisionInfo(
        revision=script.revision,
        down_revisions=tuple(script._versioned_down_revisions),
        message=(script.doc or "").strip(),
        path=Path(script.path),
        is_head=script.is_head,
        is_base=script.is_base,
        is_branch_point=script.is_branch_point,
        is_merge_point=script.is_merge_point,
    )


# --------------------------------------------------------------------------- diff descriptions


def _type_name(type_: Any) -> str:
    try:
        return str(type_)
    except Exception:
        return repr(type_)


def _columns(obj: Any) -> str:
    try:
        return ", ".join(str(getattr(col, "name", col)) for col in obj.columns)
    except Exception:
        return ""


def describe_diff(diff: Any) -> str:
    """One line for an Alembic autogenerate diff (``+`` added, ``-`` removed, ``~`` changed)."""
    if isinstance(diff, list):
        parts = [describe_diff(item) for item in diff]
        return "; ".join(parts)
    if not isinstance(diff, tuple) or not diff:
        return str(diff)
    kind = diff[0]
    if kind in ("add_table", "remove_table"):
        sign = "+" if kind == "add_table" else "-"
        return f"{sign} table {diff[1].fullname}"
    if kind in ("add_column", "remove_column"):
        sign = "+" if kind == "add_column" else "-"
        _, schema, table, column = diff[:4]
        where = f"{schema}.{table}" if schema else table
        return f"{sign} column {where}.{column.name} ({_type_name(column.type)})"
    if kind in ("add_index", "remove_index"):
        sign = "+" if kind == "add_index" else "-"
        index = diff[1]
        unique = "unique " if index.unique else ""
        return f"{sign} {unique}index {index.name} on {index.table.name} ({_columns(index)})"
    if kind in ("add_constraint", "remove_constraint", "add_fk", "remove_fk"):
        sign = "+" if kind.startswith("add") else "-"
        constraint = diff[1]
        label = {
            "UniqueConstraint": "unique constraint",
            "ForeignKeyConstraint": "foreign key",
            "CheckConstraint": "check constraint",
            "PrimaryKeyConstraint": "primary key",
        }.get(type(constraint).__name__, "constraint")
        table = getattr(getattr(constraint, "table", None), "name", "?")
        return (
            f"{sign} {label} {constraint.name or '(unnamed)'} on {table} ({_columns(constraint)})"
        )
    if kind.startswith("modify_"):
        _, schema, table, column = diff[:4]
        where = f"{schema}.{table}" if schema else table
        old, new = diff[-2], diff[-1]
        what = kind.removeprefix("modify_")
        if what == "type":
            old, new = _type_name(old), _type_name(new)
        elif what == "default":
            old = getattr(getattr(old, "arg", old), "text", getattr(old, "arg", old))
            new = getattr(getattr(new, "arg", new), "text", getattr(new, "arg", new))
        return f"~ column {where}.{column}: {what} {old!s} -> {new!s}"
    if kind in ("add_table_comment", "remove_table_comment"):
        return f"~ table {diff[1].fullname}: comment"
    return " ".join(str(part) for part in diff)


# --------------------------------------------------------------------------- errors


@contextmanager
def _alembic_errors() -> Iterator[None]:
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    try:
        yield
    except (CommandError, RevisionError) as exc:
        message = " ".join(str(exc).split())
        if message.startswith("Can't locate revision identified by"):
            message = (
                "unknown revision: "
                + message.removeprefix("Can't locate revision identified by").strip()
            )
        elif message.startswith("No such revision or branch"):
            message = "unknown revision: " + message.removeprefix("No such revision or branch")
            message = message.strip()
        elif message.startswith("Relative revision") and "didn't produce" in message:
            message = (
                f"cannot move {message.split()[2]} revision(s) from the current one: "
                "not that many migrations are applied (or available)"
            )
        elif message == "Target database is not up to date.":
            message = (
                "the database is not at the head revision: run 'repom db upgrade' first "
                "(autogenerate compares the models with an up-to-date database)"
            )
        raise MigrationError(message) from exc


# --------------------------------------------------------------------------- the commands


class Migrations:
    """The migration commands for one project (``alembic.ini`` + migration folder).

    ``url`` overrides repom's configured database URL; ``models``/``metadata`` override the
    project's settings (see :mod:`repom.migrations.project`).
    """

    def __init__(
        self,
        settings: ProjectSettings | None = None,
        *,
        config_file: str | os.PathLike[str] | None = None,
        url: str | None = None,
        models: str | None = None,
        metadata: str | None = None,
    ) -> None:
        if settings is None:
            settings = find_project(config_file, url=url, models=models, metadata=metadata)
        else:
            settings = settings.with_overrides(url=url, models=models, metadata=metadata)
        self.settings = settings
        self._config: Config | None = None
        self._steps: list[AppliedStep] = []

    @property
    def config(self) -> Config:
        """The Alembic ``Config`` (``attributes`` carry the settings to env.py)."""
        if self._config is None:
            from repom.migrations.env import ON_VERSION_APPLY_ATTRIBUTE

            self._config = alembic_config(self.settings)
            self._config.attributes[ON_VERSION_APPLY_ATTRIBUTE] = self._record_step
        return self._config

    @property
    def script(self) -> ScriptDirectory:
        from alembic.script import ScriptDirectory

        with _alembic_errors():
            return ScriptDirectory.from_config(self.config)

    def _record_step(
        self,
        *,
        ctx: MigrationContext,
        step: MigrationInfo,
        heads: set[str],
        run_args: dict[str, Any],
    ) -> None:
        kind: Literal["upgrade", "downgrade", "stamp"]
        kind = "stamp" if step.is_stamp else "upgrade" if step.is_upgrade else "downgrade"
        source = step.source_revision_ids
        destination = step.destination_revision_ids
        revision = step.up_revision
        message = str(getattr(revision, "doc", "") or "").strip()
        self._steps.append(AppliedStep(kind, tuple(source), tuple(destination), message))

    def _run_env(self, fn: Callable[[Any, MigrationContext], Any], **kwargs: Any) -> None:
        from alembic.runtime.environment import EnvironmentContext

        script = self.script
        with _alembic_errors(), EnvironmentContext(self.config, script, fn=fn, **kwargs):
            script.run_env()

    def _steps_of(self, action: Callable[[], None]) -> list[AppliedStep]:
        self._steps = []
        with _alembic_errors():
            action()
        steps, self._steps = self._steps, []
        return steps

    # ---------------------------------------------------------------- writing migrations

    def revision(
        self,
        message: str,
        *,
        autogenerate: bool = False,
        allow_empty: bool = False,
        rev_id: str | None = None,
        head: str = "head",
    ) -> RevisionResult:
        """Write a migration; with *autogenerate*, from the differences between models and DB.

        An autogenerated revision with no operations is not written unless *allow_empty*.
        """
        from alembic import command

        if autogenerate:
            from repom.migrations.models import load_models

            load_models(self.settings)  # a readable error before Alembic's
        operations: list[str] = []

        def directives(context: Any, revision: Any, directives: list[Any]) -> None:
            if not directives:
                return
            script = directives[0]
            if not autogenerate:
                return
            for ops in script.upgrade_ops_list:
                operations.extend(describe_diff(diff) for diff in ops.as_diffs())
            if not allow_empty and all(ops.is_empty() for ops in script.upgrade_ops_list):
                directives[:] = []

        with _alembic_errors():
            result = command.revision(
                self.config,
                message=message,
                autogenerate=autogenerate,
                rev_id=rev_id,
                head=head,
                process_revision_directives=directives,
            )
        scripts = [s for s in (result if isinstance(result, list) else [result]) if s is not None]
        if not scripts:
            return RevisionResult(None, None, tuple(operations))
        written = scripts[0]
        return RevisionResult(written.revision, Path(written.path), tuple(operations))

    # ---------------------------------------------------------------- running migrations

    def upgrade(self, revision: str = "head", *, sql: bool = False) -> list[AppliedStep]:
        """Apply migrations up to *revision*; returns the steps applied (none in ``sql`` mode)."""
        from alembic import command

        return self._steps_of(lambda: command.upgrade(self.config, revision, sql=sql))

    def downgrade(self, revision: str = "-1", *, sql: bool = False) -> list[AppliedStep]:
        """Undo migrations down to *revision* (default: the last one)."""
        from alembic import command

        return self._steps_of(lambda: command.downgrade(self.config, revision, sql=sql))

    def stamp(self, revision: str, *, purge: bool = False) -> list[AppliedStep]:
        """Record *revision* as applied without running migrations."""
        from alembic import command

        return self._steps_of(lambda: command.stamp(self.config, revision, purge=purge))

    # ---------------------------------------------------------------- inspecting

    def current(self) -> tuple[str, ...]:
        """The revision(s) recorded in the database (empty: nothing applied)."""
        found: list[str] = []

        def read(rev: Any, context: MigrationContext) -> list[Any]:
            found.extend(context.get_current_heads())
            return []

        self._run_env(read, dont_mutate=True)
        return tuple(found)

    def heads(self) -> list[RevisionInfo]:
        script = self.script
        with _alembic_errors():
            return [_revision_info(script.get_revision(head)) for head in script.get_heads()]

    def history(self) -> list[RevisionInfo]:
        """Every migration, newest first."""
        script = self.script
        with _alembic_errors():
            return [_revision_info(rev) for rev in script.walk_revisions()]

    def check(self) -> list[str]:
        """Describe the differences between the models and the database (empty: in sync).

        Raises :class:`DatabaseNotUpToDate` when the database is not at the head revision.
        """
        from alembic import command
        from alembic.util import AutogenerateDiffsDetected, CommandError

        from repom.migrations.models import load_models

        load_models(self.settings)
        try:
            command.check(self.config)
        except AutogenerateDiffsDetected as exc:
            return [describe_diff(diff) for diff in exc.diffs]
        except CommandError as exc:
            if "not up to date" in str(exc):
                current = self.current()
                heads = [info.revision for info in self.heads()]
                raise DatabaseNotUpToDate(
                    "the database is not at the head revision (current: "
                    f"{', '.join(current) or 'none'}; head: {', '.join(heads) or 'none'}): "
                    "run 'repom db upgrade' before checking",
                    current=current,
                    heads=heads,
                ) from exc
            with _alembic_errors():
                raise
        return []


# --------------------------------------------------------------------------- init


def init_project(
    directory: str | os.PathLike[str] = "migrations",
    *,
    config_file: str | os.PathLike[str] = "alembic.ini",
    models: str | None = None,
    metadata: str | None = None,
    use_async: bool = False,
    url_env: str = "DATABASE_URL",
) -> list[Path]:
    """Write ``alembic.ini`` and the migration folder (paths relative to the working directory);
    return the files written.  Refuses to overwrite an existing configuration file or a non-empty
    folder.  *use_async* picks the env.py that runs migrations through an async engine.
    """
    ini = Path(config_file).resolve()
    folder = Path(directory).resolve()
    if ini.exists():
        raise MigrationError(f"{ini} already exists; not overwriting it")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise MigrationError(f"{folder} already exists and is not empty; not overwriting it")
    url_env = check_url_env(url_env)
    module_names = split_modules(models) if models else ()
    metadata = metadata.strip() if metadata else None
    try:
        script_location = "%(here)s/" + folder.relative_to(ini.parent).as_posix()
    except ValueError:
        script_location = folder.as_posix()
    template = string.Template(template_path("alembic.ini.tmpl").read_text("utf-8"))
    ini_text = template.substitute(
        script_location=script_location,
        models_line=f"models = {', '.join(module_names)}"
        if module_names
        else "# models = app.models",
        metadata_line=f"metadata = {metadata}" if metadata else "# metadata =",
        url_env_line=f"url_env = {url_env}",
    )
    written: list[Path] = []
    (folder / "versions").mkdir(parents=True, exist_ok=True)
    sources: Sequence[tuple[str, str]] = (
        ("env_async.py" if use_async else "env_sync.py", "env.py"),
        ("script.py.mako", "script.py.mako"),
        ("README.md", "README.md"),
    )
    for source, target in sources:
        path = folder / target
        path.write_text(template_path(source).read_text("utf-8"), "utf-8")
        written.append(path)
    keep = folder / "versions" / ".gitkeep"
    keep.touch()
    written.append(keep)
    ini.parent.mkdir(parents=True, exist_ok=True)
    ini.write_text(ini_text, "utf-8")
    written.append(ini)
    return written
