"""Every Python example in README.md and docs/*.md runs as printed.

A block fenced ```python is executed; blocks of one page run in order in one namespace (so a
page's visible setup block defines the names its later examples use), in a fresh temporary
folder. A block fenced ```python fragment is a piece of a larger program and is not run; the
test also checks that every page says so explicitly (no other info string starting with
"python"), and that the runner itself fails on a broken block.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```\s*$", re.S | re.M)


def blocks(text: str) -> list[tuple[str, str, int]]:
    """``(info, code, line)`` of every fenced block of a Markdown text."""
    out = []
    for m in FENCE.finditer(text):
        out.append((m.group("info").strip(), m.group("body"),
                    text.count("\n", 0, m.start()) + 1))
    return out


def run_page(text: str, name: str, folder: Path) -> int:
    """Run the page's ``python`` blocks in order in ``folder``; returns how many ran."""
    namespace: dict = {"__name__": f"docs_{name}"}
    ran = 0
    old = Path.cwd()
    os.chdir(folder)
    try:
        for info, code, line in blocks(text):
            if info != "python":
                continue
            try:
                exec(compile(code, f"{name}:{line}", "exec"), namespace)
            except Exception as exc:  # name the page and the line of the failing block
                raise AssertionError(f"{name}, the python block at line {line} fails: "
                                     f"{type(exc).__name__}: {exc}") from exc
            ran += 1
    finally:
        os.chdir(old)
    return ran


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_blocks_run_or_are_marked_fragments(page, tmp_path):
    import torch
    torch.set_num_threads(1)
    text = page.read_text()
    infos = {info for info, _, _ in blocks(text) if info.startswith("python")}
    assert infos <= {"python", "python fragment"}, \
        f"{page.name}: use ```python (runs in the tests) or ```python fragment, got {infos}"
    run_page(text, page.stem, tmp_path)


def test_the_runner_fails_on_a_broken_block_and_skips_fragments(tmp_path):
    page = "intro\n```python\nx = 1\n```\n```python fragment\nundefined_name\n```\n" \
           "```python\nassert x == 2, 'x is 1'\n```\n"
    with pytest.raises(AssertionError, match="line 8 fails: AssertionError: x is 1"):
        run_page(page, "broken", tmp_path)
    assert run_page(page.replace("x == 2", "x == 1"), "fixed", tmp_path) == 2


def test_there_are_examples_to_run():
    total = sum(1 for p in PAGES for info, _, _ in blocks(p.read_text()) if info == "python")
    assert total >= 10


# ---- the tests the pages cite exist ------------------------------------------------------------

CITED = re.compile(r"`(?P<path>tests/[\w/.]+\.py)(?:::(?P<name>\w+))?")
CITED_NAME = re.compile(r"`::(?P<name>test_\w+)")


def cited_tests(text: str) -> list[tuple[str | None, str | None]]:
    """``(path, test name)`` of every test a page cites: `tests/x.py`, `tests/x.py::test_y`, or
    `::test_y` (a name in a file cited before it)."""
    out = [(m.group("path"), m.group("name")) for m in CITED.finditer(text)]
    out += [(None, m.group("name")) for m in CITED_NAME.finditer(text)]
    return out


def missing_citations(text: str, root: Path) -> list[str]:
    sources = {p.relative_to(root).as_posix(): p.read_text(encoding="utf-8")
               for p in (root / "tests").rglob("*.py")}
    bad = []
    for path, name in cited_tests(text):
        if path is not None and path not in sources:
            bad.append(path)
            continue
        pool = [sources[path]] if path is not None else sources.values()
        if name and not any(re.search(rf"^\s*def {name}\(", s, re.M) for s in pool):
            bad.append(f"{path or ''}::{name}")
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_cited_test_exists(page):
    """A page that names a test as its evidence names one that exists (a renamed or deleted
    test would leave the claim without a check)."""
    assert missing_citations(page.read_text(encoding="utf-8"), ROOT) == []


def test_a_missing_citation_is_found():
    text = ("see `tests/test_docs_examples.py::test_every_cited_test_exists`, "
            "`::test_no_such_test_anywhere` and `tests/no_such_file.py`")
    assert missing_citations(text, ROOT) == ["tests/no_such_file.py",
                                             "::test_no_such_test_anywhere"]
