"""End to end in a real browser: JupyterLab runs each interactive notebook, moving one of its
sliders redraws the figure, and no table renders as raw pipes.

Debian's chromium (driven by Playwright's sync API) opens a JupyterLab served on 127.0.0.1 (free
port, random token) from a temp copy of notebooks/ (outputs stripped; the repo's other top-level
folders are symlinked next to it, so `../data` style paths still resolve). The kernel is this
venv's python (checked on the kernel process). Each case runs all cells through Run > Run All
Cells, waits for the kernel to go idle, saves the notebook and checks that no cell raised, then
focuses the slider labelled K, presses ArrowRight and waits for the figure in that cell's output
to change. Before moving the slider it reads the rendered markdown (cells and outputs) and fails
if a line still shows a table's raw `| a | b |` text (a table that did not render).

Cases (notebook, slider label): `scratch` (a three-cell notebook written here: IntSlider K +
matplotlib in an Output; it isolates the widget/browser stack from the notebook's own code),
`00_tour` (top), `01_assignments` (K), `02_deformable_attention` (query (score rank)) and
`04_candidate_quality` (top-k): every notebook with a panel.

Screenshots, the executed notebooks, the browser console and the server log go to
artifacts/browser/. Skips when /usr/bin/chromium or playwright is missing. About 35 s for both
cases on 2 CPU cores (zoo checkpoints cached or not: fast mode trains in seconds).
MSDETR_BROWSER_RUN_TIMEOUT (seconds, default 600) bounds the run-all wait.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from browser_support import (CHROMIUM_ARGS, JupyterLabServer, chromium_path, clean_copy, cmdline,
                             code_cells_to_run, output_images, run_all_cells, slider_by_label,
                             wait_until_all_ran, write_scratch_notebook)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts" / "browser"
SCRATCH = "_browser_scratch.ipynb"
REAL_NOTEBOOK = "01_assignments.ipynb"
RUN_TIMEOUT = float(os.environ.get("MSDETR_BROWSER_RUN_TIMEOUT", "600"))
REDRAW_TIMEOUT = 180.0


# ---------------------------------------------------------------------------------------------
# fixtures: one server and one browser for the module, a fresh page per case

@pytest.fixture(scope="module")
def playwright_api():
    if chromium_path() is None:
        pytest.skip("no /usr/bin/chromium (apt-get install chromium); the browser test needs Debian's chromium")
    try:
        from playwright import sync_api
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright; never `playwright install`)")
    return sync_api


@pytest.fixture(scope="module")
def lab_root(tmp_path_factory):
    """tmp/repo/notebooks: clean copies of the notebooks plus the scratch notebook; the repo's
    other top-level entries are symlinked into tmp/repo."""
    repo = tmp_path_factory.mktemp("lab") / "repo"
    nbdir = repo / "notebooks"
    shutil.copytree(ROOT / "notebooks", nbdir, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    for nb in nbdir.rglob("*.ipynb"):
        clean_copy(nb, nb)
    for entry in ROOT.iterdir():
        if entry.name not in ("notebooks", "artifacts") and not entry.name.startswith("."):
            (repo / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    write_scratch_notebook(nbdir / SCRATCH)
    return nbdir


@pytest.fixture(scope="module")
def lab_server(playwright_api, lab_root, tmp_path_factory):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / "jupyter-server.log"
    log.unlink(missing_ok=True)
    server = JupyterLabServer(lab_root, tmp_path_factory.mktemp("jupyter-home"), log,
                              env_extra={"MSDETR_FAST": "1"})
    try:
        server.start(timeout=180)
        yield server
    finally:
        server.stop()
    assert not server.leftovers, f"processes left behind by jupyter lab: {server.leftovers}"


@pytest.fixture(scope="module")
def browser(playwright_api):
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True, timeout=120_000)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, lab_server, request):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(60_000)
    pg = context.new_page()
    console = []
    pg.on("console", lambda m: console.append(f"[{m.type}] {m.text}"))
    pg.on("pageerror", lambda e: console.append(f"[pageerror] {e}"))
    try:
        yield pg
    finally:
        name = request.node.callspec.id
        (ARTIFACTS / f"{name}-console.log").write_text("\n".join(console) + "\n")
        context.close()
        lab_server.shutdown_kernels()     # free the CPU for the next case


# ---------------------------------------------------------------------------------------------
# steps

def _shot(page, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path


def _open_notebook(page, server: JupyterLabServer, notebook: str, nb_json: dict) -> None:
    wanted = nb_json.get("metadata", {}).get("kernelspec", {}).get("name")
    specs = server.api("kernelspecs")["kernelspecs"]
    assert wanted in specs, f"{notebook} names kernel {wanted!r}; this server has {sorted(specs)}"

    page.goto(server.lab_url(notebook, workspace=Path(notebook).stem.strip("_")), timeout=180_000)
    page.locator(".jp-Notebook").first.wait_for(state="visible", timeout=180_000)
    assert page.locator(".jp-Notebook").count() == 1, "more than one notebook open in the workspace"
    deadline = time.monotonic() + 180
    while not server.kernels():
        assert not page.locator(".jp-Dialog").is_visible(), \
            f"JupyterLab asks for a kernel: {page.locator('.jp-Dialog').inner_text()}"
        assert time.monotonic() < deadline, "the notebook's kernel never started"
        time.sleep(0.5)

    # the kernel is the venv's python (kernelspec argv "python" -> the server's sys.executable)
    deadline = time.monotonic() + 60
    while not server.kernel_pids() and time.monotonic() < deadline:
        time.sleep(0.5)
    pids = server.kernel_pids()
    assert pids, "no ipykernel process found under the jupyter server"
    for pid in pids:
        exe = cmdline(pid)[0]
        assert Path(exe).parent == Path(sys.executable).parent, \
            f"kernel runs {exe}, not this venv's python ({sys.executable})"


def _save_and_check(page, lab_root: Path, notebook: str, expected: int, name: str) -> dict:
    """File > Save, then read the executed notebook back: every code cell ran, none raised."""
    path = lab_root / notebook
    before = path.stat().st_mtime_ns
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^File$")).first.click()
    item = page.locator('.lm-Menu-item[data-command="docmanager:save"]')
    item.wait_for(state="visible")
    item.click()
    deadline = time.monotonic() + 60
    while path.stat().st_mtime_ns == before and time.monotonic() < deadline:
        time.sleep(0.25)
    assert path.stat().st_mtime_ns != before, "File > Save did not write the notebook"
    time.sleep(0.5)                       # let the write finish
    nb = json.loads(path.read_text())
    shutil.copyfile(path, ARTIFACTS / f"{name}-executed.ipynb")

    errors = [f"cell {i}: {o.get('ename')}: {o.get('evalue')}"
              for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, "cells raised:\n" + "\n".join(errors)
    ran = sum(1 for c in nb["cells"] if c["cell_type"] == "code" and c.get("execution_count"))
    assert ran >= expected, f"only {ran} of {expected} code cells ran"
    return nb


_RAW_TABLE_JS = """() => {
    const bad = [];
    for (const el of document.querySelectorAll('.jp-Notebook .jp-RenderedMarkdown, .jp-Notebook .jp-RenderedHTMLCommon')) {
        for (const line of el.innerText.split('\\n')) {
            const t = line.trim();
            if (t.length > 2 && t.startsWith('|') && t.endsWith('|') && t.slice(1, -1).includes('|')) bad.push(t);
        }
    }
    return bad;
}"""


def raw_pipe_lines(page) -> list[str]:
    """Lines of rendered markdown that still read like a table's source (`| a | b |`)."""
    return page.evaluate(_RAW_TABLE_JS)


def _cell_of(page, slider, label: str):
    idx = slider.evaluate("""(s) => Array.from(document.querySelectorAll('.jp-Notebook .jp-Cell'))
                                      .indexOf(s.closest('.jp-Cell'))""")
    assert idx >= 0, f"the {label} slider sits outside any notebook cell"
    return page.locator(".jp-Notebook .jp-Cell").nth(idx)


def _move_slider_and_check_redraw(page, name: str, label: str = "K") -> None:
    slider = slider_by_label(page, label)
    if slider is None:
        labels = page.evaluate("""() => Array.from(document.querySelectorAll('.jp-Notebook .widget-slider .widget-label'))
                                          .map(l => l.textContent.trim())""")
        pytest.fail(f"no slider labelled {label!r} in the notebook (slider labels: {labels})")
    cell = _cell_of(page, slider, label)
    outputs = cell.locator(".jp-Cell-outputArea")
    handle = slider.locator("[role=slider]").first
    slider.scroll_into_view_if_needed()

    value = handle.get_attribute("aria-valuenow")
    vmax = handle.get_attribute("aria-valuemax")
    key = "ArrowLeft" if value is not None and value == vmax else "ArrowRight"
    imgs_before = output_images(cell)
    shot_before = outputs.screenshot(path=str(ARTIFACTS / f"{name}-3-before-slider.png"))

    handle.focus()
    handle.press(key)

    deadline = time.monotonic() + 30
    while handle.get_attribute("aria-valuenow") == value and time.monotonic() < deadline:
        time.sleep(0.2)
    new_value = handle.get_attribute("aria-valuenow")
    assert new_value != value, f"{key} on the {label} slider did not move it (still {value})"

    # the figure: inline matplotlib PNGs (data: urls) in the cell's output; if there are none
    # (e.g. a canvas backend), compare screenshots of the output area instead
    deadline = time.monotonic() + REDRAW_TIMEOUT
    if imgs_before:
        stable, last = 0, None
        while time.monotonic() < deadline:
            now = output_images(cell)
            changed = bool(now) and all(now) and now != imgs_before
            stable = stable + 1 if changed and now == last else 0
            last = now
            if stable >= 2:
                break
            time.sleep(0.5)
        outputs.screenshot(path=str(ARTIFACTS / f"{name}-4-after-slider.png"))
        assert stable >= 2, (f"the figure did not change within {REDRAW_TIMEOUT:.0f}s of moving {label} "
                             f"{value} -> {new_value} ({len(imgs_before)} image(s) before, {len(last or [])} after)")
    else:
        changed = False
        while time.monotonic() < deadline and not changed:
            time.sleep(1.0)
            shot_after = outputs.screenshot(path=str(ARTIFACTS / f"{name}-4-after-slider.png"))
            changed = shot_after != shot_before
        assert changed, f"the output area looks the same {REDRAW_TIMEOUT:.0f}s after moving {label} {value} -> {new_value}"


# ---------------------------------------------------------------------------------------------

CASES = [pytest.param(SCRATCH, "K", id="scratch"),
         pytest.param("00_tour.ipynb", "top", id="00_tour"),
         pytest.param(REAL_NOTEBOOK, "K", id="01_assignments"),
         pytest.param("02_deformable_attention.ipynb", "query (score rank)", id="02_deformable_attention"),
         pytest.param("04_candidate_quality.ipynb", "top-k", id="04_candidate_quality")]


@pytest.mark.parametrize("notebook, label", CASES)
def test_slider_redraws_figure(page, lab_server, lab_root, notebook, label, request):
    name = request.node.callspec.id
    path = lab_root / notebook
    assert path.exists(), f"notebooks/{notebook} is missing"
    nb_json = json.loads(path.read_text())
    expected = code_cells_to_run(nb_json)
    try:
        _open_notebook(page, lab_server, notebook, nb_json)
        _shot(page, f"{name}-1-opened")
        run_all_cells(page)
        final = wait_until_all_ran(page, lab_server, expected, timeout=RUN_TIMEOUT)
        total = sum(1 for c in nb_json["cells"] if c["cell_type"] == "code")
        assert len(final) == total, f"{len(final)} code cells in the DOM, {total} in the notebook (windowing on?)"
        _shot(page, f"{name}-2-ran")
        _save_and_check(page, lab_root, notebook, expected, name)
        raw = raw_pipe_lines(page)
        assert not raw, f"{notebook}: tables shown as raw pipes:\n" + "\n".join(raw[:10])
        _move_slider_and_check_redraw(page, name, label)
        _shot(page, f"{name}-5-done")
    except BaseException:
        try:
            _shot(page, f"{name}-failure")
        except Exception:
            pass
        raise
