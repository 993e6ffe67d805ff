"""The documentation holds to the tree and the code: every relative link and anchor resolves, the README stays a
short page that keeps the two commands word for word, no placeholder is left, and the Python examples of README.md
and docs/*.md run as shown.

An example runs in a fresh namespace in a temporary directory, on one thread (the examples are about results, and
one thread is fastest on a busy machine). An example that imports torch is skipped when torch is not installed; one
that opens ``input.txt`` is given a slice of the demo's corpus under that name.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest

import fastbptt as fb

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
COMMANDS = ("pip install . && python -m fastbptt demo", 'pip install ".[test]" && python -m pytest')
MAX_README_LINES = 250

pytestmark = pytest.mark.skipif(not README.exists(), reason="needs the source tree (README.md, docs/) beside tests/")

FENCE = re.compile(r"^```([\w+-]*)\n(.*?)^```\s*$", re.S | re.M)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def code_blocks(page: Path) -> list[tuple[str, int, str]]:
    """(language, line of the opening fence, code) of every fenced block of a page."""
    source = text(page)
    return [(m.group(1), source.count("\n", 0, m.start()) + 1, m.group(2)) for m in FENCE.finditer(source)]


def prose(page: Path) -> str:
    """The page without its fenced blocks and inline code, where a bracket is not a link."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text(page)))


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation but '-' and '_' dropped, spaces as '-';
    a repeated heading gets -1, -2, ..."""
    seen: dict[str, int] = {}
    for line in FENCE.sub("", text(page)).splitlines():
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        if count:
            seen[f"{slug}-{count}"] = 1
    return set(seen)


def test_pages_exist():
    assert {p.name for p in PAGES} >= {"README.md", "api.md", "how-the-core-computes.md", "reliability.md"}
    assert (ROOT / "docs" / "README.md").exists() and (ROOT / "docs" / "benchmarks.md").exists()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(page):
    broken = []
    for target in LINK.findall(prose(page)):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists():
            broken.append(f"{target}: no file {destination}")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target}: no heading #{anchor} in {destination.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_readme_is_short_and_keeps_the_two_commands():
    lines = text(README).splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines, at most {MAX_README_LINES}"
    bash = [code for language, _, code in code_blocks(README) if language == "bash"]
    shell_lines = {line.strip() for code in bash for line in code.splitlines()}
    for command in COMMANDS:
        assert command in shell_lines, f"README.md: the command {command!r} is not a line of a bash block"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_placeholders_or_references_to_documents_users_do_not_have(page):
    source = text(page)
    assert not re.findall(r"\b(?:TODO|TBD|FIXME|XXX|FIGURES)\b", source)
    assert not re.findall(r"DESIGN\.md|\bthe spec\b", source, re.I)


SHIPPED = sorted(
    path
    for folder in ("python/fastbptt", "cpp")
    for path in (ROOT / folder).rglob("*")
    if path.suffix in (".py", ".pyi", ".hpp", ".cpp") and "__pycache__" not in path.parts
)


def test_shipped_code_names_no_document_users_do_not_have():
    """Docstrings and comments travel in the sdist and the wheel, where DESIGN.md and 'the spec' do not."""
    assert SHIPPED, "no shipped source found: the test no longer reads the tree"
    named = [str(path.relative_to(ROOT)) for path in SHIPPED if re.search(r"DESIGN\.md|\bthe spec\b", text(path), re.I)]
    assert not named, named


def test_command_line_help_names_no_document_users_do_not_have():
    from fastbptt.cli.main import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    helps = [parser.format_help(), *(sub.format_help() for sub in commands.choices.values())]
    assert set(commands.choices) == {"demo", "diagnose", "bench"}
    assert "--output-dir" in commands.choices["demo"].format_help()
    for help_text in helps:
        assert not re.findall(r"DESIGN\.md|\bthe spec\b|\bTODO\b", help_text, re.I)


EXAMPLES = [
    pytest.param(code, id=f"{page.relative_to(ROOT)}:{line}")
    for page in PAGES
    for language, line, code in code_blocks(page)
    if language == "python"
]


def test_the_readme_shows_an_example_of_each_way_of_use():
    readme = [code for language, _, code in code_blocks(README) if language == "python"]
    for needle in ("fb.rnn_forward", "fb.train_tbptt", "fastbptt.torch", "diagnostics"):
        assert any(needle in code for code in readme), f"README.md: no Python example uses {needle}"
    assert any(language == "cmake" and "find_package(fastbptt" in code for language, _, code in code_blocks(README))
    assert any("python -m fastbptt bench" in code for language, _, code in code_blocks(README) if language == "bash")


@pytest.fixture
def one_thread():
    before = fb.get_num_threads()
    fb.set_num_threads(1)
    yield
    fb.set_num_threads(before)


@pytest.mark.parametrize("code", EXAMPLES)
def test_python_example_runs(code, tmp_path, monkeypatch, one_thread):
    if re.search(r"^\s*(?:import torch|from torch|import fastbptt\.torch)", code, re.M):
        pytest.importorskip("torch", reason="the example uses torch, which is not installed")
    monkeypatch.chdir(tmp_path)
    if "input.txt" in code:
        corpus = resources.files("fastbptt.cli").joinpath("data", "corpus.txt").read_text(encoding="utf-8")
        (tmp_path / "input.txt").write_text(corpus[:2000], encoding="utf-8")
    exec(compile(code, "<example>", "exec"), {"__name__": "__example__"})
    if "input.txt" in code and ".save(" in code:
        assert list(tmp_path.glob("*.npz")), "the training example saved no model"
