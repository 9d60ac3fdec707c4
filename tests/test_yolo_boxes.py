"""Box geometry of YOLO-CIANNA (yolo.md §5, §6): hand-computed IoU variants in 2D and 3D."""
import math

import pytest
import torch

from cianna.detection.boxes import (as_3d, centers_to_corners, corners_to_centers, iou, pairwise_iou,
                                    prior_distance)

A2, B2 = torch.tensor([0.0, 0, 2, 2]), torch.tensor([1.0, 1, 3, 3])
A3, B3 = torch.tensor([0.0, 0, 0, 2, 2, 2]), torch.tensor([1.0, 1, 1, 3, 3, 3])

EXPECTED = {
    # 2D: depth 1 from as_3d; I = 1, U = 7, E = 9, rho² = 2, c² = 3² + 3² + 1² = 19
    "2d": (A2, B2, {"IoU": 1 / 7, "GIoU": 1 / 7 - 2 / 9, "DIoU": 1 / 7 - math.sqrt(2 / 19),
                    "DIoU2": 1 / 7 - 2 / 19}),
    # 3D: I = 1, U = 15, E = 27, rho² = 3, c² = 27
    "3d": (A3, B3, {"IoU": 1 / 15, "GIoU": 1 / 15 - 12 / 27, "DIoU": 1 / 15 - 1 / 3, "DIoU2": 1 / 15 - 1 / 9}),
    # disjoint 2D: I = 0, U = 2, E = 3, rho = 2, c² = 9 + 1 + 1
    "disjoint": (torch.tensor([0.0, 0, 1, 1]), torch.tensor([2.0, 0, 3, 1]),
                 {"IoU": 0.0, "GIoU": -1 / 3, "DIoU": -2 / math.sqrt(11), "DIoU2": -4 / 11}),
}


@pytest.mark.parametrize("case", sorted(EXPECTED))
@pytest.mark.parametrize("kind", ["IoU", "GIoU", "DIoU", "DIoU2"])
def test_iou_variants_hand_values(case, kind):
    a, b, exp = EXPECTED[case]
    assert float(iou(a, b, kind)) == pytest.approx(exp[kind], abs=1e-6)
    assert float(iou(b, a, kind)) == pytest.approx(exp[kind], abs=1e-6)  # symmetric


@pytest.mark.parametrize("kind", ["IoU", "GIoU", "DIoU", "DIoU2"])
def test_identical_boxes_give_one(kind):
    assert float(iou(A3, A3, kind)) == pytest.approx(1.0)


@pytest.mark.parametrize("kind", ["IoU", "GIoU", "DIoU", "DIoU2"])
def test_degenerate_boxes_are_finite(kind):
    point = torch.tensor([1.0, 1, 1, 1, 1, 1], requires_grad=True)
    flat = torch.tensor([0.0, 0, 0, 2, 2, 0])  # zero depth
    vals = torch.stack([iou(point, point, kind), iou(point, A3, kind), iou(flat, flat, kind), iou(flat, A3, kind)])
    assert torch.isfinite(vals).all()
    # documented convention: ratios with a non-positive denominator are 0
    v = vals.detach()
    assert float(v[0]) == 0.0 and float(v[2]) == 0.0
    assert float(v[1]) == 0.0  # point at the centre of A3: I = 0, E = U, rho = 0
    vals.sum().backward()
    assert torch.isfinite(point.grad).all()


def test_pairwise_matches_elementwise_and_broadcasts():
    g = torch.Generator().manual_seed(0)
    lo = torch.rand(5, 3, generator=g) * 10
    a = torch.cat([lo, lo + 1 + torch.rand(5, 3, generator=g) * 5], -1)
    lo = torch.rand(4, 3, generator=g) * 10
    b = torch.cat([lo, lo + 1 + torch.rand(4, 3, generator=g) * 5], -1)
    for kind in ["IoU", "GIoU", "DIoU", "DIoU2"]:
        pw = pairwise_iou(a, b, kind)
        assert pw.shape == (5, 4)
        for i in range(5):
            assert torch.allclose(pw[i], iou(a[i].expand(4, 6), b, kind))
        assert (pw <= 1 + 1e-6).all() and (pw > -1).all()
    assert pairwise_iou(a[:, [0, 1, 3, 4]], b[:, [0, 1, 3, 4]]).shape == (5, 4)


def test_corner_center_round_trip_and_as_3d():
    c = torch.tensor([[3.0, 4, 5, 2, 6, 8]])
    assert torch.allclose(corners_to_centers(centers_to_corners(c)), c)
    assert torch.equal(centers_to_corners(c), torch.tensor([[2.0, 1, 1, 4, 7, 9]]))
    assert torch.equal(as_3d(torch.tensor([1.0, 2, 3, 4])), torch.tensor([1.0, 2, 0, 3, 4, 1]))
    assert torch.equal(as_3d(torch.tensor([1.0, 3])), torch.tensor([1.0, 0, 0, 3, 1, 1]))
    with pytest.raises(ValueError):
        as_3d(torch.zeros(5))


def test_prior_distances_hand_values():
    priors = torch.tensor([[6.0, 6, 1], [12, 9, 1]])
    ts = torch.tensor([[6.0, 12, 1]])
    assert torch.allclose(prior_distance(ts, priors, "SIZE"), torch.tensor([[6.0, math.sqrt(36 + 9)]]))
    off = prior_distance(ts, priors, "OFFSET", log_min=-1.2, log_max=1.2)
    assert torch.allclose(off, torch.tensor([[math.log(2), math.log(2) + math.log(12 / 9)]]), atol=1e-6)
    # saturation of each log at ±1.2
    big = prior_distance(torch.tensor([[600.0, 6, 1]]), priors[:1], "OFFSET", log_min=-1.2, log_max=1.2)
    assert float(big) == pytest.approx(1.2)
    # IoU distance: centred boxes 6x12 and 6x6 → IoU = 36/72
    assert float(prior_distance(ts, priors[:1], "IoU", iou_type="IoU")) == pytest.approx(0.5)
