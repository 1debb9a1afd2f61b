"""Tests of the matchers: hand-built cases for every step, hypothesis for the invariants."""
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import box_convert, generalized_box_iou

from msdetr_lite.matching import (focal_class_cost, match_scores, o2m_class_targets, one_to_many,
                                  one_to_one, select_positives, topk_per_gt)


def boxes(*rows):
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def labels(*values):
    return torch.tensor(values, dtype=torch.int64)


def logit(p):
    return math.log(p / (1 - p))


# ------------------------------------------------------------------ one_to_one, by hand

def test_o2o_picks_the_matching_queries_sorted_by_query():
    gt = boxes([0.2, 0.2, 0.2, 0.2], [0.7, 0.7, 0.3, 0.3])
    pred = boxes([0.7, 0.7, 0.3, 0.3], [0.5, 0.5, 0.05, 0.05], [0.2, 0.2, 0.2, 0.2])
    logits = torch.zeros(3, 2)
    q, g = one_to_one(logits, pred, labels(0, 1), gt)
    assert q.tolist() == [0, 2] and g.tolist() == [1, 0]
    assert q.dtype == g.dtype == torch.int64


def test_o2o_class_cost_breaks_a_geometric_tie():
    gt = boxes([0.5, 0.5, 0.2, 0.2])
    pred = boxes([0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2])
    logits = torch.tensor([[3.0, -3.0], [-3.0, 3.0]])     # only query 1 believes in class 1
    q, g = one_to_one(logits, pred, labels(1), gt)
    assert q.tolist() == [1] and g.tolist() == [0]


def test_focal_class_cost_formula():
    p = torch.tensor([[0.8]])
    cost = focal_class_cost(torch.logit(p), labels(0))
    expected = 0.25 * 0.2 ** 2 * -math.log(0.8) - 0.75 * 0.8 ** 2 * -math.log(0.2)
    assert cost.item() == pytest.approx(expected, rel=1e-4)


def test_o2o_without_gt_and_with_more_gts_than_queries():
    q, g = one_to_one(torch.randn(5, 3), torch.rand(5, 4), labels(), torch.zeros(0, 4))
    assert q.numel() == 0 and g.numel() == 0
    gts = torch.rand(7, 4) * 0.5 + 0.1
    q, g = one_to_one(torch.randn(4, 3), torch.rand(4, 4), torch.randint(0, 3, (7,)), gts)
    assert q.tolist() == [0, 1, 2, 3] and len(set(g.tolist())) == 4


def test_o2o_degenerate_boxes_and_ties():
    pred = boxes([0.5, 0.5, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [0.1, 0.1, 0.0, 0.3])
    gt = boxes([0.5, 0.5, 0.0, 0.0], [0.1, 0.1, 0.2, 0.0])
    q, g = one_to_one(torch.zeros(3, 1), pred, labels(0, 0), gt)
    assert len(q) == 2 and len(set(q.tolist())) == 2 and sorted(g.tolist()) == [0, 1]


@pytest.mark.parametrize("args, name", [
    ((torch.zeros(3), torch.zeros(3, 4), labels(0), torch.zeros(1, 4)), "pred_logits"),
    ((torch.zeros(3, 2), torch.zeros(2, 4), labels(0), torch.zeros(1, 4)), "pred_boxes"),
    ((torch.zeros(3, 2), torch.zeros(3, 4), labels(0, 1), torch.zeros(1, 4)), "gt_boxes"),
    ((torch.zeros(3, 2), torch.zeros(3, 4), torch.zeros(1, 1, dtype=torch.int64), torch.zeros(1, 4)), "gt_labels"),
    ((torch.zeros(3, 2), torch.zeros(3, 4), labels(2), torch.zeros(1, 4)), "gt_labels"),
    ((torch.zeros(3, 2), torch.zeros(3, 4), torch.zeros(1), torch.zeros(1, 4)), "gt_labels"),
])
@pytest.mark.parametrize("fn", [one_to_one, one_to_many])
def test_shape_errors_name_the_argument(fn, args, name):
    with pytest.raises(ValueError, match=name):
        fn(*args)


# ------------------------------------------------------------------ one_to_many, step by step

def test_step1_scores_are_additive():
    gt = boxes([0.25, 0.25, 0.2, 0.2])
    # query 0: the GT itself; query 1: shifted by half a width, IoU = 0.02 / 0.06 = 1/3
    pred = boxes([0.25, 0.25, 0.2, 0.2], [0.35, 0.25, 0.2, 0.2], [0.9, 0.9, 0.1, 0.1])
    logits = torch.tensor([[logit(0.75), 5.0], [logit(0.5), 5.0], [logit(0.2), 5.0]])
    s = match_scores(logits, pred, labels(0), gt, alpha=0.3)
    assert s.shape == (1, 3)
    expected = [0.3 * 0.75 + 0.7 * 1.0, 0.3 * 0.5 + 0.7 / 3, 0.3 * 0.2 + 0.0]
    assert s[0].tolist() == pytest.approx(expected, abs=1e-5)


# G = 3 GTs x Q = 4 queries; columns are queries.
S_LOW_QUALITY = torch.tensor([[0.90, 0.50, 0.10, 0.20],
                              [0.30, 0.60, 0.35, 0.10],
                              [0.05, 0.10, 0.30, 0.25]])


def test_steps2_3_threshold_and_low_quality_rule():
    best_gt, positive = select_positives(S_LOW_QUALITY, tau=0.4)
    assert best_gt.tolist() == [0, 1, 1, 2]
    # q0, q1 pass tau; q2 (0.35) fails it but is GT 2's best query, so it becomes positive
    # *for its own best GT*, GT 1. q3 (0.25) is nobody's best: negative.
    assert positive.tolist() == [True, True, True, False]


def test_step5_top_min_cg_k_of_each_row():
    best_gt, positive = select_positives(S_LOW_QUALITY, tau=0.4)
    q, g = topk_per_gt(S_LOW_QUALITY, best_gt, positive, k=6)
    # c = [1, 2, 0]: GT 0 takes its top 1, GT 1 its top 2 (q1 0.60, q2 0.35), GT 2 nothing
    assert list(zip(q.tolist(), g.tolist())) == [(0, 0), (1, 1), (2, 1)]
    q, g = topk_per_gt(S_LOW_QUALITY, best_gt, positive, k=1)
    assert list(zip(q.tolist(), g.tolist())) == [(0, 0), (1, 1)]


S_SHARED = torch.tensor([[0.90, 0.80, 0.70, 0.10],
                         [0.85, 0.10, 0.10, 0.50]])


def test_step5_searches_all_queries_and_step6_higher_score_wins():
    best_gt, positive = select_positives(S_SHARED, tau=0.45)
    assert best_gt.tolist() == [0, 0, 0, 1] and positive.all()
    q, g = topk_per_gt(S_SHARED, best_gt, positive, k=6)
    # c = [3, 1]; GT 1's single target is q0 (0.85), not its own positive q3 (0.50)
    assert list(zip(q.tolist(), g.tolist())) == [(0, 0), (1, 0), (2, 0), (0, 1)]
    cq, cg = o2m_class_targets(q, g, S_SHARED)
    assert cq.tolist() == [0, 1, 2] and cg.tolist() == [0, 0, 0]       # 0.90 beats 0.85


def test_step6_ties_go_to_the_lower_gt():
    s = torch.tensor([[0.5, 0.2], [0.5, 0.9]])
    cq, cg = o2m_class_targets(labels(0, 0, 1), labels(1, 0, 1), s)
    assert cq.tolist() == [0, 1] and cg.tolist() == [0, 1]


def test_step4_random_cap_is_reproducible_and_a_subset():
    s = torch.rand(2, 12) * 0.5 + 0.5                  # every query passes tau
    _, uncapped = select_positives(s, tau=0.4)
    assert uncapped.all()
    runs = []
    for seed in (0, 0, 1, 2, 3):
        gen = torch.Generator().manual_seed(seed)
        _, positive = select_positives(s, tau=0.4, max_pos=3, generator=gen)
        assert positive.sum() == 3
        runs.append(tuple(positive.nonzero().flatten().tolist()))
    assert runs[0] == runs[1]
    assert len(set(runs)) > 1


def test_one_to_many_end_to_end_by_hand():
    gt = boxes([0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2])
    pred = boxes([0.3, 0.3, 0.2, 0.2], [0.31, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2],
                 [0.1, 0.9, 0.05, 0.05], [0.9, 0.1, 0.05, 0.05], [0.5, 0.5, 0.05, 0.05],
                 [0.1, 0.1, 0.02, 0.02], [0.9, 0.9, 0.02, 0.02])
    logits = torch.full((8, 2), -4.0)
    q, g, s = one_to_many(logits, pred, labels(0, 1), gt, k=6, tau=0.4, max_pos_fraction=0.25,
                          return_scores=True)
    assert s.shape == (2, 8)
    # 3 positives (q0, q1 for GT 0; q2 for GT 1) but the cap is floor(0.25 * 8) = 2
    assert len(q) == 2
    q, g = one_to_many(logits, pred, labels(0, 1), gt, k=6, tau=0.4, max_pos_fraction=1.0)
    assert list(zip(q.tolist(), g.tolist())) == [(0, 0), (1, 0), (2, 1)]


def test_one_to_many_no_gt_more_gts_than_queries_and_degenerate():
    q, g, s = one_to_many(torch.randn(6, 3), torch.rand(6, 4), labels(), torch.zeros(0, 4),
                          return_scores=True)
    assert q.numel() == g.numel() == 0 and s.shape == (0, 6)
    q, g = one_to_many(torch.randn(3, 3), torch.rand(3, 4), torch.randint(0, 3, (9,)), torch.rand(9, 4),
                       max_pos_fraction=1.0)
    assert len(q) <= 3 and (q < 3).all() and (g < 9).all()
    zero = boxes([0.5, 0.5, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [0.2, 0.2, 0.0, 0.1], [0.5, 0.5, 0.0, 0.0])
    q, g, s = one_to_many(torch.zeros(4, 1), zero, labels(0, 0), zero[:2], max_pos_fraction=1.0,
                          return_scores=True)
    assert torch.isfinite(s).all() and len(q) >= 1


def test_one_to_many_all_ties():
    pred = boxes(*[[0.5, 0.5, 0.2, 0.2]] * 8)
    q, g = one_to_many(torch.zeros(8, 2), pred, labels(0, 1), pred[:2], k=3, max_pos_fraction=1.0,
                       generator=torch.Generator().manual_seed(0))
    # every query's best GT is GT 0 (argmax tie -> first), so c = [8, 0]
    assert g.tolist() == [0, 0, 0] and len(set(q.tolist())) == 3


# ------------------------------------------------------------------ properties

@st.composite
def image_problem(draw, max_q=10, max_g=7):
    num_q = draw(st.integers(1, max_q))
    num_g = draw(st.integers(0, max_g))
    num_c = draw(st.integers(1, 4))
    unit = st.floats(0.0, 1.0, allow_nan=False, width=32)
    size = st.one_of(st.just(0.0), unit)        # zero-width / zero-height boxes included
    coarse = st.sampled_from([-3.0, 0.0, 0.5, 3.0])  # repeated values: ties happen
    logits = torch.tensor(draw(st.lists(coarse, min_size=num_q * num_c, max_size=num_q * num_c))
                          ).reshape(num_q, num_c)

    def box_list(n):
        rows = draw(st.lists(st.tuples(unit, unit, size, size), min_size=n, max_size=n))
        return torch.tensor(rows, dtype=torch.float32).reshape(n, 4)

    pred_boxes = box_list(num_q)
    if num_q > 1 and draw(st.booleans()):      # duplicated predictions: more ties
        pred_boxes[1:] = pred_boxes[0]
    gt_labels = torch.tensor(draw(st.lists(st.integers(0, num_c - 1), min_size=num_g, max_size=num_g)),
                             dtype=torch.int64)
    return logits, pred_boxes, gt_labels, box_list(num_g)


PROPS = settings(max_examples=50, deadline=None)


@PROPS
@given(image_problem())
def test_o2o_is_a_partial_permutation(problem):
    logits, pred_boxes, gt_labels, gt_boxes = problem
    q, g = one_to_one(logits, pred_boxes, gt_labels, gt_boxes)
    num_q, num_g = len(pred_boxes), len(gt_labels)
    assert len(q) == len(g) == min(num_q, num_g)
    assert len(set(q.tolist())) == len(q) and len(set(g.tolist())) == len(g)
    assert q.tolist() == sorted(q.tolist())
    assert all(0 <= i < num_q for i in q.tolist()) and all(0 <= j < num_g for j in g.tolist())


@PROPS
@given(image_problem(max_q=4, max_g=4))
def test_o2o_is_optimal_by_brute_force(problem):
    logits, pred_boxes, gt_labels, gt_boxes = problem
    q, g = one_to_one(logits, pred_boxes, gt_labels, gt_boxes)
    if len(gt_labels) == 0:
        return
    # the documented cost, rebuilt here, with the same degenerate-box guard (w, h >= 1e-6)
    def xyxy(b):
        return box_convert(torch.cat([b[:, :2], b[:, 2:].clamp(min=1e-6)], 1), "cxcywh", "xyxy")
    cost = (2 * focal_class_cost(logits, gt_labels) + 5 * torch.cdist(pred_boxes, gt_boxes, p=1)
            - 2 * generalized_box_iou(xyxy(pred_boxes), xyxy(gt_boxes)))
    num_q, num_g = cost.shape
    if num_q >= num_g:
        best = min(sum(cost[p[j], j] for j in range(num_g)) for p in itertools.permutations(range(num_q), num_g))
    else:
        best = min(sum(cost[i, p[i]] for i in range(num_q)) for p in itertools.permutations(range(num_g), num_q))
    assert cost[q, g].sum().item() == pytest.approx(float(best), rel=1e-4, abs=1e-4)


@PROPS
@given(image_problem(), st.integers(1, 4), st.sampled_from([0.0, 0.2, 0.4, 0.9]),
       st.sampled_from([0.25, 0.5, 1.0]), st.integers(0, 3))
def test_o2m_invariants(problem, k, tau, fraction, seed):
    logits, pred_boxes, gt_labels, gt_boxes = problem
    num_q, num_g = len(pred_boxes), len(gt_labels)
    q, g, s = one_to_many(logits, pred_boxes, gt_labels, gt_boxes, k=k, tau=tau, alpha=0.3,
                          max_pos_fraction=fraction, generator=torch.Generator().manual_seed(seed),
                          return_scores=True)
    assert s.shape == (num_g, num_q) and torch.isfinite(s).all()
    assert (s >= 0).all() and (s <= 1 + 1e-6).all()
    assert all(0 <= i < num_q for i in q.tolist()) and all(0 <= j < num_g for j in g.tolist())
    pairs = list(zip(q.tolist(), g.tolist()))
    assert len(set(pairs)) == len(pairs)                          # no pair twice
    per_gt = torch.bincount(g, minlength=num_g) if num_g else torch.zeros(0)
    assert (per_gt <= k).all()                                    # at most K queries per GT
    assert len(pairs) <= math.floor(fraction * num_q + 1e-9)      # sum min(c_g, K) <= cap
    for j in range(num_g):                                        # each GT's targets: top of row S[j]
        chosen = q[g == j]
        if len(chosen) and len(chosen) < num_q:
            others = torch.ones(num_q, dtype=torch.bool)
            others[chosen] = False
            assert s[j, chosen].min() >= s[j, others].max()

    # same seed, same answer
    q2, g2 = one_to_many(logits, pred_boxes, gt_labels, gt_boxes, k=k, tau=tau, alpha=0.3,
                         max_pos_fraction=fraction, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(q, q2) and torch.equal(g, g2)

    # step 6: every query once, with the best of its pairs
    cq, cg = o2m_class_targets(q, g, s)
    assert sorted(set(q.tolist())) == cq.tolist()
    for i, j in zip(cq.tolist(), cg.tolist()):
        assert s[j, i] == s[g[q == i], i].max()


@PROPS
@given(image_problem(), st.integers(1, 4), st.sampled_from([0.0, 0.3, 0.6]))
def test_o2m_without_cap_gives_min_cg_k_per_gt(problem, k, tau):
    logits, pred_boxes, gt_labels, gt_boxes = problem
    num_g = len(gt_labels)
    q, g, s = one_to_many(logits, pred_boxes, gt_labels, gt_boxes, k=k, tau=tau,
                          max_pos_fraction=1.0, return_scores=True)
    if num_g == 0:
        assert len(q) == 0
        return
    # steps 2-3 rebuilt from their definition
    best_score, best_gt = s.max(0)
    positive = best_score >= tau
    positive[s.argmax(1)] = True
    c = torch.bincount(best_gt[positive], minlength=num_g)
    assert torch.bincount(g, minlength=num_g).tolist() == c.clamp(max=k).tolist()
    # every GT whose best query also prefers it gets at least one target
    for j in range(num_g):
        if best_gt[s[j].argmax()] == j:
            assert (g == j).any()
