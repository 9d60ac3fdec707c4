"""Framework throughput: cianna vs the same network in plain PyTorch, in the same process.

Prints training and inference images/s for the MNIST-example network (28x28, batch 16 and 64) and for a
3D conv net on 32^3 inputs, for ``cianna`` and for an equivalent plain-PyTorch model trained with
``torch.optim.SGD`` and ``nn.CrossEntropyLoss``; the ratio column is cianna / plain (1.0 = same speed).
Runs alternate (plain, cianna, plain, cianna, ...) and the best of ``--repeats`` is kept, so load from other
processes affects both sides alike.

Usage: ``python benchmarks/framework.py [--steps 30] [--repeats 3] [--device cpu]``
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import cianna
from cianna.train.precision import resolve_device


def mnist_cianna():
    net = cianna.Network((1, 28, 28), seed=0)
    net.conv(8, 5, padding=2).pool(2).conv(16, 5, padding=2).pool(2)
    net.dense(256, drop_rate=0.5).dense(128, drop_rate=0.2).dense(10, activation="SMAX")
    return net


def mnist_plain():
    return nn.Sequential(
        nn.Conv2d(1, 8, 5, padding=2), nn.LeakyReLU(0.05), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 5, padding=2), nn.LeakyReLU(0.05), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(784, 256), nn.Dropout(0.5), nn.LeakyReLU(0.05),
        nn.Linear(256, 128), nn.Dropout(0.2), nn.LeakyReLU(0.05), nn.Linear(128, 10))


def conv3d_cianna():
    net = cianna.Network((1, 32, 32, 32), seed=0)
    net.conv(8, 3, padding=1).pool(2).conv(16, 3, padding=1).pool(2).conv(32, 3, padding=1).pool(2)
    net.dense(64).dense(10, activation="SMAX")
    return net


def conv3d_plain():
    return nn.Sequential(
        nn.Conv3d(1, 8, 3, padding=1), nn.LeakyReLU(0.05), nn.MaxPool3d(2),
        nn.Conv3d(8, 16, 3, padding=1), nn.LeakyReLU(0.05), nn.MaxPool3d(2),
        nn.Conv3d(16, 32, 3, padding=1), nn.LeakyReLU(0.05), nn.MaxPool3d(2), nn.Flatten(),
        nn.Linear(32 * 4 * 4 * 4, 64), nn.LeakyReLU(0.05), nn.Linear(64, 10))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_train_cianna(net, x, y, steps, device):
    trainer = cianna.Trainer(net, learning_rate=1e-3, momentum=0.8, batch_size=x.shape[0], silent=1,
                             device=device)
    x, y = x.to(device), y.to(device)
    trainer._step(x, y, x.shape[0])
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer._step(x, y, x.shape[0])
    _sync(device)
    return steps * x.shape[0] / (time.perf_counter() - t0)


def time_train_plain(model, x, y, steps, device):
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.8)
    loss_fn = nn.CrossEntropyLoss()
    x, labels = x.to(device), y.argmax(1).to(device)

    def step():
        loss = loss_fn(model(x), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * x.shape[0] / (time.perf_counter() - t0)


@torch.no_grad()
def time_infer(model, x, steps, device):
    model.to(device).eval()
    x = x.to(device)
    model(x)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        model(x)
    _sync(device)
    return steps * x.shape[0] / (time.perf_counter() - t0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    cases = [("MNIST net 28x28", mnist_cianna, mnist_plain, (1, 28, 28), 16, args.steps),
             ("MNIST net 28x28", mnist_cianna, mnist_plain, (1, 28, 28), 64, args.steps),
             ("3D conv net 32^3", conv3d_cianna, conv3d_plain, (1, 32, 32, 32), 16, max(args.steps // 3, 5))]
    print(f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'network':18s} {'batch':>5s} {'mode':6s} {'plain img/s':>12s} {'cianna img/s':>13s} {'ratio':>6s}")
    for name, make_c, make_p, shape, batch, steps in cases:
        x = torch.rand(batch, *shape)
        y = torch.nn.functional.one_hot(torch.randint(0, 10, (batch,)), 10).float()
        for mode in ("train", "infer"):
            best_p = best_c = 0.0
            for _ in range(args.repeats):
                if mode == "train":
                    best_p = max(best_p, time_train_plain(make_p(), x, y, steps, device))
                    best_c = max(best_c, time_train_cianna(make_c(), x, y, steps, device))
                else:
                    best_p = max(best_p, time_infer(make_p(), x, steps, device))
                    best_c = max(best_c, time_infer(make_c(), x, steps, device))
            print(f"{name:18s} {batch:5d} {mode:6s} {best_p:12.0f} {best_c:13.0f} {best_c / best_p:6.2f}")


if __name__ == "__main__":
    main()
