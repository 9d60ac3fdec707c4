"""Numerical parity with the original CIANNA: reference saves loaded into native networks reproduce the
forward outputs the original wrote (tests/data/cianna_ref/*_fwd_bin.dat), and conversions round-trip."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from cianna.compat.convert import (
    forward_file_rows,
    from_network,
    load_cianna,
    save_cianna,
    spatial_ndim,
    to_network,
)
from cianna.compat.fileformat import (
    CiannaFile,
    ConvRecord,
    DenseRecord,
    read_cianna_file,
    read_forward_file,
)

REF = Path(__file__).parent / "data" / "cianna_ref"

# tolerances: relative 1e-4; absolute floor 1e-6 for softmax outputs, 1e-5 pixel for YOLO box corners
TOL = {"mnist": 1e-6, "conv3d": 1e-6, "yolo": 1e-5}
INPUT_SHAPE = {"mnist": (1, 28, 28), "conv3d": (1, 32, 32, 32), "yolo": (1, 256, 256)}


def run(net, name: str, n: int | None = None) -> np.ndarray:
    x = torch.from_numpy(np.load(REF / f"{name}_tiny_input.npy")[:n])
    with torch.no_grad():
        out = net(x)
    return forward_file_rows(net, out)


def reference(name: str, n: int) -> np.ndarray:
    rows = {"mnist": 64, "conv3d": 16, "yolo": 8}[name]
    return read_forward_file(REF / f"{name}_tiny_fwd_bin.dat", shape=(rows if n == -1 else n, -1))


@pytest.mark.parametrize("name", ["mnist", "conv3d", "yolo"])
def test_binary_save_reproduces_original_forward(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the network's own V-1.0 switch covers these files, no override needed
        net = load_cianna(REF / f"{name}_tiny_bin.dat")
    assert net.dense_pivot_zeroing
    assert net.input_shape == INPUT_SHAPE[name]
    rows = run(net, name)
    ref = reference(name, rows.shape[0])
    assert rows.shape == ref.shape
    np.testing.assert_allclose(rows, ref, rtol=1e-4, atol=TOL[name])
    if name != "yolo":
        assert np.all(rows[:, -1] == 0) and rows.shape[1] == 11  # trailing pivot column
    else:
        assert rows.shape == (8, 4 * 8 * 16 * 16)


@pytest.mark.parametrize("name", ["mnist", "conv3d", "yolo"])
def test_text_save_reproduces_original_forward(name):
    """Text saves keep 6 significant digits; the original reloads the dense nets within 4e-7 (README).
    Through the 11 YOLO layers the rounding reaches ~2e-4 pixel on box corners (256 px image), so the
    absolute floor there is 1e-3 pixel; probability/objectness stay within 1e-6."""
    net = load_cianna(REF / f"{name}_tiny_txt.dat")
    n = 2 if name == "yolo" else None  # two images are enough (speed)
    rows = run(net, name, n)
    ref = reference(name, -1)[:rows.shape[0]]
    np.testing.assert_allclose(rows, ref, rtol=1e-4, atol=1e-3 if name == "yolo" else TOL[name])
    if name == "yolo":
        part = rows.reshape(-1, 4, 8, 256)[:, :, 6:], ref.reshape(-1, 4, 8, 256)[:, :, 6:]
        np.testing.assert_allclose(*part, rtol=1e-4, atol=1e-6)


def test_save_every_checkpoint_reproduces_forward():
    net = load_cianna(REF / "net0_s0002_mnist.dat")
    rows = run(net, "mnist")
    np.testing.assert_allclose(rows, reference("mnist", 64), rtol=1e-4, atol=1e-6)


def test_dense_pivot_quirk_is_needed_for_parity():
    """Without quirk 1 (no bias after a non-linear dense) the outputs differ: the parity test sees it."""
    net = load_cianna(REF / "mnist_tiny_bin.dat")
    assert [getattr(l, "bias_input_scale", None) for l in net.layers][4:] == [1.0, 0.0, 0.0]
    net.set_quirks(dense_pivot_zeroing=False)
    rows = run(net, "mnist")
    assert np.max(np.abs(rows - reference("mnist", 64))) > 1e-3


def test_input_bias_and_dropout_scaling_matter():
    ref = reference("mnist", 64)
    net = load_cianna(REF / "mnist_tiny_bin.dat", input_bias=0.7)
    assert np.max(np.abs(run(net, "mnist") - ref)) > 1e-4
    net = load_cianna(REF / "mnist_tiny_bin.dat")
    net.layers[4].drop_rate = 0.0  # AVG_MODEL scaling by (1 - 0.5) removed
    assert np.max(np.abs(run(net, "mnist") - ref)) > 1e-3


def test_yolo_layout_comes_from_the_file():
    from cianna.detection.config import YoloConfig

    base = YoloConfig(nb_box=2, priors=[[1, 2], [3, 4]], IoU_type="DIoU", prior_dist_type="OFFSET")
    net = load_cianna(REF / "yolo_tiny_bin.dat", yolo_config=base)
    cfg = net.layers[-1].activation.yolo_config
    assert (cfg.nb_box, cfg.nb_class, cfg.nb_param, cfg.fit_dim) == (4, 0, 0, 2)
    assert cfg.priors[:2] == [[6, 12, 24, 48], [6, 12, 24, 48]]
    assert (cfg.slopes_and_maxes.position.slope, cfg.slopes_and_maxes.size.max) == (0.5, pytest.approx(1.2))
    assert cfg.IoU_type == "DIoU" and cfg.prior_dist_type == "OFFSET"  # training settings kept
    assert len(cfg.prior_noobj_prob) == 4
    with pytest.raises(ValueError, match="no_override"):
        load_cianna(REF / "yolo_tiny_bin.dat", yolo_config=base, no_override=True)


@pytest.mark.parametrize("name", ["mnist", "conv3d", "yolo"])
def test_file_network_file_round_trip_is_exact(name, tmp_path):
    cf = read_cianna_file(REF / f"{name}_tiny_bin.dat")
    back = from_network(to_network(cf))
    assert back.input_dims == cf.input_dims and back.in_channels == cf.in_channels
    for i, (a, b) in enumerate(zip(cf.layers, back.layers)):
        assert type(a) is type(b)
        for k, v in vars(a).items():
            w = getattr(b, k)
            if isinstance(v, np.ndarray):
                np.testing.assert_array_equal(v, w, err_msg=f"layer {i} {k}")
            elif k == "yolo" and v is not None:
                assert vars(v).keys() == vars(w).keys()
                np.testing.assert_array_equal(v.priors, w.priors)
                np.testing.assert_array_equal(v.slopes, w.slopes)
                assert (v.nb_box, v.nb_class, v.nb_param, v.fit_dim, v.class_softmax) == \
                       (w.nb_box, w.nb_class, w.nb_param, w.fit_dim, w.class_softmax)
            else:
                assert v == w, f"layer {i} {k}: {v!r} != {w!r}"
    # the text writer then reproduces the original text save byte for byte
    net = to_network(cf)
    save_cianna(net, tmp_path / "t.dat", binary=False)
    assert (tmp_path / "t.dat").read_bytes() == (REF / f"{name}_tiny_txt.dat").read_bytes()


def test_pivot_column_rebuilt_for_native_networks():
    cf = read_cianna_file(REF / "mnist_tiny_bin.dat")
    net = to_network(cf)
    for layer in net.layers:
        if hasattr(layer, "cianna_pivot"):
            del layer.cianna_pivot
    back = from_network(net)
    for a, b in zip(cf.layers, back.layers):
        if isinstance(a, DenseRecord):
            np.testing.assert_array_equal(a.weights, b.weights)


def native_network(input_shape):
    from cianna.nn.network import Network

    torch.manual_seed(0)
    net = Network(input_shape, bias=0.1, seed=3)
    net.conv(4, 3, padding=1, activation="LOGI")
    net.lrn(3, k=2.0, alpha=1e-2, beta=0.75)
    net.pool(2, pool_type="AVG", padding=1)
    net.conv(6, 2, stride=2, int_padding=1, activation="RELU_S10.00_L0.10")
    net.norm(4, set_off=1)
    net.dense(12, activation="LIN", drop_rate=0.3)
    net.dense(5, activation="LIN")
    return net


@pytest.mark.parametrize("input_shape", [(2, 17), (2, 9, 11), (1, 6, 7, 5)])
def test_native_network_survives_cianna_files(input_shape, tmp_path):
    net = native_network(input_shape)
    with torch.no_grad():  # non-trivial GN parameters
        net.layers[4].gamma.uniform_(0.5, 1.5)
        net.layers[4].beta.uniform_(-0.5, 0.5)
    net.eval()
    x = torch.randn(3, *input_shape)
    with torch.no_grad():
        ref = net(x)
    for binary in (True, False):
        path = tmp_path / f"n_{binary}.dat"
        save_cianna(net, path, binary=binary)
        cf = read_cianna_file(path)
        assert spatial_ndim(cf) == len(input_shape) - 1
        back = load_cianna(path)
        assert back.input_shape == tuple(input_shape)
        # dense after a LIN dense keeps its bias (the file's pivot ratio is rebuilt)
        assert back.layers[-1].bias_input_scale == 1.0
        with torch.no_grad():
            out = back(x)
        if binary:
            np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-6, atol=1e-6)
        else:
            np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-4, atol=1e-5)


def test_dense_after_linear_after_nonlinear_dense_gets_no_bias():
    """CIANNA: dense(RELU) -> dense(LIN) -> dense: the LIN layer's pivot is bias_in·ratio = 0·ratio, so the
    third layer has no bias either; the network's dense_pivot_zeroing switch propagates the zero pivot."""
    rng = np.random.default_rng(0)

    def dense(nb, n_in, act, ratio):
        w = rng.normal(size=(n_in + 1, nb + 1)).astype(np.float32)
        w[:, nb] = 0
        w[-1, nb] = ratio
        return DenseRecord(nb, 0.0, 0.1, act, w)

    cf = CiannaFile((4, 1, 1), 1, [dense(5, 4, "RELU_S800.00_L0.05", 1.0), dense(3, 5, "LIN", 1.0),
                                   dense(2, 3, "LIN", 0.0)])
    net = to_network(cf)
    assert net.dense_pivot_zeroing
    assert [l.bias_value * l.bias_input_scale for l in net.layers][1:] == [0.0, 0.0]
    x = torch.from_numpy(rng.normal(size=(2, 4)).astype(np.float32))
    # hand-computed CIANNA forward
    h = np.concatenate([x.numpy(), np.full((2, 1), 0.1, np.float32)], 1) @ cf.layers[0].weights
    h[:, :5] = np.where(h[:, :5] > 0, h[:, :5], 0.05 * h[:, :5])
    h[:, 5] = 0  # RELU writes 0 into the pivot
    h = h @ cf.layers[1].weights  # LIN keeps the pivot (= 0 here)
    h = h @ cf.layers[2].weights
    with torch.no_grad():
        np.testing.assert_allclose(net(x).numpy(), h[:, :2], rtol=1e-5, atol=1e-6)


def test_conv_after_dense_uses_stored_prev_size():
    rng = np.random.default_rng(1)
    cf = CiannaFile((3, 1, 1), 1, [
        DenseRecord(12, 0.0, 0.1, "LIN", rng.normal(size=(4, 13)).astype(np.float32)),
        ConvRecord(2, (2, 2, 1), (1, 1, 1), (0, 0, 0), (0, 0, 0), (3, 2, 1), 2, 0.0, 0.5, "LIN",
                   rng.normal(size=(2, 9)).astype(np.float32)),
    ])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net = to_network(cf)
    assert net.input_shape == (1, 1, 3)
    assert net.layers[1].in_shape == (2, 2, 3)
    back = from_network(net)
    assert back.layers[1].prev_size == (3, 2, 1) and back.layers[1].prev_depth == 2
    np.testing.assert_array_equal(back.layers[1].weights, cf.layers[1].weights)


def test_partial_load_for_transfer_learning():
    net = load_cianna(REF / "mnist_tiny_bin.dat", nb_layers=4)
    assert len(net.layers) == 4 and net.output_shape == (16, 7, 7)
    net.dense(3, activation="SMAX")  # new layers may be appended
    x = torch.from_numpy(np.load(REF / "mnist_tiny_input.npy")[:2])
    with torch.no_grad():
        assert net(x).shape == (2, 3)
