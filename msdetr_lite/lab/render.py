"""The notebooks executed for a reader who runs nothing: HTML exports and README thumbnails.

    from msdetr_lite.lab import render
    render.render()                       # `make render`: all six in full mode -> docs/notebooks, docs/images
    render.render(fast=True, names=["00_tour"], html_dir="/tmp/html", image_dir="/tmp/img")

`python -m msdetr_lite.lab render` is the command line. The models the notebooks load come from
`msdetr_lite.lab.zoo` (`make zoo` trains them first, or the first notebook that needs one does).

The pages read offline: the math of the markdown cells is written as MathML when the page is made
(`math_to_mathml`, with latex2mathml; every current browser typesets MathML itself), and the page
loads no MathJax from a CDN (`without_mathjax`). `stale_pages()` lists the pages whose cells no
longer match their notebook's (rendered before a cell was added, removed or rebuilt).
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Optional, Sequence, Union

from . import relative
from .zoo import FAST_ENV, PROJECT_ROOT, fast_mode, mode_name, zoo_root

THUMBNAIL_ENV = "MSDETR_THUMBNAIL_DIR"


def thumbnail_dir() -> Path:
    """Where the notebooks write their README thumbnails (with MSDETR_THUMBNAILS=1):
    $MSDETR_THUMBNAIL_DIR or <repository>/docs/images."""
    env = os.environ.get(THUMBNAIL_ENV)
    return Path(env).expanduser().resolve() if env else PROJECT_ROOT / "docs" / "images"


NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"


def render(fast: Optional[bool] = None, html_dir: Union[str, Path, None] = None,
           image_dir: Union[str, Path, None] = None, names: Sequence[str] = (), timeout: int = 1800) -> dict:
    """Execute every notebook (or `names`) top to bottom in a fresh python3 kernel, in full mode
    unless `fast`, and write what a reader sees without running anything: an HTML export per
    notebook (`html_dir`/NN_name.html, outputs and widget state included) and the README
    thumbnails (`image_dir`/NN_name.png, 1000 px wide, each notebook's main figure).

    Defaults: docs/notebooks and docs/images in full mode; in fast mode (meaningless 2-step
    models) runs/notebooks/fast/render/, so the committed pictures are never replaced by them.
    Returns {"mode", "seconds": {notebook: s}, "total_s", "html": [...], "images": [...]} and
    writes it as render.json next to the HTML."""
    import nbformat
    from nbclient import NotebookClient

    fast = fast_mode(fast)
    default_root = zoo_root() / "fast" / "render" if fast else None
    html_dir = Path(html_dir) if html_dir else (default_root / "html" if fast else PROJECT_ROOT / "docs" / "notebooks")
    image_dir = Path(image_dir) if image_dir else (default_root / "images" if fast else PROJECT_ROOT / "docs" / "images")
    html_dir.mkdir(parents=True, exist_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)
    paths = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if names:
        paths = [p for p in paths if p.stem in names or p.name in names]
        missing = set(names) - {p.stem for p in paths} - {p.name for p in paths}
        if missing:
            raise ValueError(f"no such notebook(s): {sorted(missing)}")
    # the kernel inherits this environment: the mode, and where the thumbnails go
    saved = {k: os.environ.get(k) for k in (FAST_ENV, "MSDETR_THUMBNAILS", THUMBNAIL_ENV)}
    os.environ.update({FAST_ENV: "1" if fast else "0", "MSDETR_THUMBNAILS": "1", THUMBNAIL_ENV: str(image_dir)})
    result = {"mode": mode_name(fast), "seconds": {}, "html": [], "images": []}
    try:
        for path in paths:
            nb = nbformat.read(path, as_version=4)
            t0 = time.perf_counter()
            print(f"render: executing {path.name} ({result['mode']} mode) ...", flush=True)
            NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=True,
                           resources={"metadata": {"path": str(NOTEBOOK_DIR)}}).execute()
            result["seconds"][path.stem] = round(time.perf_counter() - t0, 1)
            body = export_html(nb, digest=notebook_digest(path))
            out = html_dir / f"{path.stem}.html"
            out.write_text(body, encoding="utf-8")
            result["html"].append(relative(out))       # no checkout path in a committed file
            thumb = image_dir / f"{path.stem}.png"
            if thumb.is_file():
                result["images"].append(relative(thumb))
            print(f"render: {path.name} in {result['seconds'][path.stem]:.0f} s -> {out}", flush=True)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    result["total_s"] = round(sum(result["seconds"].values()), 1)
    record = dict(result)
    previous = html_dir / "render.json"
    if names and previous.is_file():              # some notebooks again: the others' entries stay
        old = json.loads(previous.read_text())
        if old.get("mode") == record["mode"]:
            record["seconds"] = {**old.get("seconds", {}), **record["seconds"]}
            record["html"] = sorted(set(old.get("html", [])) | set(record["html"]))
            record["images"] = sorted(set(old.get("images", [])) | set(record["images"]))
            record["total_s"] = round(sum(record["seconds"].values()), 1)
    previous.write_text(json.dumps(record, indent=2) + "\n")
    return result


# ---------------------------------------------------------------- pages that read offline
# $$...$$ (display) or $...$ (inline, not across a blank line, not "$ " at its start: a shell prompt),
# outside code: fenced blocks and `code spans` are kept as they are
_CODE = re.compile(r"(```.*?```|`[^`\n]*`)", re.S)
_MATH = re.compile(r"\$\$(.+?)\$\$|\$(?!\s)((?:[^$\n]|\n(?!\s*\n))+?)(?<!\s)\$", re.S)


def math_to_mathml(markdown: str) -> str:
    """The markdown with its TeX math written as MathML (`latex2mathml`), which browsers typeset
    without a script or a network: $$...$$ as a block, $...$ inline; code is left alone. A formula
    latex2mathml cannot read stays as TeX (and so still shows, as text)."""
    from latex2mathml.converter import convert

    def one(m: re.Match) -> str:
        tex, display = (m.group(1), "block") if m.group(1) is not None else (m.group(2), "inline")
        try:
            # without its xmlns: an HTML parser puts <math> in the MathML namespace by itself, and
            # nbconvert's heading anchors (ElementTree) would otherwise write it as <ns0:math>
            return convert(" ".join(tex.split()), display=display).replace(f' xmlns="{_MATHML_NS}"', "")
        except Exception:                         # latex2mathml raises its own errors on TeX it lacks
            return m.group(0)

    parts = _CODE.split(markdown)
    return "".join(part if i % 2 else _MATH.sub(one, part) for i, part in enumerate(parts))


_MATHML_NS = "http://www.w3.org/1998/Math/MathML"
_MATHJAX = re.compile(r"\s*<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.S)


def without_mathjax(html: str) -> str:
    """The page without nbconvert's MathJax loader (a script from a CDN and its configuration): the
    math is MathML already (`math_to_mathml`), and a page must not wait on a network."""
    return _MATHJAX.sub("", html)


def export_html(nb, digest: Optional[str] = None) -> str:
    """An executed notebook (nbformat node) as the HTML page `render` writes: math as MathML, no CDN
    math script, and with `digest` (`notebook_digest` of its source) in a <meta> tag, so that
    `stale_pages` can tell a page made from other cells (the notebook itself is left as it is)."""
    import copy

    from nbconvert import HTMLExporter

    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = math_to_mathml(cell.source)
    body, _ = HTMLExporter().from_notebook_node(nb)
    body = without_mathjax(body)
    if digest:
        body = body.replace("<head>", f'<head>\n<meta name="{_DIGEST_META}" content="{digest}">', 1)
    return body


_DIGEST_META = "msdetr-notebook-digest"


def notebook_digest(path: Union[str, Path]) -> str:
    """sha256 of a notebook's cells as written (type and source of each, in order; outputs aside)."""
    import hashlib
    cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
    text = json.dumps([(c["cell_type"], "".join(c["source"]) if isinstance(c["source"], list) else c["source"])
                       for c in cells])
    return hashlib.sha256(text.encode()).hexdigest()


def page_digest(html: str) -> Optional[str]:
    """The notebook digest a rendered page carries (None: a page rendered before pages carried one)."""
    m = re.search(rf'<meta name="{_DIGEST_META}" content="([0-9a-f]+)">', html)
    return m.group(1) if m else None


def page_cell_ids(html: str) -> list[str]:
    """The ids of the notebook cells an HTML page shows, in order (nbconvert writes one
    `id="cell-id=..."` per cell)."""
    return re.findall(r'id="cell-id=([^"]+)"', html)


def stale_pages(html_dir: Union[str, Path, None] = None, notebook_dir: Union[str, Path] = NOTEBOOK_DIR,
                names: Sequence[str] = ()) -> list[dict]:
    """The rendered pages that no longer show their notebook's cells: for each notebook (or
    `names`) whose page differs, {"name", "notebook_cells", "page_cells" (None: no page), "ids_differ"
    (same number of cells, other ids), "source_differs" (the cells' text changed since the page was
    made, or the page carries no digest)}. [] when every page is in sync. html_dir: docs/notebooks
    by default."""
    html_dir = Path(html_dir) if html_dir else PROJECT_ROOT / "docs" / "notebooks"
    stale = []
    for path in sorted(Path(notebook_dir).glob("[0-9][0-9]_*.ipynb")):
        if names and path.stem not in names:
            continue
        ids = [c.get("id") for c in json.loads(path.read_text(encoding="utf-8"))["cells"]]
        page = html_dir / f"{path.stem}.html"
        html = page.read_text(encoding="utf-8") if page.is_file() else None
        shown = page_cell_ids(html) if html is not None else None
        source_differs = html is not None and page_digest(html) != notebook_digest(path)
        if shown != ids or source_differs:
            stale.append({"name": path.stem, "notebook_cells": len(ids),
                          "page_cells": None if shown is None else len(shown),
                          "ids_differ": shown is not None and len(shown) == len(ids) and shown != ids,
                          "source_differs": source_differs})
    return stale
