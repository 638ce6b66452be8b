"""Database URL helpers: sync/async driver conversion, validation and masking for logs."""

from __future__ import annotations

import re
from urllib.parse import quote

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from repom.exceptions import ConfigurationError

__all__ = [
    "backend_name",
    "convert_to_async_uri",
    "convert_to_sync_uri",
    "is_async_url",
    "is_memory_sqlite",
    "mask_url",
    "normalize_multihost",
    "normalize_scheme",
    "url_secrets",
    "validate_url",
]

# scheme (``backend+driver``) -> async scheme
_TO_ASYNC = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+pysqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgresql+psycopg": "postgresql+asyncpg",
    "postgresql+psycopg2": "postgresql+asyncpg",
    "postgresql+pg8000": "postgresql+asyncpg",
    "mysql": "mysql+aiomysql",
    "mysql+pymysql": "mysql+aiomysql",
    "mysql+mysqldb": "mysql+aiomysql",
    "mariadb": "mariadb+aiomysql",
    "mariadb+pymysql": "mariadb+aiomysql",
}
_ASYNC = {
    "sqlite+aiosqlite",
    "postgresql+asyncpg",
    "postgresql+psycopg_async",
    "mysql+aiomysql",
    "mysql+asyncmy",
    "mariadb+aiomysql",
    "mariadb+asyncmy",
}
# async scheme -> the sync scheme repom uses
_TO_SYNC = {
    "sqlite+aiosqlite": "sqlite",
    "postgresql+asyncpg": "postgresql+psycopg",
    "postgresql+psycopg_async": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "mysql+aiomysql": "mysql+pymysql",
    "mysql+asyncmy": "mysql+pymysql",
    "mysql": "mysql+pymysql",
    "mariadb+aiomysql": "mariadb+pymysql",
    "mariadb+asyncmy": "mariadb+pymysql",
}


def normalize_scheme(url: str) -> str:
    """*url* with ``postgres`` (Heroku's and libpq's spelling, which SQLAlchemy 2 no longer
    reads) as ``postgresql``: ``postgres://`` -> ``postgresql://``, ``postgres+asyncpg://`` ->
    ``postgresql+asyncpg://``.  Everything after the scheme, and every other URL, is unchanged."""
    scheme, sep, rest = url.partition("://")
    backend, plus, driver = scheme.partition("+")
    if sep and backend.lower() == "postgres":
        return f"postgresql{plus}{driver}://{rest}"
    return url


# ``scheme://[userinfo@]hosts[/database][?query]``, read the way SQLAlchemy's own URL parser reads
# it: the user name holds no ``:``/``/``/``@``, the password runs to the next ``@``.
_AUTHORITY = re.compile(
    r"^(?P<userinfo>[^:/@?]*(?::[^@]*)?@)?(?P<hosts>[^/?]*)(?P<tail>[/?].*)?$", re.DOTALL
)
_QUERY_HOST = re.compile(r"(?:^|&)host=", re.IGNORECASE)


def normalize_multihost(url: str) -> str:
    """Rewrite libpq's comma-separated multi-host form into SQLAlchemy's query-string form.

    ``postgresql://u@h1:5432,h2:5433/db?target_session_attrs=read-write`` becomes
    ``postgresql://u@/db?host=h1:5432&host=h2:5433&target_session_attrs=read-write``: the form
    the psycopg and asyncpg dialects read (``make_url`` cannot parse the comma form: it takes
    ``5432,h2:5433`` for the port).  The hosts keep their order and their ports (a host written
    without a port keeps none; see :func:`repom.engine` for asyncpg, which needs one).  Every
    other URL, the query-string form included, is returned unchanged.  A comma form that also
    has ``host=`` in its query, or an empty host between commas, raises
    :class:`ConfigurationError` (a ``ValueError``).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    match = _AUTHORITY.match(rest)
    if match is None or "," not in match.group("hosts"):
        return url
    userinfo = match.group("userinfo") or ""
    tokens = match.group("hosts").split(",")
    if not all(tokens):
        raise ConfigurationError(
            f"empty host in multi-host database URL {mask_url(url)!r}", variable="DATABASE_URL"
        )
    path, _, query = (match.group("tail") or "").partition("?")
    if _QUERY_HOST.search(query):
        raise ConfigurationError(
            f"database URL {mask_url(url)!r} lists hosts both before the path and in 'host=': "
            "use one form",
            variable="DATABASE_URL",
        )
    # percent escapes in a host (a Unix socket directory) are kept: make_url decodes them
    hosts = "&".join(f"host={quote(token, safe=':[]%')}" for token in tokens)
    query = f"{hosts}&{query}" if query else hosts
    return f"{scheme}://{userinfo}{path or '/'}?{query}"


def _split(url: str) -> tuple[str, str]:
    if not isinstance(url, str):
        raise ValueError(f"database URL must be a string, got {type(url).__name__}")
    scheme, sep, rest = normalize_scheme(url).partition("://")
    if not sep or not scheme:
        raise ValueError(f"not a database URL (expected 'scheme://...'): {mask_url(url)!r}")
    return scheme.lower(), rest


def convert_to_async_uri(url: str) -> str:
    """Return *url* with the async driver of its database.

    ``sqlite`` -> ``sqlite+aiosqlite``; ``postgresql``/``postgresql+psycopg*`` ->
    ``postgresql+asyncpg``; ``mysql``/``mysql+pymysql`` -> ``mysql+aiomysql``.  URLs that already
    name an async driver pass through unchanged; anything else raises ``ValueError``.
    ``postgres://`` is read as ``postgresql://`` (:func:`normalize_scheme`).
    Only the scheme changes: user, password, host, database and query stay as written, except
    that a libpq multi-host URL (``h1:5432,h2:5433``) comes out in SQLAlchemy's form
    (``?host=h1:5432&host=h2:5433``, see :func:`normalize_multihost`).
    """
    scheme, rest = _split(normalize_multihost(str(url)))
    if scheme in _ASYNC:
        return f"{scheme}://{rest}"
    target = _TO_ASYNC.get(scheme)
    if target is None:
        raise ValueError(
            f"no async driver known for URL scheme {scheme!r} "
            f"(supported: {', '.join(sorted(_TO_ASYNC))})"
        )
    return f"{target}://{rest}"


def convert_to_sync_uri(url: str) -> str:
    """The inverse of :func:`convert_to_async_uri` (used for Alembic and sync engines).

    Plain ``postgresql://`` becomes ``postgresql+psycopg://`` (psycopg 3, repom's sync driver).
    A libpq multi-host URL comes out in SQLAlchemy's form (:func:`normalize_multihost`).
    """
    scheme, rest = _split(normalize_multihost(str(url)))
    target = _TO_SYNC.get(scheme, scheme)
    return f"{target}://{rest}"


def is_async_url(url: str) -> bool:
    scheme, _ = _split(str(url))
    return scheme in _ASYNC


def validate_url(url: str) -> URL:
    """Parse *url*; raise :class:`ConfigurationError` (a ``ValueError``) naming the problem.

    The message shows the URL masked, and the parser's own error is not chained (``from None``):
    it may quote the raw URL, password included.  A libpq multi-host URL
    (``postgresql://u@h1:5432,h2:5433/db``) is read in SQLAlchemy's form
    (:func:`normalize_multihost`), and ``postgres://`` as ``postgresql://``
    (:func:`normalize_scheme`).
    """
    if not isinstance(url, str):
        raise ConfigurationError(
            f"database URL must be a string, got {type(url).__name__}", variable="DATABASE_URL"
        )
    try:
        parsed = make_url(normalize_multihost(normalize_scheme(url)))
    except (ArgumentError, ValueError) as exc:
        reason = _safe_reason(exc, url)
        raise ConfigurationError(
            f"malformed database URL {mask_url(url)!r}{reason}", variable="DATABASE_URL"
        ) from None
    try:
        parsed.get_dialect()
    except Exception:
        raise ConfigurationError(
            f"unknown database dialect/driver {parsed.drivername!r} in URL {mask_url(url)!r}",
            variable="DATABASE_URL",
        ) from None
    return parsed


def _safe_reason(exc: BaseException, url: str) -> str:
    """``" (reason)"`` from a parser error, or ``""`` when the reason could hold a secret."""
    reason = " ".join(str(exc).split())
    if not reason or any(secret in reason for secret in url_secrets(url)):
        return ""
    return f" ({reason})"


def backend_name(url: str | URL) -> str:
    """``sqlite``, ``postgresql``, ``mysql`` (MariaDB included), ..."""
    backend = _parse(url).get_backend_name()
    return "mysql" if backend == "mariadb" else backend


def _parse(url: str | URL) -> URL:
    return make_url(normalize_multihost(normalize_scheme(url)) if isinstance(url, str) else url)


def is_memory_sqlite(url: str | URL) -> bool:
    parsed = _parse(url)
    if parsed.get_backend_name() != "sqlite":
        return False
    database = parsed.database or ""
    return database in ("", ":memory:") or (
        database.startswith("file:") and "mode=memory" in str(parsed.query.get("uri", database))
    )


_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&]*", re.IGNORECASE)


_LEAD = re.compile(r"[A-Za-z0-9+.\-]*[:/]*")


def _split_credentials(text: str) -> tuple[str, str, str | None, str] | None:
    """``(prefix, user, password, host_and_rest)`` read from the raw text; None without ``@``.

    ``prefix`` is ``scheme://``.  The user info ends at the *last* ``@``: a password with an
    unescaped ``@`` (which SQLAlchemy's parser would cut short, taking the rest for the host) is
    still all hidden.  Text that is not ``scheme://...`` (a typo such as ``postgresql//``) keeps
    only its leading scheme-like part; all the user info counts as secret.
    """
    if "@" not in text:
        return None
    head, _, tail = text.rpartition("@")
    scheme, sep, creds = head.partition("://")
    if sep:
        user, colon, password = creds.partition(":")
        return f"{scheme}://", user, (password if colon else None), tail
    prefix = _LEAD.match(head)
    start = prefix.end() if prefix else 0
    rest = head[start:]
    return head[:start], "", (rest or None), tail


def url_secrets(url: str | URL) -> tuple[str, ...]:
    """Every string in *url* that may be a password (user info and ``password=`` parameters)."""
    found: list[str] = []
    if isinstance(url, URL):
        if url.password:
            found.append(str(url.password))
        text = url.render_as_string(hide_password=False)
    else:
        text = str(url)
    split = _split_credentials(text)
    if split is not None and split[2]:
        found.append(split[2])
        # an unescaped "@" makes SQLAlchemy split the password: a driver error then echoes the
        # second part as the host name
        found.extend(split[2].split("@"))
    if not isinstance(url, URL):
        try:
            password = make_url(normalize_multihost(normalize_scheme(text))).password
        except Exception:
            password = None
        if password:
            found.append(str(password))
    found.extend(m.group(0).split("=", 1)[1] for m in _QUERY_PASSWORD.finditer(text))
    return tuple(dict.fromkeys(s for s in found if s))


def mask_url(url: str | URL) -> str:
    """*url* with its password replaced by ``***`` (safe for logs and error messages).

    Works on the text as written, so a URL SQLAlchemy cannot parse is masked too; a
    ``password=`` query parameter is masked as well.
    """
    text = url.render_as_string(hide_password=True) if isinstance(url, URL) else str(url)
    split = _split_credentials(text)
    if split is not None and split[2] is not None:
        prefix, user, _, tail = split
        text = f"{prefix}{user}:***@{tail}" if user else f"{prefix}***@{tail}"
    return _QUERY_PASSWORD.sub(r"\g<1>***", text)
