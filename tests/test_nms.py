"""Tests of cianna.detection.nms against a brute-force greedy reference."""
import math

import numpy as np
import pytest
import torch

from cianna.detection.boxes import pairwise_iou
from cianna.detection.nms import (SDC1_NMS_SCORE_LIMITS, SDC1_NMS_THRESHOLDS, candidate_pairs,
                                  interaction_reach, ladder_thresholds, non_max_suppression, resolve_greedy)
from cianna.detection.boxes import iou


def brute_nms(boxes, scores, thr, kind, classes=None, diff=None):
    """Plain sequential greedy NMS on the dense overlap matrix."""
    n = len(scores)
    m = pairwise_iou(boxes, boxes, kind).numpy()
    thr = np.broadcast_to(np.asarray(thr, dtype=np.float64), (n,))
    cls = None if classes is None else np.asarray(classes)
    order = sorted(range(n), key=lambda i: (-float(scores[i]), i))
    kept = []
    for j in order:
        t = np.full(len(kept), thr[j])
        if cls is not None and kept:
            t[cls[kept] != cls[j]] = math.inf if diff is None else diff
        if not kept or not (m[kept, j] > t).any():
            kept.append(j)
    return kept


def random_boxes(n, dim, seed, extent=100.0, size=(2.0, 16.0)):
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, 3, generator=g, dtype=torch.float64) * extent
    s = torch.rand(n, 3, generator=g, dtype=torch.float64) * (size[1] - size[0]) + size[0]
    if dim == 2:
        c[:, 2], s[:, 2] = 0.5, 1.0
    boxes = torch.cat([c - s / 2, c + s / 2], dim=1)
    scores = torch.rand(n, generator=g, dtype=torch.float64)
    classes = torch.randint(0, 3, (n,), generator=g)
    return boxes, scores, classes


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("kind,thr", [("IoU", 0.3), ("IoU", 0.0), ("DIoU", 0.2), ("DIoU", -0.3),
                                      ("DIoU2", -0.2), ("GIoU", 0.1), ("GIoU", -0.2), ("IoU", -0.1)])
def test_matches_bruteforce(dim, kind, thr):
    boxes, scores, _ = random_boxes(250, dim, seed=dim * 100 + int(abs(thr) * 10) + len(kind), extent=80.0)
    got = non_max_suppression(boxes, scores, thr, kind=kind)
    ref = brute_nms(boxes, scores, thr, kind)
    assert got.tolist() == ref
    assert 0 < len(ref) < len(scores) or thr < 0


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("diff", [None, 0.6])
def test_class_aware(dim, diff):
    boxes, scores, classes = random_boxes(300, dim, seed=7 + dim, extent=60.0)
    got = non_max_suppression(boxes, scores, 0.3, kind="DIoU", classes=classes, diff_class_threshold=diff)
    ref = brute_nms(boxes, scores, 0.3, "DIoU", classes, diff)
    assert got.tolist() == ref
    plain = brute_nms(boxes, scores, 0.3, "DIoU")
    assert len(ref) > len(plain)  # classes do change the result


@pytest.mark.parametrize("dim", [2, 3])
def test_large_grid_path_and_chunks(dim):
    """More boxes than the all-pairs limit: spatial hashing, small pair chunks, DIoU ladder."""
    boxes, scores, _ = random_boxes(900, dim, seed=3, extent=230.0 if dim == 2 else 100.0)
    thr = ladder_thresholds(scores)
    got = non_max_suppression(boxes, scores, thr, kind="DIoU", pair_chunk=20000)
    assert got.tolist() == brute_nms(boxes, scores, thr, "DIoU")
    got = non_max_suppression(boxes, scores, 0.4, kind="IoU", pair_chunk=20000)
    assert got.tolist() == brute_nms(boxes, scores, 0.4, "IoU")


def test_ladder_thresholds_sdc1():
    s = torch.tensor([0.95, 0.8, 0.6, 0.45, 0.2, 1.0])
    t = ladder_thresholds(s)
    assert t[:5].tolist() == pytest.approx([0.05, 0.05, -0.1, -0.3, -0.5])
    assert math.isinf(t[5])
    assert SDC1_NMS_THRESHOLDS == (0.05, -0.1, -0.3, -0.5) and SDC1_NMS_SCORE_LIMITS == (1.0, 0.7, 0.5, 0.3)


def test_sequential_fallback_and_blocked_path():
    boxes, scores, classes = random_boxes(400, 2, seed=11, extent=70.0)
    ref = brute_nms(boxes, scores, 0.1, "DIoU")
    assert non_max_suppression(boxes, scores, 0.1, kind="DIoU", max_rounds=0).tolist() == ref
    ref = brute_nms(boxes, scores, -0.3, "GIoU", classes, -0.1)  # unbounded reach: blocked greedy
    got = non_max_suppression(boxes, scores, -0.3, kind="GIoU", classes=classes, diff_class_threshold=-0.1,
                              block_size=37)
    assert got.tolist() == ref


def test_chain_resolution():
    """A chain a > b > c where b suppresses c only if b is kept: greedy keeps a and c."""
    src, dst = torch.tensor([0, 1]), torch.tensor([1, 2])
    assert resolve_greedy(3, src, dst).tolist() == [True, False, True]
    assert resolve_greedy(3, src, dst, max_rounds=0).tolist() == [True, False, True]
    # long chain: alternating keep/remove
    n = 200
    keep = resolve_greedy(n, torch.arange(n - 1), torch.arange(1, n), max_rounds=10)
    assert keep.tolist() == [i % 2 == 0 for i in range(n)]


def test_small_cases_and_formats():
    b4 = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]])
    s = torch.tensor([0.5, 0.9, 0.7])
    assert non_max_suppression(b4, s, 0.5).tolist() == [1, 2]
    assert non_max_suppression(b4, s, 0.5, classes=torch.tensor([0, 1, 0])).tolist() == [1, 2, 0]
    assert non_max_suppression(b4, s, 0.5, classes=torch.tensor([0, 1, 0]),
                               diff_class_threshold=0.5).tolist() == [1, 2]
    # per-box (per-prior) score thresholds drop boxes before NMS
    assert non_max_suppression(b4, s, 0.5, score_threshold=torch.tensor([0.1, 0.95, 0.1])).tolist() == [2, 0]
    # ties keep the input order
    assert non_max_suppression(b4, torch.ones(3), 0.5).tolist() == [0, 2]
    assert non_max_suppression(torch.zeros(0, 6), torch.zeros(0), 0.5).numel() == 0
    # negative DIoU threshold suppresses close, non-overlapping boxes
    b = torch.tensor([[0.0, 0, 0, 4, 4, 1], [5, 0, 0, 9, 4, 1]])
    assert non_max_suppression(b, torch.tensor([0.9, 0.8]), 0.0, kind="DIoU").tolist() == [0, 1]
    assert non_max_suppression(b, torch.tensor([0.9, 0.8]), -0.6, kind="DIoU").tolist() == [0]


@pytest.mark.parametrize("kind,thr", [("DIoU", -0.5), ("DIoU", -0.8), ("DIoU2", -0.5), ("IoU", 0.2)])
def test_interaction_reach_bound(kind, thr):
    """No pair beyond the reach can exceed the threshold, and candidate_pairs finds all pairs within it."""
    boxes, _, _ = random_boxes(600, 2, seed=5, extent=200.0, size=(0.5, 30.0))
    f = interaction_reach(kind, thr)
    assert math.isfinite(f)
    v = pairwise_iou(boxes, boxes, kind)
    c = (boxes[:, :3] + boxes[:, 3:]) / 2
    sz = boxes[:, 3:] - boxes[:, :3]
    h = torch.maximum(sz[:, None, :], sz[None, :, :]).norm(dim=2)
    rho = torch.cdist(c, c)
    far = rho > f * h
    assert not bool((v[far] > thr).any())
    found = set()
    for i, j in candidate_pairs(boxes, f, pair_chunk=30000):
        found.update(zip(torch.minimum(i, j).tolist(), torch.maximum(i, j).tolist()))
    need = torch.triu(~far, diagonal=1).nonzero().tolist()
    assert all(tuple(p) in found for p in need)
    assert bool((iou(boxes[:1], boxes[:1], kind) == 1).all())
    assert math.isinf(interaction_reach("IoU", -0.1)) and interaction_reach("GIoU", 0.3) == 1.0
