"""SetCriterion: match, then supervise, for every decoder layer and every branch.

Branches (docs/method.md, "Losses"):

| branch | predictions | matching | weights cls / L1 / GIoU |
|---|---|---|---|
| `o2o` | outputs["o2o"][l], the primary queries | Hungarian | 1 / 5 / 2 |
| `o2m`, supervision `ms` | outputs["o2m"][l], the same queries at the o2m tap | MS-DETR one-to-many | 2 / 5 / 2 |
| `o2m`, supervision `hybrid` | outputs["o2m"][l], H-DETR's extra queries | Hungarian on the GTs repeated K times | o2o x hybrid_weight |
| `o2m`, supervision `group` | outputs["o2m"][l], Group-DETR's extra groups | Hungarian per group | o2o x group_weight |
| `enc` | outputs["enc"], two-stage proposals | Hungarian, class-agnostic | 2 / 5 / 2 |

Every branch uses the sigmoid focal loss over all queries x classes and L1 + GIoU on the
matched pairs, all divided by the number of GT boxes in the batch (averaged over processes).
So the o2m branch of `ms`, with up to K positives per GT, weighs about K times the o2o branch.
The one exception is `hybrid`, which divides by the number of *repeated* GTs (K x the number of
GTs), exactly as H-DETR does by handing its criterion the repeated targets.

Two paths compute the same losses. The default (`batched=True`) matches and supervises every
layer and image of a branch at once: predictions are stacked [L, B, N, C], the Hungarian cost
matrices of all branches go to the host in one copy (`matching.hungarian_solve`), the
one-to-many matcher stays on the device (`matching.batched_one_to_many`), and each branch takes
one focal loss and one L1 / GIoU over all its layers, split per layer at the end. The host
syncs left per step: that one copy of the costs (scipy needs them) and, on a GPU, nothing else
in the criterion (the GT-count normaliser stays a tensor). `batched=False` runs the original
per-image, per-layer code, kept as the readable reference the equivalence tests compare against.

Files: `criterion.py` (SetCriterion, the batched path), `reference.py` (the per-image path),
`terms.py` (Assignment, the GT-count normaliser, the IoU-aware focal loss).
"""
from .criterion import SetCriterion
from .terms import Assignment, _num_boxes, iou_aware_focal_loss  # noqa: F401 (_num_boxes: tests)

__all__ = ["SetCriterion", "Assignment", "iou_aware_focal_loss"]
