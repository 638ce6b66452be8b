"""Every ```python block in docs/*.md and README.md runs, in order, one namespace per document.

Each document runs in a fresh Python process (so examples that configure repom's defaults or
start a TestClient cannot leak into other tests), in a temporary working directory, with no
DATABASE_URL (SQLite).  Use ```py for snippets that are illustrations only.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
#: documents whose python blocks are files of a project, not one script: run by their own test
RUN_ELSEWHERE = {"first-service.md": "tests/test_first_service.py builds and runs the project"}
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)

RUNNER = """
import json, sys, types
blocks = json.loads(sys.stdin.read())
module = types.ModuleType(sys.argv[1])
sys.modules[module.__name__] = module  # SQLAlchemy resolves annotations through it
for number, source in enumerate(blocks, 1):
    exec(compile(source, f"{sys.argv[2]}[block {number}]", "exec"), module.__dict__)
"""


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_doc_examples_run(path: Path, tmp_path: Path) -> None:
    if path.name in RUN_ELSEWHERE:
        pytest.skip(RUN_ELSEWHERE[path.name])
    blocks = BLOCK.findall(path.read_text(encoding="utf-8"))
    if not blocks:
        pytest.skip(f"{path.name} has no python blocks")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REPOM_DATABASE_URL", "CONFIG_HOOK")
    }
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    module_name = f"docs_{path.stem.replace('-', '_')}"
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, module_name, path.name],
        input=json.dumps(blocks),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{path.name} failed:\n{result.stdout}\n{result.stderr}"
