"""The migration commands as a Python API (the ``repom db`` CLI is a thin layer over it).

>>> from repom.migrations import Migrations           # doctest: +SKIP
>>> Migrations(url="sqlite:///app.db").upgrade()     # doctest: +SKIP

Every command runs the project's ``env.py`` (so customisations there apply) and reports Alembic's
failures as :class:`~repom.migrations.errors.MigrationError` with a one-line message.
"""

from __future__ import annotations

import os
import string
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

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
    "MigrationProgress",
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


StepKind = Literal["upgrade", "downgrade", "stamp"]


@dataclass(frozen=True)
class AppliedStep:
    """One step of an upgrade, downgrade or stamp."""

    kind: StepKind
    source: tuple[str, ...]
    destination: tuple[str, ...]
    message: str
    revision: str | None = None
    """The migration that ran (for a downgrade: the one undone); ``None`` for a stamp."""
    seconds: float | None = None
    """How long the migration took (``None`` for a stamp)."""
    heads: tuple[str, ...] = ()
    """The database's revision(s) after this step (several while branches are apart)."""


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
    branch_labels: tuple[str, ...] = ()
    dependencies: tuple[str, ...] = ()
    doc: str = ""
    """The whole docstring (``message`` is its first paragraph)."""
    next_revisions: tuple[str, ...] = ()
    """The migrations that follow this one (more than one at a branch point)."""
    is_current: bool | None = None
    """Whether the database is at this revision (``None``: not asked)."""


@dataclass(frozen=True)
class RevisionResult:
    """What ``revision`` or ``merge`` wrote (``revision is None`` when autogenerate found
    nothing to do)."""

    revision: str | None
    path: Path | None
    operations: tuple[str, ...]
    parents: tuple[str, ...] = ()
    """The revisions the new one follows (several for a merge)."""


class MigrationProgress(Protocol):
    """Receives the progress of :meth:`Migrations.upgrade` / :meth:`Migrations.downgrade`.

    ``planned`` is called once, inside the run (after the lock, before the first migration),
    with the migrations about to run in order; ``starting`` before each, ``applied`` after each.
    *transactional* says whether the run is one transaction (a failure undoes every step).
    """

    def planned(
        self, kind: StepKind, revisions: Sequence[RevisionInfo], *, transactional: bool
    ) -> None: ...

    def starting(self, revision: RevisionInfo, number: int, total: int) -> None: ...

    def applied(self, step: AppliedStep, number: int, total: int) -> None: ...


def _as_tuple(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _revision_info(script: Script, *, current: Iterable[str] | None = None) -> RevisionInfo:
    return RevisionInfo(
        revision=script.revision,
        down_revisions=tuple(script._versioned_down_revisions),
        message=(script.doc or "").strip(),
        path=Path(script.path),
        is_head=script.is_head,
        is_base=script.is_base,
        is_branch_point=script.is_branch_point,
        is_merge_point=script.is_merge_point,
        branch_labels=tuple(sorted(script.branch_labels)),
        dependencies=_as_tuple(script.dependencies),
        doc=script.longdoc,
        next_revisions=tuple(sorted(script.nextrev)),
        is_current=None if current is None else script.revision in set(current),
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
        elif message == "Ambiguous walk":
            message = (
                "a relative step across a merge or branch point is ambiguous: name the target "
                "revision instead (see 'repom db history')"
            )
        elif message.startswith("Revision ") and "is not a head revision" in message:
            message = (
                f"cannot merge {message.split()[1]}: it is not a head; a merge joins heads "
                "(see 'repom db heads')"
            )
        elif message == "Target database is not up to date.":
            message = (
                "the database is not at the head revision: run 'repom db upgrade' first "
                "(autogenerate compares the models with an up-to-date database)"
            )
        raise MigrationError(message) from exc


# --------------------------------------------------------------------------- plans and progress


def _plan(
    script: ScriptDirectory,
    kind: Literal["upgrade", "downgrade"],
    revision: str,
    heads: tuple[str, ...],
) -> list[Any]:
    """The migration steps from *heads* to *revision*, exactly as ``alembic upgrade`` /
    ``alembic downgrade`` compute them."""
    current: Any = heads
    if kind == "upgrade":
        return list(script._upgrade_revs(revision, current))
    return list(script._downgrade_revs(revision, current))


class _Run:
    """Bookkeeping of one upgrade/downgrade run (for timings and progress)."""

    def __init__(self, progress: MigrationProgress | None) -> None:
        self.progress = progress
        self.total = 0
        self.number = 0
        self.mark = time.perf_counter()

    def announce(self, steps: list[Any], infos: list[RevisionInfo]) -> Iterator[Any]:
        """Hand Alembic the steps one by one, noting when each starts."""
        for number, (step, info) in enumerate(zip(steps, infos, strict=True), 1):
            self.number = number
            if self.progress is not None:
                self.progress.starting(info, number, self.total)
            self.mark = time.perf_counter()
            yield step


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
        self._run: _Run | None = None

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
        kind: StepKind
        kind = "stamp" if step.is_stamp else "upgrade" if step.is_upgrade else "downgrade"
        source = step.source_revision_ids
        destination = step.destination_revision_ids
        revision = step.up_revision
        message = str(getattr(revision, "doc", "") or "").strip()
        run = self._run
        applied = AppliedStep(
            kind, tuple(source), tuple(destination), message, heads=tuple(sorted(heads))
        )
        if kind != "stamp":
            seconds = time.perf_counter() - run.mark if run is not None else None
            applied = replace(applied, revision=step.up_revision_id, seconds=seconds)
        self._steps.append(applied)
        if run is not None and run.progress is not None and kind != "stamp":
            run.progress.applied(applied, run.number, run.total)

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

    def upgrade(
        self,
        revision: str = "head",
        *,
        sql: bool = False,
        progress: MigrationProgress | None = None,
    ) -> list[AppliedStep]:
        """Apply migrations up to *revision*; returns the steps applied (none in ``sql`` mode).

        *progress* hears about each migration as it runs (see :class:`MigrationProgress`).
        """
        if sql:
            from alembic import command

            return self._steps_of(lambda: command.upgrade(self.config, revision, sql=True))
        return self._migrate("upgrade", revision, progress=progress)

    def downgrade(
        self,
        revision: str = "-1",
        *,
        sql: bool = False,
        progress: MigrationProgress | None = None,
        expect: Sequence[str] | None = None,
    ) -> list[AppliedStep]:
        """Undo migrations down to *revision* (default: the last one).

        *expect* (the revisions :meth:`plan` returned, in order) makes the run refuse, changing
        nothing, when it would undo anything else: the database moved since the plan was shown.
        """
        if sql:
            from alembic import command

            return self._steps_of(lambda: command.downgrade(self.config, revision, sql=True))
        return self._migrate("downgrade", revision, progress=progress, expect=expect)

    def plan(
        self, revision: str = "head", *, kind: Literal["upgrade", "downgrade"] = "upgrade"
    ) -> list[RevisionInfo]:
        """The migrations ``upgrade(revision)`` (or ``downgrade(revision)``) would run now, in
        order.  Reads the database's current revision; changes nothing."""
        script = self.script
        planned: list[RevisionInfo] = []

        def read(heads: Any, context: MigrationContext) -> list[Any]:
            planned.extend(
                _revision_info(step.revision) for step in _plan(script, kind, revision, heads)
            )
            return []

        self._run_env(read, dont_mutate=True)
        return planned

    def _migrate(
        self,
        kind: Literal["upgrade", "downgrade"],
        revision: str,
        *,
        progress: MigrationProgress | None,
        expect: Sequence[str] | None = None,
    ) -> list[AppliedStep]:
        """What ``alembic upgrade/downgrade`` does, with the plan known inside the run: the
        progress gets the total before the first migration and each migration as it starts."""
        script = self.script
        run = _Run(progress)

        def migrate(heads: Any, context: MigrationContext) -> Iterator[Any]:
            steps = _plan(script, kind, revision, heads)
            infos = [_revision_info(step.revision) for step in steps]
            if expect is not None and tuple(info.revision for info in infos) != tuple(expect):
                raise MigrationError(
                    f"the database changed since the {kind} was planned: it would now "
                    f"{'undo' if kind == 'downgrade' else 'apply'} "
                    f"{', '.join(i.revision for i in infos) or 'nothing'} instead of "
                    f"{', '.join(expect) or 'nothing'}; nothing was changed, run it again"
                )
            run.total = len(steps)
            if progress is not None:
                transactional = bool(getattr(context.impl, "transactional_ddl", False))
                progress.planned(kind, infos, transactional=transactional)
            return run.announce(steps, infos)

        self._steps, self._run = [], run
        try:
            self._run_env(migrate, destination_rev=revision)
        finally:
            self._run = None
        steps, self._steps = self._steps, []
        return steps

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
        """The head revision(s) of the migration folder."""
        script = self.script
        with _alembic_errors():
            return [_revision_info(script.get_revision(head)) for head in script.get_heads()]

    def history(
        self, rev_range: str | None = None, *, indicate_current: bool = False
    ) -> list[RevisionInfo]:
        """The migrations, newest first; *rev_range* ``START:END`` (either side may be empty,
        ``current`` means the database's revision) limits them.  *indicate_current* (which
        reads the database) fills :attr:`RevisionInfo.is_current`."""
        start, end = "base", "heads"
        if rev_range is not None:
            text = rev_range.strip()
            if text.count(":") != 1:
                raise MigrationError(
                    f"history range {rev_range!r}: expected START:END, START: or :END "
                    "(e.g. base:head, a1b2:, :current)"
                )
            start, _, end = text.partition(":")
            start, end = start.strip() or "base", end.strip() or "heads"
        current: tuple[str, ...] | None = None
        if indicate_current or "current" in (start, end):
            current = self.current()
        lower: str | tuple[str, ...] = start
        upper: str | tuple[str, ...] = end
        if start == "current":
            lower = current or "base"
        if end == "current":
            if not current:
                return []
            upper = current
        script = self.script
        with _alembic_errors():
            return [
                _revision_info(rev, current=current if indicate_current else None)
                for rev in script.walk_revisions(base=lower, head=upper)  # type: ignore[arg-type]
            ]

    def show(self, revision: str) -> list[RevisionInfo]:
        """The migration(s) *revision* names: an id (or a unique prefix), ``head``, ``heads``,
        a branch label, or ``current`` (reads the database; empty when nothing is applied)."""
        wanted: str | tuple[str, ...] = revision.strip()
        current: tuple[str, ...] | None = None
        if wanted == "current":
            current = self.current()
            if not current:
                return []
            wanted = current
        script = self.script
        with _alembic_errors():
            found = [rev for rev in script.get_revisions(wanted) if rev is not None]
        if not found:
            raise MigrationError(f"no migration is named {revision!r}")
        return [_revision_info(rev, current=current) for rev in found]

    # ---------------------------------------------------------------- merging branches

    def merge(
        self,
        revisions: str | Sequence[str] = "heads",
        *,
        message: str | None = None,
        rev_id: str | None = None,
    ) -> RevisionResult:
        """Write a migration that merges *revisions* (default: every head) into one head.

        Raises :class:`MigrationError` when they resolve to fewer than two revisions (nothing to
        merge) and writes nothing then.
        """
        from alembic import command

        script = self.script
        wanted = (revisions,) if isinstance(revisions, str) else tuple(revisions)
        with _alembic_errors():
            parents = tuple(
                dict.fromkeys(rev.revision for rev in script.get_revisions(wanted) if rev)
            )
        if len(parents) < 2:
            if wanted == ("heads",):
                heads = ", ".join(script.get_heads()) or "none"
                raise MigrationError(
                    f"nothing to merge: the migration folder has a single head ({heads})"
                )
            raise MigrationError(
                f"nothing to merge: {', '.join(wanted)} names {len(parents)} revision(s); "
                "a merge needs two or more"
            )
        with _alembic_errors():
            written = command.merge(
                self.config,
                list(parents),
                message=message or f"merge {', '.join(parents)}",
                rev_id=rev_id,
            )
        if written is None:  # pragma: no cover - Alembic writes a merge or raises
            raise MigrationError("the merge revision was not written")
        return RevisionResult(
            written.revision,
            Path(written.path),
            (),
            parents=tuple(written._versioned_down_revisions),
        )

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
