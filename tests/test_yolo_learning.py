"""YOLO-CIANNA learns from scratch: 2D images and 3D cubes with elliptical Gaussian sources.

Small CPU budget: a few thousand generated examples, single thread. Detection quality is measured with
the package's NMS and AP utilities on held-out examples; the 2D test also regresses the source flux as
an extra YOLO parameter.
"""
import numpy as np
import pytest
import torch

from cianna.detection.config import ErrorScales, YoloConfig
from cianna.detection.decode import decode_predictions
from cianna.detection.targets import encode_targets
from cianna.detection.yolo_activation import YoloActivation
from cianna.nn.network import Network

nms_mod = pytest.importorskip("cianna.detection.nms")
metrics = pytest.importorskip("cianna.detection.metrics")

pytestmark = pytest.mark.slow

LOG_FMIN, LOG_FMAX = np.log10(50.0), np.log10(2000.0)


def make_sources(n, side, ndim, rng, max_src=6, noise=1.0, sigma=(1.2, 2.8)):
    """Noisy images/cubes with axis-aligned elliptical Gaussians.

    Returns images (n, side^ndim) in tensor order ([z,] y, x) and catalogues with ``centers`` (0-based
    pixels, (x, y[, z]) order), ``sizes`` (4σ per axis, pixels) and total ``flux``.
    """
    axes = np.meshgrid(*([np.arange(side)] * ndim), indexing="ij")
    imgs = rng.normal(0.0, noise, (n,) + (side,) * ndim).astype(np.float32)
    cats = []
    for i in range(n):
        m = rng.integers(1, max_src + 1)
        cen, sig, flux = [], [], []
        for _ in range(100):
            if len(cen) == m:
                break
            s = rng.uniform(*sigma, ndim)
            c = rng.uniform(3, side - 4, ndim)
            if any(np.all(np.abs(c - c2) < 2.0 * (s + s2)) for c2, s2 in zip(cen, sig)):
                continue
            peak = np.exp(rng.uniform(np.log(6), np.log(40)))
            r2 = sum(((axes[ndim - 1 - d] - c[d]) / s[d]) ** 2 for d in range(ndim))
            imgs[i] += (peak * np.exp(-0.5 * r2)).astype(np.float32)
            cen.append(c)
            sig.append(s)
            flux.append(peak * (2 * np.pi) ** (ndim / 2) * np.prod(s))
        cats.append(dict(centers=np.array(cen).reshape(-1, ndim), sizes=4 * np.array(sig).reshape(-1, ndim),
                         flux=np.array(flux)))
    return imgs, cats


def batch(n, side, ndim, rng, nb_param, **kw):
    imgs, cats = make_sources(n, side, ndim, rng, **kw)
    for c in cats:
        c["params"] = ((np.log10(c["flux"]) - LOG_FMIN) / (LOG_FMAX - LOG_FMIN))[:, None]
    rows = encode_targets(cats, ndim=ndim, max_nb_obj_per_image=8, nb_param=nb_param)
    x = torch.from_numpy(imgs)[:, None]
    return torch.cat([x / 10, torch.asinh(x / 2)], 1), rows, cats   # linear + compressed channels


def train(net, act, ndim, side, iterations, per_iter, batch_size, lr, nb_param, seed, **sources):
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for it in range(1, iterations + 1):
        if it > 0.75 * iterations:
            for group in opt.param_groups:
                group["lr"] = lr * 0.3
        x, rows, _ = batch(per_iter, side, ndim, rng, nb_param, **sources)
        for b0 in range(0, per_iter, batch_size):
            xb = x[b0:b0 + batch_size]
            pre, out = net(xb, return_preact=True)
            res = act.loss(pre, out, rows[b0:b0 + batch_size], norm=batch_size,
                           context={"iteration": it, "train_size": per_iter, "training": True, "generator": gen})
            opt.zero_grad()
            res.loss.backward()
            opt.step()


def evaluate(net, cfg, x, cats, side, ndim):
    net.eval()
    with torch.no_grad():
        out = net(x)
    dets = decode_predictions(out, cfg, (side,) * ndim, score_threshold=0.05)
    preds, targs, ferr = [], [], []
    for d, c in zip(dets, cats):
        keep = nms_mod.non_max_suppression(d["boxes"], d["scores"], 0.3, kind="IoU")
        preds.append({"boxes": d["boxes"][keep], "scores": d["scores"][keep]})
        tb = np.concatenate([c["centers"] - c["sizes"] / 2, c["centers"] + c["sizes"] / 2], 1)
        targs.append({"boxes": torch.tensor(tb, dtype=torch.float32)})
        if cfg.nb_param:
            sel = keep[d["scores"][keep] > 0.3]
            centres = d["centers"][sel].numpy()
            for cc, f in zip(c["centers"], c["flux"]):
                if len(sel):
                    j = np.argmin(((centres - cc) ** 2).sum(1))
                    if np.sqrt(((centres[j] - cc) ** 2).sum()) < 2:
                        t = float(d["params"][sel][j, 0])
                        ferr.append(abs(10 ** (t * (LOG_FMAX - LOG_FMIN) + LOG_FMIN) / f - 1))
    pr = metrics.precision_recall_curve(preds, targs, 0.5)
    ap = metrics.average_precision(pr.precision, pr.recall)
    return ap, (float(np.median(ferr)) if ferr else np.nan), len(ferr), sum(len(c["flux"]) for c in cats)


def test_yolo_learns_2d_sources_and_fluxes():
    torch.manual_seed(0)
    cfg = YoloConfig(nb_box=2, nb_param=1, priors=[[6, 10], [6, 10]], IoU_type="DIoU", prior_dist_type="OFFSET",
                     rand_startup=1000, prior_noobj_prob=[0.2, 0.2], max_nb_obj_per_image=8,
                     error_scales=ErrorScales(position=4, size=2, probability=1, objectness=2, parameters=20))
    act = YoloActivation(cfg, input_shape=(2, 64, 64))
    net = Network((2, 64, 64), seed=0)
    (net.conv(16, 3, padding=1).pool(2).conv(32, 3, padding=1).pool(2).conv(48, 3, padding=1).pool(2)
        .conv(64, 3, padding=1).conv(64, 3, padding=1).conv(cfg.nb_channels, 1, activation=act))
    train(net, act, 2, 64, iterations=32, per_iter=256, batch_size=8, lr=2e-3, nb_param=1, seed=1)
    x, _, cats = batch(200, 64, 2, np.random.default_rng(12345), 1)
    ap, ferr, n_flux, n_true = evaluate(net, cfg, x, cats, 64, 2)
    print(f"2D: AP50 {ap:.3f}, median |flux error| {ferr:.3f} on {n_flux}/{n_true} sources")
    assert ap >= 0.9
    assert ferr <= 0.10 and n_flux >= 0.8 * n_true


def test_yolo_learns_3d_sources():
    torch.manual_seed(0)
    cfg = YoloConfig(nb_box=2, priors=[[6, 10], [6, 10], [6, 10]], IoU_type="DIoU", prior_dist_type="OFFSET",
                     rand_startup=128, prior_noobj_prob=[0.2, 0.2], max_nb_obj_per_image=8,
                     error_scales=ErrorScales(position=8, size=4, probability=1, objectness=2))
    act = YoloActivation(cfg, input_shape=(2, 32, 32, 32))
    net = Network((2, 32, 32, 32), seed=0)
    (net.conv(8, 3, padding=1).pool(2).conv(16, 3, padding=1).pool(2).conv(32, 3, padding=1).pool(2)
        .conv(48, 3, padding=1).conv(cfg.nb_channels, 1, activation=act))
    sources = {"sigma": (1.5, 3.0), "max_src": 4}
    train(net, act, 3, 32, iterations=36, per_iter=128, batch_size=8, lr=3e-3, nb_param=0, seed=2, **sources)
    x, _, cats = batch(100, 32, 3, np.random.default_rng(54321), 0, **sources)
    ap, _, _, n_true = evaluate(net, cfg, x, cats, 32, 3)
    print(f"3D: AP50 {ap:.3f} on {n_true} sources")
    assert ap >= 0.8
