"""Every ```python block in docs/*.md and README.md runs, in order, one namespace per document.

Blocks run in a temporary working directory with no DATABASE_URL (SQLite).  Use ```py for
snippets that are illustrations only.
"""

from __future__ import annotations

import os
import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_doc_examples_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = BLOCK.findall(path.read_text(encoding="utf-8"))
    if not blocks:
        pytest.skip(f"{path.name} has no python blocks")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("DATABASE_URL", "REPOM_DATABASE_URL", "CONFIG_HOOK"):
        monkeypatch.delenv(name, raising=False)
    for name in [m for m in sys.modules if m.split(".")[0] in ("your_project", "app", "myapp")]:
        del sys.modules[name]  # left by other tests: the docs write their own
    module = types.ModuleType(f"docs_{path.stem.replace('-', '_')}")
    sys.modules[module.__name__] = module  # SQLAlchemy resolves annotations through it
    namespace = module.__dict__
    modules_before = set(sys.modules)
    try:
        for number, source in enumerate(blocks, 1):
            code = compile(source, f"{path.name}[block {number}]", "exec")
            exec(code, namespace)
    finally:
        from repom import config

        config.reset_config()
        sys.modules.pop(module.__name__, None)
        for mod in set(sys.modules) - modules_before:
            if mod.startswith(("your_project", "app", "myapp")):
                del sys.modules[mod]
    assert os.getcwd() == str(tmp_path)
