"""Matchers: which query learns from which ground truth (GT), both without gradients.

* `reference.py`, one image at a time, the readable reference: `one_to_one` (Hungarian, DETR)
  and MS-DETR's `one_to_many` step by step (`match_scores`, `select_positives`, `topk_per_gt`,
  `o2m_class_targets`), with `focal_class_cost`.
* `batched.py`, every decoder layer and image of a training step at once (what SetCriterion
  trains with): `pad_targets`, `batched_o2o_cost` + `hungarian_solve` (one host copy),
  `batched_one_to_many` (on the device), and the batched steps.

Everything is importable from here: `from msdetr_lite.matching import one_to_many, hungarian_solve`.
"""
from .batched import (HungarianPairs, HungarianProblem, ManyPairs, PaddedTargets, _cap_positives,
                      batched_match_scores, batched_o2m_class_targets, batched_o2o_cost, batched_one_to_many,
                      batched_one_to_one, batched_select_positives, batched_topk_per_gt, hungarian_solve,
                      pad_targets)
from .reference import (_xyxy, focal_class_cost, match_scores, o2m_class_targets, one_to_many, one_to_one,
                        select_positives, topk_per_gt)

__all__ = ["focal_class_cost", "one_to_one", "match_scores", "select_positives", "topk_per_gt",
           "o2m_class_targets", "one_to_many", "PaddedTargets", "pad_targets", "batched_o2o_cost",
           "HungarianProblem", "HungarianPairs", "hungarian_solve", "batched_one_to_one", "batched_match_scores",
           "batched_select_positives", "batched_topk_per_gt", "batched_o2m_class_targets", "ManyPairs",
           "batched_one_to_many"]
