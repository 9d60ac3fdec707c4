"""YOLO-CIANNA training cost: association + loss per batch against the network forward time.

Builds SDC1-like 2D (256² input, 16-px cells, 9 priors, 5 parameters, up to 340 targets per image) and SDC2-like
3D (32×32×128 input, 6 priors, 6 parameters, up to 40 targets) networks, draws random targets, and times per
batch: the network forward, the association + loss (``YoloActivation.loss``, training mode with random
options on) and the full backward. Prints a table; the ratio column is (association + loss) / forward.

Usage: ``python benchmarks/yolo.py [--batch 16] [--repeats 5] [--device cpu] [--threads N]``
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from cianna.detection.config import YoloConfig
from cianna.detection.targets import encode_targets
from cianna.detection.yolo_activation import YoloActivation
from cianna.nn import Network
from cianna.train.precision import resolve_device


def sdc1_like():
    cfg = YoloConfig(nb_box=9, nb_param=5, priors=[[6] * 6 + [12, 9, 24], [6] * 6 + [9, 12, 24]], IoU_type="DIoU",
                     prior_dist_type="OFFSET", rand_startup=0, rand_prob_best_box_assoc=0.9, rand_prob=0.02,
                     max_nb_obj_per_image=340)
    net = Network((1, 256, 256), seed=0)
    for ch in (16, 32, 64, 128):
        net.conv(ch, 3, padding=1).conv(ch, 2, stride=2)
    net.conv(cfg.nb_channels, 1, activation=YoloActivation(cfg, input_shape=(1, 256, 256)))
    return net, cfg, 2, 340, (256, 256)


def sdc2_like():
    cfg = YoloConfig(nb_box=6, nb_param=6, priors=[[3, 4, 5, 3, 4, 6], [3, 4, 5, 3, 4, 6], [8, 16, 32, 12, 24, 48]],
                     IoU_type="DIoU", prior_dist_type="OFFSET", rand_startup=0, max_nb_obj_per_image=40)
    net = Network((1, 128, 32, 32), seed=0)
    net.conv(8, 3, padding=1).conv(16, (4, 2, 2), stride=(4, 2, 2)).conv(16, 3, padding=1)
    net.conv(32, 2, stride=2).conv(64, 2, stride=2)
    net.conv(cfg.nb_channels, 1, activation=YoloActivation(cfg, input_shape=(1, 128, 32, 32)))
    return net, cfg, 3, 40, (32, 32, 128)


def random_targets(rng, batch, ndim, max_obj, nb_param, extent):
    cats = []
    for _ in range(batch):
        m = int(rng.integers(max_obj // 4, max_obj + 1))
        centers = rng.uniform(0, 1, (m, ndim)) * np.array(extent[:ndim])
        sizes = rng.uniform(3, 20, (m, ndim))
        if ndim == 3:
            sizes[:, 2] = rng.uniform(8, 60, m)
        cats.append({"centers": centers, "sizes": sizes, "params": rng.uniform(0, 1, (m, nb_param))})
    return encode_targets(cats, ndim=ndim, max_nb_obj_per_image=max_obj, nb_param=nb_param)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rng = np.random.default_rng(0)
    print(f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}")
    print(f"{'case':26s} {'forward ms':>11s} {'assoc+loss ms':>14s} {'backward ms':>12s} {'ratio':>6s}")
    gen = torch.Generator().manual_seed(0)
    for name, make in (("SDC1-like 2D 256^2", sdc1_like), ("SDC2-like 3D 32x32x128", sdc2_like)):
        net, cfg, ndim, max_obj, extent = make()
        net.to(device).train()
        act = net.layers[-1].activation
        x = torch.rand(args.batch, *net.input_shape, device=device)
        y = random_targets(rng, args.batch, ndim, max_obj, cfg.nb_param, extent).to(device)
        ctx = {"iteration": 100, "train_size": 1600, "training": True, "generator": gen,
               "input_shape": net.input_shape}
        fwd, lss, bwd = [], [], []
        for rep in range(args.repeats + 1):
            t0 = time.perf_counter()
            pre, out = net(x, return_preact=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t1 = time.perf_counter()
            res = act.loss(pre, out, y, norm=args.batch, context=ctx)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            res.loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
            t3 = time.perf_counter()
            net.zero_grad(set_to_none=True)
            if rep:  # first run is warm-up
                fwd.append(t1 - t0)
                lss.append(t2 - t1)
                bwd.append(t3 - t2)
        f, l, b = (1e3 * float(np.median(v)) for v in (fwd, lss, bwd))
        print(f"{name:26s} {f:11.1f} {l:14.1f} {b:12.1f} {l / f:6.2f}")


if __name__ == "__main__":
    main()
