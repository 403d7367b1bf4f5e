"""Student versions of the lessons: solutions out, ``raise NotImplementedError()`` in.

An exercise is a code cell whose solution sits between ``### BEGIN SOLUTION`` and
``### END SOLUTION`` (nbgrader's markup), followed by a code cell that calls a check from
``minildm.checks``. The student version is made mechanically, as Neuromatch does, by
nbgrader's own preprocessors run through nbconvert, without a course directory or a
database: ``LockCells``, ``ClearSolutions``, ``ClearOutput``, ``ClearHiddenTests`` and
``CheckCellMetadata``, in the order ``nbgrader generate_assignment`` runs them.

Cell metadata. nbgrader's full pipeline (``generate_assignment``, ``autograde``) needs
every solution region to sit in a cell marked as a solution cell, with a ``grade_id``.
We keep that rule (``enforce_metadata=True``, nbgrader's default): our lesson notebooks
carry the metadata (``mark_exercises`` writes it: the exercise cell is a solution cell,
its check cell a locked 1-point autograder-test cell), so a teacher can drop them into an
nbgrader course unchanged, and whatever ``minildm student`` accepts, nbgrader accepts.
A teacher's own unmarked notebook is refused with the cells to mark; pass
``enforce_metadata=False`` to clear it anyway.

Executed top to bottom, a student notebook may fail only with ``NotImplementedError``,
in the exercises' cells (``execute`` and ``errors`` run that check).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbformat import NotebookNode

BEGIN, END = "BEGIN SOLUTION", "END SOLUTION"
LESSON_GLOB = "[0-9][0-9]_*.ipynb"
CHECK_CALL = re.compile(r"\bchecks\.\w+\s*\(")


@dataclass(frozen=True)
class Exercise:
    """One exercise: the function (or value) it asks for and where it lives."""

    name: str
    cell: int  # index of the code cell holding the solution region
    check_cell: int | None  # index of the next code cell if it calls ``checks.``, else None


@dataclass(frozen=True)
class CellError:
    """An error raised by one cell of an executed notebook."""

    cell: int
    ename: str
    evalue: str


def _read(notebook: str | os.PathLike | NotebookNode) -> NotebookNode:
    if isinstance(notebook, NotebookNode):
        return notebook
    return nbformat.read(os.fspath(notebook), as_version=4)


def _exercise_name(source: str, k: int) -> str:
    lines = source.split("\n")
    begin = next(i for i, line in enumerate(lines) if BEGIN in line)
    defs = [m.group(1) for line in lines[:begin] if (m := re.match(r"\s*def\s+(\w+)\s*\(", line))]
    if defs:
        return defs[-1]
    assigned = [m.group(1) for line in lines[begin:] if (m := re.match(r"\s*(\w+)\s*=[^=]", line))]
    return assigned[0] if assigned else f"exercise_{k + 1}"


def exercises(notebook: str | os.PathLike | NotebookNode) -> list[Exercise]:
    """The exercises of a notebook, in order: code cells with a solution region and their check cell."""
    cells = _read(notebook).cells
    found = []
    for i, cell in enumerate(cells):
        if cell.cell_type != "code" or BEGIN not in cell.source:
            continue
        following = next((j for j in range(i + 1, len(cells)) if cells[j].cell_type == "code"), None)
        calls_check = following is not None and CHECK_CALL.search(cells[following].source)
        found.append(Exercise(_exercise_name(cell.source, len(found)), i, following if calls_check else None))
    return found


def mark_exercises(notebook: NotebookNode) -> NotebookNode:
    """Add nbgrader metadata, in place: each exercise a solution cell, its check a 1-point test cell.

    Cells that already carry nbgrader metadata are left as they are. Returns the notebook.
    """
    cells = notebook.cells
    used = {c.metadata["nbgrader"].get("grade_id") for c in cells if "nbgrader" in c.metadata}

    def unique(grade_id: str) -> str:
        base, k = grade_id, 1
        while grade_id in used:
            k += 1
            grade_id = f"{base}_{k}"
        used.add(grade_id)
        return grade_id

    for ex in exercises(notebook):
        if "nbgrader" not in cells[ex.cell].metadata:
            cells[ex.cell].metadata["nbgrader"] = {
                "grade": False, "grade_id": unique(ex.name), "locked": False,
                "schema_version": 3, "solution": True, "task": False}
        if ex.check_cell is not None and "nbgrader" not in cells[ex.check_cell].metadata:
            cells[ex.check_cell].metadata["nbgrader"] = {
                "grade": True, "grade_id": unique(f"check_{ex.name}"), "locked": True, "points": 1,
                "schema_version": 3, "solution": False, "task": False}
    return notebook


def _unmarked_solution_cells(nb: NotebookNode) -> list[int]:
    return [i for i, cell in enumerate(nb.cells)
            if BEGIN in cell.source and not cell.metadata.get("nbgrader", {}).get("solution", False)]


def _exporter(enforce_metadata: bool):
    try:
        from nbconvert.exporters import NotebookExporter
        from nbgrader.preprocessors import (CheckCellMetadata, ClearHiddenTests, ClearOutput,
                                            ClearSolutions, LockCells)
        from traitlets.config import Config
    except ImportError as err:
        raise ImportError(f"student versions need nbgrader and nbconvert ({err}); "
                          f"install them with: pip install 'minildm[dev]'") from err
    config = Config()
    config.NotebookExporter.preprocessors = [LockCells, ClearSolutions, ClearOutput,
                                             ClearHiddenTests, CheckCellMetadata]
    config.ClearSolutions.enforce_metadata = enforce_metadata
    config.ClearHiddenTests.enforce_metadata = enforce_metadata
    return NotebookExporter(config=config)


def make_student_versions(src: str | os.PathLike, out: str | os.PathLike, *,
                          enforce_metadata: bool = True) -> list[Path]:
    """Write the student version of ``src`` (a notebook, or a folder of ``NN_*.ipynb``) into ``out``.

    Returns the paths written, one per notebook, with the same file names.
    """
    src, out = Path(src), Path(out)
    if not src.exists():
        raise FileNotFoundError(f"src {src} does not exist; give a notebook or a folder of NN_*.ipynb")
    if src.is_dir():
        notebooks, source_dir = sorted(src.glob(LESSON_GLOB)), src
        if not notebooks:
            raise ValueError(f"src {src} holds no lesson notebooks (files named {LESSON_GLOB})")
    elif src.suffix == ".ipynb":
        notebooks, source_dir = [src], src.parent
    else:
        raise ValueError(f"src must be a .ipynb notebook or a folder of them, got {src}")
    if out.resolve() == source_dir.resolve():
        raise ValueError(f"out ({out}) is the folder of the source notebooks; the student versions "
                         f"would overwrite the solutions. Choose another folder, e.g. student/")
    if out.exists() and not out.is_dir():
        raise ValueError(f"out must be a folder, but {out} is a file")

    exporter = _exporter(enforce_metadata)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in notebooks:
        nb = _read(path)
        unmarked = _unmarked_solution_cells(nb)
        if enforce_metadata and unmarked:
            raise ValueError(
                f"{path}: cells {unmarked} (0-based) hold a solution region but are not nbgrader "
                f"solution cells, which nbgrader refuses. Mark them with "
                f"minildm.student.mark_exercises(nb), or pass enforce_metadata=False. (Any cell "
                f"with the text {BEGIN!r} counts, markdown too: do not quote the marker in prose.)")
        try:
            body, _ = exporter.from_notebook_node(nb, resources={})
        except Exception as err:  # nbgrader raises RuntimeError / ValidationError with the reason
            raise ValueError(f"{path}: cannot make a student version: {err}") from err
        target = out / path.name
        target.write_text(body, encoding="utf-8")
        written.append(target)
    return written


def execute(notebook: str | os.PathLike | NotebookNode, *, cwd: str | os.PathLike | None = None,
            env: dict[str, str] | None = None, timeout: int = 600) -> NotebookNode:
    """Run a notebook top to bottom in a kernel of this Python, going on past errors.

    ``cwd`` defaults to the notebook's folder; ``env`` is added to this process's
    environment (e.g. ``{"MINILDM_PROFILE": "smoke"}``). Returns the executed notebook (a
    notebook node passed in is executed in place).
    """
    import ipykernel.kernelspec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient

    class ThisPython(KernelSpecManager):
        """Every kernel name means ipykernel on sys.executable, whatever kernels are installed."""

        def get_kernel_spec(self, kernel_name):
            return self.kernel_spec_class(resource_dir=ipykernel.kernelspec.RESOURCES,
                                          **ipykernel.kernelspec.get_kernel_dict())

    if cwd is None and not isinstance(notebook, NotebookNode):
        cwd = Path(notebook).resolve().parent
    nb = _read(notebook)
    km = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=ThisPython())
    client = NotebookClient(nb, km=km, timeout=timeout, allow_errors=True,
                            resources={"metadata": {"path": os.fspath(cwd or Path.cwd())}})
    client.execute(env={**os.environ, **(env or {})})
    return nb


def errors(notebook: NotebookNode) -> list[CellError]:
    """Every error output of an executed notebook, with the index of its cell."""
    return [CellError(i, out.ename, out.evalue)
            for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"
            for out in cell.outputs if out.output_type == "error"]
