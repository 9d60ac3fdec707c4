"""Tests of cianna.detection.metrics on hand-built cases."""
import math

import numpy as np
import pytest
import torch

import cianna.detection.metrics as metrics
from cianna.detection.metrics import (average_precision, completeness_purity, match_detections,
                                      mean_average_precision, precision_recall_curve)


T = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]])
FP = torch.tensor([[100.0, 100, 110, 110]])


def test_perfect_detections():
    c = precision_recall_curve([{"boxes": T, "scores": torch.tensor([0.9, 0.8, 0.7])}], [{"boxes": T}])
    assert c.precision.tolist() == [1, 1, 1]
    assert c.recall.tolist() == pytest.approx([1 / 3, 2 / 3, 1])
    assert c.average_precision() == pytest.approx(1.0)
    cp = completeness_purity((T, torch.ones(3)), (T,))
    assert (cp.completeness, cp.purity, cp.f1, cp.n_match) == (1.0, 1.0, 1.0, 3)
    cp = completeness_purity((T.numpy(), np.ones(3)), (T.numpy(),))  # numpy inputs, one image
    assert (cp.n_match, cp.n_true, cp.n_det) == (3, 3, 3)
    cp = completeness_purity([(T, torch.ones(3)), (T[:1], torch.ones(1))], [(T,), (T,)])  # two images
    assert (cp.n_match, cp.n_true, cp.n_det) == (4, 6, 4)


def test_known_pr_curve():
    """TP, FP, TP, TP: precision 1, 1/2, 2/3, 3/4 at recall 1/3, 1/3, 2/3, 1."""
    preds = torch.cat([T[:1], FP, T[1:]])
    c = precision_recall_curve([(preds, torch.tensor([0.9, 0.85, 0.8, 0.7]))], [(T,)])
    assert c.precision == pytest.approx([1, 0.5, 2 / 3, 0.75])
    assert c.recall == pytest.approx([1 / 3, 1 / 3, 2 / 3, 1])
    assert c.tp.tolist() == [True, False, True, True]
    # envelope 1, 3/4, 3/4, 3/4: VOC = 1/3·1 + 1/3·3/4 + 1/3·3/4
    assert c.average_precision("voc") == pytest.approx(1 / 3 + 0.5)
    # CIANNA np.trapz over the detection points only (no recall-0 point)
    assert c.average_precision("trapz") == pytest.approx(0.5)
    cp = completeness_purity((preds, torch.tensor([0.9, 0.85, 0.8, 0.7])), (T,))
    assert (cp.completeness, cp.purity, cp.n_det) == (1.0, 0.75, 4)
    cp = completeness_purity((preds, torch.tensor([0.9, 0.85, 0.8, 0.7])), (T,), min_score=0.82)
    assert (cp.n_match, cp.n_det, cp.completeness, cp.purity) == (1, 2, pytest.approx(1 / 3), 0.5)


def test_pooling_over_images_and_missed_targets():
    preds = [(T[:1], torch.tensor([0.6])), (T[1:2], torch.tensor([0.9])), (torch.zeros(0, 4), torch.zeros(0))]
    targs = [(T[:1],), (T[1:2],), (T[2:],)]
    c = precision_recall_curve(preds, targs)
    assert c.scores.tolist() == pytest.approx([0.9, 0.6])
    assert c.recall.tolist() == pytest.approx([1 / 3, 2 / 3])
    assert c.average_precision() == pytest.approx(2 / 3)
    assert average_precision([], []) == 0.0
    assert math.isnan(precision_recall_curve([(T, torch.ones(3))], [(torch.zeros(0, 4),)]).average_precision())


def test_difficult_targets_ignored():
    diff = torch.tensor([0, 1, 0])
    preds = torch.cat([T, T[1:2]])  # two detections on the difficult target
    m = match_detections(preds, T, 0.5, scores=torch.tensor([0.9, 0.8, 0.7, 0.6]), true_difficult=diff)
    assert m.status.tolist() == [1, -1, 1, -1]
    assert m.true_to_pred.tolist() == [0, -1, 2]
    c = precision_recall_curve([{"boxes": preds, "scores": torch.tensor([0.9, 0.8, 0.7, 0.6])}],
                               [{"boxes": T, "difficult": diff}])
    assert c.n_true == 2 and len(c.precision) == 2 and c.average_precision() == pytest.approx(1.0)


def test_greedy_matching_rules():
    t = torch.tensor([[0.0, 0, 10, 10], [3, 0, 13, 10]])
    p = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10]])
    # both detections overlap both targets; the best detection takes target 0, the other falls back on 1
    m = match_detections(p, t, 0.5, scores=torch.tensor([0.9, 0.8]))
    assert m.pred_to_true.tolist() == [0, 1] and m.status.tolist() == [1, 1]
    assert m.overlap[1].item() == pytest.approx(8 / 12)
    # reversed scores: detection 1 takes its best (target 0), detection 0 gets target 1 (IoU 7/13 >= 0.5)
    m = match_detections(p, t, 0.5, scores=torch.tensor([0.1, 0.8]))
    assert m.pred_to_true.tolist() == [1, 0]
    # duplicate detections: one TP, one FP
    m = match_detections(torch.cat([T[:1], T[:1]]), T, 0.5, scores=torch.tensor([0.3, 0.7]))
    assert m.status.tolist() == [0, 1]
    # the threshold is inclusive
    half = torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([[0.0, 0, 10, 20]])
    assert match_detections(*half, 0.5).status.tolist() == [1]
    assert match_detections(*half, 0.51).status.tolist() == [0]


def test_class_aware_map():
    preds = torch.cat([T[:1], FP, T[1:]])
    pcl, tcl = torch.tensor([0, 0, 1, 0]), torch.tensor([0, 1, 1])
    item_p, item_t = [(preds, torch.tensor([0.9, 0.85, 0.8, 0.7]), pcl)], [(T, tcl)]
    c = precision_recall_curve(item_p, item_t, class_aware=True)
    assert c.tp.tolist() == [True, False, True, False]  # the last box has the wrong class
    mean, per = mean_average_precision(item_p, item_t)
    # class 0: TP, FP, FP -> AP 1; class 1: one TP of two targets -> AP 0.5
    assert per == {0: pytest.approx(1.0), 1: pytest.approx(0.5)} and mean == pytest.approx(0.75)
    c1 = precision_recall_curve(item_p, item_t, class_id=1)
    assert c1.n_true == 2 and c1.average_precision() == pytest.approx(0.5)
    with pytest.raises(ValueError):
        precision_recall_curve([(preds, torch.ones(4))], [(T,)], class_aware=True)


@pytest.mark.parametrize("dim", [2, 3])
def test_sparse_path_equals_dense(monkeypatch, dim):
    g = torch.Generator().manual_seed(dim)
    n = 1200
    c = torch.rand(n, 3, generator=g) * torch.tensor([400.0, 400.0, 100.0 if dim == 3 else 0.0])
    t = torch.cat([c - 3, c + 3], 1)
    p = torch.cat([t + torch.randn(n, 6, generator=g) * 1.2, t[:200] + 20.0])
    s = torch.rand(len(p), generator=g)
    dense = match_detections(p, t, 0.4, scores=s)
    monkeypatch.setattr(metrics, "_DENSE_LIMIT", 1000)
    sparse = match_detections(p, t, 0.4, scores=s)
    assert torch.equal(dense.pred_to_true, sparse.pred_to_true)
    assert 0 < int((dense.status == 1).sum()) < n
