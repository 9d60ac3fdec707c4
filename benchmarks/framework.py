"""Framework throughput: cianna vs the same network in plain PyTorch, in the same process.

Prints training and inference images/s for the MNIST-example network (28x28, batch 16 and 64) and for a
3D conv net on 32^3 inputs, for ``cianna`` and for an equivalent plain-PyTorch model trained with
``torch.optim.SGD`` and ``nn.CrossEntropyLoss``; the ratio column is cianna / plain (1.0 = same speed).
Both sides run in alternating short rounds of ``--steps`` steps (plain, cianna, cianna, plain, ...); the table
gives the best throughput of each and the ratio as the median of the per-round ratios (robust to load from
other processes, which drifts on a time scale longer than a round) and as the ratio of the best rates.
With one CPU thread (``--threads 1``) rounds are timed by the thread's CPU time, which a shared machine's
load disturbs far less than wall-clock time; otherwise by wall-clock time.

Usage: ``python benchmarks/framework.py [--steps 10] [--rounds 31] [--threads 1] [--device cpu]``
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


def cianna_train_step(net, x, y, device):
    """A function running one cianna training step (``Trainer._step``: forward, CIANNA loss, backward, SGD)."""
    trainer = cianna.Trainer(net, learning_rate=1e-3, momentum=0.8, batch_size=x.shape[0], silent=1,
                             device=device)
    x, y = x.to(device), y.to(device)
    return lambda: trainer._step(x, y, x.shape[0])


def plain_train_step(model, x, y, device):
    """A function running one plain-PyTorch training step (CrossEntropyLoss, torch.optim.SGD)."""
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.8)
    loss_fn = nn.CrossEntropyLoss()
    x, labels = x.to(device), y.argmax(1).to(device)

    def step():
        loss = loss_fn(model(x), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def infer_step(model, x, device):
    """A function running one inference forward pass without autograd."""
    model.to(device).eval()
    x = x.to(device)

    def step():
        with torch.no_grad():
            model(x)

    return step


def _clock(device):
    """CPU time of this thread when torch computes on it alone (1 CPU thread: other processes' load then
    barely shows), else wall-clock time."""
    if device.type == "cpu" and torch.get_num_threads() == 1:
        return time.thread_time
    return time.perf_counter


def _time(step, n, device):
    clock = _clock(device)
    _sync(device)
    t0 = clock()
    for _ in range(n):
        step()
    _sync(device)
    return clock() - t0


def compare(plain_step, cianna_step, steps, rounds, device):
    """Time both steps in alternating short rounds (``steps`` calls each).

    Returns the best throughput of each side in steps/s and the median over rounds of the per-round ratio
    cianna/plain: neighbouring rounds see the same background load, so the median ratio is robust on a
    shared machine where absolute rates drift.
    """
    for _ in range(3):  # warm-up (allocator, oneDNN primitive caches)
        plain_step()
        cianna_step()
    ratios, best_p, best_c = [], 0.0, 0.0
    for r in range(rounds):
        order = ((plain_step, "p"), (cianna_step, "c")) if r % 2 == 0 else ((cianna_step, "c"), (plain_step, "p"))
        t = {tag: _time(fn, steps, device) for fn, tag in order}
        best_p, best_c = max(best_p, steps / t["p"]), max(best_c, steps / t["c"])
        ratios.append(t["p"] / t["c"])
    ratios.sort()
    return best_p, best_c, ratios[len(ratios) // 2]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=31, help="alternating rounds per case (median ratio)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    cases = [("MNIST net 28x28", mnist_cianna, mnist_plain, (1, 28, 28), 16, args.steps),
             ("MNIST net 28x28", mnist_cianna, mnist_plain, (1, 28, 28), 64, args.steps),
             ("3D conv net 32^3", conv3d_cianna, conv3d_plain, (1, 32, 32, 32), 16, max(args.steps // 5, 1))]
    clock = "thread CPU time" if _clock(device) is time.thread_time else "wall-clock time"
    print(f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{args.rounds} alternating rounds per case, timed by {clock}")
    print(f"{'network':18s} {'batch':>5s} {'mode':6s} {'plain img/s':>12s} {'cianna img/s':>13s} "
          f"{'ratio (median)':>15s} {'ratio (best)':>13s}")
    for name, make_c, make_p, shape, batch, steps in cases:
        x = torch.rand(batch, *shape)
        y = torch.nn.functional.one_hot(torch.randint(0, 10, (batch,)), 10).float()
        for mode in ("train", "infer"):
            if mode == "train":
                p_step, c_step = plain_train_step(make_p(), x, y, device), cianna_train_step(make_c(), x, y, device)
            else:
                p_step, c_step = infer_step(make_p(), x, device), infer_step(make_c(), x, device)
            best_p, best_c, med = compare(p_step, c_step, steps, args.rounds, device)
            print(f"{name:18s} {batch:5d} {mode:6s} {best_p * batch:12.0f} {best_c * batch:13.0f} {med:15.2f} "
                  f"{best_c / best_p:13.2f}")


if __name__ == "__main__":
    main()
