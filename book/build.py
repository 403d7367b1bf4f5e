"""Build the minildm book: the lessons in notebooks/ become its chapters, whatever lessons exist.

    python book/build.py                       # execute every lesson (smoke profile), HTML in book/_build/html
    python book/build.py --no-execute          # the pages only, stored notebooks shown without outputs
    python book/build.py --student             # the student versions (solutions removed), not executed
    MINILDM_PROFILE=cpu python book/build.py   # outputs of the cpu profile (minutes per lesson)

Jupyter Book 1.x reads its pages from one folder, so the build *stages* that folder: the
hand-written pages of book/ (intro, notation, teacher's guide, references, ...) and, in
``lessons/`` beside them, a copy of every ``notebooks/NN_*.ipynb`` plus three pages generated
from them: ``lessons/map.md`` (the lesson map), ``lessons/exercises.md`` (every checked
exercise) and ``lessons/concepts.md`` (the concept table, from ``concepts.yml``).
``_toc.yml`` takes the chapters by glob, so a new notebook is a new chapter without editing
anything here. ``make book`` stages in book/ itself (``lessons/`` is
git-ignored); the test stages in a temporary folder.

Every build runs with warnings as errors (``-W -n --keep-going``): a broken link, a bad
heading level or a cell that raises during execution fails it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nbformat
import yaml

from minildm import student

BOOK = Path(__file__).resolve().parent
ROOT = BOOK.parent
LESSONS = "lessons"  # the staged, generated folder inside the book
PAGES = ("*.md", "_config.yml", "_toc.yml", "concepts.yml", "_static/*.css")
PROFILE_STAMP = "minildm-profile"  # in OUT/_build: the profile the outputs were made with


@dataclass(frozen=True)
class Lesson:
    """What the lesson map shows of one notebook."""

    number: str  # "02"
    stem: str  # "02_noise_schedules"
    title: str  # the first heading, without its number
    needs: tuple[str, ...]  # numbers of earlier lessons named in its "Needs" line


def lesson_notebooks(notebooks: Path) -> list[Path]:
    return sorted(notebooks.glob(student.LESSON_GLOB))


def _needs(first_cell: str, number: str) -> tuple[str, ...]:
    """Earlier lessons named in the '**Needs ...:**' paragraph: '01 (...)', '01–03', '00 and 02'."""
    match = re.search(r"\*\*Needs[^*]*\*\*(.*?)(?:\n\s*\n|\Z)", first_cell, re.S)
    if not match:
        return ()
    text = match.group(1)
    found = set()
    for start, end in re.findall(r"\b(\d\d)\s*[–-]\s*(\d\d)\b", text):
        found.update(f"{k:02d}" for k in range(int(start), int(end) + 1))
    found.update(re.findall(r"\b(\d\d)\b", text))
    return tuple(sorted(k for k in found if k < number))


def read_lesson(path: Path) -> Lesson:
    nb = nbformat.read(path, as_version=4)
    first = next((c.source for c in nb.cells if c.cell_type == "markdown"), "")
    heading = next((line for line in first.splitlines() if line.startswith("# ")), f"# {path.stem}")
    number = path.name[:2]
    # "# 02 · Noise schedules: how fast ..." -> "Noise schedules: how fast ..."
    title = re.sub(rf"^#\s+{number}\s*[·:.\-–—]?\s*", "", heading).strip()
    return Lesson(number, path.stem, title, _needs(first, number))


def readme_times(readme: Path) -> dict[str, dict[str, str]]:
    """{lesson number: {"smoke": ..., "cpu": ...}} from the README's lesson table (measured times)."""
    if not readme.exists():
        return {}
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in readme.read_text(encoding="utf-8").splitlines() if line.startswith("|")]
    header = next((row for row in rows if row and row[0] == "#"), None)
    if header is None:
        return {}
    columns = {profile: next((k for k, name in enumerate(header) if name.lower().startswith(profile)), None)
               for profile in ("smoke", "cpu", "gpu")}
    times = {}
    for row in rows:
        if re.fullmatch(r"\d\d", row[0]):
            times[row[0]] = {profile: row[k] for profile, k in columns.items()
                             if k is not None and k < len(row) and row[k]}
    return times


def _link(lesson: Lesson, text: str | None = None) -> str:
    return f"[{text or lesson.number}]({lesson.stem}.ipynb)"


def lesson_map(lessons: list[Lesson], times: dict[str, dict[str, str]], plan: dict) -> str:
    """The lesson map page: every lesson with what it needs and how long it runs in each profile."""
    by_number = {lesson.number: lesson for lesson in lessons}
    lines = [
        "# Lesson map",
        "",
        "Each lesson is one notebook; work through them in order. *Needs* lists the earlier lessons",
        "a lesson builds on (from the lesson's own first cell). Times are for running the whole",
        "notebook top to bottom, measured on a 2-core CPU that was also busy with other work (a range",
        "means several runs); *gpu* is the budget of the gpu profile (each lesson under 10 minutes on",
        "one GPU) until it is measured. Your own reading and exercise time comes on top: see the",
        "[teacher's guide](../teachers_guide.md) for estimates.",
        "",
        "| # | lesson | needs | smoke | cpu (2 cores) | gpu |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for lesson in lessons:
        needs = ", ".join(_link(by_number[k]) if k in by_number else k for k in lesson.needs) or "—"
        measured = times.get(lesson.number, {})
        lines.append(f"| {lesson.number} | {_link(lesson, lesson.title)} | {needs} | "
                     f"{measured.get('smoke', 'not measured')} | {measured.get('cpu', 'not measured')} | "
                     f"{measured.get('gpu', '< 10 min (budget)')} |")
    planned = [(number, entry["title"]) for number, entry in sorted(plan.items()) if number not in by_number]
    if planned:
        lines += ["", "Planned, not written yet: " + "; ".join(f"{n} {title}" for n, title in planned) + "."]
    lines += [
        "",
        "Profiles: `smoke` proves every cell runs (CI; under 60 s per lesson, pictures from the shipped",
        "checkpoints), `cpu` is the default without an accelerator (minutes per lesson, recognisable",
        "results), `gpu` the default with CUDA or Apple MPS (bigger models, better samples). Choose one",
        "with `MINILDM_PROFILE` before starting JupyterLab.",
        "",
    ]
    return "\n".join(lines)


def concept_table(lessons: list[Lesson], plan: dict) -> str:
    """The concept table page: every concept of the course, the lesson that teaches it, its source."""
    by_number = {lesson.number: lesson for lesson in lessons}
    lines = [
        "# Concepts and where they are taught",
        "",
        "Every idea of the course, the lesson that teaches it and the paper it comes from. The table",
        "is built from the course's lesson plan (the design notes' lesson list) and the papers each",
        "lesson cites; the seed documents the course was designed from are not part of this",
        "repository, so it cannot be checked against them. Lessons not written yet are marked",
        "*planned*; full references are on the [references](../references.md) page.",
        "",
        "| concept | lesson | source |",
        "| --- | --- | --- |",
    ]
    for number, entry in sorted(plan.items()):
        lesson = by_number.get(number)
        where = _link(lesson, f"{number} {entry['title']}") if lesson else f"{number} {entry['title']} (planned)"
        for concept in entry["concepts"]:
            lines.append(f"| {concept['name']} | {where} | {concept.get('source', '—')} |")
    lines.append("")
    return "\n".join(lines)


def _first_sentence(text: str, limit: int = 300) -> str:
    """The first sentence of a markdown paragraph, or '' when it cannot be cut cleanly."""
    text = " ".join(text.split())
    ends = [m.end() for m in re.finditer(r"[.?!](?=\s+[A-Z(*`$]|$)", text)
            if not re.search(r"\b(?:al|eq|eqs|sec|e\.g|i\.e|cf|Fig|vs)\.$", text[:m.end()])]
    sentence = text[:ends[0]] if ends else text
    balanced = sentence.count("$") % 2 == 0 and sentence.count("`") % 2 == 0
    table_safe = not re.search(r"(?<!\\)\|", sentence)  # a bare | would split the table cell
    return sentence if balanced and table_safe and len(sentence) <= limit else ""


def exercise_prompts(path: Path) -> list[tuple[str, str, str]]:
    """(function, check, prompt) of each checked exercise: the prompt is the bold lead of the
    markdown paragraph that introduces it and that paragraph's first sentence."""
    nb = nbformat.read(path, as_version=4)
    found, after = [], 0
    for ex in student.exercises(nb):
        markdown = [c.source for c in nb.cells[after:ex.cell] if c.cell_type == "markdown"]
        paragraphs = [p.strip() for p in "\n\n".join(markdown).split("\n\n") if p.strip().startswith("**")]
        prompt = ""
        if paragraphs:
            lead = re.match(r"\*\*(.+?)\*\*(.*)", paragraphs[-1], re.S)
            prompt = f"**{lead.group(1).strip()}** {_first_sentence(lead.group(2))}".strip() if lead else ""
        check = ""
        if ex.check_cell is not None:
            call = student.CHECK_CALL.search(nb.cells[ex.check_cell].source)
            check = call.group(0).rstrip("( ") if call else ""
            after = ex.check_cell + 1
        found.append((ex.name, check, prompt))
    return found


def exercise_list(lessons: list[Lesson], notebooks: Path) -> str:
    """The exercise list page: every checked exercise of every lesson, what it asks, its check."""
    lines = [
        "# Exercises, lesson by lesson",
        "",
        "Every self-checking exercise of every lesson, read from the notebooks: the function the",
        "learner writes, the check that grades it, and the first sentence of what it asks. Open",
        "exercises without a check are in the lessons only. How the checks grade, and suggested",
        "assignments with time estimates, are in the [teacher's guide](../teachers_guide.md).",
        "",
    ]
    for lesson in lessons:
        prompts = exercise_prompts(notebooks / f"{lesson.stem}.ipynb")
        lines += [f"## {lesson.number} · {lesson.title}", "", f"{len(prompts)} checked exercises in "
                  f"{_link(lesson, lesson.stem)}.", "", "| function | check | what it asks |", "| --- | --- | --- |"]
        lines += [f"| `{name}` | `{check}` | {prompt} |" for name, check, prompt in prompts]
        lines.append("")
    return "\n".join(lines)


def _write_if_changed(path: Path, text: str) -> None:
    """Write text unless the file already holds it (an unchanged page is not rebuilt)."""
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def stage(dest: Path = BOOK, notebooks: Path = ROOT / "notebooks", *, student_versions: bool = False,
          readme: Path = ROOT / "README.md") -> list[Path]:
    """Make ``dest`` a complete book source: the pages of book/ (when dest is elsewhere), the lessons
    (or their student versions) and the generated pages in ``dest/lessons``.

    Returns the staged notebooks. Notebooks no longer in ``notebooks`` are removed from the stage.
    """
    sources = lesson_notebooks(notebooks)
    if not sources:
        raise ValueError(f"notebooks ({notebooks}) holds no lessons named {student.LESSON_GLOB}")
    dest = Path(dest)
    if dest.resolve() != BOOK:
        dest.mkdir(parents=True, exist_ok=True)
        for pattern in PAGES:
            for page in BOOK.glob(pattern):
                target = dest / page.relative_to(BOOK)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(page, target)
    lessons_dir = dest / LESSONS
    lessons_dir.mkdir(exist_ok=True)
    for stale in set(lessons_dir.glob("*.ipynb")) - {lessons_dir / p.name for p in sources}:
        stale.unlink()
    if student_versions:
        with tempfile.TemporaryDirectory() as tmp:
            for made in student.make_student_versions(notebooks, tmp):
                _write_if_changed(lessons_dir / made.name, made.read_text(encoding="utf-8"))
    else:
        for path in sources:
            target = lessons_dir / path.name
            if not target.exists() or target.read_bytes() != path.read_bytes():
                shutil.copy(path, target)  # a new mtime: Sphinx re-reads (re-executes) changed lessons only
    plan = yaml.safe_load((BOOK / "concepts.yml").read_text(encoding="utf-8"))
    plan = {f"{int(k):02d}": v for k, v in plan.items()}
    lessons = [read_lesson(p) for p in sources]
    _write_if_changed(lessons_dir / "map.md", lesson_map(lessons, readme_times(readme), plan))
    _write_if_changed(lessons_dir / "concepts.md", concept_table(lessons, plan))
    _write_if_changed(lessons_dir / "exercises.md", exercise_list(lessons, notebooks))
    return sorted(lessons_dir.glob("*.ipynb"))


def build(source: Path = BOOK, out: Path | None = None, *, execute: bool = True,
          profile: str | None = None) -> subprocess.CompletedProcess:
    """Run ``jupyter-book build`` on a staged ``source`` with warnings as errors; HTML in ``out/_build/html``.

    With ``execute`` every lesson runs (``MINILDM_PROFILE`` = ``profile``, else the environment's,
    else smoke); otherwise the stored notebooks are shown as they are. Returns the finished
    process (``returncode``, and ``stdout`` with Sphinx's log and warnings).
    """
    source = Path(source)
    out = Path(out) if out is not None else source
    out.mkdir(parents=True, exist_ok=True)
    profile = profile or os.environ.get("MINILDM_PROFILE") or "smoke"
    config = yaml.safe_load((source / "_config.yml").read_text(encoding="utf-8"))
    config["execute"]["execute_notebooks"] = "force" if execute else "off"
    (out / "_build").mkdir(exist_ok=True)
    config_path = out / "_build" / "minildm-config.yml"  # _config.yml with the execution mode set
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    # a page is re-read only when its source changed: rebuild all when the outputs' profile changes
    stamp = out / "_build" / PROFILE_STAMP
    wanted = profile if execute else "not executed"
    rebuild_all = not stamp.exists() or stamp.read_text() != wanted
    command = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(source), "--path-output", str(out),
               "--config", str(config_path), "-W", "-n", "--keep-going"] + (["--all"] if rebuild_all else [])
    # no MPLBACKEND (make test sets Agg): the kernel's inline backend is what puts the figures in the book
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env["MINILDM_PROFILE"] = profile
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done.stdout = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout)  # Jupyter Book colours its log even into a pipe
    if done.returncode == 0:
        stamp.write_text(wanted)
    else:
        stamp.unlink(missing_ok=True)
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=BOOK,
                        help="output folder; the HTML lands in OUT/_build/html (default: book/)")
    parser.add_argument("--notebooks", type=Path, default=ROOT / "notebooks", help="the lessons (default: notebooks/)")
    parser.add_argument("--no-execute", action="store_true", help="show the stored notebooks without running them")
    parser.add_argument("--student", action="store_true",
                        help="the student versions (solutions removed); implies --no-execute")
    args = parser.parse_args(argv)
    staged = stage(BOOK, args.notebooks, student_versions=args.student)
    print(f"book: staged {len(staged)} lessons in {BOOK / LESSONS}", flush=True)
    done = build(BOOK, args.out, execute=not (args.no_execute or args.student))
    print(done.stdout)
    html = args.out / "_build" / "html" / "index.html"
    print(f"book: {'built ' + str(html) if done.returncode == 0 else 'FAILED (warnings are errors)'}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
