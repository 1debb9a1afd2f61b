"""Every teaching notebook runs end to end in fast mode (MSDETR_FAST=1), in a real kernel.

nbclient executes each notebook with the python3 kernel of this venv, working directory
notebooks/, a timeout per cell, and fails on the first cell that raises. Trained runs are
cached by msdetr_lite.zoo under runs/notebooks/fast/ (retrained when the model / training code
changes), so a second run of the suite only pays for the cells themselves.

The sources are jupytext percent files, notebooks/NN_name.py (`# %% [markdown]` and `# %%`
cells, one `# %% tags=["parameters"]` cell); the committed .ipynb are built from them by
`make notebooks` (BUILD_COMMAND below). Also checked without a kernel: every .ipynb is in sync
with its source (cell types, sources, parameters tag), the sources byte-compile, the notebooks
carry no outputs, have a `parameters` cell, and 01_assignments has the K slider the browser
test moves.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(p.name for p in NB_DIR.glob("[0-9][0-9]_*.ipynb"))
SOURCES = sorted(p.name for p in NB_DIR.glob("[0-9][0-9]_*.py"))
CELL_TIMEOUT = int(os.environ.get("MSDETR_NB_CELL_TIMEOUT", "600"))
# what `make notebooks` runs: rebuild the .ipynb from the .py sources (keeping the cell ids of
# unchanged cells), then strip any outputs a local run left in them
BUILD_COMMAND = ("jupytext --to ipynb --update notebooks/0*.py && "
                 "jupyter nbconvert --clear-output --inplace notebooks/0*.ipynb")


def _load(name: str) -> dict:
    return json.loads((NB_DIR / name).read_text())


def test_all_six_notebooks_exist():
    assert NOTEBOOKS == ["00_tour.ipynb", "01_assignments.ipynb", "02_deformable_attention.ipynb",
                         "03_mixed_supervision_training.ipynb", "04_candidate_quality.ipynb",
                         "05_train_on_coco.ipynb"]


def test_every_notebook_has_a_source():
    assert [Path(n).stem for n in SOURCES] == [Path(n).stem for n in NOTEBOOKS], \
        "each notebooks/NN_name.ipynb is built from notebooks/NN_name.py (jupytext percent format)"


def _cells(nb) -> list[tuple[str, str, list]]:
    """(cell type, source, tags) of every cell: what the .py source defines."""
    return [(c["cell_type"], "".join(c["source"]), list(c.get("metadata", {}).get("tags", [])))
            for c in nb["cells"]]


@pytest.mark.parametrize("source", SOURCES)
def test_notebook_in_sync_with_source(source):
    built = jupytext.read(NB_DIR / source)
    ipynb = NB_DIR / source.replace(".py", ".ipynb")
    want, have = _cells(built), _cells(_load(ipynb.name))
    assert have == want, (f"{ipynb.name} is out of sync with its source {source}: "
                          f"run `make notebooks` ({BUILD_COMMAND})")


@pytest.mark.parametrize("source", SOURCES)
def test_notebook_source_compiles(source):
    """The percent file is plain Python: it byte-compiles (magics are comments there)."""
    path = NB_DIR / source
    compile(path.read_text(), str(path), "exec")
    assert path.read_text().count('# %% tags=["parameters"]') == 1


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_structure(name):
    nb = _load(name)
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "outputs committed"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged `parameters` (papermill)"
    assert "FAST" in "".join(tagged[0]["source"])
    assert nb["cells"][0]["cell_type"] == "markdown" and "".join(nb["cells"][0]["source"]).startswith("# ")


def test_assignments_notebook_has_k_slider():
    src = "\n".join("".join(c["source"]) for c in _load("01_assignments.ipynb")["cells"] if c["cell_type"] == "code")
    assert "widgets.assignment_panel(" in src
    from msdetr_lite import widgets
    import inspect
    assert '"K": _slider("K"' in inspect.getsource(widgets.assignment_panel)


def _markdown_cells(name: str) -> str:
    return "\n".join("".join(c["source"]) for c in _load(name)["cells"] if c["cell_type"] == "markdown")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_markdown_tables_render_and_exercise(name):
    """Every table written in a markdown cell renders, and each notebook ends with a "check
    yourself" exercise whose answer is hidden in a <details> block."""
    from msdetr_lite.viz import table_renders
    text = _markdown_cells(name)
    assert table_renders(text)
    assert "## Check yourself" in text and "<details><summary>Answer</summary>" in text and "</details>" in text


def test_mixed_supervision_notebook_exposes_the_tap_and_the_papers_figures():
    nb = _load("03_mixed_supervision_training.ipynb")
    params = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    assert 'O2M_TAP = "after_ca"' in "".join(params["source"])
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    for call in ("viz.plot_tap_placements(O2M_TAP)", "viz.plot_o2o_losses(", "zoo.nms_evaluation(",
                 "report.describe_nms_comparison(", "viz.plot_regime_map(", "viz.plot_probe(",
                 "regime.describe_map(", "regime.describe_probe(", "report.benchmark_costs()"):
        assert call in code, f"03 lacks {call}"


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_fast_mode(name, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("MSDETR_FAST", "1")
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    monkeypatch.delenv("MSDETR_THUMBNAILS", raising=False)
    nb = nbformat.read(NB_DIR / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(NB_DIR)}})
    t0 = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:   # the message names the cell and the traceback
        pytest.fail(f"{name} failed:\n{str(e)[-4000:]}")
    elapsed = time.perf_counter() - t0
    print(f"{name}: {elapsed:.1f} s")

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), "a code cell did not run"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    images = [o for c in code for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, f"{name} drew no figure"
    # every markdown output (tables, generated text) renders: no table would show as raw pipes
    from msdetr_lite.report import FAST_NOTICE
    from msdetr_lite.viz import table_renders
    markdown = ["".join(o["data"]["text/markdown"]) for c in code for o in c.get("outputs", [])
                if "text/markdown" in o.get("data", {})]
    broken = [m for m in markdown if not table_renders(m)]
    assert not broken, f"{name}: tables that would render as raw pipes:\n" + "\n\n".join(broken)
    assert any(FAST_NOTICE in m for m in markdown), f"{name} does not say on screen that fast-mode numbers are meaningless"
    widgets_shown = [o for c in code for o in c.get("outputs", [])
                     if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    if name in ("00_tour.ipynb", "01_assignments.ipynb", "02_deformable_attention.ipynb", "04_candidate_quality.ipynb"):
        assert widgets_shown, f"{name} shows no interactive panel"


@pytest.mark.slow
def test_render_writes_html_and_a_readable_thumbnail(tmp_path, monkeypatch):
    """`python -m msdetr_lite.zoo render` on one notebook (fast mode, into tmp folders): the HTML
    export carries the executed outputs, the README thumbnail is at least 800 px wide."""
    from PIL import Image

    from msdetr_lite import zoo
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    res = zoo.render(fast=True, html_dir=tmp_path / "html", image_dir=tmp_path / "images",
                     names=["03_mixed_supervision_training"])
    html = (tmp_path / "html" / "03_mixed_supervision_training.html").read_text()
    assert res["mode"] == "fast" and res["html"] and "data:image/png;base64" in html
    assert "Fast mode" in html and "plot_tap_placements" in html
    with Image.open(tmp_path / "images" / "03_mixed_supervision_training.png") as im:
        assert im.size[0] >= 800
    assert json.loads((tmp_path / "html" / "render.json").read_text())["seconds"]["03_mixed_supervision_training"] > 0
