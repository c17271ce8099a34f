"""Every Python code block in the README and under docs/ runs as written (on the CPU)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _blocks() -> list:
    found = []
    for document in DOCUMENTS:
        for number, code in enumerate(BLOCK.findall(document.read_text()), start=1):
            found.append(pytest.param(code, id=f"{document.relative_to(ROOT)}#{number}"))
    return found


@pytest.mark.parametrize("code", _blocks())
def test_code_block_runs(code: str) -> None:
    exec(compile(code, "<doc>", "exec"), {"__name__": "__doc_example__"})
