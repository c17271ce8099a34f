"""The documentation runs and its links resolve.

What this module guarantees for `README.md` and every Markdown file under `docs/` (recursively):

1. Every fenced code block whose info string is exactly `python` runs without error: each block
   on its own (a fresh namespace with `__name__ == "__main__"`, nothing shared with the blocks
   before it), in an empty temporary working directory, on the CPU (`torch.cuda.is_available()`
   reports False, so `"cuda" if torch.cuda.is_available() else "cpu"` picks the CPU), after
   `torch.manual_seed(0)`. There is one test per block, named after the file and the line of its
   opening fence (`docs/ssl/mae.md:L42`); a failure names them and shows the traceback with line
   numbers of the Markdown file.
2. Every relative link `[text](target)` outside code points to an existing file or folder,
   relative to the Markdown file. Links with a scheme (`http:`, `https:`, `mailto:`, ...) and
   pure `#anchor` links are not checked; a `#fragment` after a path is ignored.

Blocks with any other info string (`bash`, `console`, `text`, `toml`, `python-not-run`, or none)
are shown, not run: use one of them for shell commands, output, or code that cannot run on a CPU
in a few seconds. Blocks that run should use tiny sizes (e.g. `preset("tiny")`) and state the
official sizes in the prose.

Run one page's checks with `-k`, e.g. `python -m pytest tests/test_docs.py -k "ssl/mae"`.
"""

import re
import traceback
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

# An opening or closing fence: up to 3 spaces, then 3+ backticks or tildes, then the info string.
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
LINK = re.compile(r"!?\[[^\]]*\]\((?P<target><[^>]*>|[^)\s]*)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"(`+).*?\1")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass
class Block:
    """A fenced code block: its file, the line of its opening fence (1-based), info string and
    code."""

    path: Path
    line: int
    info: str
    code: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:L{self.line}"


def split_markdown(path: Path) -> tuple[list[Block], list[tuple[int, str]]]:
    """(the fenced code blocks, the (line number, text) of every line outside them)."""
    blocks: list[Block] = []
    prose: list[tuple[int, str]] = []
    opening: re.Match | None = None
    start, body = 0, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fence = FENCE.match(line)
        if opening is None:
            if fence and not (fence["fence"][0] == "`" and "`" in fence["info"]):
                opening, start, body = fence, number, []
            else:
                prose.append((number, line))
        elif (
            fence
            and fence["fence"][0] == opening["fence"][0]
            and len(fence["fence"]) >= len(opening["fence"])
            and not fence["info"].strip()
        ):
            blocks.append(Block(path, start, opening["info"].strip(), "\n".join(body) + "\n"))
            opening = None
        else:
            # Content lines lose up to the fence's own indentation (CommonMark).
            indent = len(opening["indent"])
            body.append(line[min(indent, len(line) - len(line.lstrip(" "))) :])
    if opening is not None:  # an unclosed fence runs to the end of the file (CommonMark)
        blocks.append(Block(path, start, opening["info"].strip(), "\n".join(body) + "\n"))
    return blocks, prose


def python_blocks() -> list:
    return [
        pytest.param(block, id=block.name)
        for path in DOCUMENTS
        for block in split_markdown(path)[0]
        if block.info == "python"
    ]


@pytest.mark.parametrize("block", python_blocks())
def test_python_block_runs(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    torch.manual_seed(0)
    # Blank lines in front, so that traceback line numbers are those of the Markdown file.
    source = "\n" * block.line + block.code
    failure = None
    try:
        exec(compile(source, str(block.path), "exec"), {"__name__": "__main__"})
    except Exception as error:
        # The traceback from the block's own frames on (this test's frame left out).
        failure = "".join(
            traceback.format_exception(type(error), error, error.__traceback__.tb_next)
        )
    if failure is not None:
        pytest.fail(f"{block.name}: the python block failed\n{failure}", pytrace=False)


def relative_links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every relative link outside code, fragment removed."""
    found = []
    for number, line in split_markdown(path)[1]:
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            target = match["target"].strip("<>")
            if not target or target.startswith("#") or SCHEME.match(target):
                continue
            found.append((number, unquote(target.split("#", 1)[0])))
    return found


@pytest.mark.parametrize(
    "path", DOCUMENTS, ids=[f"links:{p.relative_to(ROOT).as_posix()}" for p in DOCUMENTS]
)
def test_relative_links_resolve(path: Path) -> None:
    broken = [
        f"{path.relative_to(ROOT)}:L{number}: ({target}) -> {(path.parent / target).resolve()}"
        for number, target in relative_links(path)
        if not (path.parent / target).exists()
    ]
    assert not broken, "links to nothing:\n" + "\n".join(broken)
