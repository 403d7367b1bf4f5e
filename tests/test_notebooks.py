"""Every lesson in notebooks/ has our shape (STYLE.md) and a student version that fails only where an exercise is.

The lessons themselves run under nbval (``make test``); here each is checked for what
nbval cannot see: stored clean, a title and learning goals, at least three self-checking
exercises with nbgrader metadata, a summary, and a student version that runs top to
bottom (smoke profile) with ``NotImplementedError`` as its only error, raised in every
exercise (its cell or its check) and nowhere else. The student run is the slow part, so
each notebook is executed once.
"""

import re
from pathlib import Path

import nbformat
import pytest

from minildm import student

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
LESSONS = sorted(NOTEBOOKS.glob(student.LESSON_GLOB))
each_lesson = pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


@each_lesson
def test_stored_without_outputs_or_execution_counts(path):
    dirty = [i for i, cell in enumerate(read(path).cells)
             if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, f"{path.name}: cells {dirty} keep outputs or execution counts; clear them before committing"


@each_lesson
def test_opens_with_a_title_and_learning_goals(path):
    first = next(cell for cell in read(path).cells if cell.cell_type == "markdown")
    assert re.match(r"#\s+\S", first.source.lstrip()), f"{path.name}: the first markdown cell must start with a '# Title'"
    lines = first.source.splitlines()
    start = next((k for k, line in enumerate(lines) if "learning goals" in line.lower()), None)
    assert start is not None, f"{path.name}: the first markdown cell needs a 'Learning goals' list"
    bullets = 0
    for line in lines[start + 1:]:  # list items, their indented continuations and blank lines
        if re.match(r"\s*(?:[-*+]|\d+\.)\s+\S", line):
            bullets += 1
        elif line.strip() and not line[0].isspace():
            break
    assert bullets >= 3, f"{path.name}: {bullets} learning goals listed under 'Learning goals'; STYLE.md asks for 3 to 5"


@each_lesson
def test_has_three_exercises_each_followed_by_its_check(path):
    nb = read(path)
    exercises = student.exercises(nb)
    assert len(exercises) >= 3, f"{path.name}: {len(exercises)} exercises with ### BEGIN SOLUTION; at least 3 expected"
    unchecked = [ex.name for ex in exercises if ex.check_cell is None]
    assert not unchecked, f"{path.name}: exercises {unchecked} are not followed by a code cell calling checks."


@each_lesson
def test_exercises_carry_nbgrader_metadata(path):
    from nbgrader.nbgraderformat import MetadataValidator

    nb = read(path)
    MetadataValidator().validate_nb(nb)
    for ex in student.exercises(nb):
        meta = nb.cells[ex.cell].metadata.get("nbgrader", {})
        assert meta.get("solution"), f"{path.name}: exercise {ex.name} is not an nbgrader solution cell (mark_exercises)"
        check = nb.cells[ex.check_cell].metadata.get("nbgrader", {}) if ex.check_cell is not None else {}
        assert check.get("grade") and check.get("locked"), f"{path.name}: the check of {ex.name} is not a locked grade cell"


@each_lesson
def test_ends_with_a_summary(path):
    headings = [line for cell in read(path).cells if cell.cell_type == "markdown"
                for line in cell.source.splitlines() if re.match(r"#+\s", line)]
    assert any("summary" in h.lower() for h in headings), f"{path.name}: no '## Summary' section"


@each_lesson
def test_student_version_fails_only_with_not_implemented_error_once_per_exercise(path, tmp_path):
    [student_path] = student.make_student_versions(path, tmp_path)
    executed = student.execute(student_path, cwd=NOTEBOOKS, timeout=600,
                               env={"MINILDM_PROFILE": "smoke", "MPLBACKEND": "Agg"})
    errors = student.errors(executed)
    others = [e for e in errors if e.ename != "NotImplementedError"]
    assert not others, f"{path.name}: the student version fails with other errors: " + "; ".join(
        f"cell {e.cell}: {e.ename}: {e.evalue}" for e in others)
    exercises = student.exercises(read(path))
    failing = {e.cell for e in errors}
    silent = [ex.name for ex in exercises if not {ex.cell, ex.check_cell} & failing]
    assert not silent, f"{path.name}: exercises {silent} raise no NotImplementedError in the student version"
    allowed = {i for ex in exercises for i in (ex.cell, ex.check_cell)}
    leaking = sorted(failing - allowed)
    assert not leaking, (f"{path.name}: cells {leaking} raise NotImplementedError in the student version but are "
                         f"not exercises or their checks: later cells must not use an exercise's result")
