"""Finding raw transaction control (``COMMIT``, ``ROLLBACK``, ``BEGIN``, ...) in SQL text.

Used by the isolation of :mod:`repom.testing`: a test runs inside one outer transaction, and a
literal ``COMMIT`` sent by the code under test would end it.  :func:`transaction_control` tells
whether a SQL string contains such a statement.  It is called for every statement sent on a
test's connection, so the common case (a compiled ``SELECT``/``INSERT``/... without ``;``) is
decided by two string operations; only text that starts with a suspect word or a comment, or that
holds a ``;`` (several statements: psycopg's simple query protocol runs them all), is tokenized.

The tokenizer knows quotes (``'...'``, ``E'...'``, ``"..."``, backticks, ``$tag$...$tag$``) and
comments, so a ``COMMIT`` inside a string, a comment or a function body is not a statement; and
it counts ``BEGIN``/``CASE`` ... ``END`` blocks, so the ``;`` inside a SQLite trigger or a
``BEGIN ATOMIC`` body does not end the statement.  Anything it cannot parse is left to the
server: unterminated quotes run to the end of the text (the server rejects the whole string).
"""

from __future__ import annotations

import re

__all__ = ["transaction_control"]

# first character -> first word of a statement that may end or start a transaction (or a comment)
_SUSPECT = {
    first: word
    for word in ("commit", "end", "rollback", "abort", "begin", "start", "prepare", "--", "/*")
    for first in {word[0], word[0].upper()}
}

_TOKEN = re.compile(
    r"""
      (?P<skip> \s+ | --[^\n]* | /\*.*?(?:\*/|\Z) )
    | (?P<quoted>
          [eE]'(?:[^'\\]|\\.|'')*(?:'|\Z)
        | '(?:[^']|'')*(?:'|\Z)
        | "(?:[^"]|"")*(?:"|\Z)
        | `[^`]*(?:`|\Z)
        | \$(?P<tag>(?:[A-Za-z_][A-Za-z0-9_]*)?)\$.*?(?:\$(?P=tag)\$|\Z)
      )
    | (?P<word> [A-Za-z_][A-Za-z0-9_$]* )
    | (?P<semi> ; )
    | (?P<other> . )
    """,
    re.S | re.X,
)

# CREATE TRIGGER / FUNCTION / PROCEDURE bodies are BEGIN ... END blocks (a column may be called
# "begin" elsewhere); CASE ... END is counted everywhere ...
_ROUTINES = frozenset({"trigger", "function", "procedure"})
# ... and the MySQL "END IF" family, whose opener is not counted
_END_SUFFIXES = frozenset({"if", "loop", "while", "repeat"})
_HEAD = 3  # leading tokens of a statement that decide what it is


def _judge(head: list[str]) -> str | None:
    """``"COMMIT"`` etc. when the statement starting with *head* ends or starts a transaction."""
    if not head:
        return None
    first = head[0]
    rest = head[1:]
    if first in ("commit", "end", "abort", "begin"):
        return first.upper()
    if first == "rollback":
        # ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name only rewinds to a savepoint
        return None if "to" in rest else "ROLLBACK"
    if first == "start" and rest[:1] == ["transaction"]:
        return "START TRANSACTION"
    if first == "prepare" and rest[:1] == ["transaction"]:
        return "PREPARE TRANSACTION"  # ends the transaction by handing it to two-phase commit
    return None


def _scan(sql: str) -> str | None:
    head: list[str] = []
    depth = 0
    after_end = False
    routine = False
    for match in _TOKEN.finditer(sql):
        kind = match.lastgroup
        if kind == "skip":
            continue
        token = match.group().lower()
        if kind == "semi" and depth == 0:
            found = _judge(head)
            if found:
                return found
            head = []
            after_end = routine = False
            continue
        if kind == "word":
            if after_end:
                after_end = False
                if token == "case":
                    continue  # END CASE closed the CASE counted below
                if token in _END_SUFFIXES:
                    depth += 1  # END IF / END LOOP: undo the decrement, nothing was opened
                    continue
            if head:  # a leading BEGIN is the transaction statement, not a block
                if token == "case" or (token == "begin" and routine):
                    depth += 1
                elif token in _ROUTINES and head[0] == "create":
                    routine = True
                elif token == "end" and depth > 0:
                    depth -= 1
                    after_end = True
        else:
            after_end = False
        if len(head) < _HEAD:
            head.append(token if kind == "word" else "?")
    return _judge(head)


def transaction_control(sql: str) -> str | None:
    """The transaction-control statement in *sql* (``"COMMIT"``, ``"ROLLBACK"``, ``"END"``,
    ``"ABORT"``, ``"BEGIN"``, ``"START TRANSACTION"``, ``"PREPARE TRANSACTION"``), or ``None``.

    Savepoint statements (``SAVEPOINT``, ``RELEASE [SAVEPOINT]``, ``ROLLBACK TO [SAVEPOINT]``) and
    ``SET TRANSACTION`` are not transaction control here: they leave the transaction running.
    """
    text = sql.lstrip()
    if ";" not in text:
        word = _SUSPECT.get(text[:1])
        if word is None or text[: len(word)].lower() != word:
            return None
    return _scan(text)
