"""The lesson's readings and figures (issue 25), on synthetic numbers: convergence per decoder
layer, the candidates' two views, the toy assignment, the offline pages. Every sentence a
notebook prints about two models is checked here against the numbers it was built from."""
from __future__ import annotations

import pytest

from msdetr_lite import viz
from msdetr_lite.lab import readings
from msdetr_lite.runs import Run


def _eval_record(ap_layers, nms_layers=None, dups=None, iou=0.7):
    ev = {"final": {"AP": ap_layers[-1]}, "layers": [{"AP": a} for a in ap_layers],
          "layer_ids": list(range(len(ap_layers)))}
    if nms_layers is not None:
        ev["nms"] = {"iou": iou, "final": {"AP": nms_layers[-1]}, "layers": [{"AP": a} for a in nms_layers]}
    if dups is not None:
        ev["duplicates"] = {"per_image": list(dups)}
    return ev


def _run(name, per_epoch):
    """A Run whose epoch e (1-based) carries the evaluation per_epoch[e - 1] (None: not evaluated)."""
    recs = [{"type": "epoch", "epoch": e, "step": e, "losses": {}, **({"eval": ev} if ev else {})}
            for e, ev in enumerate(per_epoch, 1)]
    return Run.from_records(recs, name=name, config={"model": {"supervision": name}})


# two layers, three epochs; ms gains at layer 1, loses at layer 2 NMS-free, wins with NMS, more duplicates
O2O = [_eval_record([0.10, 0.20], [0.12, 0.22], [0.5, 0.2]),
       _eval_record([0.20, 0.30], [0.22, 0.32], [0.4, 0.1]),
       _eval_record([0.30, 0.40], [0.31, 0.41], [0.3, 0.1])]
MS = [_eval_record([0.15, 0.15], [0.20, 0.25], [1.0, 0.6]),
      _eval_record([0.25, 0.295], [0.30, 0.40], [0.9, 0.5]),
      _eval_record([0.36, 0.35], [0.40, 0.50], [0.2, 0.4])]


def test_run_convergence_grid_per_layer_and_epoch():
    conv = _run("ms", [MS[0], None, MS[2]]).convergence()
    assert conv["epochs"] == [1, 3] and conv["nms_iou"] == 0.7
    assert conv["AP"] == [[0.15, 0.36], [0.15, 0.35]]            # [layer][epoch]
    assert conv["AP_nms"] == [[0.20, 0.40], [0.25, 0.50]]
    assert conv["duplicates"] == [[1.0, 0.2], [0.6, 0.4]]
    # an epoch scored without NMS, an AP of -1 (no GT in that area): blanks, not numbers
    bare = _run("o2o", [_eval_record([0.1, -1.0]), O2O[1]]).convergence()
    assert bare["AP_nms"] == [[None, 0.22], [None, 0.32]] and bare["AP"][1][0] is None
    assert bare["duplicates"][0] == [None, 0.4]
    assert _run("x", [None]).convergence() == {"epochs": [], "nms_iou": None, "AP": [], "AP_nms": [],
                                                "duplicates": []}


def test_plot_convergence_writes_every_cell_and_the_difference():
    convs = {"o2o": _run("o2o", O2O).convergence(), "ms": _run("ms", MS).convergence()}
    fig = viz.plot_convergence(convs)
    assert len(fig.axes) == 9                                      # 3 measures x (2 models + difference)
    texts = [t.get_text() for t in fig.axes[2].texts]              # ms minus o2o, AP NMS-free
    assert texts == ["+5.0", "+5.0", "+6.0", "-5.0", "-0.5", "-5.0"]
    assert "NMS at IoU 0.7" in fig._suptitle.get_text()
    assert [t.get_text() for t in fig.axes[6].texts][:3] == ["0.50", "0.40", "0.30"]   # o2o duplicates, layer 1
    one = viz.plot_convergence({"ms": convs["ms"]})              # one model: no difference column
    assert len(one.axes) == 3


def test_describe_convergence_agrees_with_the_grid():
    convs = {"o2o": _run("o2o", O2O).convergence(), "ms": _run("ms", MS).convergence()}
    text = readings.describe_convergence(convs)
    # NMS-free gaps: layer 1 +5 +5 +6, layer 2 -5 -0.5 -5 -> 3 ahead, 1 level, 2 behind
    assert "3 epoch(s) x 2 decoder layers (6 cells)" in text
    assert "ahead in 3, level (within 1 AP) in 1, behind in 2 NMS-free" in text
    # with NMS: +8 +8 +9 / +3 +8 +9 -> all ahead
    assert "with NMS ahead in 6, level (within 1 AP) in 0, behind in 0" in text
    assert "After epoch 3, layer by layer, NMS-free: +6.0, -5.0; with NMS: +9.0, +9.0." in text
    assert "the NMS-free gap is +5.3 at layer 1 and -3.5 at layer 2: the early layers gain more" in text
    # gaps within a tie are called so, and a tiny negative gap is not written "-0.0"
    tiny = {"o2o": _run("o2o", O2O).convergence(),
            "ms": _run("ms", [_eval_record([l["AP"] - 0.0004 for l in ev["layers"]]) for ev in O2O]).convergence()}
    tied = readings.describe_convergence(tiny)
    assert "layer by layer, NMS-free: +0.0, +0.0" in tied and "gain about the same (within 1 AP)" in tied
    assert "(no NMS scores)" in tied
    # duplicates: ms - o2o = +.5 +.5 -.1 / +.4 +.4 +.3 -> 5 of 6 more
    assert "more duplicates per image than the baseline in 5 of 6 cells (last layer after epoch 3: 0.40 vs 0.10)" in text
    assert readings.describe_convergence(convs, fast=True).startswith("(Fast mode")
    # no common epoch: says so
    empty = {"o2o": _run("o2o", [None]).convergence(), "ms": convs["ms"]}
    assert "No epoch was evaluated" in readings.describe_convergence(empty)


def _cq(best_iou, best_top, recall, num50, dups, dups_top):
    return {"topk": 20, "layers": [{"best_iou": best_iou, "best_iou_topk": best_top, "recall50_topk": recall,
                                    "num_iou50": num50, "duplicates": dups, "dups_topk": dups_top}]}


def test_describe_candidates_uses_one_definition_and_names_the_mechanism():
    # issue 25's numbers: all queries favour ms (0.896 vs 0.878), its top 20 favour o2o
    stats = {"ms": _cq(0.896, 0.822, 0.908, 3.1, 2.5, 4.0), "o2o": _cq(0.878, 0.853, 0.973, 1.6, 0.4, 0.6)}
    text = readings.describe_candidates(stats)
    assert text.startswith("A candidate is one of a layer's top 20 queries by score")
    assert "find fewer of the objects at IoU 0.5 than the baseline's (0.908 vs 0.973" in text
    assert "placed worse (best IoU per GT 0.822 vs 0.853)" in text
    assert "Over all queries, whatever their score, MS-DETR's boxes are placed better (best IoU per GT 0.896 vs 0.878)" in text
    assert "duplicates crowd MS-DETR's top 20: 4.0 of them per image" in text and "(the baseline's: 0.6)" in text
    assert "2.5 vs 0.4 per image" in text
    # the views agree: no disagreement sentence
    agree = readings.describe_candidates({"ms": _cq(0.9, 0.86, 0.98, 3.0, 1.0, 1.0),
                                          "o2o": _cq(0.88, 0.85, 0.97, 1.5, 0.3, 0.5)})
    assert "placed better (best IoU per GT 0.860 vs 0.850)" in agree and "disagree" not in agree
    # they disagree but the top-k holds no more duplicates: says that it does not explain it
    other = readings.describe_candidates({"ms": _cq(0.9, 0.80, 0.9, 3.0, 1.0, 0.5),
                                          "o2o": _cq(0.88, 0.85, 0.97, 1.5, 0.3, 0.5)}, fast=True)
    assert other.startswith("(Fast mode") and "do not explain it here (0.5 vs 0.5" in other


def test_candidate_hits_are_drawn_by_object():
    import torch
    A, B, FAR = [0.25, 0.25, 0.2, 0.2], [0.75, 0.75, 0.2, 0.2], [0.75, 0.15, 0.1, 0.1]
    boxes = torch.tensor([A, A, FAR, [0.30, 0.25, 0.2, 0.2]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    fig, axes = viz.new_figure(1, 1)
    hits = viz.plot_candidate_hits(axes[0, 0], torch.zeros(3, 64, 64), boxes, scores, torch.tensor([A, B]), k=4,
                                   size=(64, 64))
    assert hits["per_gt"].tolist() == [3, 0] and hits["missed"] == [1]
    assert viz.count_boxes(fig, "candidate") == 4 and viz.count_boxes(fig, "gt") == 2
    labels = [t.get_text() for t in axes[0, 0].texts]
    assert labels == ["GT 0: 3", "GT 1: missed"]
    assert "3 of top 4 on an object, 2 extra\nmissed 1 of 2 GTs: 1" in axes[0, 0].get_title()
    fig = viz.plot_topk_comparison([torch.zeros(3, 64, 64)], [torch.tensor([A, B])], {"ms": [(boxes, scores)]}, k=4,
                                   by_gt=True)
    assert "GT 1: missed" in [t.get_text() for t in fig.axes[0].texts] and "in one colour" in fig._suptitle.get_text()


def _toy(**kw):
    from msdetr_lite.lab import samples
    image, target = samples.ToyDataset()[0]
    out = samples.run_model(samples.ToyModel(), image)
    return samples.compute_assignment(out, target, **{"k": 6, "tau": 0.4, "alpha": 0.3, **kw})


def test_toy_scores_are_the_ones_computed_by_hand():
    from msdetr_lite.lab import samples
    rows = samples.toy_rows()
    # S = 0.3 p + 0.7 IoU, by hand: q0 .27 + .7 = .97, q1 .15 + .42 = .57, q2 .06 + .35 = .41, ...
    assert [r["S for GT 0"] for r in rows] == [0.97, 0.57, 0.41, 0.18, 0.24, 0.03]
    assert [r["S for GT 1"] for r in rows] == [0.27, 0.15, 0.06, 0.88, 0.66, 0.03]
    assert [r["IoU with GT 0"] for r in rows] == [1.0, 0.6, 0.5, 0.0, 0.0, 0.0]
    assert [r["IoU with GT 1"] for r in rows] == [0.0, 0.0, 0.0, 1.0, 0.6, 0.0]


def test_toy_assignment_and_cap_readings():
    free, capped = _toy(max_pos_fraction=1.0), _toy(max_pos_fraction=0.25)
    text = readings.describe_assignment(free)
    assert text == ("One-to-one (Hungarian): GT 0 gets q0, GT 1 gets q3. One-to-many (K = 6, tau = 0.4): 5 positive "
                    "queries; GT 0 has c = 3 and gets 3 (q0, q1, q2); GT 1 has c = 2 and gets 2 (q3, q4).")
    k2 = readings.describe_assignment(_toy(k=2, max_pos_fraction=1.0), ["A", "B"])
    assert "A has c = 3 and gets 2 (q0, q1)" in k2
    cap = readings.describe_cap(capped, free, ["A", "B"])
    # 25 % of 6 queries is 1.5: one positive survives (q4, whose best GT is B): B gets its row's top 1 (q3)
    assert cap.startswith("Steps 2-3 make 5 queries positive; the cap keeps 1 of them (25 % of the 6 queries")
    assert "with the cap: [0, 1]; without it: [3, 2]" in cap and "removes every o2m target of A, and some of B" in cap
    assert "does not bind" in readings.describe_cap(_toy(max_pos_fraction=1.0), free)
    half = readings.describe_cap(_toy(max_pos_fraction=0.5), free, ["A", "B"])
    assert "[2, 1]" in half and "No GT loses all its o2m targets; A, B get fewer." in half


def test_describe_branches_follows_the_table():
    st = lambda d, n, r: {"duplicates": d, "num_iou50": n, "recall50_topk": r}
    stats = {0.1: {"o2o": st(0.5, 1.2, 0.9), "o2m": st(2.25, 3.0, 0.8)},
             0.3: {"o2o": st(0.0, 1.2, 0.9), "o2m": st(0.0, 1.2, 0.8)}}
    rows = readings.branch_rows(stats)
    assert [(r["branch"], r["score threshold"]) for r in rows] == [("o2o", 0.1), ("o2m", 0.1), ("o2o", 0.3), ("o2m", 0.3)]
    assert rows[1]["duplicates (per image)"] == 2.25 and viz.table_renders(viz.markdown_table(rows))
    text = readings.describe_branches(stats)
    assert "At score > 0.1, the o2m head has more duplicates (2.25 vs 0.5 per image)" in text
    assert "more well-placed queries per GT than the o2o head (3 vs 1.2 with IoU >= 0.5)" in text
    assert "At score > 0.3, neither head has a duplicate" in text and "as many well-placed queries per GT as" in text


def test_level_shares_and_their_reading(micro_cfg):
    import torch
    from msdetr_lite.lab import samples
    from msdetr_lite.models import build_model
    w = torch.zeros(2, 3, 4, 2)                          # [Q, M, L, P]
    w[..., 0, :] = 3.0
    w[..., 1, :] = 1.0
    assert samples.level_shares(w) == pytest.approx([0.75, 0.25, 0.0, 0.0])
    torch.manual_seed(0)
    model = build_model(micro_cfg(num_feature_levels=4))
    lv = samples.attention_levels(model, torch.rand(3, 128, 128))
    assert len(lv["decoder"]) == 2 and len(lv["encoder"]) == 1 and len(lv["spatial_shapes"]) == 4
    assert all(s == pytest.approx(0.25, abs=1e-6) for layer in lv["decoder"] + lv["encoder"] for s in layer)
    fig = viz.plot_level_shares({"init": lv, "trained": lv})
    assert len(fig.axes) == 2 and [t.get_text() for t in fig.axes[0].get_yticklabels()][:2] == ["encoder 1", "decoder 1"]
    # the collapse issue 25 saw: 99.9 % on level 0 in every decoder layer, the encoder reading the coarse levels
    trained = {"decoder": [[0.999, 0.001, 0.0, 0.0]] * 4, "encoder": [[0.19, 0.1, 0.2, 0.51], [0.17, 0.06, 0.14, 0.63]],
               "spatial_shapes": [[16, 16], [8, 8], [4, 4], [2, 2]]}
    text = readings.describe_levels(lv, trained, object_px=26)
    assert text.startswith("At initialisation every level gets 25.0 % in every decoder layer")
    assert "put 99.9 %, 99.9 %, 99.9 %, 99.9 % of their weight on level 0 (stride 8)" in text
    assert "still read 81.0 %, 83.0 % of their weight from the coarser levels" in text
    assert "Level 0's 16 x 16 cells are 8 px wide, below a typical object here (26 px)" in text
    assert "coarsest level (64 px) is larger than the object" in text and "Learned, not a defect" in text
    spread = {**trained, "decoder": [[0.4, 0.3, 0.2, 0.1]] * 4}
    assert "Learned" not in readings.describe_levels(lv, spread) and "40.0 %" in readings.describe_levels(lv, spread)


def test_plumbing_caption_and_fixed_axis():
    run = Run.from_records([{"type": "epoch", "epoch": 1, "steps": 20}, {"type": "epoch", "epoch": 2, "steps": 20}],
                           config={"data": {"max_images": 200}})
    ev = _eval_record([0.001, 0.002])
    title, caption = readings.plumbing_caption(ev, run)
    assert title == "A plumbing check, not a result: 40 training steps on 200 images"
    assert "trained 40 steps (2 epoch(s)) on 200 images; its AP (0.2 at the last decoder layer)" in caption
    fig = viz.plot_ap_per_layer({"this run": ev}, metrics=("AP",), ylim=(0, 100), title=title)
    assert fig.axes[0].get_ylim() == (0, 100) and fig._suptitle.get_text() == title
    whole = readings.plumbing_caption(ev, Run.from_records([], config={"data": {"max_images": 0}}))[0]
    assert whole.endswith("0 training steps on the whole train split")


def test_math_becomes_mathml_and_code_stays():
    from msdetr_lite.lab.render import math_to_mathml
    md = ("A score $S = \\alpha p$ and\n\n$$\\frac{1}{N}\\sum_q x_q$$\n\nbut `$HOME` and $ msdetr stay,\n"
          "```bash\necho $PATH $x$\n```\nprice 5$ too.")
    out = math_to_mathml(md)
    assert out.count('<math display="inline">') == 1 and "xmlns" not in out
    assert out.count('display="block"') == 1 and "<mfrac>" in out
    assert "`$HOME`" in out and "echo $PATH $x$" in out and "$ msdetr stay" in out and "price 5$ too." in out
    assert math_to_mathml("no math here") == "no math here"


def _synthetic_notebook(n_markdown: int):
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(f"# cell {i}: $x_{i}$") for i in range(n_markdown)]
    nb.cells.append(nbformat.v4.new_code_cell("print(1)"))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def test_export_reads_offline_and_stale_pages_are_found(tmp_path):
    """A page made by render's exporter has its math as MathML and no MathJax from a CDN;
    stale_pages finds a page whose notebook gained a cell, or whose page is missing."""
    import nbformat
    from msdetr_lite.lab import render
    nb_dir, html_dir = tmp_path / "notebooks", tmp_path / "html"
    nb_dir.mkdir(), html_dir.mkdir()
    for name, n in (("00_a", 2), ("01_b", 3)):
        nb = _synthetic_notebook(n)
        nbformat.write(nb, nb_dir / f"{name}.ipynb")
        (html_dir / f"{name}.html").write_text(render.export_html(nb, digest=render.notebook_digest(nb_dir / f"{name}.ipynb")))
    page = (html_dir / "00_a.html").read_text()
    assert render.page_digest(page) == render.notebook_digest(nb_dir / "00_a.ipynb")
    assert '<math display="inline">' in page and "ns0:" not in page
    assert "Load mathjax" not in page and "libs/mathjax" not in page.lower()          # no math script from a CDN
    assert render.page_cell_ids(page) == [c.id for c in nbformat.read(nb_dir / "00_a.ipynb", as_version=4).cells]
    assert render.stale_pages(html_dir, nb_dir) == []
    nb = nbformat.read(nb_dir / "01_b.ipynb", as_version=4)             # a cell added since the page was made
    nb.cells.insert(1, nbformat.v4.new_markdown_cell("new"))
    nbformat.write(nb, nb_dir / "01_b.ipynb")
    assert render.stale_pages(html_dir, nb_dir) == [{"name": "01_b", "notebook_cells": 5, "page_cells": 4,
                                                     "ids_differ": False, "source_differs": True}]
    nb.cells[1].id = "renamed"                                          # same count, another cell
    nb.cells.pop(2)
    nbformat.write(nb, nb_dir / "01_b.ipynb")
    assert render.stale_pages(html_dir, nb_dir, names=["01_b"])[0]["ids_differ"] is True
    nb = nbformat.read(nb_dir / "00_a.ipynb", as_version=4)             # same cells, a sentence edited
    nb.cells[0].source += " (edited)"
    nbformat.write(nb, nb_dir / "00_a.ipynb")
    [edited] = render.stale_pages(html_dir, nb_dir, names=["00_a"])
    assert edited["source_differs"] and not edited["ids_differ"] and edited["page_cells"] == edited["notebook_cells"]
    (html_dir / "00_a.html").unlink()
    assert render.stale_pages(html_dir, nb_dir, names=["00_a"])[0]["page_cells"] is None



def test_committed_pages_show_their_notebooks():
    """docs/notebooks/*.html were rendered from today's notebooks (`make render` after every change
    to what a notebook shows): same cells, same text."""
    from msdetr_lite.lab import render
    stale = render.stale_pages()
    assert stale == [], "rendered pages out of date (run `make render`): " + ", ".join(s["name"] for s in stale)


def test_committed_pages_carry_no_absolute_path_of_a_checkout():
    """No page shows where it was rendered: paths into the repository print relative to it."""
    import re
    from msdetr_lite.lab import PROJECT_ROOT
    pattern = re.compile(r"(?<![\w.:/])/(?:[\w.-]+/)+(?:data/shapes|runs/notebooks|msdetr_lite|weights)\b")
    found = {page.name: sorted(set(pattern.findall(page.read_text(encoding="utf-8"))))
             for page in sorted((PROJECT_ROOT / "docs" / "notebooks").glob("*.html"))}
    assert not {k: v for k, v in found.items() if v}, found
