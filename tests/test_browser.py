"""The explorers work in a real browser: JupyterLab runs a lesson, a slider moves, the picture changes.

The unit tests (test_widgets.py) set a control's value from Python; this is the path a learner
takes instead. JupyterLab is started on 127.0.0.1 (a random port and token, the smoke profile,
settings and workspaces in a temporary folder) on a copy of the lesson, and Debian's Chromium,
driven by Playwright, opens it, runs all cells from the Run menu, moves a slider with the
keyboard and switches a dropdown the way a hand would, then compares the <img> the widget's
Output shows before and after. ``test_..._notices_a_broken_callback`` runs the same driver on a
copy whose explorer redraws nothing and checks that the driver fails: the test can fail.

No browser is downloaded: ``.ci/run`` installs Debian's ``chromium`` with apt. Without
``/usr/bin/chromium`` these tests skip, unless ``MINILDM_REQUIRE_BROWSER=1`` (set by CI) makes
that a failure. On failure a screenshot of the page and JupyterLab's log are saved and their
paths printed.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CHROMIUM = Path(os.environ.get("MINILDM_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]
SCHEDULES = "02_noise_schedules.ipynb"
GUIDANCE = "07_conditioning_and_guidance.ipynb"
KERNEL_START_TIMEOUT_S = 120
RUN_ALL_TIMEOUT_S = 300  # a smoke-profile lesson runs in under 60 s; the browser and a busy machine add to it
REDRAW_TIMEOUT_S = 60  # a redraw takes well under a second once the kernel is idle
# JupyterLab settings for a fresh profile: start the notebook's kernel without asking, fetch no news,
# and keep every cell in the page (no windowing), so the test sees all prompts and outputs
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"autoStartDefaultKernel": True,
                                                                  "windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
}


def _browser_or_skip():
    """playwright's sync API, once Chromium is known to be there; a skip without it (a failure in CI)."""
    required = os.environ.get("MINILDM_REQUIRE_BROWSER") == "1"
    if not CHROMIUM.exists():
        reason = f"no Chromium at {CHROMIUM}: install Debian's chromium (apt-get install chromium), as .ci/run does"
        if required:
            pytest.fail(reason)
        pytest.skip(reason)
    if required:
        import playwright.sync_api

        return playwright.sync_api
    return pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install 'minildm[dev]')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A JupyterLab server on 127.0.0.1 serving ``root``, with its own settings, in the smoke profile."""

    def __init__(self, root: Path, home: Path):
        self.root, self.port, self.token = root, _free_port(), secrets.token_hex(16)
        self.log_path = home / "jupyterlab.log"
        settings = home / "settings"
        for name, values in LAB_SETTINGS.items():
            (settings / name).parent.mkdir(parents=True, exist_ok=True)
            (settings / name).write_text(json.dumps(values))
        env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # the kernel draws inline, as for a learner
        env.update(MINILDM_PROFILE="smoke", JUPYTERLAB_SETTINGS_DIR=str(settings),
                   JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
                   JUPYTER_CONFIG_DIR=str(home / "config"), IPYTHONDIR=str(home / "ipython"))
        command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                   f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
                   f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}", "--allow-root"]
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(command, env=env, cwd=root, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_until_up(timeout=120)

    def _wait_until_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.process.returncode}; log: {self.log_path}")
            try:
                with urllib.request.urlopen(self.url("api/status"), timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"JupyterLab did not answer on port {self.port} within {timeout} s; log: {self.log_path}")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}"

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


@pytest.fixture(scope="module")
def browser():
    sync_api = _browser_or_skip()
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def lab(browser, tmp_path_factory):
    """A JupyterLab on an empty temporary folder; each test copies the notebook it opens into it."""
    root, home = tmp_path_factory.mktemp("lab-root"), tmp_path_factory.mktemp("lab-home")
    server = Lab(root, home)
    yield server
    server.close()


def save_screenshot(page, path: Path, lab: Lab) -> None:
    """Save what the page shows (the explorer scrolled into view, if there is one) and say where."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        explorer = page.locator(".widget-vbox .widget-output")
        if explorer.count():  # JupyterLab scrolls inside the page: bring the widget into the picture
            explorer.first.scroll_into_view_if_needed(timeout=5_000)
        page.screenshot(path=str(path))
        print(f"browser test failed: screenshot {path}, JupyterLab log {lab.log_path}")
    except Exception as err:  # the page may be gone; the test's own error matters more
        print(f"browser test failed; no screenshot ({err}); JupyterLab log {lab.log_path}")


@contextmanager
def opened(lab: Lab, browser, notebook: nbformat.NotebookNode, name: str, artifacts: Path):
    """Write ``notebook`` into the lab as ``name``, open it in a new page, yield the page.

    On any failure inside, save a screenshot and print where it and the lab's log are."""
    nbformat.write(notebook, lab.root / name)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    try:
        page.goto(lab.url(f"lab/tree/{name}"))
        wait_for_kernel(page)
        yield page
    except BaseException:
        save_screenshot(page, artifacts / f"{Path(name).stem}.png", lab)
        raise
    finally:
        page.close()
        (lab.root / name).unlink(missing_ok=True)


def wait_for_kernel(page) -> None:
    """Wait until the notebook's kernel has started and is idle (before that, Run All does nothing)."""
    page.wait_for_function(
        """() => {
            const name = document.querySelector('.jp-NotebookPanel .jp-Toolbar-kernelName');
            const status = document.querySelector('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator');
            return name && !/No Kernel/.test(name.textContent) && status && status.dataset.status === 'idle';
        }""", timeout=KERNEL_START_TIMEOUT_S * 1000)


def run_all_cells(page) -> None:
    """Run > Run All Cells, as a learner would; wait for the run to end and require that every cell ran."""
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name=re.compile(r"^Run All Cells")).click()
    # queued and running cells show [*]; the run is over when none does and some cell has a count
    # (a cell that raises stops the run: the cells after it fall back to [ ])
    page.wait_for_function(
        """() => {
            const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent);
            return !prompts.some(p => p.includes('*')) && prompts.some(p => /\\[\\d+\\]/.test(p));
        }""", timeout=RUN_ALL_TIMEOUT_S * 1000)
    cells = page.locator(".jp-CodeCell")
    prompts = cells.locator(".jp-InputPrompt").all_inner_texts()
    not_run = [i for i, prompt in enumerate(prompts) if not re.search(r"\[\d+\]", prompt)]
    if not_run:
        failed = max(not_run[0] - 1, 0)  # the run stopped at the cell before the first one left unrun
        raise AssertionError(f"the run stopped at code cell {failed}:\n"
                             + cells.nth(failed).locator(".jp-OutputArea").inner_text()[-3000:])


def widget(page, control: str, description: str):
    """The ipywidgets control (``slider`` or ``dropdown``) whose label reads ``description``."""
    label = page.locator(".widget-label", has_text=re.compile(rf"^\s*{re.escape(description)}\s*$"))
    return page.locator(f".widget-{control}, .widget-h{control}").filter(has=label).first


def shown_image(page) -> str:
    """The src (a PNG data URL) of the picture the (first) explorer's Output widget shows."""
    image = page.locator(".widget-vbox .widget-output img").first
    image.wait_for()
    return image.get_attribute("src")


def wait_for_new_image(page, before: str, what: str, timeout_s: float) -> str:
    """Poll the explorer's picture until it differs from ``before``; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = shown_image(page)
        if now != before:
            return now
        page.wait_for_timeout(250)
    raise AssertionError(f"the picture did not change within {timeout_s} s after {what}")


def move_slider(page, description: str, presses: int = 5, key: str = "ArrowRight") -> None:
    """Focus the slider's handle and press ``key``: the browser sends the new value to the kernel."""
    handle = widget(page, "slider", description).locator(".noUi-handle")
    readout = widget(page, "slider", description).locator(".widget-readout")
    value = readout.inner_text()
    handle.focus()
    for _ in range(presses):
        page.keyboard.press(key)
    page.wait_for_function("([el, old]) => el.textContent !== old", arg=[readout.element_handle(), value])


def drive_schedule_explorer(page, timeout_s: float = REDRAW_TIMEOUT_S) -> None:
    """Move the t slider, then switch the schedule; after each the picture must change."""
    before = shown_image(page)
    move_slider(page, "t")
    after_t = wait_for_new_image(page, before, "moving the t slider", timeout_s)
    select = widget(page, "dropdown", "schedule").locator("select")
    options = select.locator("option").all_inner_texts()
    current = select.input_value()
    select.select_option(next(o for o in options if o != current))
    wait_for_new_image(page, after_t, "switching the schedule", timeout_s)


def drive_guidance_explorer(page, timeout_s: float = REDRAW_TIMEOUT_S) -> None:
    """Move the guidance scale, then the seed; after each the picture must change."""
    before = shown_image(page)
    move_slider(page, "guidance scale", presses=2)
    after_scale = wait_for_new_image(page, before, "moving the guidance scale slider", timeout_s)
    move_slider(page, "seed", presses=1)
    wait_for_new_image(page, after_scale, "moving the seed slider", timeout_s)


def lesson(name: str) -> nbformat.NotebookNode:
    """A lesson notebook as stored (no outputs)."""
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def explorer_cell(nb: nbformat.NotebookNode, factory: str) -> int:
    """The index of the code cell that builds the explorer with ``factory(...)``."""
    return next(i for i, cell in enumerate(nb.cells) if cell.cell_type == "code" and f"{factory}(" in cell.source)


def test_schedule_explorer_redraws_in_the_browser(lab, browser, tmp_path):
    with opened(lab, browser, lesson(SCHEDULES), SCHEDULES, tmp_path) as page:
        run_all_cells(page)
        drive_schedule_explorer(page)


@pytest.mark.skipif(not (NOTEBOOKS / GUIDANCE).exists(), reason=f"lesson {GUIDANCE} is not written yet")
def test_guidance_explorer_redraws_in_the_browser(lab, browser, tmp_path):
    with opened(lab, browser, lesson(GUIDANCE), GUIDANCE, tmp_path) as page:
        run_all_cells(page)
        drive_guidance_explorer(page)


def test_schedule_explorer_test_notices_a_broken_callback(lab, browser, tmp_path):
    # lesson 02 up to its explorer, then a cell that makes the explorer's redraw do nothing
    nb = lesson(SCHEDULES)
    k = explorer_cell(nb, "schedule_explorer")
    nb.cells = nb.cells[:k + 1] + [nbformat.v4.new_code_cell("explorer.render = lambda: None  # a broken callback")]
    with opened(lab, browser, nb, "broken_explorer.ipynb", tmp_path / "expected-failure") as page:
        run_all_cells(page)
        with pytest.raises(AssertionError, match="did not change"):
            drive_schedule_explorer(page, timeout_s=10)
