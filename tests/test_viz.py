"""msdetr_lite.viz: every drawing function builds a figure with the right content, no browser."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from msdetr_lite import viz
from msdetr_lite.data.transforms import IMAGENET_MEAN, IMAGENET_STD

import fake_runs


def _normalised(img01: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (img01 - mean) / std


def _image(h=48, w=64, seed=0):
    return _normalised(torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed)))


def _records(schemes=("o2o", "ms"), **kw):
    """{scheme: fake metrics.jsonl records} (tests/fake_runs.py)."""
    return {s: fake_runs.records(s, **kw) for s in schemes}


def test_palette_is_consistent_and_distinct():
    assert viz.BRANCH_COLORS["gt"] == viz.GT_COLOR and viz.BRANCH_COLORS["o2o"] == viz.O2O_COLOR
    assert viz.BRANCH_COLORS["o2m"] == viz.O2M_COLOR
    assert len({viz.GT_COLOR, viz.O2O_COLOR, viz.O2M_COLOR}) == 3
    assert viz.scheme_color("o2o") == viz.O2O_COLOR
    assert len({viz.scheme_color(s) for s in viz.SCHEMES}) == len(viz.SCHEMES)
    assert viz.scheme_color("some other run") == viz.scheme_color("some other run")   # stable
    assert viz.SCHEME_STYLES["o2o"] == "--" and viz.SCHEME_STYLES["ms"] == "-"        # as in Fig. 2


def test_to_numpy_image_denormalises_and_crops():
    img01 = torch.rand(3, 10, 12)
    arr = viz.to_numpy_image(_normalised(img01), size=(8, 9))
    assert arr.shape == (8, 9, 3) and arr.dtype == np.float32
    np.testing.assert_allclose(arr, img01.permute(1, 2, 0).numpy()[:8, :9], atol=1e-5)
    u8 = (img01 * 255).round().to(torch.uint8)
    np.testing.assert_allclose(viz.to_numpy_image(u8), u8.permute(1, 2, 0).numpy() / 255, atol=1e-6)
    np.testing.assert_allclose(viz.to_numpy_image(img01, normalized=False), img01.permute(1, 2, 0).numpy())
    with pytest.raises(ValueError):
        viz.to_numpy_image(torch.rand(1, 4, 4))


def test_boxes_to_pixels():
    px = viz.boxes_to_pixels(torch.tensor([[0.5, 0.5, 0.5, 0.25]]), (100, 200))
    torch.testing.assert_close(px, torch.tensor([[50.0, 37.5, 150.0, 62.5]]))
    assert viz.boxes_to_pixels(torch.zeros(0, 4), (10, 10)).shape == (0, 4)


def test_draw_boxes_tags_and_counts():
    fig, axes = viz.new_figure(1, 2)
    viz.show_image(axes[0, 0], _image(), title="x")
    patches = viz.draw_boxes(axes[0, 0], torch.tensor([[1, 2, 10, 20], [5, 5, 30, 30.]]), viz.GT_COLOR, gid="gt",
                             label="gt", texts=["a", "b"], alpha=[1.0, 0.5])
    viz.draw_boxes(axes[0, 1], torch.tensor([[0, 0, 3, 3.]]), viz.O2O_COLOR, gid="o2o")
    assert len(patches) == 2 and patches[0].get_label() == "gt"
    assert patches[1].get_edgecolor()[3] == pytest.approx(0.5)
    assert viz.count_boxes(fig, "gt") == 2 and viz.count_boxes(fig, "o2o") == 1 and viz.count_boxes(fig) == 3
    assert viz.count_boxes(axes[0, 1]) == 1
    assert len(axes[0, 0].texts) == 2


def test_plot_detections_threshold():
    dets = {"scores": torch.tensor([0.9, 0.5, 0.1]), "labels": torch.tensor([0, 1, 0]),
            "boxes": torch.tensor([[1, 1, 10, 10], [2, 2, 20, 20], [3, 3, 30, 30.]])}
    fig = viz.plot_detections(_image(), dets, gt_boxes=torch.tensor([[0.5, 0.5, 0.2, 0.2]]),
                              class_names=["a", "b"], score_thresh=0.3)
    assert viz.count_boxes(fig, "detection") == 2 and viz.count_boxes(fig, "gt") == 1
    assert "2 detections" in fig.axes[0].get_title()
    fig = viz.plot_detections(_image(), dets, score_thresh=0.05)
    assert viz.count_boxes(fig, "detection") == 3
    fig = viz.plot_detections(_image(), dets, score_thresh=0.0, max_dets=2)
    assert viz.count_boxes(fig, "detection") == 2 and len(fig.axes[0].texts) == 2


def _assignment(G=2, Q=12, n_o2m=5):
    S = torch.rand(G, Q, generator=torch.Generator().manual_seed(1))
    return {"layer": 1, "k": 3, "tau": 0.4, "alpha": 0.3,
            "gt_boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]])[:G],
            "gt_labels": torch.arange(G), "o2o_boxes": torch.rand(Q, 4) * 0.5 + 0.2,
            "o2m_boxes": torch.rand(Q, 4) * 0.5 + 0.2,
            "o2o": (torch.arange(G), torch.arange(G)),
            "o2m": (torch.arange(n_o2m), torch.arange(n_o2m) % G),
            "o2m_scores": S[torch.arange(n_o2m) % G, torch.arange(n_o2m)],
            "scores": S, "positive": torch.rand(Q) > 0.5, "best_gt": torch.zeros(Q, dtype=torch.long),
            "candidates": (torch.arange(2 * 3) % Q, torch.arange(G).repeat_interleave(3)), "note": ""}


def test_plot_assignment_marks_every_pair():
    a = _assignment()
    fig = viz.plot_assignment(_image(), a, class_names=["square", "cross"])
    assert viz.count_boxes(fig, "gt") == 2 and viz.count_boxes(fig, "o2o") == 2 and viz.count_boxes(fig, "o2m") == 5
    title = fig._suptitle.get_text()
    assert "K=3" in title and "5 o2m pairs" in title
    heat = fig.axes[1]
    by_gid = {c.get_gid(): c for c in heat.collections if c.get_gid()}
    assert len(by_gid["o2m"].get_offsets()) == 5 and len(by_gid["o2o"].get_offsets()) == 2
    assert heat.get_images()[0].get_array().shape[0] == 2      # G rows
    assert "GT 1 cross" in [t.get_text() for t in heat.get_yticklabels()]
    fewer = viz.plot_assignment(_image(), _assignment(n_o2m=2))
    assert viz.count_boxes(fewer, "o2m") == 2


def test_plot_score_matrix_columns_and_empty():
    fig, axes = viz.new_figure(1, 2)
    S = torch.rand(3, 50)
    cols = viz.plot_score_matrix(axes[0, 0], S, o2o=(torch.tensor([45]), torch.tensor([0])), max_queries=10)
    assert 45 in cols and len(cols) == 10
    assert viz.plot_score_matrix(axes[0, 1], torch.zeros(0, 50)) == []


def test_attention_heatmap_conserves_mass():
    loc = torch.tensor([[[[0.1, 0.1], [0.9, 0.9]]]])        # [M=1, L=1, P=2, 2]
    w = torch.tensor([[[0.25, 0.75]]])
    heat = viz.attention_heatmap(loc, w, (20, 30), cell=2)
    assert heat.shape == (10, 15) and heat.sum() == pytest.approx(1.0)
    outside = viz.attention_heatmap(torch.tensor([[[[1.5, 0.5]]]]), torch.tensor([[[1.0]]]), (20, 30))
    assert outside.sum() == 0


def test_plot_deformable_attention_levels_and_heads():
    M, L, P = 4, 3, 2
    loc = torch.rand(M, L, P, 2)
    w = torch.rand(M, L, P)
    w = w / w.sum(dim=(1, 2), keepdim=True)
    fig = viz.plot_deformable_attention(_image(), loc, w, ref_box=torch.tensor([0.5, 0.5, 0.3, 0.3]),
                                        pred_box=torch.tensor([0.5, 0.5, 0.2, 0.2]), title="q")
    ax = fig.axes[0]
    levels = [c for c in ax.collections if (c.get_gid() or "").startswith("level")]
    assert len(levels) == L and all(len(c.get_offsets()) == M * P for c in levels)
    assert viz.count_boxes(fig, "reference") == 1 and viz.count_boxes(fig, "prediction") == 1
    one = viz.plot_deformable_attention(_image(), loc, w, head=2)
    assert all(len(c.get_offsets()) == P for c in one.axes[0].collections if (c.get_gid() or "").startswith("level"))
    assert "4 head(s)" in ax.get_title() and "1 head(s)" in one.axes[0].get_title()


def test_plot_attention_layers():
    per_layer = [{"sampling_locations": torch.rand(2, 2, 2, 2), "attention_weights": torch.rand(2, 2, 2),
                  "reference": torch.tensor([0.5, 0.5, 0.2, 0.2]), "box": torch.tensor([0.5, 0.5, 0.1, 0.1])}] * 3
    fig = viz.plot_attention_layers(_image(), per_layer)
    assert len([a for a in fig.axes if a.get_visible()]) == 3 and viz.count_boxes(fig, "reference") == 3


def test_candidates_and_fig1_grid():
    boxes, scores = torch.rand(30, 4) * 0.4 + 0.1, torch.rand(30)
    fig, axes = viz.new_figure()
    patches = viz.plot_candidates(axes[0, 0], _image(), boxes, scores, torch.tensor([[0.5, 0.5, 0.2, 0.2]]), k=7,
                                  legend=True)
    assert len(patches) == 7 and viz.count_boxes(fig, "gt") == 1
    assert patches[0].get_edgecolor()[3] > patches[-1].get_edgecolor()[3]        # best is most opaque
    preds = {"o2o": [(boxes, scores)] * 2, "ms": [(boxes, scores)] * 2}
    grid = viz.plot_topk_comparison([_image(), _image(seed=1)], [torch.zeros(0, 4)] * 2, preds, k=5)
    assert len(grid.axes) == 4 and viz.count_boxes(grid, "candidate") == 20
    assert grid.axes[0].get_title() == viz.scheme_label("o2o")
    wide = viz.plot_topk_comparison([_image()] * 3, [torch.zeros(0, 4)] * 3, {n: [(boxes, scores)] * 3 for n in preds},
                                    k=2, models_as_rows=True)
    assert wide.get_figwidth() > wide.get_figheight() and viz.count_boxes(wide, "candidate") == 12
    assert [a.get_title() for a in wide.axes[3:]] == [viz.scheme_label("ms")] * 3
    per_layer = viz.plot_topk_per_layer(_image(), torch.zeros(0, 4), {"o2o": [(boxes, scores)] * 3,
                                                                      "ms": [(boxes, scores)] * 2}, k=4)
    assert viz.count_boxes(per_layer, "candidate") == 4 * 5


def test_loss_plots_take_runs_or_records():
    """The curves come from msdetr_lite.runs: a Run and its bare records draw the same lines."""
    from msdetr_lite.runs import Run
    recs = _records()
    from_runs = viz.plot_loss_curves({s: Run.from_records(r, name=s) for s, r in recs.items()}, x="epoch")
    from_recs = viz.plot_loss_curves(recs, x="epoch")
    for a, b in zip(from_runs.axes, from_recs.axes):
        assert [list(l.get_ydata()) for l in a.get_lines()] == [list(l.get_ydata()) for l in b.get_lines()]
    first = from_runs.axes[0].get_lines()[0]
    assert list(first.get_xdata()) == [1, 2, 3] and first.get_ydata()[0] == pytest.approx(1 / 4 + 1)
    summed = viz.plot_loss_curves(recs, branches=("o2o",), layer=None, x="epoch")
    assert summed.axes[0].get_lines()[0].get_ydata()[0] == pytest.approx(2 / 4 + 1)
    assert "all layers" in summed.axes[0].get_title()


def test_plot_loss_curves_one_line_per_model_and_branch():
    fig = viz.plot_loss_curves(_records(), branches=("o2o", "o2m"))
    axes = fig.axes
    assert len(axes) == 6
    o2o_row, o2m_row = axes[:3], axes[3:]
    assert all(len(ax.get_lines()) == 2 for ax in o2o_row)        # both models have o2o losses
    assert all(len(ax.get_lines()) == 1 for ax in o2m_row)        # the o2o baseline has no o2m branch
    styles = {l.get_label(): l.get_linestyle() for l in o2o_row[0].get_lines()}
    assert styles == {"o2o": "--", "ms": "-"}
    assert "o2o branch" in o2o_row[0].get_title()
    fig = viz.plot_total_loss(_records()["ms"])
    assert len(fig.axes[0].get_lines()) == 1 and len(fig.axes[1].get_lines()) == 4


def test_plot_ap_curves_and_per_layer():
    recs = _records(("o2o", "ms", "hybrid"))
    fig = viz.plot_ap_curves(recs)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 3 and list(lines[0].get_xdata()) == [1, 2, 3]
    assert list(lines[0].get_ydata()) == pytest.approx([10, 20, 30])
    evals = {s: r[-1]["eval"] for s, r in recs.items()}
    fig = viz.plot_ap_per_layer(evals)
    assert len(fig.axes[0].get_lines()) == 3 and list(fig.axes[0].get_lines()[0].get_xdata()) == [1, 2]


def test_plot_backend_timings():
    rows = [{"backend": "torch", "forward_ms": 2.0, "backward_ms": 3.0}, {"backend": "numba", "forward_ms": 1.0,
                                                                          "backward_ms": None}]
    fig = viz.plot_backend_timings(rows)
    assert len(fig.axes[0].patches) == 4


def test_markdown_table():
    text = viz.markdown_table([{"a": 1, "b": 0.123456}, {"a": "x|y", "c": None}])
    lines = text.splitlines()
    assert lines[0] == "| a | b | c |" and lines[1] == "|---|---|---|"
    assert lines[2] == "| 1 | 0.123 | - |" and lines[3] == "| x\\|y | - | - |"
    assert viz.markdown_table([{"a": float("nan")}], floatfmt=".2f").splitlines()[2] == "| - |"


def test_png_and_thumbnail(tmp_path):
    fig = viz.plot_loss_curves(_records())
    png = viz.fig_to_png(fig, dpi=50)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    path = viz.save_thumbnail(fig, tmp_path / "sub" / "thumb.png", width=600)
    with Image.open(path) as im:
        assert abs(im.size[0] - 600) <= 1
    assert isinstance(fig, Figure)


def test_plot_samples(tmp_path):
    class DS:
        class_names = ["circle", "square"]

        def __getitem__(self, i):
            return _image(40, 50, seed=i), {"labels": torch.tensor([0, 1]), "size": torch.tensor([40, 50]),
                                            "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.3, 0.3]])}

    fig = viz.plot_samples(DS(), [0, 1, 2], ncols=2)
    assert viz.count_boxes(fig, "gt") == 6
    assert sum(a.get_visible() for a in fig.axes) == 3
    buf = io.BytesIO(viz.fig_to_png(fig))
    assert Image.open(buf).size[0] > 100


def test_plot_dataset_rows(tmp_path):
    class DS:
        def __init__(self, n_boxes):
            self.n = n_boxes

        def __getitem__(self, i):
            return _image(40, 50, seed=i), {"labels": torch.zeros(self.n, dtype=torch.int64),
                                            "size": torch.tensor([40, 50]),
                                            "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]).repeat(self.n, 1)}

    fig = viz.plot_dataset_rows({"one": DS(1), "three": DS(3)}, [0, 1])
    assert viz.count_boxes(fig, "gt") == 2 * 1 + 2 * 3
    assert [ax.get_ylabel() for ax in fig.axes[::2]] == ["one", "three"]
    assert [ax.get_title() for ax in fig.axes[2:]] == ["3 objects", "3 objects"]
    assert not any(t.get_text() for ax in fig.axes for t in ax.texts)        # no class names: crowds stay readable


def test_scheme_of_names_and_runs():
    assert viz.scheme_of("ms") == "ms" and viz.scheme_of("baseline (o2o)") == "o2o"
    assert viz.scheme_of("MS-DETR (ms)") == "ms" and viz.scheme_of("this run") is None
    assert viz.scheme_of("x (foo)") is None
    assert viz.scheme_color("MS-DETR (ms)") == viz.SCHEME_COLORS["ms"]
    assert viz.scheme_color("my run", "o2o") == viz.O2O_COLOR and viz.scheme_style("my run", "o2o") == "--"
    assert viz.scheme_style("this run") == "-"


def test_candidate_quality_in_scheme_colours():
    from msdetr_lite.analysis import STAT_NAMES
    layers = [{n: 0.1 * (l + 1) for n in STAT_NAMES} for l in range(3)]
    fig = viz.plot_candidate_quality({"o2o": layers, "MS-DETR (ms)": {"layers": layers}}, stats=["best_iou", "duplicates"])
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2
    lines = {l.get_label(): l for l in axes[0].get_lines()}
    assert lines["o2o"].get_color() == viz.O2O_COLOR and lines["o2o"].get_linestyle() == "--"
    assert lines["MS-DETR (ms)"].get_color() == viz.SCHEME_COLORS["ms"]
    assert list(lines["o2o"].get_xdata()) == [1, 2, 3]
    with pytest.raises(ValueError, match="unknown statistic"):
        viz.plot_candidate_quality({"o2o": layers}, stats=["nope"])
    with pytest.raises(ValueError, match="empty"):
        viz.plot_candidate_quality({})


def test_report_panels_and_per_layer_ap():
    """The comparison figures of report.compare_runs: explicit panels, steps behind epoch means,
    AP per layer per run, runs coloured by their supervision."""
    from msdetr_lite.runs import Run
    runs = {f"{s} run": Run.from_records(r, name=s, config={"model": {"supervision": s}})
            for s, r in _records().items()}
    panels = (("o2o", None, None), ("o2m", None, None), ("enc", None, None), ("o2o", "cls", -1))
    fig = viz.plot_loss_curves(runs, panels=panels, x="epoch", steps_behind=True)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 4 and len(fig.axes) == 6
    faint, mean = visible[0].get_lines()[:2]
    assert list(faint.get_xdata())[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert list(mean.get_xdata()) == [1, 2, 3] and mean.get_color() == viz.O2O_COLOR
    assert mean.get_ydata()[0] == pytest.approx(3 * (1 / 4) + 3 * (1 / 4 + 1))    # all terms, both layers
    assert len(visible[1].get_lines()) == 2                                        # only ms has o2m (+ faint)
    assert "all terms (all layers)" in visible[0].get_title()
    fig = viz.plot_ap_curves(runs, metrics=("AP",), per_layer=True)
    assert len(fig.axes) == 3 and len(fig.axes[0].get_lines()) == 2               # 2 layers of the first run
    assert list(fig.axes[0].get_lines()[1].get_ydata()) == pytest.approx([10, 20, 30])
    assert [l.get_color() for l in fig.axes[2].get_lines()] == [viz.O2O_COLOR, viz.SCHEME_COLORS["ms"]]
    fig = viz.plot_ap_per_layer({**runs, "no eval": Run.from_records([], name="x")}, metrics=("AP",))
    assert len(fig.axes[0].get_lines()) == 2
    with pytest.raises(ValueError, match="x="):
        viz.plot_loss_curves(runs, x="iter")


def test_detection_grid_rows_are_models():
    class DS:
        class_names = ["circle", "square"]

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return _image(32, 32, seed=i), {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]]),
                                            "size": torch.tensor([32, 32]), "image_id": i}

    class Constant(torch.nn.Module):
        """Q = 5 queries, 2 classes: query q scores sigmoid(logit) = `scores`[q] on class 0."""
        def __init__(self, logit):
            super().__init__()
            self.logit = logit

        def forward(self, images, masks):
            b = images.shape[0]
            logits = torch.full((b, 5, 2), -9.0)
            logits[..., 0] = torch.tensor(self.logit)
            boxes = torch.tensor([[0.5, 0.5, 0.4, 0.4]]).repeat(b, 5, 1)
            return {"o2o": [{"logits": logits, "boxes": boxes}]}

    confident = Constant([3.0, 2.0, -3.0, -3.0, -3.0])      # two detections above 0.3
    weak = Constant([-3.0] * 5)                            # none: its best 3 are drawn anyway
    fig = viz.plot_detection_grid({"ms": confident, "baseline (o2o)": weak}, DS(), indices=[0, 1, 5],
                                  score_thresh=0.3, min_shown=3)
    assert len(fig.axes) == 4
    assert viz.count_boxes(fig.axes[0], "detection") == 2 and viz.count_boxes(fig.axes[2], "detection") == 3
    assert viz.count_boxes(fig, "gt") == 4
    assert fig.axes[0].get_ylabel() == "ms" and "top-3" in fig.axes[2].get_title()


# ---------------------------------------------------------------- issue 14: readable, honest figures and text
def _eval(ap_layers, nms_layers=None, dups=None, iou=0.7):
    """An `evaluation.evaluate` result with known APs (fractions) per layer, optionally with NMS."""
    ev = {"final": {"AP": ap_layers[-1], "AP50": ap_layers[-1]}, "layers": [{"AP": a, "AP50": a} for a in ap_layers],
          "layer_ids": list(range(len(ap_layers))), "num_images": 10,
          "duplicates": {"per_image": dups or [0.0] * len(ap_layers), "score_thresh": 0.3, "dup_iou": 0.5}}
    if nms_layers is not None:
        ev["nms"] = {"iou": iou, "final": {"AP": nms_layers[-1]}, "layers": [{"AP": a} for a in nms_layers]}
    return ev


def _small_texts(fig, minimum=9.0):
    """(text, size) of every visible, non-empty text artist of `fig` below `minimum` points, after a draw."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text
    FigureCanvasAgg(fig).draw()
    return [(t.get_text(), t.get_fontsize()) for t in fig.findobj(Text)
            if t.get_visible() and t.get_text().strip() and t.get_fontsize() < minimum]


def test_markdown_table_escapes_headers_and_renders():
    text = viz.markdown_table([{"max |diff|": "a|b", "multi\nline": 1}])
    assert text.splitlines()[0] == "| max \\|diff\\| | multi line |"
    assert viz.table_renders(text)
    assert not viz.table_renders("| max |diff| | b |\n|---|---|\n| 1 | 2 |")      # the old, broken header
    assert viz.table_renders("no table here\n\nat all")
    assert not viz.table_renders("| a | b |\n|---|---|\n| 1 | 2 | 3 |")


def test_every_label_at_least_9pt():
    """Tick labels, axis labels, legends, box captions and titles of the suite's figures: >= 9 pt."""
    from msdetr_lite.analysis import STAT_NAMES
    layers = [{n: 0.1 * (l + 1) for n in STAT_NAMES} for l in range(3)]
    M, L, P = 2, 2, 2
    w = torch.rand(M, L, P)
    figs = {
        "assignment": viz.plot_assignment(_image(), _assignment(Q=40), class_names=["square", "cross"]),
        "attention": viz.plot_deformable_attention(_image(), torch.rand(M, L, P, 2), w / w.sum(dim=(1, 2), keepdim=True),
                                                   ref_box=torch.tensor([0.5, 0.5, 0.3, 0.3]), title="q"),
        "losses": viz.plot_loss_curves(_records()),
        "fig2": viz.plot_o2o_losses(_records()),
        "ap": viz.plot_ap_curves(_records()),
        "candidates": viz.plot_candidate_quality({"o2o": layers, "ms": layers}),
        "taps": viz.plot_tap_placements("after_ca"),
        "nms": viz.plot_nms_ap_per_layer({"o2o": _eval([0.5, 0.6], [0.55, 0.65]), "ms": _eval([0.4, 0.3], [0.6, 0.7])}),
        # issue 25's figures: convergence grid, candidates by object, levels, the toy's S written out
        "convergence": viz.plot_convergence({n: {"epochs": [1, 2], "nms_iou": 0.7, "AP": [[0.1, 0.2]] * 2,
                                                 "AP_nms": [[0.2, 0.3]] * 2, "duplicates": [[1.0, 0.5]] * 2}
                                             for n in ("o2o", "ms")}),
        "candidates_by_object": viz.plot_topk_comparison([_image()], [torch.tensor([[0.3, 0.3, 0.2, 0.2]])],
                                                         {"ms": [(torch.rand(10, 4) * 0.5 + 0.2, torch.rand(10))]},
                                                         k=5, by_gt=True),
        "levels": viz.plot_level_shares({"init": {"decoder": [[0.25] * 4] * 2, "encoder": [[0.25] * 4],
                                                  "spatial_shapes": [[16, 16], [8, 8], [4, 4], [2, 2]]}}),
        "toy": viz.plot_assignment(_image(), _assignment(Q=6), class_names=["square", "cross"]),
    }
    small = {name: _small_texts(fig) for name, fig in figs.items()}
    assert not any(small.values()), {k: v for k, v in small.items() if v}


def test_plot_tap_placements_marks_the_selected_tap():
    fig = viz.plot_tap_placements("after_sa")
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 4 and any("after_sa" in t for t in titles) and any("None" in t for t in titles)
    bold = [ax.get_title() for ax in fig.axes if ax.title.get_fontweight() == "bold"]
    assert len(bold) == 1 and "after_sa" in bold[0]
    assert "cross-attention" in [t.get_text() for t in fig.axes[1].texts]
    with pytest.raises(ValueError, match="o2m_tap"):
        viz.draw_tap(fig.axes[0], "before_everything")


def test_plot_o2o_losses_is_fig2():
    fig = viz.plot_o2o_losses(_records())
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 3 and all("o2o branch" in ax.get_title() for ax in visible)
    styles = {l.get_label(): l.get_linestyle() for l in visible[0].get_lines() if not l.get_label().startswith("_")}
    assert styles == {"o2o": "--", "ms": "-"}                       # baseline dashed, MS-DETR solid


def test_plot_nms_ap_per_layer_two_lines_per_model():
    fig = viz.plot_nms_ap_per_layer({"o2o": _eval([0.5, 0.6], [0.55, 0.65]), "ms": _eval([0.4, 0.3])})
    lines = fig.axes[0].get_lines()
    assert [l.get_label() for l in lines] == ["o2o, NMS-free", "o2o, NMS at IoU 0.7", "ms, NMS-free"]
    assert list(lines[1].get_ydata()) == pytest.approx([55, 65])


def test_describe_nms_comparison_follows_the_numbers():
    from msdetr_lite import report
    evals = {"ms": _eval([0.30, 0.377], [0.6, 0.688], dups=[6.0, 5.4]),
             "o2o": _eval([0.50, 0.516], [0.6, 0.630], dups=[3.0, 2.9])}
    text = report.describe_nms_comparison(evals)
    assert "37.7, 13.9 below the baseline's 51.6" in text and "68.8, 5.8 above the baseline's 63.0" in text
    assert "candidates are better" in text and "5.4 per image" in text and "2.9 for the baseline" in text
    wins = report.describe_nms_comparison({"ms": _eval([0.6], [0.7]), "o2o": _eval([0.5], [0.6])})
    assert "wins both ways" in wins and "above the baseline's 50.0" in wins
    loses = report.describe_nms_comparison({"ms": _eval([0.4], [0.5]), "o2o": _eval([0.5], [0.6])})
    assert "loses both ways" in loses
    tie = report.describe_nms_comparison({"ms": _eval([0.505], [0.6]), "o2o": _eval([0.5], [0.6])}, fast=True)
    assert tie.startswith("(Fast mode") and "about equal" in tie
    no_nms = report.describe_nms_comparison({"ms": _eval([0.4]), "o2o": _eval([0.5])})
    assert "no NMS numbers" in no_nms and "10.0 below" in no_nms
    rows = report.nms_rows(evals)
    assert rows[0]["AP per layer, NMS-free"] == "30.0/37.7" and rows[0]["NMS adds (final layer)"] == "+31.1"
    assert rows[1]["duplicates / image"] == "2.90" and viz.table_renders(viz.markdown_table(rows))


def test_benchmark_costs_and_regime_text(tmp_path):
    from msdetr_lite import report
    assert report.benchmark_costs(tmp_path / "missing.json") is None
    res = [{"scheme": s, "num_queries": 100, "extra_queries": x, "step_s": t, "time_ratio": t / 0.2,
            "peak_mem_mb": 500.0, "mem_ratio": 1.0, "preset": "tiny", "batch": 4, "image_size": 128, "device": "cpu",
            "steps": 20, "warmup": 3, "mem_kind": "cpu ru_maxrss"} for s, x, t in (("o2o", 0, 0.2), ("hybrid", 150, 0.3))]
    path = tmp_path / "overhead.json"
    path.write_text(__import__("json").dumps({"args": {"repeats": 3}, "results": res}))
    costs = report.benchmark_costs(path)
    assert [r["time vs o2o"] for r in costs["rows"]] == ["1.00x", "1.50x"]
    assert costs["rows"][1]["queries in training"] == "100+150"
    assert "device `cpu`" in costs["caption"] and "does not name the machine" in costs["caption"]
    assert "3 round(s)" in costs["caption"] and "after 3 warm-up" in costs["caption"]
    # without a path: your own bench/results run first, else the committed measurement
    import pytest
    from msdetr_lite.lab import readings                  # where the paths are defined (report re-exports)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(readings, "OVERHEAD_JSON", tmp_path / "yours.json")
        mp.setattr(readings, "OVERHEAD_MEASURED_JSON", path)
        assert report.benchmark_costs()["rows"] == costs["rows"]
        mp.setattr(readings, "OVERHEAD_MEASURED_JSON", tmp_path / "none.json")
        assert report.benchmark_costs() is None
    assert report.load_regime(tmp_path / "regime.json") is None
    d = lambda ap, nms: {"AP": {"mean": ap, "spread": 0.01, "n": 2}, "AP_nms": {"mean": nms, "spread": 0.01, "n": 2}}
    study = {"nms_iou": 0.7, "summary": [{"cell": "demo", "delta": {"ms": d(-0.1, 0.05)}},
                                         {"cell": "dec6", "delta": {"ms": d(0.03, 0.04)}}]}
    one = lambda ap, nms, dup: {"AP": {"mean": ap, "spread": 0.02, "n": 2}, "AP_nms": {"mean": nms, "spread": 0.0, "n": 2},
                                "duplicates": {"mean": dup, "spread": 0.0, "n": 2}}
    study = {"cells": {"demo": {"question": "the recipe"}},
             "summary": [{"cell": "demo", "schemes": {"o2o": one(0.45, 0.6, 3.9), "ms": one(0.40, 0.67, 5.07)},
                          "delta": {"ms": d(-0.052, 0.057)}}]}
    run = lambda cell, seed, first, ap, dup: {"cell": cell, "scheme": "ms", "seed": seed, "AP": ap,
                                               "AP_per_layer": [first, ap], "duplicates": dup}
    study["runs"] = [run("demo", 0, 0.394, 0.399, 5.7), run("demo", 1, 0.394, 0.411, 4.4),
                     run("o2m_off_last", 0, 0.442, 0.408, 5.4), run("o2m_off_last", 1, 0.448, 0.404, 4.6)]
    text = report.describe_o2m_switched_off(study)
    assert "first decoder layer moves from 39.4 to 44.5 AP, the final layer from 40.5 to 40.6 AP" in text
    assert "5.0 duplicates per image instead of 5.1" in text and "does not remove them" in text
    assert report.describe_o2m_switched_off({"runs": study["runs"][:2]}) is None


def test_regime_per_epoch_gap_text_and_plot():
    from msdetr_lite import report

    def runs(cell, scheme, seed, aps, aps_nms):
        return {"cell": cell, "scheme": scheme, "seed": seed, "lr_drop": len(aps) - 1, "epochs": [
            {"epoch": e, "AP": a, "AP_nms": n, "duplicates": 1.0} for e, (a, n) in enumerate(zip(aps, aps_nms), 1)]}

    study = {"nms_iou": 0.7, "runs": [
        runs("demo", "o2o", 0, [0.2, 0.4], [0.3, 0.5]), runs("demo", "ms", 0, [0.15, 0.34], [0.35, 0.56]),
        runs("ep8", "o2o", 0, [0.2, 0.4, 0.45, 0.5], [0.3, 0.5, 0.55, 0.6]),
        runs("ep8", "ms", 0, [0.15, 0.33, 0.43, 0.49], [0.35, 0.57, 0.62, 0.68])]}
    gaps = report.regime_epoch_gaps(study)
    assert list(gaps) == ["demo", "ep8"] and [g["epoch"] for g in gaps["ep8"]] == [1, 2, 3, 4]
    text = report.describe_schedule(study)
    assert "`ep8` trains both schemes for 4 epochs instead of 2" in text
    assert "NMS-free: -6.0 at the end of `demo`, -7.0 after epoch 2 of `ep8`, -1.0 at its end" in text
    assert "with NMS: +6.0, +7.0, +8.0 (mean over 1 seed)" in text
    assert ("narrows the NMS-free gap by 5.0 AP; ms trails o2o NMS-free at the end of `ep8` in every seed (-1.0). "
            "ms leads o2o with NMS at the end of `ep8` in every seed (+8.0).") in text
    study["runs"][3]["epochs"][-1]["AP"] = 0.41                     # the gap widens instead
    assert "widens the NMS-free gap by 3.0 AP" in report.describe_schedule(study)
    study["runs"][3]["epochs"][-1]["AP"] = 0.53                     # ...or ms ends ahead
    assert "ms leads o2o NMS-free at the end of `ep8` in every seed (+3.0)" in report.describe_schedule(study)
    study["runs"].append(runs("ep8", "o2o", 1, [0.2, 0.4, 0.45, 0.5], [0.3, 0.5, 0.55, 0.6]))
    study["runs"].append(runs("ep8", "ms", 1, [0.15, 0.33, 0.43, 0.45], [0.35, 0.57, 0.62, 0.68]))
    assert "ms is level with o2o NMS-free at the end of `ep8` (the seeds disagree: -1.0)" in \
        report.describe_schedule(study)
    assert report.describe_schedule({"runs": study["runs"][:2]}) is None        # no ep8 yet
    assert report.regime_epoch_gaps({"runs": [{"cell": "demo", "scheme": "ms", "seed": 0}]}) == {}
    fig = viz.plot_regime_epochs(gaps, 0.7)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 3       # two cells + the zero line
    assert fig.axes[0].get_legend_handles_labels()[1] == ["demo (1 seed)", "ep8 (1 seed)"]
    drops = report.regime_lr_drops(study, list(gaps))
    assert drops == {"demo": 1, "ep8": 3}
    fig = viz.plot_regime_epochs(gaps, 0.7, lr_drops=drops)
    assert sorted(t.get_text() for t in fig.axes[1].texts) == ["lr drop (demo)", "lr drop (ep8)"]
    assert [line.get_xdata()[0] for line in fig.axes[0].lines[2:4]] == [1.5, 3.5]
    fig = viz.plot_regime_epochs(gaps, 0.7, lr_drops={"demo": 3, "ep8": 3})      # one shared drop: one line
    assert [t.get_text() for t in fig.axes[0].texts] == ["lr drop"]
    dups = report.regime_epoch_duplicates(study, list(gaps))
    assert list(dups) == ["demo", "ep8"] and [d["mean"] for d in dups["ep8"]["ms"]] == [1.0] * 4
    fig = viz.plot_regime_epochs(gaps, 0.7, duplicates=dups)            # a third panel: duplicates per scheme
    assert len(fig.axes) == 3 and fig.axes[2].get_legend_handles_labels()[1] == \
        ["o2o (demo)", "ms (demo)", "o2o (ep8)", "ms (ep8)"]
    assert fig.axes[2].lines[0].get_linestyle() == "--" and fig.axes[2].lines[1].get_linestyle() == "-"
    fig = report.regime_epochs_figure(study)                          # what notebook 03 and bench/regime.py draw
    assert len(fig.axes) == 3 and [t.get_text() for t in fig.axes[0].texts] == ["lr drop (demo)", "lr drop (ep8)"]
    assert report.regime_epochs_figure({"runs": study["runs"][:1]}) is None


def test_regime_epoch_gap_sentence_reads_the_lr_drop():
    from msdetr_lite import report

    def run(scheme, seed, aps):
        return {"cell": "demo", "scheme": scheme, "seed": seed, "lr_drop": 3,
                "epochs": [{"epoch": e, "AP": a, "AP_nms": a + 0.2, "duplicates": 1.0} for e, a in enumerate(aps, 1)]}

    study = {"runs": [run("o2o", 0, [0.14, 0.25, 0.335, 0.437]), run("ms", 0, [0.08, 0.246, 0.339, 0.399]),
                      run("o2o", 1, [0.16, 0.22, 0.322, 0.476]), run("ms", 1, [0.12, 0.19, 0.364, 0.412])]}
    text = report.describe_epoch_gap(study, "demo")
    assert "after epochs 1 to 4, NMS-free: -5.0, -1.7, +2.3, -5.1; with NMS: -5.0, -1.7, +2.3, -5.1" in text
    assert "Duplicates per image (final layer) after each epoch: o2o 1.0, 1.0, 1.0, 1.0; ms 1.0, 1.0, 1.0, 1.0." in text
    assert ("(mean over 2 seeds). NMS-free, ms is ahead of o2o in every seed after epoch 3 and behind in every seed "
            "after epochs 1, 2, 4.") in text
    assert "after epoch 3; from there to epoch 4 o2o gains 12.8 AP NMS-free and ms 5.4" in text
    assert "ms's lead before the drop (+2.3) becomes a deficit (-5.1)" in text
    for r in study["runs"]:
        r["lr_drop"] = 2
    text = report.describe_epoch_gap(study, "demo")
    assert "after epoch 2; from there to epoch 4" in text and "taking the gap from -1.7 to -5.1" in text
    study["runs"][1]["lr_drop"] = 5                                # seeds disagree: no lr-drop sentence
    assert "lr drops" not in report.describe_epoch_gap(study, "demo")
    study["runs"][3]["epochs"][2]["AP"] = 0.3                     # seed 1 now behind after epoch 3: no lead
    assert "ahead of o2o in every seed after no epoch and behind in every seed after epochs 1, 2, 4; the seeds " \
        "disagree after epoch 3." in report.describe_epoch_gap(study, "demo")
    assert report.describe_epoch_gap(study, "ep8") is None
