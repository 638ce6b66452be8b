"""Keyset cursors: opaque, signed, bound to the ordering they were made for.

A cursor is ``base64url(payload) "." base64url(mac)`` where the payload is compact JSON holding a
fingerprint of the ordering (model, fields, directions) and the values of the last row, and the
MAC is HMAC-SHA256 (truncated to 128 bits) over the payload with a secret.  A cursor that was
edited, truncated, signed with another secret or made for another ordering raises
:class:`~repom.exceptions.InvalidCursorError`; nothing is queried with its values.

Cursors are *signed, not encrypted*: a client can base64-decode one and read the values of the
ordering columns of the last row it already received.  Do not order by a column the client must
not see.

The secret comes from (first found): the ``cursor_secret`` argument of the repository, its
``cursor_secret`` class attribute, or :attr:`RepomConfig.cursor_secret
<repom.config.RepomConfig.cursor_secret>` (``REPOM_CURSOR_SECRET`` in the environment or
``.env``, or a ``CONFIG_HOOK``).  Without any, ``environment=dev``/``test`` use a random
per-process secret (cursors are then rejected by other worker processes and after a restart);
``environment=production`` refuses with :class:`~repom.exceptions.ConfigurationError` -- a
service with several workers must share one secret.

Errors name the parameter the cursor came from: ``after`` (the repository argument) unless the
value is a :class:`CursorToken` that says otherwise -- ``repom.fastapi.cursor_params`` hands out
its ``cursor`` query parameter as one, so an HTTP client reads ``field: "cursor"``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import decimal
import enum
import hashlib
import hmac
import json
import secrets
import threading
import uuid
from collections.abc import Sequence
from typing import Any

from repom.config import get_config
from repom.exceptions import ConfigurationError, InvalidCursorError

__all__ = ["CursorCodec", "CursorToken", "cursor_secret", "order_fingerprint"]

MAX_CURSOR_LENGTH = 4096
_MAC_BYTES = 16

_process_secret: bytes | None = None
_secret_lock = threading.Lock()


class CursorToken(str):
    """A cursor string that remembers the request parameter it was given as
    (``CursorToken(value, parameter="cursor")``), so that an invalid cursor is reported under
    that name rather than ``after``.  Otherwise an ordinary ``str``."""

    parameter: str

    def __new__(cls, value: str, parameter: str = "after") -> CursorToken:
        token = super().__new__(cls, value)
        token.parameter = parameter
        return token


def _parameter(token: Any) -> str:
    name = getattr(token, "parameter", None)
    return name if isinstance(name, str) and name else "after"


def cursor_secret(explicit: str | bytes | None = None) -> bytes:
    """The signing secret in effect (see the module docstring for the order of lookup)."""
    global _process_secret
    if explicit:
        return explicit.encode() if isinstance(explicit, str) else bytes(explicit)
    config = get_config()
    if config.cursor_secret is not None and config.cursor_secret.get_secret_value():
        return config.cursor_secret.get_secret_value().encode()
    if config.environment == "production":
        raise ConfigurationError(
            "no cursor secret: set REPOM_CURSOR_SECRET (environment, .env or CONFIG_HOOK) in "
            "production, so that every worker process signs keyset cursors with the same one",
            variable="REPOM_CURSOR_SECRET",
        )
    if _process_secret is None:
        with _secret_lock:
            if _process_secret is None:
                _process_secret = secrets.token_bytes(32)
    return _process_secret


def order_fingerprint(model_name: str, order: Sequence[tuple[str, bool]]) -> str:
    """A short digest of the ordering a cursor belongs to."""
    spec = model_name + "|" + ",".join(f"{'-' if desc else ''}{key}" for key, desc in order)
    return hashlib.sha256(spec.encode()).hexdigest()[:12]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _encode_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return ["f", repr(value)]
        return value
    if isinstance(value, enum.Enum):
        return ["e", value.name]
    if isinstance(value, dt.datetime):
        return ["dt", value.isoformat()]
    if isinstance(value, dt.date):
        return ["d", value.isoformat()]
    if isinstance(value, dt.time):
        return ["t", value.isoformat()]
    if isinstance(value, uuid.UUID):
        return ["u", value.hex]
    if isinstance(value, decimal.Decimal):
        return ["n", str(value)]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return ["b", _b64(bytes(value))]
    if isinstance(value, dt.timedelta):
        return ["td", value.total_seconds()]
    raise InvalidCursorError(
        f"cannot put a {type(value).__name__} value into a keyset cursor "
        "(order by columns of simple types)"
    )


def _decode_value(raw: Any, enum_class: type[enum.Enum] | None) -> Any:
    if not isinstance(raw, list):
        return raw
    tag, text = raw
    if tag == "e":
        if enum_class is None:
            return text
        return enum_class[text]
    if tag == "dt":
        return dt.datetime.fromisoformat(text)
    if tag == "d":
        return dt.date.fromisoformat(text)
    if tag == "t":
        return dt.time.fromisoformat(text)
    if tag == "u":
        return uuid.UUID(hex=text)
    if tag == "n":
        return decimal.Decimal(text)
    if tag == "b":
        return _unb64(text)
    if tag == "f":
        return float(text)
    if tag == "td":
        return dt.timedelta(seconds=float(text))
    raise ValueError(f"unknown tag {tag!r}")


class CursorCodec:
    """Encode and verify cursors for one ordering."""

    __slots__ = ("_enum_classes", "_fingerprint", "_secret", "_size")

    def __init__(
        self,
        model_name: str,
        order: Sequence[tuple[str, bool]],
        secret: bytes,
        enum_classes: Sequence[type[enum.Enum] | None] | None = None,
    ) -> None:
        self._fingerprint = order_fingerprint(model_name, order)
        self._secret = secret
        self._size = len(order)
        self._enum_classes = list(enum_classes or [None] * len(order))

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, values: Sequence[Any]) -> str:
        body = [self._fingerprint, [_encode_value(v) for v in values]]
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode("ascii")
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def decode(self, token: Any) -> list[Any]:
        name = _parameter(token)

        def invalid(problem: str) -> InvalidCursorError:
            return InvalidCursorError(f"invalid cursor ({name!r}): {problem}", field=name)

        if not isinstance(token, str) or not token:
            raise invalid("expected a non-empty string")
        if len(token) > MAX_CURSOR_LENGTH:
            raise invalid("too long")
        body_text, sep, mac_text = token.partition(".")
        try:
            if not sep:
                raise ValueError("no signature")
            payload = _unb64(body_text)
            mac = _unb64(mac_text)
        except (ValueError, binascii.Error):
            raise invalid("malformed") from None
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise invalid("signature mismatch (tampered, truncated or signed with another secret)")
        try:
            fingerprint, raw_values = json.loads(payload)
        except (ValueError, TypeError):
            raise invalid("malformed payload") from None
        if fingerprint != self._fingerprint:
            raise invalid(f"it was made for a different ordering; start again without {name!r}")
        if not isinstance(raw_values, list) or len(raw_values) != self._size:
            raise invalid("wrong number of values")
        try:
            return [
                _decode_value(raw, enum_cls)
                for raw, enum_cls in zip(raw_values, self._enum_classes, strict=True)
            ]
        except (ValueError, TypeError, KeyError):
            raise invalid("bad value") from None
