"""Size rules of the source: no file over 450 lines, no function over 60, no 6-line block twice."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("methods", "experiments", "analysis", "bench", "gpu")
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 60
BLOCK = 6  # lines: a block this long may appear once


def _sources() -> list[Path]:
    return sorted(p for root in ROOTS for p in (REPO / root).rglob("*.py"))


def test_no_source_file_is_over_450_lines() -> None:
    long = {str(p.relative_to(REPO)): n for p in _sources()
            if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert not long, f"files over {MAX_FILE_LINES} lines: {long}"


def test_no_function_is_over_60_lines() -> None:
    long = {}
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(REPO)}:{node.lineno} {node.name}"] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of the lines that carry code: not blank, not a comment, not
    an import, not a lone bracket or docstring quote (those repeat without being a copy)."""
    out = []
    for i, raw in enumerate(path.read_text().splitlines(), 1):
        text = raw.strip()
        if text and not text.startswith(("#", "import ", "from ")) and text not in (
                ")", "]", "}", "(", '"""'):
            out.append((i, text))
    return out


def test_no_block_of_six_code_lines_appears_twice() -> None:
    where = defaultdict(list)
    for path in _sources():
        lines = _code_lines(path)
        for k in range(len(lines) - BLOCK + 1):
            block = tuple(text for _, text in lines[k:k + BLOCK])
            where[block].append(f"{path.relative_to(REPO)}:{lines[k][0]}")
    copies = [places for places in where.values() if len(places) > 1]
    assert not copies, f"blocks of {BLOCK} code lines repeated: {copies[:5]}"
