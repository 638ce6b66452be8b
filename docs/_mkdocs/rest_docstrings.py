"""Griffe extension: repom's Sphinx-flavoured docstrings, rendered by mkdocstrings.

repom's docstrings are written for ``help()`` and editors, in the Sphinx dialect: ``double
backticks`` (Markdown renders those already), cross-reference roles such as :class:`Database`,
literal blocks after a paragraph ending in ``::``, and ``#:`` comments documenting attributes.
griffe's Sphinx parser reads only field lists (``:param x:``), which these docstrings do not use,
so this extension translates the rest, in place, once the package is loaded:

* ``:role:`target``` (``class``, ``func``, ``meth``, ``mod``, ``attr``, ``data``, ``exc``,
  ``obj``, ``const``; with Sphinx's ``~``, ``!`` and ``title <target>`` forms) becomes a
  cross-reference.  A short name is resolved from the documented object's scope outwards (its
  members, its class, its module and what that imports).  The target is then either outside
  repom or spelled with a private name (``repom._database``): shown as code; or an object of
  repom: a link to where the reference documents it, or code when it documents it nowhere (an
  internal module); or nothing at all: a link that ``mkdocs build --strict`` rejects, so a
  reference to a renamed or removed name fails the build.
* a paragraph ending in ``::`` loses one colon (both if the ``::`` stands apart), and the
  indented block after it becomes a fenced Python code block.
* an attribute's ``#:`` comment (lines right above it, or the end of its line) becomes its
  docstring, as Sphinx's autodoc reads it.
* class members that implement another library's protocol are dropped from the reference:
  special methods (``__repr__``, ``__enter__``, ...) except ``__call__``, and the hooks
  SQLAlchemy calls on a column type (``process_bind_param``, ``impl``, ...).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(class|func|meth|mod|attr|data|exc|obj|const):`([^`]+)`")
TITLED = re.compile(r"^(?P<title>.*?)\s*<(?P<target>[^<>]+)>$")
DOC_COMMENT_END = re.compile(r"\s#:(.*)$")
SPECIAL = re.compile(r"^__\w+__$")
SHOWN_SPECIAL = {"__init__", "__call__"}
TYPE_HOOKS = {
    "cache_ok",
    "coerce_compared_value",
    "comparator_factory",
    "Comparator",
    "impl",
    "inherit_cache",
    "load_dialect_impl",
    "process_bind_param",
    "process_literal_param",
    "process_result_value",
}


def _protocol_member(name: str) -> bool:
    return (SPECIAL.match(name) is not None and name not in SHOWN_SPECIAL) or name in TYPE_HOOKS


def _is_private(path: str) -> bool:
    return any(part.startswith("_") and not part.endswith("__") for part in path.split("."))


def _resolve(obj: griffe.Object, target: str) -> str | None:
    """The full path of *target* as seen from *obj*, or None when no scope knows it."""
    if target == "repom" or target.startswith("repom."):
        return target
    head, _, rest = target.partition(".")
    try:
        path = obj.resolve(head)
    except griffe.NameResolutionError:
        return None
    return f"{path}.{rest}" if rest else path


def _exists(modules: griffe.ModulesCollection, path: str) -> bool:
    try:
        modules[path]
    except Exception:  # KeyError, or an alias that leads nowhere
        return False
    return True


def _role(obj: griffe.Object, modules: griffe.ModulesCollection, match: re.Match[str]) -> str:
    text = match.group(2).strip()
    titled = TITLED.match(text)
    if titled:
        title, target = titled.group("title"), titled.group("target").strip()
    else:
        title, target = None, text
    no_link = target.startswith("!")
    target = target.lstrip("!")
    if target.startswith("~"):
        target = target[1:]
        title = title or target.rsplit(".", 1)[-1]
    title = title or target
    code = f"`{title}`"
    if no_link or _is_private(target):
        return code
    path = _resolve(obj, target)
    if path is None:
        head = target.split(".", 1)[0]
        if "." in target and head.islower():
            return code  # a full path into another package: sqlalchemy.exc.TimeoutError
        # a name no scope knows: a broken reference, which fails the strict build when shown
        return f"[{code}][{target}]"
    if not (path == "repom" or path.startswith("repom.")):
        return code  # SQLAlchemy, FastAPI, the standard library: not documented here
    if not _exists(modules, path):
        return f"[{code}][{path}]"  # gone or misspelt: fails the strict build when shown
    # a link when the reference documents the object; code when it does not (an internal module)
    return f'<autoref identifier="{path}" optional><code>{html.escape(title)}</code></autoref>'


def _literal_blocks(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.rstrip()
        if not stripped.endswith("::") or stripped.endswith(":::"):
            out.append(line)
            i += 1
            continue
        # the paragraph's own text: "text::" -> "text:", "text ::" and "::" -> "text" / nothing
        body = stripped[:-2]
        if body.strip() == "":
            pass
        elif body.endswith((" ", "\t")):
            out.append(body.rstrip())
        else:
            out.append(body + ":")
        indent = len(stripped) - len(stripped.lstrip())
        i += 1
        block: list[str] = []
        while i < len(lines) and (
            not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent
        ):
            block.append(lines[i])
            i += 1
        while block and not block[-1].strip():
            block.pop()
        while block and not block[0].strip():
            block.pop(0)
        if not block:
            continue
        margin = min(len(b) - len(b.lstrip()) for b in block if b.strip())
        pad = " " * indent
        out.extend(["", f"{pad}```python"])
        out.extend(pad + b[margin:] if b.strip() else "" for b in block)
        out.extend([f"{pad}```", ""])
    return "\n".join(out)


def _doc_comment(attr: griffe.Object) -> str | None:
    """Sphinx's documentation comment of an attribute: ``#:`` lines right above it, or a ``#:``
    comment at the end of its line."""
    if attr.lineno is None or isinstance(attr.filepath, list):
        return None
    lines = attr.lines_collection[attr.filepath]
    first = attr.lineno - 1
    trailing = DOC_COMMENT_END.search(lines[first])
    if trailing:
        return trailing.group(1).strip()
    above: list[str] = []
    for line in reversed(lines[:first]):
        if not line.lstrip().startswith("#:"):
            break
        above.insert(0, line.lstrip()[2:].strip())
    return "\n".join(above) or None


def convert(obj: griffe.Object, modules: griffe.ModulesCollection, text: str) -> str:
    """*text* (a docstring of *obj*) with reST roles and literal blocks in Markdown."""
    text = _literal_blocks(text)
    return ROLE.sub(lambda m: _role(obj, modules, m), text)


def _objects(obj: griffe.Object) -> Iterator[griffe.Object]:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _objects(member)  # type: ignore[arg-type]


class RestDocstrings(griffe.Extension):
    """Translate the docstrings of a package once it is loaded (aliases share their target's)."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        for obj in _objects(pkg):
            if obj.is_attribute and obj.docstring is None:
                comment = _doc_comment(obj)
                if comment:
                    obj.docstring = griffe.Docstring(comment, lineno=obj.lineno, parent=obj)
            if obj.docstring is not None:
                obj.docstring.value = convert(obj, loader.modules_collection, obj.docstring.value)
            if obj.is_class:
                # removed, not marked private: a class exported by its package is shown through
                # an alias, whose members decide on their own whether they are public
                for name in [n for n in obj.members if _protocol_member(n)]:
                    obj.del_member(name)
