"""Training loop, optimiser, schedule, datasets, precision and the MNIST-example network on digits."""
import math
import time

import numpy as np
import pytest
import torch

import cianna
from cianna.demo import load_digits_28, mnist_example_network, run_digits_demo
from cianna.nn import Network
from cianna.nn.init import initialise_
from cianna.train import (CiannaSGD, CiannaUserWarning, StreamingDataset, Trainer,
                          cianna_learning_rate, confusion_matrix, format_confusion, resolve_device)


def small_regression(seed=0, n=64):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 1, 6, 6)).astype(np.float32)
    y = np.stack([x.mean(axis=(1, 2, 3)), x.std(axis=(1, 2, 3))], 1).astype(np.float32)
    return x, y


def small_net(seed=0, drop=0.2):
    net = Network((1, 6, 6), seed=seed)
    return net.conv(4, 3, padding=1).pool(2).dense(16, drop_rate=drop).dense(2, activation="LIN")


# --------------------------------------------------------------------------- optimiser and schedule
def test_cianna_sgd_update_formula():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = CiannaSGD([w], lr=0.1, momentum=0.9, weight_decay=0.01)
    v = torch.zeros(2)
    w_ref = w.detach().clone()
    for lr, g in [(0.1, torch.tensor([0.5, 1.0])), (0.05, torch.tensor([-1.0, 2.0]))]:
        for group in opt.param_groups:
            group["lr"] = lr
        w.grad = g.clone()
        opt.step()
        v = 0.9 * v + lr * g + lr * 0.01 * w_ref
        w_ref = w_ref - v
        torch.testing.assert_close(w.detach(), w_ref)


def test_cianna_sgd_equals_torch_sgd_at_constant_lr():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5))
    b = torch.nn.Parameter(a.detach().clone())
    o1 = CiannaSGD([a], lr=0.05, momentum=0.8, weight_decay=0.1)
    o2 = torch.optim.SGD([b], lr=0.05, momentum=0.8, weight_decay=0.1)
    for _ in range(5):
        g = torch.randn(5)
        a.grad, b.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
    torch.testing.assert_close(a, b)


def test_learning_rate_schedule():
    assert cianna_learning_rate(0, 1e-3, 1e-5, 0.0) == 1e-3
    assert cianna_learning_rate(100, 1e-3, 1e-5, 0.01) == pytest.approx(1e-5 + (1e-3 - 1e-5) * math.exp(-1.0))
    net = small_net()
    t = Trainer(net, learning_rate=0.01, end_learning_rate=0.001, lr_decay=0.5, silent=1)
    recs = t.fit(small_regression(), nb_iter=3)
    assert [r["learning_rate"] for r in recs] == pytest.approx(
        [0.001 + 0.009 * math.exp(-0.5 * i) for i in range(3)])


def test_initialiser_laws():
    g = torch.Generator().manual_seed(0)
    t = torch.empty(200_000)
    initialise_([t], "xavier", fan_in=101, fan_out=99, layer_kind="conv", generator=g)
    assert t.std().item() == pytest.approx(math.sqrt(2 / 200), rel=0.02)
    initialise_([t], "xavier_U", fan_in=101, fan_out=99, layer_kind="dense", generator=g)
    assert t.abs().max().item() <= math.sqrt(12 / 200) and t.abs().max().item() > 0.99 * math.sqrt(12 / 200)
    initialise_([t], "lecun", fan_in=101, fan_out=25, layer_kind="dense", generator=g)
    assert t.std().item() == pytest.approx(math.sqrt(1 / 25), rel=0.02)  # CIANNA: dense lecun uses fan-out
    initialise_([t], "normal", fan_in=1, fan_out=1, layer_kind="dense", scaling=0.3, generator=g)
    assert t.std().item() == pytest.approx(0.3, rel=0.02)
    with pytest.raises(ValueError, match="init_scaling"):
        initialise_([t], "uniform", fan_in=1, fan_out=1, layer_kind="dense")


# --------------------------------------------------------------------------- training behaviour
def test_training_reduces_loss_and_writes_logs(tmp_path):
    x, y = small_regression()
    net = small_net(drop=0.0)
    t = Trainer(net, learning_rate=0.01, momentum=0.8, batch_size=8, out_dir=tmp_path, silent=2, save_every=2)
    recs = t.fit((x, y), (x[:16], y[:16]), nb_iter=6)
    assert recs[-1]["train_loss"] < 0.5 * recs[0]["train_loss"]
    errors = np.loadtxt(tmp_path / "error.txt")
    assert errors.shape == (6, 2) and list(errors[:, 0]) == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "train_log.txt").read_text().count("\n") == 7
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "iter_0002.safetensors", "iter_0004.safetensors", "iter_0006.safetensors"]


def test_partial_last_batch_divided_by_full_batch_size():
    net = Network((3,), seed=0).dense(1, activation="LIN")
    x = torch.ones(2, 3)
    y = torch.zeros(2, 1)
    t = Trainer(net, learning_rate=1.0, batch_size=4, silent=1)
    out = net(x).detach()
    w0 = net.layers[0].weight.detach().clone()
    t.fit((x, y), nb_iter=1)
    # gradient of sum 0.5*(o-t)^2 over 2 examples, divided by the nominal batch size 4
    expected = w0 - 1.0 * (out.sum() / 4) * torch.ones(1, 3)
    torch.testing.assert_close(net.layers[0].weight.detach(), expected)


def test_frozen_layers_keep_weights_but_pass_gradients():
    x, y = small_regression()
    net = small_net(drop=0.0).freeze([0])
    w0 = net.layers[0].weight.detach().clone()
    w2 = net.layers[2].weight.detach().clone()
    Trainer(net, learning_rate=0.01, silent=1).fit((x, y), nb_iter=1)
    assert torch.equal(net.layers[0].weight, w0)
    assert not torch.equal(net.layers[2].weight, w2)
    net.freeze([0], frozen=False)
    assert net.layers[0].weight.requires_grad


def test_streaming_dataset_regenerates_and_is_deterministic():
    calls = []

    def make(iteration, rng):
        calls.append(iteration)
        x = rng.normal(size=(32, 1, 6, 6)).astype(np.float32)
        return x, np.stack([x.mean(axis=(1, 2, 3)), x.std(axis=(1, 2, 3))], 1)

    stream = StreamingDataset(make, seed=5)
    a = stream.for_iteration(1)
    b = StreamingDataset(make, seed=5, prefetch=False).for_iteration(1)
    assert torch.equal(a.inputs, b.inputs)
    assert not torch.equal(a.inputs, stream.for_iteration(2).inputs)
    net = small_net(drop=0.0)
    recs = Trainer(net, learning_rate=0.01, momentum=0.8, silent=1).fit(StreamingDataset(make), nb_iter=4)
    assert len(recs) == 4 and recs[-1]["train_loss"] < recs[0]["train_loss"]


def test_streaming_batches_larger_than_memory_form():
    def batches(iteration, rng):
        for _ in range(5):  # an iterator: never materialised as a whole
            x = rng.normal(size=(8, 1, 6, 6)).astype(np.float32)
            yield torch.from_numpy(x), torch.from_numpy(np.stack([x.mean((1, 2, 3)), x.std((1, 2, 3))], 1))

    net = small_net(drop=0.0)
    recs = Trainer(net, learning_rate=0.01, silent=1).fit(StreamingDataset(batches, prefetch=False), nb_iter=2)
    assert recs[0]["images_per_s"] > 0


def test_bf16_autocast_trains_on_cpu():
    x, y = small_regression()
    net = small_net(drop=0.0)
    recs = Trainer(net, learning_rate=0.01, momentum=0.8, precision="BF16C_FP32A", silent=1).fit((x, y), nb_iter=4)
    assert all(np.isfinite(r["train_loss"]) for r in recs)
    assert recs[-1]["train_loss"] < recs[0]["train_loss"]
    assert net.layers[0].weight.dtype == torch.float32  # FP32 master weights


def test_cuda_request_falls_back_with_a_warning():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.warns(CiannaUserWarning, match="falling back to the CPU"):
        assert resolve_device("cuda").type == "cpu"


def test_confusion_matrix_and_display():
    cm = confusion_matrix([0, 0, 1, 2, 2], [0, 1, 1, 2, 0], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    text = format_confusion(cm, 1)
    assert "Correct : 60.00%" in text and "Recall" in text
    assert format_confusion(cm, 3) == "Correct : 60.00%"


# --------------------------------------------------------------------------- the MNIST example on digits
def test_mnist_example_network_on_digits_reaches_95_percent_in_under_a_minute(tmp_path):
    start = time.perf_counter()
    result = run_digits_demo(tmp_path, nb_iter=20, seed=0, silent=1)
    elapsed = time.perf_counter() - start
    assert result.test_accuracy >= 0.95, result.test_accuracy
    assert elapsed < 60, f"training + evaluation took {elapsed:.1f} s"
    assert result.curve_png.stat().st_size > 1000
    assert cianna.load(result.model_path).predict(load_digits_28()["test"][0][:5]).mean.shape == (5, 10)


def test_mnist_example_architecture():
    net = mnist_example_network()
    assert [layer.out_shape for layer in net.layers] == [(8, 28, 28), (8, 14, 14), (16, 14, 14), (16, 7, 7),
                                                          (256,), (128,), (10,)]


def test_softmax_loss_value_and_cianna_delta():
    from cianna.nn.activations import Softmax

    pre = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    act = Softmax()
    out = act(pre)
    target = torch.tensor([[0, 1, 0, 0, 0], [0.5, 0.5, 0, 0, 0], [0, 0, 0, 0, 1]], dtype=torch.float64)
    res = act.loss(pre, out, target, norm=4)
    expected = -(target * torch.log(out.detach().clamp_min(1e-6))).sum() / 4
    assert res.loss.item() == pytest.approx(expected.item())
    res.loss.backward()
    # CIANNA's delta o − t (not the exact softmax-CE gradient when a target row does not sum to 1)
    torch.testing.assert_close(pre.grad, (out.detach() - target) / 4)
