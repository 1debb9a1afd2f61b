"""Drawing for the notebooks, widgets and reports: one palette, plain functions that return
matplotlib Figures, split by concept.

    palette       the suite's colours: GT green, o2o blue, o2m orange; one colour and line style
                  per supervision scheme (o2o baseline dashed, MS-DETR solid); layers, levels
    figures       bare Figures, images, boxes (normalised cxcywh in, pixels drawn), PNG files
    detections    dataset samples with their GT, detections of one image or of models x images
    assignments   o2o vs o2m: the match-score matrix S and the matched query boxes
    attention     deformable attention: sampling points per level and layer, backend timings
    candidates    the paper's Fig. 1: top-k query boxes, candidate statistics per decoder layer
    training      runs (`msdetr_lite.runs`): losses per branch, AP per epoch and per layer, and both at
                  once (`plot_convergence`: decoder layer x epoch, NMS-free, with NMS, duplicates)
    method        the paper's Fig. 4: where the o2m branch taps the decoder layer
    regime        the regime study (`msdetr_lite.regime`): AP minus o2o per cell and per epoch, NMS-free
                  and with NMS
    tables        markdown tables of dict rows

Everything is importable from here (`from msdetr_lite.viz import plot_assignment`, `viz.O2O_COLOR`).
"""
from .assignments import plot_assignment, plot_score_matrix
from .attention import (attention_heatmap, plot_attention_layers, plot_backend_timings, plot_deformable_attention,
                        plot_level_shares)
from .candidates import (plot_candidate_hits, plot_candidate_quality, plot_candidates, plot_topk_comparison,
                         plot_topk_per_layer)
from .detections import plot_dataset_rows, plot_detection_grid, plot_detections, plot_samples
from .figures import (boxes_to_pixels, class_name, count_boxes, draw_boxes, fig_to_png, new_figure, save_figure,
                      save_thumbnail, show_image, to_numpy_image)
from .palette import (BAR_COLORS, BRANCH_COLORS, ENC_COLOR, GT_COLOR, LEVEL_COLORS, LEVEL_STRIDES, O2M_COLOR,
                      O2O_COLOR, REF_COLOR, SCHEME_COLORS, SCHEME_LABELS, SCHEME_STYLES, SCHEMES, layer_color,
                      object_color, scheme_color, scheme_label, scheme_of, scheme_style)
from .method import TAPS, draw_tap, plot_tap_placements
from .probe import plot_probe
from .regime import plot_regime_epochs, plot_regime_map
from .tables import escape_cell, markdown_table, table_renders
from .training import (plot_ap_curves, plot_ap_per_layer, plot_convergence, plot_loss_curves, plot_nms_ap_per_layer,
                       plot_o2o_losses, plot_total_loss)

__all__ = [
    # palette
    "GT_COLOR", "O2O_COLOR", "O2M_COLOR", "ENC_COLOR", "REF_COLOR", "BRANCH_COLORS", "SCHEMES", "SCHEME_COLORS",
    "SCHEME_STYLES", "SCHEME_LABELS", "LEVEL_COLORS", "LEVEL_STRIDES", "BAR_COLORS", "scheme_of", "scheme_color",
    "scheme_style", "scheme_label", "layer_color", "object_color",
    # figures, images, boxes, files
    "new_figure", "to_numpy_image", "show_image", "boxes_to_pixels", "draw_boxes", "count_boxes", "class_name",
    "fig_to_png", "save_figure", "save_thumbnail",
    # figures by concept
    "plot_samples", "plot_dataset_rows", "plot_detections", "plot_detection_grid", "plot_score_matrix", "plot_assignment",
    "attention_heatmap", "plot_deformable_attention", "plot_attention_layers", "plot_backend_timings", "plot_level_shares",
    "plot_candidates", "plot_candidate_hits", "plot_topk_comparison", "plot_topk_per_layer", "plot_candidate_quality",
    "plot_loss_curves", "plot_total_loss", "plot_ap_curves", "plot_ap_per_layer", "plot_probe", "plot_regime_epochs", "plot_regime_map",
    "plot_o2o_losses", "plot_nms_ap_per_layer", "plot_convergence", "TAPS", "draw_tap", "plot_tap_placements",
    "markdown_table", "escape_cell", "table_renders",
]
