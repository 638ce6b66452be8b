"""``repom db ...``: migrations (Alembic) and development databases."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Annotated

import typer

from repom.cli._output import (
    RepomCommand,
    RepomGroup,
    confirm,
    console,
    describe_error,
    escape,
    interactive,
    print_error,
    remember_url,
    state,
)

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from repom.migrations.commands import AppliedStep, Migrations, RevisionInfo, StepKind

db_app = typer.Typer(
    name="db",
    cls=RepomGroup,
    help="Migrations (Alembic) and development databases.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
command = db_app.command

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Database URL. Default: repom's configuration (DATABASE_URL / REPOM_DATABASE_URL, "
        ".env, CONFIG_HOOK).",
        show_default=False,
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="The project's alembic.ini. Default: ./alembic.ini (or ALEMBIC_CONFIG).",
        show_default=False,
    ),
]
ModelsOption = Annotated[
    str | None,
    typer.Option(
        "--models",
        help="Models module(s), comma separated; packages are imported with all submodules. "
        "Default: \\[repom] models in alembic.ini, REPOM_MODELS, \\[tool.repom] in pyproject.toml.",
        show_default=False,
    ),
]
MetadataOption = Annotated[
    str | None,
    typer.Option(
        "--metadata",
        help="Where the MetaData is, e.g. 'app.models:Base.metadata' (default: found on its own).",
        show_default=False,
    ),
]
YesOption = Annotated[
    bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.", show_default=False)
]


@db_app.callback()
def db(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="The project's alembic.ini for the command that follows, e.g. "
            "[bold]repom db -c audit.ini upgrade[/] for a second database's project "
            "(a command's own --config wins).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Migrations (Alembic) and development databases."""
    state.config = config


def _config_file(config: Path | None) -> Path | None:
    return config if config is not None else state.config


def _migrations(
    url: str | None, config: Path | None, models: str | None, metadata: str | None
) -> Migrations:
    from repom.migrations.commands import Migrations
    from repom.urls import validate_url

    if url is not None:
        validate_url(url)
        remember_url(url)
    else:
        from repom.config import get_config

        remember_url(get_config().url)
    migrations = Migrations(
        config_file=_config_file(config), url=url, models=models, metadata=metadata
    )
    if url is None and migrations.settings.url:
        remember_url(migrations.settings.url)  # the project's url_env
    return migrations


def _shown_path(path: Path) -> str:
    cwd = Path.cwd()
    path = path.resolve()
    return str(path.relative_to(cwd) if path.is_relative_to(cwd) else path)


def _rev(revisions: Sequence[str]) -> str:
    return ", ".join(revisions) if revisions else "base"


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(seconds, 60)
    return f"{minutes:.0f} min {rest:.0f} s"


def _step_line(step: AppliedStep, number: int | None = None, total: int | None = None) -> str:
    counter = f"[dim]\\[{number:>{len(str(total))}}/{total}][/] " if number and total else ""
    message = f": {escape(step.message)}" if step.message else ""
    took = f" [dim]({_duration(step.seconds)})[/]" if step.seconds is not None else ""
    arrow = f"{_rev(step.source)} -> [bold]{_rev(step.destination)}[/]"
    return f"{counter}{step.kind.capitalize()} {arrow}{message}{took}"


def _print_steps(steps: list[AppliedStep], *, verb: str) -> None:
    for step in steps:
        console.print(_step_line(step))
    _print_outcome(steps, verb=verb)


def _print_outcome(steps: list[AppliedStep], *, verb: str) -> None:
    if not steps:
        console.print(f"Nothing to {verb}.")
    else:
        last = steps[-1]
        console.print(f"[green]Database at {_rev(last.heads or last.destination)}.[/]")


class _StepReporter:
    """Shows an upgrade/downgrade as it runs: one line per migration when it is done (with its
    time) and, on a terminal, a progress bar naming the migration running now."""

    def __init__(self) -> None:
        self.kind: StepKind = "upgrade"
        self.total = 0
        self.done = 0
        self.transactional = True
        self.progress: Progress | None = None
        self.task: TaskID | None = None

    # MigrationProgress
    def planned(
        self, kind: StepKind, revisions: Sequence[RevisionInfo], *, transactional: bool
    ) -> None:
        self.kind, self.total, self.transactional = kind, len(revisions), transactional
        if self.total and console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self.progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            )
            self.task = self.progress.add_task(kind.capitalize(), total=self.total)
            self.progress.start()

    def starting(self, revision: RevisionInfo, number: int, total: int) -> None:
        if self.progress is not None and self.task is not None:
            message = f": {escape(revision.message)}" if revision.message else ""
            verb = "Undoing" if self.kind == "downgrade" else "Applying"
            description = f"{verb} [bold]{revision.revision}[/]{message}"
            self.progress.update(self.task, description=description)

    def applied(self, step: AppliedStep, number: int, total: int) -> None:
        self.done = number
        console.print(_step_line(step, number if total > 1 else None, total))
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task)

    # context manager: stop the bar; say what a failure leaves behind
    def __enter__(self) -> _StepReporter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.progress is not None:
            self.progress.stop()
        if exc is None or not self.done:
            return
        if self.transactional:
            console.print(
                f"[yellow]Rolled back: the {self.done} step(s) above ran in the failed run's "
                "transaction; the database is as it was before.[/]"
            )
        else:
            console.print(
                f"[yellow]Stopped after {self.done} step(s): this database has no "
                "transactional DDL, so they may stay applied (see 'repom db current').[/]"
            )


# --------------------------------------------------------------------------- writing migrations


@command(cls=RepomCommand)
def init(
    directory: Annotated[
        str, typer.Argument(help="Migration folder to create (relative to the working directory).")
    ] = "migrations",
    models: ModelsOption = None,
    metadata: MetadataOption = None,
    use_async: Annotated[
        bool,
        typer.Option(
            "--async", help="Write the async env.py (migrations through an async engine)."
        ),
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Configuration file to write. Default: alembic.ini.",
            show_default=False,
        ),
    ] = None,
    url_env: Annotated[
        str,
        typer.Option(
            "--url-env",
            help="Environment variable holding the URL of the database this project migrates "
            "(recorded in the configuration file; e.g. AUDIT_DATABASE_URL for a second database).",
        ),
    ] = "DATABASE_URL",
) -> None:
    """Write alembic.ini and the migration folder (env.py, script.py.mako, versions/)."""
    from repom.migrations.commands import init_project

    config_file = _config_file(config) or Path("alembic.ini")
    written = init_project(
        directory,
        config_file=config_file,
        models=models,
        metadata=metadata,
        use_async=use_async,
        url_env=url_env,
    )
    for path in written:
        console.print(f"Created {escape(_shown_path(path))}")
    flavour = "async" if use_async else "sync"
    console.print(f"[green]Migration folder ready ({flavour} env.py).[/]")
    if not models:
        console.print(
            "Next: set [bold]models = app.models[/] under "
            f"{escape('[repom]')} in {escape(config_file.name)}, then "
            '[bold]repom db revision -m "initial" --autogenerate[/].'
        )
    else:
        console.print('Next: [bold]repom db revision -m "initial" --autogenerate[/].')


@command(cls=RepomCommand)
def revision(
    message: Annotated[str, typer.Option("--message", "-m", help="What the migration does.")],
    autogenerate: Annotated[
        bool,
        typer.Option(
            "--autogenerate", "--autogen", help="Write the operations from the model changes."
        ),
    ] = False,
    allow_empty: Annotated[
        bool,
        typer.Option("--allow-empty", help="Write an autogenerated revision even with no changes."),
    ] = False,
    rev_id: Annotated[
        str | None, typer.Option("--rev-id", help="Revision id to use instead of a generated one.")
    ] = None,
    head: Annotated[str, typer.Option("--head", help="Parent revision.")] = "head",
    url: UrlOption = None,
    models: ModelsOption = None,
    metadata: MetadataOption = None,
    config: ConfigOption = None,
) -> None:
    """Write a new migration (with --autogenerate: from the differences between models and DB)."""
    result = _migrations(url, config, models, metadata).revision(
        message, autogenerate=autogenerate, allow_empty=allow_empty, rev_id=rev_id, head=head
    )
    if result.revision is None or result.path is None:
        console.print(
            "No changes detected: models and database agree; no revision written "
            "(--allow-empty writes one anyway)."
        )
        return
    shown = _shown_path(result.path)
    console.print(f"[green]Created revision [bold]{result.revision}[/]:[/] {escape(shown)}")
    for operation in result.operations:
        console.print(f"  {escape(operation)}")


@command(cls=RepomCommand)
def merge(
    revisions: Annotated[
        list[str] | None,
        typer.Argument(
            help="Revisions to merge (two or more). Default: every head.", metavar="REVISION"
        ),
    ] = None,
    message: Annotated[
        str | None,
        typer.Option("--message", "-m", help="What the merge is. Default: 'merge A, B'."),
    ] = None,
    rev_id: Annotated[
        str | None, typer.Option("--rev-id", help="Revision id to use instead of a generated one.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Write a migration that joins branches (several heads) into one head."""
    from repom.migrations.commands import Migrations

    migrations = Migrations(config_file=_config_file(config))
    result = migrations.merge(revisions or "heads", message=message, rev_id=rev_id)
    assert result.path is not None
    console.print(
        f"[green]Created merge revision [bold]{result.revision}[/]:[/] "
        f"{escape(_shown_path(result.path))}"
    )
    console.print(f"  merges {escape(', '.join(result.parents))}")
    console.print("Next: [bold]repom db upgrade[/].")


# --------------------------------------------------------------------------- running migrations


@command(cls=RepomCommand)
def upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    sql: Annotated[
        bool, typer.Option("--sql", help="Print the SQL instead of running it.")
    ] = False,
    url: UrlOption = None,
    models: ModelsOption = None,
    metadata: MetadataOption = None,
    config: ConfigOption = None,
) -> None:
    """Apply migrations up to REVISION (default: head), in one transaction where possible.

    Each migration is reported as it completes, with its time (a progress bar on a terminal).
    """
    migrations = _migrations(url, config, models, metadata)
    if sql:
        migrations.upgrade(revision, sql=True)
        return
    with _StepReporter() as reporter:
        steps = migrations.upgrade(revision, progress=reporter)
    _print_outcome(steps, verb="upgrade: the database is already there")


# `repom db downgrade -2`: a relative target is an argument, not an unknown option
@command(cls=RepomCommand, context_settings={"ignore_unknown_options": True})
def downgrade(
    revision: Annotated[
        str, typer.Argument(help="Target revision: an id, -N (relative) or base.")
    ] = "-1",
    sql: Annotated[
        bool,
        typer.Option("--sql", help="Print the SQL instead of running it (REVISION: FROM:TO)."),
    ] = False,
    yes: YesOption = False,
    url: UrlOption = None,
    models: ModelsOption = None,
    metadata: MetadataOption = None,
    config: ConfigOption = None,
) -> None:
    """Undo migrations down to REVISION (default: -1, the last one).

    In environment=production it lists what would be undone and asks first; without a
    terminal it refuses unless --yes is given.
    """
    from repom.config import get_config

    if revision.startswith("-") and not revision[1:].isdigit():
        raise typer.BadParameter(f"no such option: {revision}", param_hint="REVISION")
    migrations = _migrations(url, config, models, metadata)
    if sql:
        migrations.downgrade(revision, sql=True)
        return
    expect: list[str] | None = None
    if get_config().environment == "production" and not yes:
        refusal = (
            f"refusing to downgrade {state.target or 'the database'} in environment=production "
            "without confirmation"
        )
        if not interactive():
            confirm("", yes=False, refusal=refusal)  # raises, naming --yes
        plan = migrations.plan(revision, kind="downgrade")
        if not plan:
            console.print("Nothing to downgrade.")
            return
        console.print(
            f"[bold red]environment=production[/]: this undoes {len(plan)} migration(s) on "
            f"{escape(state.target or 'the database')}:"
        )
        for info in plan:
            message = f": {escape(info.message)}" if info.message else ""
            console.print(f"  [bold]{info.revision}[/]{message}")
        confirm("Downgrade?", yes=False, refusal=refusal)
        expect = [info.revision for info in plan]
    with _StepReporter() as reporter:
        steps = migrations.downgrade(revision, progress=reporter, expect=expect)
    _print_outcome(steps, verb="downgrade")


@command(cls=RepomCommand)
def stamp(
    revision: Annotated[str, typer.Argument(help="Revision to record (id, head or base).")],
    purge: Annotated[
        bool, typer.Option("--purge", help="Empty the version table before stamping.")
    ] = False,
    url: UrlOption = None,
    models: ModelsOption = None,
    metadata: MetadataOption = None,
    config: ConfigOption = None,
) -> None:
    """Record REVISION as applied without running any migration."""
    steps = _migrations(url, config, models, metadata).stamp(revision, purge=purge)
    _print_steps(steps, verb="stamp")


# --------------------------------------------------------------------------- inspecting


@command(cls=RepomCommand)
def current(
    url: UrlOption = None,
    models: ModelsOption = None,
    metadata: MetadataOption = None,
    config: Annotated[
        list[Path] | None,
        typer.Option(
            "--config",
            "-c",
            help="The project's alembic.ini; repeat it for several projects (one per database). "
            "Default: ./alembic.ini (or ALEMBIC_CONFIG).",
            metavar="<path>",
            show_default=False,
        ),
    ] = None,
    all_projects: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Every Alembic configuration (*.ini) in the working directory: one line per "
            "database.",
        ),
    ] = False,
) -> None:
    """Show the revision the database is at (each database's, with several projects)."""
    files: list[Path | None] = list(config or [])
    if all_projects:
        from repom.migrations.errors import NoMigrationFolderError
        from repom.migrations.project import find_projects

        found = [path for path in find_projects() if path not in [f and f.resolve() for f in files]]
        files.extend(found)
        if not files:
            raise NoMigrationFolderError(
                f"no migration folder: no Alembic configuration (*.ini with script_location) "
                f"in {Path.cwd()} (run 'repom db init')"
            )
    if not files:
        files = [state.config]
    if len(files) == 1:
        migrations = _migrations(url, files[0], models, metadata)
        _print_current(migrations, indent="")
        return
    if url is not None:
        raise typer.BadParameter(
            "--url names one database; with several projects each uses its own (url_env)",
            param_hint="--url",
        )
    failed = 0
    for file in files:
        label = escape(_shown_path(file) if file is not None else "alembic.ini")
        try:
            migrations = _migrations(None, file, models, metadata)
            console.print(f"[bold]{label}[/] [dim]({escape(state.target or '?')})[/]")
            _print_current(migrations, indent="  ")
        except Exception as exc:
            if state.debug:
                raise
            failed += 1
            message = describe_error(exc)
            name = _shown_path(file) if file is not None else "alembic.ini"
            print_error(message if message.startswith(f"{name} ") else f"{name}: {message}")
    if failed:
        raise typer.Exit(1)


def _print_current(migrations: Migrations, *, indent: str) -> None:
    revisions = migrations.current()
    heads = {info.revision for info in migrations.heads()}
    if not revisions:
        console.print(f"{indent}No revision applied (base).")
        return
    for rev in revisions:
        marker = " (head)" if rev in heads else " (not at head)"
        console.print(f"{indent}[bold]{rev}[/]{marker}")


def _flags(info: RevisionInfo) -> str:
    flags = [
        flag
        for flag, on in (
            ("head", info.is_head),
            ("current", bool(info.is_current)),
            ("branchpoint", info.is_branch_point),
            ("mergepoint", info.is_merge_point),
        )
        if on
    ]
    return f" ({', '.join(flags)})" if flags else ""


def _print_revisions(revisions: list[RevisionInfo], *, verbose: bool = False) -> None:
    for number, info in enumerate(revisions):
        if verbose:
            if number:
                console.print()
            _print_revision(info)
            continue
        labels = f" \\[{escape(', '.join(info.branch_labels))}]" if info.branch_labels else ""
        message = f": {escape(info.message)}" if info.message else ""
        console.print(
            f"{_rev(info.down_revisions)} -> [bold]{info.revision}[/]{labels}{_flags(info)}"
            f"{message}"
        )


def _field(label: str, value: str) -> None:
    console.print(f"[dim]{label + ':':<16}[/]{escape(value)}")


def _print_revision(info: RevisionInfo) -> None:
    """Everything about one migration (``db show``, ``db history --verbose``)."""
    console.print(f"[bold]{info.revision}[/]{_flags(info)}")
    _field("Merges" if info.is_merge_point else "Parent", _rev(info.down_revisions))
    if info.dependencies:
        _field("Also depends on", ", ".join(info.dependencies))
    if info.is_branch_point:
        _field("Branches into", ", ".join(info.next_revisions))
    if info.branch_labels:
        _field("Branch names", ", ".join(info.branch_labels))
    _field("Path", _shown_path(info.path))
    for line in (info.doc or info.message).splitlines():
        console.print(f"    {escape(line)}" if line.strip() else "")


@command(cls=RepomCommand)
def heads(
    config: ConfigOption = None,
) -> None:
    """Show the head revision(s) of the migration folder (more than one: run db merge)."""
    from repom.migrations.commands import Migrations

    revisions = Migrations(config_file=_config_file(config)).heads()
    if not revisions:
        console.print("No revisions yet.")
    _print_revisions(revisions)


@command(cls=RepomCommand)
def history(
    rev_range: Annotated[
        str | None,
        typer.Option(
            "--rev-range",
            "-r",
            help="START:END (either may be empty; 'current' is the database's revision), "
            "e.g. a1b2:, :current, base:head.",
            show_default=False,
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Everything about each migration.")
    ] = False,
    indicate_current: Annotated[
        bool,
        typer.Option(
            "--indicate-current", "-i", help="Mark the database's revision (connects to it)."
        ),
    ] = False,
    url: UrlOption = None,
    models: ModelsOption = None,
    metadata: MetadataOption = None,
    config: ConfigOption = None,
) -> None:
    """List the migrations, newest first."""
    from repom.migrations.commands import Migrations

    reads_database = indicate_current or "current" in (rev_range or "")
    if reads_database:
        migrations = _migrations(url, config, models, metadata)
    else:
        migrations = Migrations(config_file=_config_file(config))
    revisions = migrations.history(rev_range, indicate_current=indicate_current)
    if not revisions:
        console.print("No revisions yet." if rev_range is None else "No revisions in that range.")
    _print_revisions(revisions, verbose=verbose)


@command(cls=RepomCommand)
def show(
    revision: Annotated[
        str,
        typer.Argument(help="A revision id (or unique prefix), head, heads or current."),
    ],
    url: UrlOption = None,
    models: ModelsOption = None,
    metadata: MetadataOption = None,
    config: ConfigOption = None,
) -> None:
    """Show one migration: parents, branches, file and its full description."""
    from repom.migrations.commands import Migrations

    if revision.strip() == "current":
        migrations = _migrations(url, config, models, metadata)
    else:
        migrations = Migrations(config_file=_config_file(config))
    revisions = migrations.show(revision)
    if not revisions:
        console.print("No revision applied (base).")
    _print_revisions(revisions, verbose=True)


@command(cls=RepomCommand)
def check(
    url: UrlOption = None,
    models: ModelsOption = None,
    metadata: MetadataOption = None,
    config: ConfigOption = None,
) -> None:
    """Compare the models with the database; exit code 1 when they differ (for CI)."""
    migrations = _migrations(url, config, models, metadata)
    differences = migrations.check()
    if differences:
        console.print("[bold red]Models and database differ[/] (write a migration):")
        for line in differences:
            console.print(f"  {escape(line)}")
        raise typer.Exit(1)
    console.print("[green]Models and database agree.[/]")


# --------------------------------------------------------------------------- the database itself


@command(cls=RepomCommand)
def create(
    url: UrlOption = None,
) -> None:
    """Create the database itself (SQLite file or PostgreSQL database), if it does not exist."""
    from repom.migrations.admin import create_database
    from repom.urls import mask_url

    target = _target_url(url)
    created = create_database(target)
    outcome = "Created" if created else "Already exists:"
    console.print(f"{outcome} {escape(mask_url(target))}")


@command(cls=RepomCommand)
def drop(
    url: UrlOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="Allow dropping in environment=production.")
    ] = False,
    yes: YesOption = False,
) -> None:
    """Drop the database itself (development). Refused in environment=production without --force.

    Asks first; without a terminal it refuses unless --yes is given.
    """
    from repom.migrations.admin import drop_database, ensure_drop_allowed
    from repom.urls import mask_url

    target = _target_url(url)
    ensure_drop_allowed(target, force=force)
    shown = mask_url(target)
    confirm(
        f"Drop database {shown} and all its data?",
        yes=yes,
        refusal=f"refusing to drop {shown} without confirmation",
    )
    dropped = drop_database(target, force=force)
    outcome = "Dropped" if dropped else "Does not exist:"
    console.print(f"{outcome} {escape(shown)}")


def _target_url(url: str | None) -> str:
    from repom.urls import validate_url

    if url is None:
        from repom.config import get_config

        url = get_config().url
    validate_url(url)
    remember_url(url)
    return url
