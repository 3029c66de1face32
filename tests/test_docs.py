"""The docs are self-contained: every cited ``*.md`` file exists in the repository, every cited
section exists in it, and no file names a path of a development machine.

What counts as a citation:

- a Markdown link ``[text](path.md)`` or ``[text](path.md#anchor)`` in a ``.md`` file (the
  anchor must be the GitHub slug of a heading of that file);
- a name ending in ``.md`` in Markdown text, or in a docstring or comment of a ``.py`` file;
- in other string literals of a ``.py`` file (error messages, help texts) only names under
  ``docs/``: other names there are files the code reads or writes, not citations;
- ``path.md, "Section"``: the section must be a heading of that file (or the part of a heading
  after ``Step N:``, or a heading that starts with it followed by ``:``).

A name with a directory part resolves against the citing file's folder or the repository root.
A bare name resolves against the citing file's folder (or below it) or the root; the only bare
names that need not exist are the files the benchmark and training write (``OUTPUT_NAMES``),
which the code mentions as outputs.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("src", "lab", "docs", "README.md", ".ci", "Makefile", "pyproject.toml")
TEXT_SUFFIXES = {".md", ".py", ".toml", ".sh", ".txt", ".json", ".jsonl", ""}
# Files the bench and the training write into their output folders; docstrings and help texts
# name them as outputs.
OUTPUT_NAMES = {"results.md", "readme_snippet.md", "matrix.md", "MODEL_CARD.md"}
# Raw records, kept as they were written: a training log (its warnings quote the paths of the
# machine that ran it) and the tuning runs' results.md files (their first line is the command as
# it was run, with its scratch paths). They are exempt from the absolute-path check only; their
# citations are still checked.
RAW_RECORDS = ("docs/training/*/train.log", "docs/bench/tuning/r*.md")
# A path of a development machine, or of the notes outside this repository.
ABSOLUTE_PATH = re.compile(
    r"(?<![\w.])(?:/work/|/home/|/root/|/Users/|/mnt/|/tmp/|/opt/|[A-Za-z]:\\\\)|\.\./shared"
)
MD_NAME = re.compile(r"(?<![\w/.-])((?:\.{1,2}/)*[\w][\w./-]*\.md)(?![\w-])")
MD_LINK = re.compile(r"\]\((?!https?:|mailto:)([^)#\s]*\.md)(?:#([^)\s]*))?\)")
# The speed budget's section; config.py and policy/budget.py cite it.
BUDGET_SECTION = "Speed budget and scale-free decisions"
SECTION = re.compile(r"([\w./-]+\.md),\s*[\"“]([^\"”\n]+)[\"”]")


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


def scanned_files() -> list[Path]:
    files: list[Path] = []
    for entry in SCANNED:
        path = ROOT / entry
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        for f in candidates:
            if not f.is_file() or f.suffix not in TEXT_SUFFIXES:
                continue
            parts = f.relative_to(ROOT).parts
            if any(p in {"__pycache__", ".venv"} or p.endswith(".egg-info") for p in parts):
                continue
            files.append(f)
    return files


def prose(path: Path, text: str) -> Iterator[tuple[int, str, bool]]:
    """(line, text, is_code_string) pieces where citations live: whole Markdown files; a .py
    file's docstrings and comments, and its other string literals (``is_code_string``)."""
    if path.suffix != ".py":
        for lineno, line in enumerate(text.splitlines(), start=1):
            yield lineno, line, False
        return
    docstring_lines: set[int] = set()
    for node in ast.walk(ast.parse(text)):
        body = getattr(node, "body", None)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc is not None and body:
                docstring_lines.add(body[0].lineno)
                for offset, line in enumerate(doc.splitlines()):
                    yield body[0].lineno + offset, line, False
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            yield tok.start[0], tok.string, False
        elif tok.type == tokenize.STRING and tok.start[0] not in docstring_lines:
            yield tok.start[0], tok.string, True


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def headings(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    out, fenced = [], False
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6}\s+(.*)", line)):
            out.append(m.group(1).strip())
    return out


def section_exists(name: str, heads: list[str]) -> bool:
    want = name.strip().lower()
    for h in (h.lower().replace("`", "") for h in heads):
        if h == want or h.startswith(want + ":") or h.endswith(": " + want):
            return True
    return False


def resolve(cited: str, source: Path, root: Path) -> Path | None:
    bases = [source.parent, root]
    for base in bases:
        target = (base / cited).resolve()
        if target.is_file():
            return target
    if "/" not in cited:  # a bare name: also anywhere below the citing file's folder
        found = sorted(p for p in source.parent.rglob(cited) if p.is_file())
        if found:
            return found[0]
    return None


def citation_problems(path: Path, text: str, root: Path = ROOT) -> list[Problem]:
    """Every citation in ``text`` (the content of ``path``) that points to nothing."""
    rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
    problems: list[Problem] = []
    for lineno, line, is_code_string in prose(path, text):
        names = {m.group(1) for m in MD_NAME.finditer(line)}
        if is_code_string:
            names = {n for n in names if n.startswith("docs/")}
        for name in sorted(names):
            if name in OUTPUT_NAMES:
                continue
            if resolve(name, path, root) is None:
                problems.append(Problem(rel, lineno, f"cites {name!r}, which does not exist"))
        for m in SECTION.finditer(line):
            target = resolve(m.group(1), path, root)
            if target is not None and not section_exists(m.group(2), headings(target)):
                text = f"{m.group(1)} has no section {m.group(2)!r}"
                problems.append(Problem(rel, lineno, text))
        if path.suffix == ".md":
            for m in MD_LINK.finditer(line):
                target = resolve(m.group(1), path, root)
                anchor = m.group(2)
                if target is None:
                    text = f"links {m.group(1)!r}, which does not exist"
                    problems.append(Problem(rel, lineno, text))
                elif anchor and anchor not in {slug(h) for h in headings(target)}:
                    problems.append(Problem(rel, lineno, f"{m.group(1)} has no anchor #{anchor}"))
    return problems


def absolute_path_problems(rel: str, text: str) -> list[Problem]:
    return [
        Problem(rel, lineno, f"names a machine path: {m.group(0)!r}")
        for lineno, line in enumerate(text.splitlines(), start=1)
        for m in ABSOLUTE_PATH.finditer(line)
    ]


def is_raw_record(rel: str) -> bool:
    return any(Path(rel).match(pattern) for pattern in RAW_RECORDS)


def test_every_cited_markdown_file_and_section_exists():
    problems = []
    for path in scanned_files():
        if path.suffix in {".md", ".py"}:
            problems += citation_problems(path, path.read_text(encoding="utf-8"))
    assert not problems, "broken citations:\n" + "\n".join(map(str, problems))


def test_no_file_names_a_development_machine_path():
    problems = []
    for path in scanned_files():
        rel = path.relative_to(ROOT).as_posix()
        if not is_raw_record(rel):
            problems += absolute_path_problems(rel, path.read_text(encoding="utf-8"))
    assert not problems, "machine paths:\n" + "\n".join(map(str, problems))


def test_the_documents_the_code_cites_exist():
    for name in ("method.md", "design.md", "peers.md", "how-it-works.md"):
        assert (ROOT / "docs" / name).is_file(), name
    heads = headings(ROOT / "docs" / "method.md")
    sections = ("Signals D", "Impact I", "Joint scheduling", "Step 1", BUDGET_SECTION)
    for section in sections:
        assert section_exists(section, heads), section


# The scanner itself, on synthetic files: each bad citation must be reported.


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "docs").mkdir()
    method = "# Method\n\n## Signals D\n\n### Step 3: adaptive interval\n"
    (tmp_path / "docs" / "method.md").write_text(method)
    (tmp_path / "pkg").mkdir()
    return tmp_path


def problems_in(tree: Path, rel: str, text: str) -> list[str]:
    path = tree / rel
    path.write_text(text)
    return [p.text for p in citation_problems(path, text, root=tree)]


def test_scanner_accepts_good_citations(tree):
    good = (
        '"""See docs/method.md, "Signals D", and docs/method.md, "Step 3"."""\n'
        '# docs/method.md, "adaptive interval"\n'
    )
    assert problems_in(tree, "pkg/mod.py", good) == []
    assert problems_in(tree, "docs/a.md", "[m](method.md#signals-d), `docs/method.md`\n") == []


@pytest.mark.parametrize(
    ("rel", "text", "expected"),
    [
        ("pkg/mod.py", '"""Rule (method.md, step 3)."""\n', "cites 'method.md'"),
        ("pkg/mod.py", "x = 1  # see design.md\n", "cites 'design.md'"),
        ("pkg/mod.py", '"""See docs/peers.md."""\n', "cites 'docs/peers.md'"),
        ("pkg/mod.py", '"""docs/method.md, "Signals E"."""\n', "has no section 'Signals E'"),
        ("docs/a.md", "[x](missing.md)\n", "links 'missing.md'"),
        ("docs/a.md", "[x](method.md#no-such-heading)\n", "has no anchor #no-such-heading"),
    ],
)
def test_scanner_reports_bad_citations(tree, rel, text, expected):
    found = problems_in(tree, rel, text)
    assert any(expected in p for p in found), found


def test_string_literals_in_code_cite_only_under_docs(tree):
    assert problems_in(tree, "pkg/mod.py", 'OUT = "summary.md"\n') == []
    found = problems_in(tree, "pkg/mod.py", 'raise ValueError(f"{x} (see docs/models.md)")\n')
    assert found == ["cites 'docs/models.md', which does not exist"]


def test_absolute_paths_are_reported():
    text = "see /work/shared/method.md\nlog at /home/me/x\nor ../shared/peers.md\nfine: a/work/b\n"
    found = absolute_path_problems("x.md", text)
    assert [p.line for p in found] == [1, 2, 3]
    assert is_raw_record("docs/training/one-command/train.log")
    assert not is_raw_record("docs/how-it-works.md")
