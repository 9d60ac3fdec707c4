"""Target rows and decoding (yolo.md §5, §9, §11): layouts, pixel convention, encode ↔ decode round trip."""
import numpy as np
import pytest
import torch
from astropy.table import Table

from cianna.detection.config import YoloConfig
from cianna.detection.decode import box_view, cianna_forward_output, decode_predictions, grid_geometry, unview
from cianna.detection.targets import encode_targets, rows_from_targets, targets_from_rows
from cianna.detection.yolo_activation import YoloActivation


def test_rows_parse_counts_params_and_trailing_difficult_flag():
    # two objects, nb_param = 2, diff flag after the params; max 3 objects
    obj1 = [3, 1, 2, 0, 5, 6, 1, 0.1, 0.2, 2]
    obj2 = [1, 10, 10, 0, 14, 18, 1, 0.3, 0.4, 0]
    rows = torch.tensor([[2, *obj1, *obj2, *[0] * 10], [0] + [0] * 30, [-1, *obj2, *[0] * 20]], dtype=torch.float32)
    t = targets_from_rows(rows, nb_param=2, diff_flag=True)
    assert t.valid.tolist() == [[True, True, False], [False] * 3, [True, False, False]]
    assert t.class_only.tolist() == [False, False, True]
    assert t.classes[0, :2].tolist() == [2, 0]                      # 1-based → 0-based
    assert t.difficult[0, :2].tolist() == [2, 0]
    assert torch.allclose(t.params[0, 0], torch.tensor([0.1, 0.2]))
    assert torch.equal(t.boxes[0, 1], torch.tensor([10.0, 10, 0, 14, 18, 1]))
    back = rows_from_targets(t, 3, diff_flag=True)
    assert torch.allclose(back, rows)
    with pytest.raises(ValueError, match="not 1 \\+ max_obj"):
        targets_from_rows(rows[:, :-1], nb_param=2, diff_flag=True)


def test_encode_targets_pixel_convention_2d_and_3d():
    tab = Table({"x": [10.0, 20.0], "y": [5.0, 7.0], "w": [4.0, 6.0], "h": [2.0, 8.0], "class": [1, 0],
                 "params": [[0.5], [0.25]], "difficult": [0, 3]})
    rows = encode_targets([tab, Table({"x": [], "y": [], "w": [], "h": []})], ndim=2, max_nb_obj_per_image=3,
                          nb_param=1, diff_flag=True)
    assert rows.shape == (2, 1 + 3 * 9)
    assert rows[0, :10].tolist() == [2, 2, 8.5, 4.5, 0, 12.5, 6.5, 1, 0.5, 0]    # +0.5, z in [0, 1]
    assert rows[0, 10:19].tolist()[-1] == 3 and rows[1, 0] == 0
    cube = encode_targets([dict(centers=[[1.0, 2.0, 3.0]], sizes=[[2.0, 4.0, 6.0]])], ndim=3,
                          max_nb_obj_per_image=1)
    assert cube[0].tolist() == [1, 1, 0.5, 0.5, 0.5, 2.5, 4.5, 6.5]
    one = encode_targets([dict(x=[3.0], w=[2.0])], ndim=1, max_nb_obj_per_image=1)
    assert one[0, 1:].tolist() == [1, 2.5, 0, 0, 4.5, 1, 1]
    with pytest.raises(ValueError, match="max_nb_obj_per_image"):
        encode_targets([tab], ndim=2, max_nb_obj_per_image=1, nb_param=1)


def test_forward_output_layout_uses_unclamped_priors():
    cfg = YoloConfig(nb_box=2, nb_param=1, priors=[[8, 0.5], [4, 16]])
    act = YoloActivation(cfg)
    pre = torch.zeros(1, cfg.nb_channels, 2, 4)                       # H = 2, W = 4 → cell 8 x 8 for 16 x 32
    out = act(pre)
    conv = cianna_forward_output(out, cfg, (16, 32))
    v = box_view(conv, cfg)
    # cell (x=1, y=0) is flat index 1; box 1 prior 0.5 x 16 (un-clamped width 0.5)
    assert torch.allclose(v[0, 1, 1, :6], torch.tensor([12 - 0.25, 4 - 8, 0.5, 12 + 0.25, 4 + 8, 0.5]))
    assert torch.allclose(v[0, 1, 0, :6], torch.tensor([8.0, 2, 0.5, 16, 6, 0.5]))
    assert torch.allclose(v[..., 6:], box_view(out, cfg)[..., 6:])
    assert torch.equal(cianna_forward_output(out, cfg, (16, 32), raw_output=True), out)
    grid, cell = grid_geometry((2, 4), (17, 35))
    assert grid.tolist() == [4, 2, 1] and cell.tolist() == [8, 8, 1]   # integer division
    assert torch.equal(unview(box_view(out, cfg), (2, 4)), out)


def perfect_output(cfg, rows, spatial_in, spatial_out):
    """Activated outputs that predict every target exactly (one target per cell, box 0)."""
    t = targets_from_rows(rows, cfg.nb_param)
    grid, cell = grid_geometry(spatial_out, spatial_in)
    n = rows.shape[0]
    view = torch.zeros(n, int(grid.prod()), cfg.nb_box, cfg.box_stride)
    view[..., 0:3] = 0.5
    view[..., 6:8] = 0.01
    prior = cfg.prior_tensor(clamped=False)
    for b in range(n):
        for j in range(int(t.count[b])):
            c = 0.5 * (t.boxes[b, j, :3] + t.boxes[b, j, 3:])
            idx = torch.floor(c / cell).long()
            s = int(idx[0] + grid[0] * (idx[1] + grid[1] * idx[2]))
            view[b, s, 0, 0:3] = c / cell - idx
            size = t.boxes[b, j, 3:] - t.boxes[b, j, :3]
            view[b, s, 0, 3:3 + cfg.fit_dim] = torch.log(size / prior[0])[:cfg.fit_dim]
            view[b, s, 0, 6:8] = 0.95
            view[b, s, 0, 8 + cfg.nb_class + torch.arange(cfg.nb_param)] = t.params[b, j]
            if cfg.nb_class:
                view[b, s, 0, 8 + int(t.classes[b, j])] = 0.9
    return unview(view, spatial_out)


@pytest.mark.parametrize("ndim", [2, 3])
def test_encode_decode_round_trip(ndim):
    g = np.random.default_rng(ndim)
    cfg = YoloConfig(nb_box=2, nb_class=2, nb_param=1, priors=[[6, 12], [6, 9], [4, 8]][:ndim])
    side, cells = 32, 4
    cats = []
    for _ in range(3):
        pos = g.choice(cells ** ndim, size=3, replace=False)            # distinct cells
        cell_idx = np.stack(np.unravel_index(pos, (cells,) * ndim), -1)[:, ::-1]   # → (x, y[, z])
        centres = (cell_idx + g.uniform(0.1, 0.9, (3, ndim))) * (side // cells) - 0.5
        cats.append(dict(centers=centres, sizes=g.uniform(3, 15, (3, ndim)), **{"class": g.integers(0, 2, 3)},
                         params=g.uniform(0, 1, (3, 1))))
    rows = encode_targets(cats, ndim=ndim, max_nb_obj_per_image=5, nb_param=1)
    out = perfect_output(cfg, rows, (side,) * ndim, (cells,) * ndim)
    dets = decode_predictions(out, cfg, (side,) * ndim, score_threshold=0.5)
    for cat, det in zip(cats, dets):
        assert len(det["scores"]) == 3
        order = np.lexsort(cat["centers"].T[::-1])
        dorder = np.lexsort(det["centers"].numpy().T[::-1])
        assert np.allclose(det["centers"].numpy()[dorder], cat["centers"][order], atol=1e-4)
        assert np.allclose(det["sizes"].numpy()[dorder], cat["sizes"][order], atol=1e-4)
        assert np.array_equal(det["labels"].numpy()[dorder], cat["class"][order])
        assert np.allclose(det["params"].numpy()[dorder], cat["params"][order], atol=1e-6)
        assert det["boxes"].shape == (3, 2 * ndim)
        assert torch.allclose(det["boxes"][:, :ndim], det["centers"] - det["sizes"] / 2, atol=1e-5)
    cianna = decode_predictions(out, cfg, (side,) * ndim, score_threshold=0.5, pixel_convention="cianna")
    assert torch.allclose(cianna[0]["centers"], dets[0]["centers"] + 0.5)
    assert all(len(d["scores"]) == 0 for d in decode_predictions(out, cfg, (side,) * ndim, score_threshold=0.99))


def test_config_validation_json_and_cianna_sentinels():
    from cianna.detection.config import IoULimits

    cfg = YoloConfig(nb_box=3, nb_class=2, nb_param=1, priors=[[6, 12, 0.5], [6, 9, 24]], IoU_type="diou2",
                     IoU_limits=IoULimits(good_IoU_lim=0.6))
    assert cfg.nb_channels == 3 * 11 and cfg.IoU_type == "DIoU2" and cfg.fit_dim == 2
    assert cfg.iou_limits().good_IoU_lim == 0.6 and cfg.iou_limits().low_IoU_best_box_assoc == -0.5
    assert cfg.prior_tensor().tolist() == [[6, 6, 1], [12, 9, 1], [1, 24, 1]]
    assert cfg.prior_tensor(clamped=False)[2].tolist() == [0.5, 24, 0]
    assert YoloConfig.from_json(cfg.to_json()) == cfg
    for bad, name in [(dict(priors=[[6, 12]]), "priors"), (dict(IoU_type="XIoU"), "IoU_type"),
                      (dict(prior_noobj_prob=[0.1]), "prior_noobj_prob"), (dict(fit_dim=3), "fit_dim"),
                      (dict(rand_prob=2.0), "rand_prob")]:
        kw = dict(nb_box=3, priors=[[6, 12, 24], [6, 9, 24]])
        kw.update(bad)
        with pytest.raises(ValueError, match=name):
            YoloConfig(**kw)
    with pytest.raises(ValueError, match="unknown YoloConfig key"):
        YoloConfig.from_dict({"nb_boxes": 2})
    sdc1 = YoloConfig.from_cianna(
        nb_box=2, nb_param=5, prior_size=np.array([[6, 24], [6, 24]], np.float32),
        error_scales=np.array([36, 0.2, 0.5, 2, -1, 5], np.float32),
        slopes_and_maxes=np.array([[0.5, 6, -6], [0.5, 1.2, -1.2], [0.2, 1e5, -1e5], [0.5, 1e5, -1e5],
                                   [-1, 1e5, -1e5], [0.5, 1.5, -0.2]]),
        IoU_limits=np.array([0.5, -0.1, -0.3, -0.3, -2, -0.1, -2, -2]), fit_parts=np.array([1, 1, 1, 1, -2, -2]),
        IoU_type="DIoU", prior_dist_type="OFFSET")
    assert sdc1.error_scales.classes == 1.0 and sdc1.error_scales.position == 36.0
    assert sdc1.slopes_and_maxes.probability.slope == pytest.approx(0.2)
    assert sdc1.slopes_and_maxes.probability.max == 6.0 and sdc1.slopes_and_maxes.size.max == pytest.approx(1.2)
    lim = sdc1.iou_limits()
    assert (lim.good_IoU_lim, lim.min_class_IoU_lim, lim.diff_obj_lim) == (0.5, -0.5, 0.1)
    assert sdc1.resolved_fit_parts().as_tuple() == (1, 1, 1, 1, -1, 1) and sdc1.rand_startup == 64000


def test_1d_forward_loss_and_decode():
    cfg = YoloConfig(nb_box=1, priors=[[8]], rand_startup=0)
    act = YoloActivation(cfg, input_shape=(1, 32))
    pre = torch.zeros(2, cfg.nb_channels, 4, requires_grad=True)
    out = act(pre)
    view = box_view(out, cfg)
    assert torch.all(view[..., 1:3] == 0.5) and torch.all(view[..., 4:6] == 0)   # dims ≥ fit_dim forced
    rows = encode_targets([dict(x=[11.5], w=[8.0]), dict(x=[], w=[])], ndim=1, max_nb_obj_per_image=2)
    res = act.loss(pre, out, rows, norm=2, context={"training": True, "iteration": 1, "train_size": 2})
    assert res.monitors["nb_match"] == 1 and res.monitors["iou_sum"] == pytest.approx(0.98)
    res.loss.backward()
    g = box_view(pre.grad, cfg)
    assert torch.all(g[..., 1:3] == 0) and torch.all(g[..., 4:6] == 0) and g[0, 1, 0, 0] == 0  # centred: t = 0.5
    det = decode_predictions(out, cfg, (32,), score_threshold=0.0)[0]
    assert det["boxes"].shape == (4, 2) and torch.allclose(det["sizes"], torch.full((4, 1), 8.0))
