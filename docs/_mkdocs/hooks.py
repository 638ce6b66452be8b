"""MkDocs hooks for repom's site (``mkdocs.yml``: ``hooks``).

* The README is the home page, as it is on the repository's front page: it is added to the site
  as ``index.md`` and its links into ``docs/`` are made relative to the site's root.
* The reference page of the top-level package lists the names ``repom`` exports on first access
  (its ``_LAZY`` table, which static analysis cannot see as members), each linked to the page
  that documents it; the list is read from ``src/repom/__init__.py``, so it cannot drift.
* A package that exports a name its own submodule also has (``repom.fastapi.lifespan``, the
  function, from the module ``repom.fastapi.lifespan``) shows static analysis the module, not
  the function: such a name needs its own ``::: package.name.name`` block on a reference page,
  and the build warns (fails, with ``--strict``) about one that has none.
"""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SRC = ROOT / "src"
PACKAGE_INIT = SRC / "repom" / "__init__.py"
TOP_LEVEL_NAMES = "<!-- repom top-level names -->"
DOCS_LINK = re.compile(r"\]\(docs/")
DIRECTIVE = re.compile(r"^::: *([\w.]+)", re.MULTILINE)

log = logging.getLogger("mkdocs.hooks.repom")
documented: set[str] = set()  # the objects of the `::: path` blocks of this build


def on_pre_build(**kwargs: Any) -> None:
    documented.clear()  # `mkdocs serve` builds again in the same process


def on_files(files: Files, config: MkDocsConfig, **kwargs: Any) -> Files:
    files.append(File.generated(config, "index.md", abs_src_path=str(README)))
    return files


def _lazy_names() -> dict[str, str]:
    tree = ast.parse(PACKAGE_INIT.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            assert isinstance(value, dict)
            return {str(k): str(v) for k, v in value.items()}
    raise LookupError(f"no _LAZY table in {PACKAGE_INIT}")


def _top_level_table() -> str:
    rows = ["| name | defined in |", "|---|---|"]
    for name, module in sorted(_lazy_names().items(), key=lambda item: item[0].lower()):
        rows.append(f"| [`repom.{name}`][{module}.{name}] | [`{module}`][{module}] |")
    return "\n".join(rows)


def _shadowed_exports() -> list[str]:
    """``package.name.name`` for each name a package exports that is also one of its modules."""
    found = []
    for init in sorted(SRC.glob("repom/**/__init__.py")):
        package = ".".join(init.parent.relative_to(SRC).parts)
        for node in ast.parse(init.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
            ):
                try:
                    names = ast.literal_eval(node.value)
                except ValueError:
                    continue  # computed (repom's own __all__: the table above covers it)
                for name in names:
                    if (init.parent / f"{name}.py").exists() or (init.parent / name).is_dir():
                        found.append(f"{package}.{name}.{name}")
    return found


def on_post_build(**kwargs: Any) -> None:
    for path in _shadowed_exports():
        package = path.rsplit(".", 2)[0]
        if package in documented and path not in documented:
            log.warning(
                "%s is exported under its module's name, which hides it from mkdocstrings: "
                "add a '::: %s' block to a page in docs/reference/",
                path.rsplit(".", 1)[0],
                path,
            )


def on_page_markdown(markdown: str, page: Page, **kwargs: Any) -> str:
    documented.update(DIRECTIVE.findall(markdown))
    if page.file.src_uri == "index.md":
        return DOCS_LINK.sub("](", markdown)
    if TOP_LEVEL_NAMES in markdown:
        return markdown.replace(TOP_LEVEL_NAMES, _top_level_table())
    return markdown
