"""minildm.student: student notebooks lose their solutions and outputs, keep the rest, and fail only with NotImplementedError."""

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from minildm import cli, student

SOLUTION_LINE = "    return 2 * x  # the answer"
EXERCISE = f'''def double(x):
    """Twice x."""
    ### BEGIN SOLUTION
{SOLUTION_LINE}
    ### END SOLUTION'''
CHECK = '''checks.compare(double, lambda x: 2 * x, [{"x": 1.5}, {"x": -2.0}], name="double")
### BEGIN HIDDEN TESTS
assert double(10) == 20
### END HIDDEN TESTS'''
VALUE_EXERCISE = '''answer = ...
### BEGIN SOLUTION
answer = 0.25
### END SOLUTION'''


def lesson() -> nbformat.NotebookNode:
    nb = new_notebook(cells=[
        new_markdown_cell("# A tiny lesson\n\nWhy it matters.\n\n## Learning goals\n- double a number"),
        new_code_cell("from minildm import checks\nprint('ready')", execution_count=1,
                      outputs=[new_output("stream", name="stdout", text="ready\n")]),
        new_code_cell(EXERCISE, execution_count=2),
        new_code_cell(CHECK, execution_count=3,
                      outputs=[new_output("stream", name="stdout", text="✓ double matches minildm on 2 inputs\n")]),
        new_markdown_cell("A value this time."),
        new_code_cell(VALUE_EXERCISE),
        new_code_cell('checks.check_value(answer, 0.25, name="answer")'),
        new_code_cell("print('the lesson goes on')"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return student.mark_exercises(nb)


@pytest.fixture
def src(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    nbformat.write(lesson(), folder / "01_tiny.ipynb")
    return folder


def test_exercises_lists_each_solution_cell_and_the_check_after_it():
    nb = lesson()
    nb.cells.append(new_code_cell("def unchecked():\n    ### BEGIN SOLUTION\n    pass\n    ### END SOLUTION"))
    nb.cells.append(new_code_cell("print('not a check')"))
    assert student.exercises(nb) == [student.Exercise("double", 2, 3), student.Exercise("answer", 5, 6),
                                     student.Exercise("unchecked", 8, None)]


def test_marked_metadata_is_valid_for_nbgrader():
    from nbgrader.nbgraderformat import MetadataValidator

    nb = lesson()
    MetadataValidator().validate_nb(nb)  # raises on missing ids, points or duplicates
    solution, check = nb.cells[2].metadata["nbgrader"], nb.cells[3].metadata["nbgrader"]
    assert solution["solution"] and not solution["grade"] and solution["grade_id"] == "double"
    assert check["grade"] and check["locked"] and check["points"] == 1 and not check["solution"]
    assert "nbgrader" not in nb.cells[7].metadata


def test_student_version_removes_solutions_and_outputs_and_keeps_the_rest(src, tmp_path):
    written = student.make_student_versions(src, tmp_path / "student")
    assert written == [tmp_path / "student" / "01_tiny.ipynb"]
    original, nb = nbformat.read(src / "01_tiny.ipynb", 4), nbformat.read(written[0], 4)
    assert len(nb.cells) == len(original.cells)

    exercise = nb.cells[2].source
    assert SOLUTION_LINE not in exercise and "BEGIN SOLUTION" not in exercise
    assert exercise.startswith('def double(x):\n    """Twice x."""\n')
    assert "    raise NotImplementedError()" in exercise
    assert "assert double(10)" not in nb.cells[3].source and nb.cells[3].source.startswith("checks.compare(")
    assert "answer = 0.25" not in nb.cells[5].source and nb.cells[5].source.startswith("answer = ...")
    for i in (0, 1, 4, 6, 7):
        assert nb.cells[i].source == original.cells[i].source
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    # the checks are locked so a learner cannot edit them away
    assert nb.cells[3].metadata["editable"] is False


def test_student_notebook_fails_only_with_not_implemented_error_in_each_exercise(src, tmp_path):
    [path] = student.make_student_versions(src, tmp_path / "student")
    executed = student.execute(path, timeout=120)
    errors = student.errors(executed)
    assert {e.ename for e in errors} == {"NotImplementedError"}
    # the function exercise fails in its check cell, the value exercise in its own cell and its check
    assert sorted({e.cell for e in errors}) == [3, 5, 6]
    assert executed.cells[7].outputs[0]["text"] == "the lesson goes on\n"


def test_solution_notebook_runs_clean(src):
    executed = student.execute(src / "01_tiny.ipynb", timeout=120)
    assert student.errors(executed) == []
    assert "✓ double matches minildm on 2 inputs" in executed.cells[3].outputs[0]["text"]


def test_single_notebook_and_cli(src, tmp_path, capsys):
    out = tmp_path / "deep" / "student"
    assert cli.main(["student", str(src / "01_tiny.ipynb"), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "01_tiny.ipynb")
    assert "NotImplementedError" in nbformat.read(out / "01_tiny.ipynb", 4).cells[2].source


def test_only_numbered_lessons_are_taken_from_a_folder(src, tmp_path):
    nbformat.write(lesson(), src / "scratch.ipynb")
    written = student.make_student_versions(src, tmp_path / "student")
    assert [p.name for p in written] == ["01_tiny.ipynb"]


def test_refuses_to_overwrite_the_sources(src):
    with pytest.raises(ValueError, match="overwrite the solutions"):
        student.make_student_versions(src, src)
    with pytest.raises(ValueError, match="overwrite the solutions"):
        student.make_student_versions(src / "01_tiny.ipynb", src / ".")


def test_refuses_a_folder_without_lessons_and_a_missing_src(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    nbformat.write(lesson(), empty / "notes.ipynb")
    with pytest.raises(ValueError, match="no lesson notebooks"):
        student.make_student_versions(empty, tmp_path / "student")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        student.make_student_versions(tmp_path / "nowhere", tmp_path / "student")


def test_unmarked_solution_cells_are_refused_like_nbgrader_does_unless_asked(tmp_path):
    nb = lesson()
    del nb.cells[5].metadata["nbgrader"]
    folder = tmp_path / "nb"
    folder.mkdir()
    nbformat.write(nb, folder / "02_unmarked.ipynb")
    with pytest.raises(ValueError, match=r"cells \[5\].*mark_exercises"):
        student.make_student_versions(folder, tmp_path / "student")
    [path] = student.make_student_versions(folder, tmp_path / "student", enforce_metadata=False)
    assert "answer = 0.25" not in nbformat.read(path, 4).cells[5].source
