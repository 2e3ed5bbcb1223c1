"""The documentation's links resolve, and the README stays a newcomer's guide.

Every relative link in README.md, docs/**/*.md and bench/RESULTS.md must name a file (or folder)
that exists, and a ``#anchor`` must name a heading of the target Markdown file, slugged as
GitHub slugs it. Links to other sites (``https:``, ``mailto:``, ...) are not followed: no network.
Links inside fenced code blocks and inline code are not links.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def doc_files() -> list[Path]:
    """The checked pages: the README, every page under docs/, the bench results."""
    files = [README, *sorted((ROOT / "docs").rglob("*.md")), ROOT / "bench" / "RESULTS.md"]
    return [f for f in files if f.is_file()]


FENCE = re.compile(r"^\s{0,3}(```|~~~)")
INLINE_CODE = re.compile(r"(`+).+?\1")
# [text](target) or ![alt](target), the target optionally in <...>, optionally a "title".
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*(<[^>]*>|[^\s)]*)(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HTML_HREF = re.compile(r"""<a\s[^>]*href=["']([^"']+)["']""", re.IGNORECASE)
HTML_ID = re.compile(r"""<a\s[^>]*(?:name|id)=["']([^"']+)["']""", re.IGNORECASE)
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if m:
            if fence is None:
                fence = m.group(1)
            elif m.group(1) == fence:
                fence = None
            continue
        if fence is None:
            out.append((number, line))
    return out


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text as rendered (link targets, backticks and
    emphasis stars dropped), lower-cased, every character that is not a letter, digit,
    underscore, hyphen or space removed, spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor of a Markdown file: its headings' slugs (a repeated slug gets -1, -2, ... as on
    GitHub) and explicit <a name/id> anchors."""
    seen: Counter[str] = Counter()
    found = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        m = HEADING.match(line)
        if m:
            slug = github_slug(m.group(2))
            found.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
            seen[slug] += 1
        found.update(a.lower() for a in HTML_ID.findall(line))
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link of a Markdown file, outside code."""
    out = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        bare = INLINE_CODE.sub("", line)
        targets = [*INLINE_LINK.findall(bare), *REFERENCE_DEF.findall(bare), *HTML_HREF.findall(bare)]
        out += [(number, t.strip("<>")) for t in targets]
    return out


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """One line per relative link of ``path`` that does not resolve, saying why."""
    problems = []
    where = path.relative_to(root) if path.is_relative_to(root) else path
    for number, target in links(path):
        if not target or SCHEME.match(target) or target.startswith("//"):
            continue  # another site: not followed (no network)
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / unquote(file_part)).resolve() if file_part else path
        shown = dest.relative_to(root) if dest.is_relative_to(root) else dest
        if not dest.exists():
            problems.append(f"{where}:{number}: link to {target!r}: no such file {shown}")
            continue
        if anchor and dest.is_file() and dest.suffix.lower() == ".md":
            if unquote(anchor).lower() not in anchors(dest):
                problems.append(f"{where}:{number}: link to {target!r}: {shown} has no heading "
                                f"with the anchor #{anchor}")
    return problems


def test_the_checked_pages_are_there():
    names = {str(f.relative_to(ROOT)) for f in doc_files()}
    for required in ("README.md", "bench/RESULTS.md", "docs/architecture.md"):
        assert required in names, f"{required} is missing"


@pytest.mark.parametrize("page", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    problems = broken_links(page)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_every_page_under_docs_is_reachable_from_the_readme():
    linked = {(README.parent / unquote(t.partition("#")[0])).resolve()
              for _, t in links(README) if t and not SCHEME.match(t)}
    unlinked = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "docs").rglob("*.md"))
                if p.resolve() not in linked]
    assert not unlinked, f"pages under docs/ the README does not link to: {unlinked}"


@pytest.mark.parametrize(("heading", "slug"), [
    ("One run: `tagtune train`", "one-run-tagtune-train"),
    ("The paper-sized study's cost", "the-paper-sized-studys-cost"),
    ("The GPU bench (`bench/bench_gpu.py`)", "the-gpu-bench-benchbench_gpupy"),
    ("Science check, 2026-11-28 (after the network and mean-teacher changes)",
     "science-check-2026-11-28-after-the-network-and-mean-teacher-changes"),
    ("Resume, and what survives a kill", "resume-and-what-survives-a-kill"),
    ("1. The cluster", "1-the-cluster"),
    ("**Bold** and [a link](x.md)", "bold-and-a-link"),
])
def test_github_slug(heading, slug):
    assert github_slug(heading) == slug


def test_the_checker_finds_a_missing_file_and_a_missing_anchor_and_nothing_else(tmp_path):
    (tmp_path / "other.md").write_text("# Title\n\n## Same\n\n## Same\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[ok](other.md) [ok](other.md#title) [ok](other.md#same-1) [ok](#page) [web](https://x.invalid/y)\n"
        "[gone](missing.md) and [bad anchor](other.md#nothing-here)\n"
        "`[in code](nowhere.md)`\n\n"
        "```\n[in a fence](nowhere.md)\n```\n\n"
        "[ref]: also-missing.md\n")
    problems = broken_links(page, root=tmp_path)
    assert len(problems) == 3, problems
    assert "page.md:4: link to 'missing.md': no such file missing.md" in problems
    assert any("#nothing-here" in p and "other.md has no heading" in p for p in problems)
    assert any("also-missing.md" in p for p in problems)


def test_the_readme_opens_with_exactly_the_two_set_up_free_commands():
    text = README.read_text(encoding="utf-8")
    first_block = re.search(r"^```[^\n]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert first_block and text.index(first_block.group(0)) < text.index("\n## "), \
        "the README's first code block must come before its first section"
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]


def test_the_readme_holds_the_methods_table_between_its_markers():
    lines = README.read_text(encoding="utf-8").splitlines()
    start, end = "<!-- methods:start -->", "<!-- methods:end -->"
    assert [line for line in lines if start in line] == [start], "one start marker, on its own line"
    assert [line for line in lines if end in line] == [end], "one end marker, on its own line"
    inside = lines[lines.index(start) + 1 : lines.index(end)]
    assert inside and all(line.startswith("|") for line in inside if line.strip()), \
        "between the markers: the methods table"


def test_the_readme_is_a_guide_not_a_lab_notebook():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move detail into docs/"
    dated = [line for line in lines if re.search(r"\b20\d\d-\d\d-\d\d\b", line)]
    assert not dated, f"dated measurements belong in bench/RESULTS.md: {dated}"
