"""YOLO loss (yolo.md §8): deltas = gradients of the displayed parts, clamps ignored, fit_parts, monitors."""
import pytest
import torch

from cianna.detection.config import ErrorScales, FitParts, IoULimits, SlopeMaxMin, SlopesAndMaxes, YoloConfig
from cianna.detection.targets import encode_targets
from cianna.detection.yolo_activation import YoloActivation

PART_CHANNELS = {"pos": [0, 1, 2], "size": [3, 4, 5], "prob": [6], "obj": [7]}


def make_config(**kw):
    base = dict(nb_box=2, nb_class=3, nb_param=2, priors=[[10, 20], [8, 24]], IoU_type="GIoU",
                error_scales=ErrorScales(3, 1.5, 0.7, 2, 1.3, 0.8),
                slopes_and_maxes=SlopesAndMaxes(position=SlopeMaxMin(0.5, 6, -6), size=SlopeMaxMin(0.8, 1.6, -1.6),
                                                probability=SlopeMaxMin(1.2, 6, -6), parameters=SlopeMaxMin(0.7, 5, -5)),
                prior_noobj_prob=[0.2, 0.05], param_ind_scales=[2.0, 0.5], error_type="natural", rand_startup=0)
    base.update(kw)
    if base["nb_param"] != 2 and "param_ind_scales" not in kw:
        base["param_ind_scales"] = None
    return YoloConfig(**base)


def make_case(config, ndim=2, seed=0, scale=0.6):
    g = torch.Generator().manual_seed(seed)
    spatial = (64,) * ndim
    grid = (4,) * ndim
    pre = (torch.randn(2, config.nb_channels, *grid, generator=g, dtype=torch.float64) * scale)
    cats = []
    for _ in range(2):
        n = 3
        c = dict(centers=torch.rand(n, ndim, generator=g).numpy() * 60 + 2,
                 sizes=torch.rand(n, ndim, generator=g).numpy() * 14 + 6,
                 **{"class": [0, 2, 1]}, params=torch.rand(n, config.nb_param, generator=g).numpy())
        cats.append(c)
    rows = encode_targets(cats, ndim=ndim, max_nb_obj_per_image=4, nb_param=config.nb_param)
    return pre, rows, (1, *spatial)


def run(act, pre, rows, shape, training=False):
    pre = pre.detach().requires_grad_(True)
    res = act.loss(pre, act(pre), rows, norm=2.0, context={"input_shape": shape, "training": training,
                                                          "iteration": 10, "train_size": 2})
    (grad,) = torch.autograd.grad(res.loss, pre)
    return res, grad


def channels(config, part):
    if part == "class":
        js = list(range(8, 8 + config.nb_class))
    elif part == "param":
        js = list(range(8 + config.nb_class, config.box_stride))
    else:
        js = PART_CHANNELS[part]
    return [k * config.box_stride + j for k in range(config.nb_box) for j in js]


def finite_difference(act, pre, rows, shape, part, chans, grad, eps=1e-5, n_zero=4, n_max=20):
    """Central differences of the displayed part on a subset: non-zero analytic entries and a few zeros.

    Returns (fd, mask) with fd filled where mask is True.
    """
    sub = torch.zeros_like(pre, dtype=torch.bool)
    sub[:, chans] = True
    nz = (sub & (grad != 0)).nonzero()[:n_max]
    z = (sub & (grad == 0)).nonzero()
    z = z[torch.randperm(len(z), generator=torch.Generator().manual_seed(0))[:n_zero]]
    fd = torch.zeros_like(pre)
    mask = torch.zeros_like(sub)
    for full in torch.cat([nz, z]).tolist():
        full = tuple(full)
        vals = []
        for sgn in (1, -1):
            p = pre.clone()
            p[full] += sgn * eps
            res = act.loss(p, act(p), rows, norm=2.0, context={"input_shape": shape, "training": False})
            vals.append(res.parts[part])
        fd[full] = (vals[0] - vals[1]) / (2 * eps) / 2.0   # parts are summed, loss divided by norm = 2
        mask[full] = True
    return fd, mask


@pytest.mark.parametrize("part", ["pos", "size", "prob", "obj", "class", "param"])
def test_delta_matches_finite_differences_2d(part):
    cfg = make_config()
    act = YoloActivation(cfg)
    pre, rows, shape = make_case(cfg)
    res, grad = run(act, pre, rows, shape)
    assert res.monitors["nb_match"] == 6 and res.parts[part] > 0
    chans = channels(cfg, part)
    fd, mask = finite_difference(act, pre, rows, shape, part, chans, grad)
    assert mask.sum() > 8
    assert torch.allclose(grad[mask], fd[mask], atol=1e-6, rtol=1e-4)
    assert grad[:, chans].abs().max() > 1e-3


@pytest.mark.parametrize("part", ["pos", "size", "obj"])
def test_delta_matches_finite_differences_3d(part):
    cfg = make_config(priors=[[10, 20], [8, 24], [12, 6]], nb_class=0, nb_param=0)
    act = YoloActivation(cfg)
    pre, rows, shape = make_case(cfg, ndim=3, seed=1)
    res, grad = run(act, pre, rows, shape)
    assert res.monitors["nb_match"] == 6
    chans = channels(cfg, part)
    fd, mask = finite_difference(act, pre, rows, shape, part, chans, grad)
    assert mask.sum() > 8
    assert torch.allclose(grad[mask], fd[mask], atol=1e-6, rtol=1e-4)


def test_softmax_classes_cross_entropy():
    cfg = make_config(class_softmax=True)
    act = YoloActivation(cfg)
    pre, rows, shape = make_case(cfg)
    res, grad = run(act, pre, rows, shape)
    chans = channels(cfg, "class")
    fd, mask = finite_difference(act, pre, rows, shape, "class", chans, grad)
    assert torch.allclose(grad[mask], fd[mask], atol=1e-6, rtol=1e-4)
    out = act(pre)
    view = out.reshape(2, 2, cfg.box_stride, -1)
    assert torch.allclose(view[:, :, 8:11].sum(2), torch.ones(1, dtype=out.dtype))


def test_clamped_region_keeps_unclamped_derivative():
    cfg = make_config(nb_class=0, nb_param=0, IoU_type="IoU", fit_parts=FitParts(size=-1))
    act = YoloActivation(cfg)
    pre = torch.zeros(1, cfg.nb_channels, 4, 4, dtype=torch.float64)
    pre[:, 0::cfg.box_stride] = 30.0             # x offset: s·x = 15 beyond the clamp 6
    pre[:, 6::cfg.box_stride] = -20.0            # probability saturated low
    rows = encode_targets([dict(x=[8.0], y=[8.0], w=[10.0], h=[8.0])], ndim=2, max_nb_obj_per_image=1)
    res, grad = run(act, pre, rows, (1, 64, 64))
    out = act(pre).reshape(1, 2, cfg.box_stride, 16)
    o = out[0, :, 0]
    assert torch.allclose(o, torch.full_like(o, 1 / (1 + torch.exp(torch.tensor(-6.0)).item())))
    # matched box 0 of cell 0: target x offset 0.5 (centre 8.5 px in a 16-px cell)
    taken = res.monitors["nb_match"]
    assert taken == 1
    s, S = 0.5, 3.0
    expected = s * S * o[0, 0] * (1 - o[0, 0]) * (o[0, 0] - 8.5 / 16) / 2.0
    g = grad.reshape(1, 2, cfg.box_stride, 16)
    assert float(g[0, 0, 0, 0]) == pytest.approx(float(expected), rel=1e-9)
    assert float(g[0, 0, 0, 0]) != 0.0
    # background probability, clamped at σ(−6·… ): still s·λ·S·o(1−o)(o−0.02)
    p = out[0, 1, 6, 5]
    exp_bg = 1.2 * 0.05 * 0.7 * p * (1 - p) * (p - 0.02) / 2.0
    assert float(g[0, 1, 6, 5]) == pytest.approx(float(exp_bg), rel=1e-9)
    # size part disabled (fit −1): zero gradient and zero loss; z dims (≥ fit_dim) never get gradient
    assert torch.all(g[:, :, 3:6] == 0) and res.parts["size"] == 0
    assert torch.all(g[:, :, 2] == 0)
    # size clamp: linear part gets slope s even beyond the clamp
    cfg2 = make_config(nb_class=0, nb_param=0)
    act2 = YoloActivation(cfg2)
    pre2 = pre.clone()
    pre2[:, 3::cfg2.box_stride] = 5.0            # 0.8·5 = 4 > 1.6
    res2, grad2 = run(act2, pre2, rows, (1, 64, 64))
    g2 = grad2.reshape(1, 2, cfg2.box_stride, 16)
    t_size = torch.log(torch.tensor(10.0 / 10.0))
    assert float(g2[0, 0, 3, 0]) == pytest.approx(0.8 * 1.5 * (1.6 - float(t_size)) / 2.0, rel=1e-6)


def test_fit_parts_zero_neutral_targets_and_locked_boxes():
    cfg = make_config(nb_class=2, nb_param=1, param_ind_scales=[1.0],
                      fit_parts=FitParts(position=0, size=0, probability=0, objectness=0, classes=0, parameters=0))
    act = YoloActivation(cfg)
    pre = torch.zeros(1, cfg.nb_channels, 4, 4, dtype=torch.float64)   # all sigmoid outputs 0.5, linear 0
    rows = encode_targets([dict(x=[8.0], y=[8.0], w=[10.0], h=[8.0], params=[[0.9]])], ndim=2,
                          max_nb_obj_per_image=1, nb_param=1)
    res, grad = run(act, pre, rows, (1, 64, 64))
    # every output already equals its neutral value except params (0 vs 0.5)
    stride = cfg.box_stride
    g = grad.reshape(1, 2, stride, 16)
    assert torch.all(g[:, :, :8 + 2] == 0)
    assert res.parts["pos"] == 0 and res.parts["prob"] == 0 and res.parts["obj"] == 0
    assert float(g[0, 0, 10, 0]) == pytest.approx(0.7 * 0.8 * (0 - 0.5) / 2.0)
    assert res.parts["param"] == pytest.approx(0.5 * 0.8 * 0.25)


def test_locked_box_gets_no_background_gradient():
    cfg = make_config(nb_class=0, nb_param=0, IoU_type="IoU", IoU_limits=IoULimits(good_IoU_lim=0.3))
    act = YoloActivation(cfg)
    pre = torch.zeros(1, cfg.nb_channels, 4, 4, dtype=torch.float64)
    # target 20x24 px centred at (15, 8) in cell (0,0): box 1 of cell 0 is the best (IoU 0.48);
    # box 1 of cell (1,0) (centre 24,8) overlaps it with IoU 0.38 > 0.3 → locked
    rows = encode_targets([dict(x=[14.5], y=[7.5], w=[20.0], h=[24.0])], ndim=2, max_nb_obj_per_image=1)
    res, grad = run(act, pre, rows, (1, 64, 64))
    g = grad.reshape(1, 2, cfg.box_stride, 16)
    assert res.monitors["nb_match"] == 1
    assert float(g[0, 1, 6, 1]) == 0.0 and float(g[0, 1, 7, 1]) == 0.0      # locked, good but not best
    assert float(g[0, 0, 6, 1]) != 0.0                                       # box 0 of that cell: background
    assert act.last.association.locked[0, 1].tolist() == [0, 1]


def test_monitors_and_training_vs_display():
    cfg = make_config(error_type="complete")
    act = YoloActivation(cfg)
    pre, rows, shape = make_case(cfg)
    res_t, grad_t = run(act, pre, rows, shape, training=True)
    res_d, grad_d = run(act, pre, rows, shape, training=False)
    assert torch.allclose(grad_t, grad_d)          # no random option: same association
    m = res_d.monitors
    assert m["nb_targets"] == 6 and 0 < m["nb_match"] <= 6
    assert -1 < m["iou_sum"] / m["nb_match"] <= 0.98 and 0 < m["obj_sum"] / m["nb_match"] < 1
    assert res_d.total == pytest.approx(sum(res_d.parts.values()))
    assert float(res_d.loss.detach()) == pytest.approx(res_d.total / 2.0)
    # random start-up changes the training delta but not the displayed loss
    cfg_r = make_config(error_type="complete", rand_startup=10 ** 6)
    act_r = YoloActivation(cfg_r)
    pre_r = pre.detach().requires_grad_(True)
    res_r = act_r.loss(pre_r, act_r(pre_r), rows, norm=2.0,
                       context={"input_shape": shape, "training": True, "iteration": 1, "train_size": 2,
                                "generator": torch.Generator().manual_seed(0)})
    assert res_r.total == pytest.approx(res_d.total)


def test_empty_images_only_background():
    cfg = make_config(nb_class=0, nb_param=0)
    act = YoloActivation(cfg)
    pre = torch.randn(2, cfg.nb_channels, 4, 4, dtype=torch.float64)
    rows = torch.zeros(2, 1 + 3 * 7)
    res, grad = run(act, pre, rows, (1, 64, 64))
    g = grad.reshape(2, 2, cfg.box_stride, 16)
    assert torch.all(g[:, :, :6] == 0) and torch.all(g[:, :, 6:8] != 0)
    assert res.parts["pos"] == 0 and res.parts["prob"] > 0 and res.monitors["nb_match"] == 0


def test_trainer_integration_with_yolo_rows():
    """The framework Trainer drives the YOLO loss (context: iteration, train_size, training, generator)."""
    Trainer = pytest.importorskip("cianna.train.trainer").Trainer
    from cianna.nn.network import Network

    cfg = make_config(nb_class=0, nb_param=1, param_ind_scales=[1.0], rand_startup=8)
    act = YoloActivation(cfg, input_shape=(1, 32, 32))
    net = Network((1, 32, 32), seed=0)
    net.conv(4, 3, padding=1).pool(4).conv(cfg.nb_channels, 1, activation=act)
    rng = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 32, 32, generator=rng)
    cats = [dict(x=[10.0, 20.0], y=[5.0, 25.0], w=[6.0, 9.0], h=[7.0, 5.0], params=[[0.2], [0.7]])] * 8
    rows = encode_targets(cats, ndim=2, max_nb_obj_per_image=3, nb_param=1)
    trainer = Trainer(net, learning_rate=1e-3, batch_size=4, silent=1, seed=0, control_interv=1)
    trainer.fit((x, rows), valid=(x, rows), nb_iter=2)
    ev = trainer.evaluate((x, rows))
    assert set(ev.parts) == {"pos", "size", "prob", "obj", "class", "param"}
    assert ev.monitors["nb_targets"] == 16 and ev.monitors["nb_match"] == 16
    assert abs(ev.mean_loss - sum(ev.parts.values())) < 1e-6 * max(1.0, ev.mean_loss)
