"""The book builds offline with no warnings, and every lesson in notebooks/ is a chapter of it.

``book/build.py`` stages the book (its pages, a copy of every lesson, the generated lesson map,
exercise list and concept table) and runs Jupyter Book 1.x with warnings as errors, every
lesson executed under the smoke profile. Here that build runs once, into a temporary folder
(nothing is written into the repository), and the pages it generates are checked against the
notebooks and the README read independently.
"""

from __future__ import annotations

import html
import importlib.util
import re
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
LESSONS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def _load_build():
    spec = importlib.util.spec_from_file_location("book_build", ROOT / "book" / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


build = _load_build()


def title_of(path: Path) -> str:
    """The lesson's '# ' heading as plain text (markdown code and math marks dropped)."""
    first = next(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown")
    return re.sub(r"[`$*]", "", first.splitlines()[0].lstrip("# ")).strip()


def page_text(page: Path) -> str:
    """An HTML page as plain text: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    pytest.importorskip("jupyter_book", reason="the book needs the docs extra: pip install -e '.[docs]'")
    tmp = tmp_path_factory.mktemp("book")
    staged = build.stage(tmp / "book")
    with pytest.MonkeyPatch.context() as env:  # offline: any web request of the build goes nowhere
        for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
            env.setenv(proxy, "http://127.0.0.1:9")
        env.setenv("no_proxy", "127.0.0.1,localhost")
        done = build.build(tmp / "book", tmp / "out", execute=True, profile="smoke")
    return tmp / "book", tmp / "out" / "_build" / "html", staged, done


def test_book_builds_offline_with_no_warnings(built):
    _, html_dir, _, done = built
    log = done.stdout
    assert done.returncode == 0, f"jupyter-book build failed:\n{log[-6000:]}"
    # Sphinx reports "path:line: WARNING: ..." (a kernel's own "[IPKernelApp] WARNING | ..." is not the book's)
    warnings = [line for line in log.splitlines() if re.search(r"\b(?:WARNING|ERROR|CRITICAL): ", line)]
    assert not warnings, "the book build warned:\n" + "\n".join(warnings)
    assert (html_dir / "intro.html").exists()


def test_every_lesson_is_an_executed_chapter(built):
    _, html_dir, staged, _ = built
    assert [p.name for p in staged] == [p.name for p in LESSONS]
    intro = (html_dir / "intro.html").read_text(encoding="utf-8")
    for path in LESSONS:
        page = html_dir / "lessons" / f"{path.stem}.html"
        assert page.exists(), f"{path.name} did not become a chapter ({page} missing)"
        assert title_of(path) in page_text(page), f"{page.name} does not show the lesson's title"
        assert f"lessons/{path.stem}.html" in intro, f"the book's navigation does not list {path.stem}"
        # executed: lessons are stored without outputs, so an output on the page was made by the build
        assert 'class="cell_output' in page.read_text(encoding="utf-8"), f"{page.name} shows no cell output: was {path.name} executed?"


def test_generated_pages_link_every_lesson(built):
    book, html_dir, _, _ = built
    for page in ("map", "exercises", "concepts"):
        source = (book / "lessons" / f"{page}.md").read_text(encoding="utf-8")
        assert (html_dir / "lessons" / f"{page}.html").exists()
        for path in LESSONS:
            assert f"({path.stem}.ipynb)" in source, f"lessons/{page}.md does not link {path.name}"


# --- the generated pages, without building -------------------------------------------------------

def test_lesson_map_takes_the_measured_times_from_the_readme_table():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    page = build.lesson_map([build.read_lesson(p) for p in LESSONS], build.readme_times(ROOT / "README.md"),
                            {})
    for path in LESSONS:
        row = next((line for line in readme.splitlines() if line.startswith(f"| {path.name[:2]} |")), None)
        if row is None:
            continue
        cells = [c.strip() for c in row.strip("|").split("|")]
        smoke, cpu = cells[4], cells[5]  # the README's columns: # | notebook | idea | package | smoke | cpu
        map_row = next(line for line in page.splitlines() if line.startswith(f"| {path.name[:2]} |"))
        assert f"| {smoke} | {cpu} |" in map_row, (path.name, map_row)


def test_prerequisites_are_read_from_the_needs_line_with_ranges():
    cell = ("# 09 · Something\n\n**Learning goals**\n\n- a\n\n"
            "**Needs from earlier lessons:** 01–03 (the forward process) and 05\n(the U-Net); not 12.\n\nMore.")
    assert build._needs(cell, "09") == ("01", "02", "03", "05")
    assert build._needs("# 00 · Setup\n\n**Needs:** nothing before this lesson.", "00") == ()


def test_concept_plan_covers_every_lesson_and_written_lessons_are_linked(tmp_path):
    plan = yaml.safe_load((ROOT / "book" / "concepts.yml").read_text(encoding="utf-8"))
    assert sorted(f"{int(k):02d}" for k in plan) == [f"{k:02d}" for k in range(15)]
    assert all(entry["concepts"] for entry in plan.values())
    lessons = [build.read_lesson(p) for p in LESSONS]
    page = build.concept_table(lessons, {f"{int(k):02d}": v for k, v in plan.items()})
    for lesson in lessons:
        assert f"]({lesson.stem}.ipynb)" in page
    written = {p.name[:2] for p in LESSONS}
    planned = [f"{int(k):02d}" for k in plan if f"{int(k):02d}" not in written]
    for number in planned:
        assert re.search(rf"\| {number} [^|]*\(planned\) \|", page), f"lesson {number} should be marked planned"


def test_staging_copies_the_lessons_and_drops_a_removed_one(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for path in LESSONS[:2]:
        (notebooks / path.name).write_bytes(path.read_bytes())
    book = tmp_path / "book"
    assert [p.name for p in build.stage(book, notebooks, readme=ROOT / "README.md")] == [p.name for p in LESSONS[:2]]
    assert {p.name for p in book.glob("*.md")} >= {"intro.md", "notation.md", "teachers_guide.md", "references.md"}
    (notebooks / LESSONS[1].name).unlink()
    assert [p.name for p in build.stage(book, notebooks, readme=ROOT / "README.md")] == [LESSONS[0].name]
    assert LESSONS[1].stem not in (book / "lessons" / "map.md").read_text(encoding="utf-8")
