"""Association scenarios of yolo.md §7 (greedy matching and every option)."""
import torch

from cianna.detection.association import associate, strict_eligibility
from cianna.detection.config import IoULimits, YoloConfig
from cianna.detection.targets import targets_from_rows

GRID = torch.tensor([2, 2, 1])
CELL = torch.tensor([16, 16, 1])


def cfg(priors_w, priors_h, **kw):
    kw.setdefault("rand_startup", 0)
    kw.setdefault("IoU_type", "IoU")
    return YoloConfig(nb_box=len(priors_w), priors=[priors_w, priors_h], **kw)


def base_boxes(config, batch=1):
    """Predicted boxes: each box at its cell centre with its prior size, shape (B, 4, K, 6)."""
    p = config.prior_tensor()
    cells = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=torch.float32)
    c = torch.zeros(4, config.nb_box, 3)
    c[..., :2] = (cells[:, None, :] + 0.5) * 16
    c[..., 2] = 0.5
    boxes = torch.cat([c - p / 2, c + p / 2], -1)
    return boxes.expand(batch, -1, -1, -1).clone()


def box(cx, cy, w, h):
    return [cx - w / 2, cy - h / 2, 0.0, cx + w / 2, cy + h / 2, 1.0]


def rows(objects, nb_param=0, diff=False, n=None, max_obj=4):
    """CIANNA rows for one image; objects = list of (class, box6, [params], [diff])."""
    stride = 7 + nb_param + int(diff)
    r = torch.zeros(1, 1 + max_obj * stride)
    r[0, 0] = len(objects) if n is None else n
    for i, o in enumerate(objects):
        vals = [o[0], *o[1], *o[2:]]
        r[0, 1 + i * stride:1 + i * stride + len(vals)] = torch.tensor(vals, dtype=torch.float32)
    return targets_from_rows(r, nb_param, diff)


def run(config, boxes, targets, obj=None, **kw):
    obj = torch.full(boxes.shape[:3], 0.9) if obj is None else obj
    return associate(boxes, obj, targets, config, GRID, CELL, **kw)


def test_two_targets_in_one_cell_greedy_best_iou():
    c = cfg([8, 8], [8, 8])
    boxes = base_boxes(c)
    boxes[0, 0, 0] = torch.tensor(box(6, 6, 8, 8))      # box 0 on target A (IoU 1) and near B
    boxes[0, 0, 1] = torch.tensor(box(12, 12, 4, 4))    # box 1 far from both
    t = rows([(1, box(6, 6, 8, 8)), (1, box(7, 7, 8, 8))])  # B's best box is also box 0, lower IoU
    a = run(c, boxes, t, mode="train")
    assert a.target_index[0, 0].tolist() == [0, 1]       # A → box 0 first, B falls back to box 1
    assert a.locked[0, 0].tolist() == [2, 2]
    assert abs(float(a.iou[0, 0, 0]) - 0.98) < 1e-6      # IoU 1 clipped at 0.98
    assert (a.target_index[0, 1:] == -1).all()


def test_each_box_serves_one_target():
    c = cfg([8, 8], [8, 8])
    t = rows([(1, box(4, 4, 6, 6)), (1, box(8, 8, 6, 6)), (1, box(12, 12, 6, 6))])
    a = run(c, base_boxes(c), t, mode="train")
    got = a.target_index[0, 0]
    assert sorted(got.tolist()) != [-1, -1] and len(set(got.tolist())) == 2 and (got >= 0).all()


def test_good_but_not_best_lock_over_all_targets():
    c = cfg([8, 8], [8, 8])
    boxes = base_boxes(c)
    boxes[0, 1, 0] = torch.tensor(box(15, 8, 8, 8))     # box of cell (1,0) covering a target of cell (0,0)
    t = rows([(1, box(14, 8, 8, 8))])                    # centre x=14 → cell (0, 0)
    a = run(c, boxes, t, mode="train")
    assert int(a.locked[0, 1, 0]) == 1                   # IoU 0.78 > good 0.5, not responsible
    assert int(a.locked[0, 1, 1]) == 0
    assert int(a.target_index[0, 1, 0]) == -1
    assert (a.locked[0, 0] == 2).sum() == 1


def test_target_outside_grid_locks_but_is_never_matched():
    c = cfg([8], [8])
    boxes = base_boxes(c)
    t = rows([(1, box(33, 8, 16, 16))])                  # centre beyond the 32-pixel grid
    a = run(c, boxes, t, mode="train")
    assert (a.target_index == -1).all()
    assert int(a.locked[0, 1, 0]) == 0
    boxes[0, 1, 0] = torch.tensor(box(30, 8, 16, 16))
    a = run(c, boxes, t, mode="train")
    assert int(a.locked[0, 1, 0]) == 1


def test_strict_box_size_restricts_to_closest_prior():
    c = cfg([6, 20], [6, 20], strict_box_size=1, prior_dist_type="SIZE")
    boxes = base_boxes(c)
    boxes[0, 0, 0] = torch.tensor(box(8, 8, 19, 19))     # small prior predicts a big box: best IoU
    t = rows([(1, box(8, 8, 19, 19))])
    assert int(run(c.replace(strict_box_size=0), boxes, t, mode="train").target_index[0, 0, 0]) == 0
    a = run(c, boxes, t, mode="train")
    assert a.target_index[0, 0].tolist() == [-1, 0]      # only the 20x20 prior is eligible
    # the display "natural" mode ignores strict association, "complete" applies it
    assert run(c, boxes, t, mode="natural").target_index[0, 0].tolist() == [0, -1]
    assert run(c, boxes, t, mode="complete").target_index[0, 0].tolist() == [-1, 0]


def test_strict_duplicates_and_zero_distance_quirk():
    dist = torch.tensor([[0.0, 0.0005, 3.0, 5.0]])
    assert strict_eligibility(dist, 1).tolist() == [[True, True, False, False]]      # within 0.001
    assert strict_eligibility(dist, 2).tolist() == [[True, True, True, False]]
    dist = torch.tensor([[0.0, 2.0, 3.0]])
    assert strict_eligibility(dist, 1).tolist() == [[True, False, False]]            # fixed
    assert strict_eligibility(dist, 1, True).tolist() == [[False, True, False]]      # quirk 10
    c = cfg([8, 16], [8, 16], strict_box_size=1)
    t = rows([(1, box(8, 8, 8, 8))])                       # exactly the size of prior 0
    assert run(c, base_boxes(c), t, mode="train").target_index[0, 0].tolist() == [0, -1]
    cq = c.replace(compat_zero_distance_quirk=True)
    assert run(cq, base_boxes(cq), t, mode="train").target_index[0, 0].tolist() == [-1, 0]


def test_smallest_prior_forcing_and_index_quirk():
    c = cfg([8, 4, 4], [8, 4, 4], min_prior_forced_scaling=1.2)
    boxes = base_boxes(c)
    boxes[0, 0, 0] = torch.tensor(box(8, 8, 4, 4))       # big prior currently predicts exactly the target
    boxes[0, 0, 1] = torch.tensor(box(10, 8, 4, 4))
    boxes[0, 0, 2] = torch.tensor(box(8.5, 8, 4, 4))     # best of the two smallest-prior copies
    t = rows([(1, box(8, 8, 4, 4))])                      # 4x4 < 1.2 x 4x4 in all dims (depth 1 < 1.2)
    assert run(c, boxes, t, mode="train").target_index[0, 0].tolist() == [-1, -1, 0]
    assert run(c, boxes, t, mode="complete").target_index[0, 0].tolist() == [-1, -1, 0]
    assert run(c, boxes, t, mode="natural").target_index[0, 0].tolist() == [0, -1, -1]
    cq = c.replace(compat_prior_index_quirk=True)          # V-1.0 recognises no copy here: greedy box kept
    assert run(cq, boxes, t, mode="train").target_index[0, 0].tolist() == [0, -1, -1]
    big = rows([(1, box(8, 8, 5, 5))])                     # 5 ≥ 4.8: not forced
    assert run(c, boxes, big, mode="train").target_index[0, 0].tolist()[0] == 0


def test_low_iou_reassociates_to_best_theoretical_prior():
    c = cfg([6, 20], [6, 20], IoU_limits=IoULimits(low_IoU_best_box_assoc=0.1))
    boxes = base_boxes(c)
    boxes[0, 0, 0] = torch.tensor(box(2, 2, 6, 6))       # both predictions poor; box 0 slightly better
    boxes[0, 0, 1] = torch.tensor(box(15, 15, 2, 2))
    t = rows([(1, box(7, 7, 19, 19))])
    assert run(c.replace(IoU_limits=IoULimits(low_IoU_best_box_assoc=-1)), boxes, t,
               mode="train").target_index[0, 0].tolist() == [0, -1]
    assert run(c, boxes, t, mode="train").target_index[0, 0].tolist() == [-1, 0]
    # rand_prob_best_box_assoc = 1 forces it even for a good prediction
    boxes[0, 0, 0] = torch.tensor(box(7, 7, 17, 17))
    assert run(c, boxes, t, mode="train").target_index[0, 0].tolist() == [0, -1]
    cr = c.replace(rand_prob_best_box_assoc=1.0)
    assert run(cr, boxes, t, mode="train", generator=torch.Generator().manual_seed(0)
               ).target_index[0, 0].tolist() == [-1, 0]
    # the deterministic display passes never use the random option
    assert run(cr, boxes, t, mode="complete").target_index[0, 0].tolist() == [0, -1]


def test_difficult_targets_codes_and_thresholds():
    c = cfg([8, 8], [8, 8], diff_flag=True)              # IoU type: diff_IoU_lim 0.5, diff_obj_lim 0.3
    boxes = base_boxes(c)
    boxes[0, 0, 0] = torch.tensor(box(6, 6, 8, 8))
    good = rows([(1, box(6, 6, 8, 8), 2)], diff=True)
    bad = rows([(1, box(12, 12, 8, 8), 1)], diff=True)    # IoU < 0.5 with every box
    a = run(c, boxes, good, mode="train")
    assert int(a.target_index[0, 0, 0]) == 0 and int(a.difficult[0, 0, 0]) == 2
    a = run(c, boxes, bad, mode="train")
    assert (a.target_index == -1).all()
    obj = torch.full((1, 4, 2), 0.9)
    obj[0, 0, 0] = 0.2                                     # objectness below diff_obj_lim
    assert (run(c, boxes, good, obj, mode="train").target_index == -1).all()
    assert (run(c, boxes, good, mode="natural").target_index == -1).all()    # natural ignores all difficult
    assert int(run(c, boxes, good, mode="complete").target_index[0, 0, 0]) == 0
    normal = rows([(1, box(12, 12, 8, 8), 0)], diff=True)
    assert (run(c, boxes, normal, mode="train").target_index[0, 0] >= 0).sum() == 1


def test_class_only_target_iou_is_good_limit():
    c = cfg([8, 8], [8, 8])
    t = rows([(2, box(6, 6, 8, 8))], n=-1)
    assert bool(t.class_only[0]) and int(t.count[0]) == 1 and int(t.classes[0, 0]) == 1
    a = run(c, base_boxes(c), t, mode="train")
    k = int((a.target_index[0, 0] == 0).nonzero()[0, 0])
    assert float(a.iou[0, 0, k]) == 0.5


def test_random_startup_phase():
    c = cfg([8, 8, 8, 8], [8, 8, 8, 8], rand_startup=64)
    boxes = base_boxes(c, batch=16)
    for k in range(4):
        boxes[:, :, k, :2] += k * 0.5                    # box 0 is always the best for a centred target
        boxes[:, :, k, 3:5] += k * 0.5
    objs = [(1, box(8 + 16 * i, 8 + 16 * j, 8, 8)) for i in range(2) for j in range(2)]
    stride = 7
    r = torch.zeros(16, 1 + 4 * stride)
    r[:, 0] = 4
    for i, o in enumerate(objs):
        r[:, 1 + i * stride:1 + (i + 1) * stride] = torch.tensor([o[0], *o[1]])
    t = targets_from_rows(r, 0)
    g = torch.Generator().manual_seed(1)
    late = run(c, boxes, t, mode="train", iteration=5, train_size=16, generator=g)   # 80 > 64
    assert ((late.target_index >= 0).sum(-1) == 1).all() and (late.target_index[..., 0] >= 0).all()
    early = run(c, boxes, t, mode="train", iteration=4, train_size=16, generator=g)  # 64 ≤ 64: random
    assert ((early.target_index >= 0).sum(-1) == 1).all()                           # every target matched
    frac_best = float((early.target_index[..., 0] >= 0).float().mean())
    assert frac_best < 0.5                                                          # ≈ 1/4 expected
    again = run(c, boxes, t, mode="train", iteration=4, train_size=16, generator=torch.Generator().manual_seed(1))
    g2 = torch.Generator().manual_seed(1)
    run(c, boxes, t, mode="train", iteration=5, train_size=16, generator=g2)
    same = run(c, boxes, t, mode="train", iteration=4, train_size=16, generator=g2)
    assert torch.equal(same.target_index, early.target_index)                        # seeded
    assert run(c, boxes, t, mode="natural", iteration=1, train_size=16).target_index[..., 0].ge(0).all()
    del again


def test_rand_prob_one_gives_random_free_boxes():
    c = cfg([8, 8, 8, 8], [8, 8, 8, 8], rand_prob=1.0)
    boxes = base_boxes(c, batch=32)
    boxes[..., 1, :] += 0.3
    t = targets_from_rows(torch.tensor([[1.0, 1, *box(8, 8, 8, 8)]]).expand(32, -1), 0)
    a = run(c, boxes, t, mode="train", generator=torch.Generator().manual_seed(0))
    k = (a.target_index[:, 0] == 0).int().argmax(-1)
    assert (a.target_index[:, 0] == 0).sum(-1).eq(1).all()
    assert len(set(k.tolist())) == 4


def test_batched_equals_single_images():
    c = cfg([6, 12, 12], [6, 9, 12], IoU_type="GIoU", strict_box_size=2, min_prior_forced_scaling=1.2)
    g = torch.Generator().manual_seed(3)
    boxes = base_boxes(c, batch=3)
    boxes = boxes + torch.randn(boxes.shape, generator=g) * 2
    boxes[..., 3:] = torch.maximum(boxes[..., 3:], boxes[..., :3] + 1)
    r = torch.zeros(3, 1 + 4 * 7)
    for b in range(3):
        r[b, 0] = 4
        for i in range(4):
            cx, cy = torch.rand(2, generator=g) * 32
            w, h = 2 + torch.rand(2, generator=g) * 14
            r[b, 1 + 7 * i:8 + 7 * i] = torch.tensor([1, *box(float(cx), float(cy), float(w), float(h))])
    full = run(c, boxes, targets_from_rows(r, 0), mode="complete")
    for b in range(3):
        one = run(c, boxes[b:b + 1], targets_from_rows(r[b:b + 1], 0), mode="complete")
        assert torch.equal(one.target_index[0], full.target_index[b])
        assert torch.equal(one.locked[0], full.locked[b])


def test_good_box_lock_matches_brute_force():
    from cianna.detection.association import good_box_lock
    from cianna.detection.boxes import iou
    g = torch.Generator().manual_seed(5)
    lo = torch.rand(3, 6, 4, 3, generator=g) * 30
    boxes = torch.cat([lo, lo + 1 + torch.rand(3, 6, 4, 3, generator=g) * 10], -1)
    lo = torch.rand(3, 5, 3, generator=g) * 30
    tb = torch.cat([lo, lo + 1 + torch.rand(3, 5, 3, generator=g) * 10], -1)
    valid = torch.rand(3, 5, generator=g) > 0.3
    for kind in ["IoU", "GIoU", "DIoU", "DIoU2"]:
        for lim in [-0.3, 0.0, 0.1, 0.3]:
            brute = ((iou(boxes[:, :, :, None], tb[:, None, None], kind) > lim) & valid[:, None, None]).any(-1)
            assert torch.equal(good_box_lock(boxes, tb, valid, kind, lim), brute), (kind, lim)
