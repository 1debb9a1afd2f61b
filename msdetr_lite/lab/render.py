"""The notebooks executed for a reader who runs nothing: HTML exports and README thumbnails.

    from msdetr_lite.lab import render
    render.render()                       # `make render`: all six in full mode -> docs/notebooks, docs/images
    render.render(fast=True, names=["00_tour"], html_dir="/tmp/html", image_dir="/tmp/img")

`python -m msdetr_lite.lab render` is the command line. The models the notebooks load come from
`msdetr_lite.lab.zoo` (`make zoo` trains them first, or the first notebook that needs one does).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional, Sequence, Union

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
    from nbconvert import HTMLExporter

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
            body, _ = HTMLExporter().from_notebook_node(nb)
            out = html_dir / f"{path.stem}.html"
            out.write_text(body, encoding="utf-8")
            result["html"].append(str(out))
            thumb = image_dir / f"{path.stem}.png"
            if thumb.is_file():
                result["images"].append(str(thumb))
            print(f"render: {path.name} in {result['seconds'][path.stem]:.0f} s -> {out}", flush=True)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    result["total_s"] = round(sum(result["seconds"].values()), 1)
    (html_dir / "render.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
