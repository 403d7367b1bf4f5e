"""The files a learner sets up from: environment.yml, pyproject.toml, the README's commands, CI."""

import pathlib
import re
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_installs_this_package_with_pip():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge", "nodefaults"]
    deps = env["dependencies"]
    assert any(isinstance(d, str) and d.startswith("python") for d in deps)
    assert "pip" in deps
    pip_sections = [d["pip"] for d in deps if isinstance(d, dict)]
    assert pip_sections == [['-e ".[dev]"']] or pip_sections == [["-e .[dev]"]], pip_sections
    # conda must not install torch itself: the package's own requirement decides the build
    assert not any(isinstance(d, str) and d.startswith(("pytorch", "torch")) for d in deps)


def test_runtime_requirements_keep_torch_a_range_and_leave_out_torchvision():
    project = pyproject()["project"]
    deps = project["dependencies"]
    torch_req = [d for d in deps if re.match(r"torch\b", d)]
    assert torch_req and ">=" in torch_req[0] and "==" not in torch_req[0]
    everything = deps + [d for extra in project["optional-dependencies"].values() for d in extra]
    assert not [d for d in everything if d.startswith(("torchvision", "torch-fidelity", "torchmetrics[image]"))]
    for needed in ("diffusers", "peft", "nbval", "nbgrader", "playwright"):
        assert any(d.startswith(needed) for d in project["optional-dependencies"]["dev"]), needed
    # FID / KID (minildm.metrics) are part of the lessons, not only of the tests
    assert any(d.startswith("torchmetrics") for d in deps)
    assert project["optional-dependencies"]["docs"] == ["jupyter-book<2"]


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make lab" in readme
    assert re.search(r"^make test\b", ci, re.M)
    assert "torch==2.13.0" in (ROOT / ".ci" / "constraints.txt").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test:", makefile, re.M) and re.search(r"^lab:", makefile, re.M)
    assert "MINILDM_PROFILE=smoke" in makefile and "--nbval-lax" in makefile


def test_readme_lesson_map_lists_every_notebook():
    readme = (ROOT / "README.md").read_text()
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        assert nb.stem in readme, f"README lesson map misses {nb.name}"
