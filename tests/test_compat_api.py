"""The CIANNA V-1.0 module-level interface (``cianna.compat``): keywords, defaults, files on disk, quirks."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import cianna.compat as cnn
from cianna.compat.fileformat import read_cianna_file, read_forward_file
from cianna.train.precision import CiannaUserWarning

REF = Path(__file__).parent / "data" / "cianna_ref"


@pytest.fixture(autouse=True)
def fresh(tmp_path, monkeypatch):
    """Every test starts with no network, default switches, in an empty working directory."""
    cnn.reset()
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    yield
    cnn.reset()


def i_ar(v):
    return np.array(v, dtype="int")


def small_net(b_size=4, n=24, out=3, drop=0.0, network=None, valid=True, precision="off"):
    """8x8 one-channel classifier with random data (labels from the mean brightness of quadrants)."""
    rng = np.random.default_rng(0)
    x = rng.random((n, 64), dtype=np.float32)
    labels = rng.integers(0, out, n)
    y = np.eye(out, dtype=np.float32)[labels]
    cnn.init(in_dim=i_ar([8, 8]), in_nb_ch=1, out_dim=out, b_size=b_size, comp_meth="C_BLAS", no_logo=1,
             network=network, mixed_precision=precision)
    cnn.create_dataset("TRAIN", n, x, y, silent=1)
    if valid:
        cnn.create_dataset("VALID", n // 2, x, y, silent=1)
    cnn.create_dataset("TEST", n, x, y, silent=1)
    cnn.conv(i_ar([3, 3]), 4, padding=i_ar([1, 1]))
    cnn.pool()
    cnn.dense(16, drop_rate=drop)
    cnn.dense(out, activation="SMAX", strict_size=1)
    return x, y


# ------------------------------------------------------------------------------------------------ strings


def test_activation_builders():
    assert cnn.linear() == "LIN" and cnn.softmax() == "SMAX" and cnn.yolo() == "YOLO"
    assert cnn.relu() == "RELU"
    assert cnn.relu(saturation=100, leaking=0.0) == "RELU_S100.00_L0.00"
    assert cnn.relu(leaking=0.1) == "RELU_L0.10"
    assert cnn.logistic(beta=2) == "LOGI_B2.00"
    assert cnn.logistic(saturation=4, beta=0.5) == "LOGI_S4.00_B0.50"


def test_yolo_builders_sentinels_and_layout():
    es = cnn.set_error_scales(position=36, size=0.2)
    assert es.dtype == np.float32 and es.tolist() == pytest.approx([36, 0.2, -1, -1, -1, -1])
    fp = cnn.set_fit_parts(classes=-1)
    assert fp.dtype == np.int32 and fp.tolist() == [-2, -2, -2, -2, -1, -2]
    lim = cnn.set_IoU_limits(good_IoU_lim=0.5)
    assert lim.shape == (8,) and lim[0] == 0.5 and np.all(lim[1:] == -2)
    sm = cnn.set_sm_single(slope=0.5, fmin=-0.2, fmax=1.5)
    assert sm.tolist() == pytest.approx([0.5, 1.5, -0.2])  # max before min
    sam = cnn.set_slopes_and_maxes(size=cnn.set_sm_single(0.5, -1.2, 1.2), parameters=(0.5, 1.5, -0.2))
    assert sam.shape == (6, 3) and sam.dtype == np.float32
    assert sam[1].tolist() == pytest.approx([0.5, 1.2, -1.2]) and sam[0].tolist() == [-1, 1e5, -1e5]
    with pytest.raises(ValueError, match="3 values"):
        cnn.set_slopes_and_maxes(position=[1, 2])


# ------------------------------------------------------------------------------------------------ init, datasets


def test_init_networks_and_errors():
    cnn.init(in_dim=i_ar([8, 8]), in_nb_ch=2, out_dim=3, comp_meth="C_NAIV", no_logo=1)
    cnn.init(in_dim=i_ar([4]), in_nb_ch=1, out_dim=2, b_size=0, comp_meth="C_BLAS", no_logo=1)
    assert cnn.get_network(0).input_shape == (2, 8, 8)
    assert cnn.get_network(1).input_shape == (1, 4) and cnn.get_network().input_shape == (1, 4)  # last
    from cianna.compat.state import registry

    assert registry.networks[1].b_size == 16  # b_size <= 0 -> 16
    assert registry.networks[0].b_size == 8  # CIANNA default
    with pytest.raises(ValueError, match="comp_meth"):
        cnn.init(in_dim=i_ar([8]), in_nb_ch=1, out_dim=1, comp_meth="GPU", no_logo=1)
    with pytest.raises(ValueError, match="mixed precision"):
        cnn.init(in_dim=i_ar([8]), in_nb_ch=1, out_dim=1, comp_meth="C_BLAS", mixed_precision="FP8", no_logo=1)
    with pytest.raises(TypeError, match="array"):
        cnn.init(in_dim=8, in_nb_ch=1, out_dim=1, no_logo=1)
    with pytest.raises(ValueError, match="does not exist"):
        cnn.conv(i_ar([3]), 2, network=7)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without GPU")
def test_c_cuda_falls_back_to_cpu_with_warning():
    with pytest.warns(CiannaUserWarning, match="no GPU"):
        cnn.init(in_dim=i_ar([8]), in_nb_ch=1, out_dim=1, no_logo=1)  # comp_meth default C_CUDA
    from cianna.compat.state import registry

    assert registry.networks[0].device.type == "cpu"


def test_create_dataset_checks_and_buffers():
    cnn.init(in_dim=i_ar([4, 2]), in_nb_ch=3, out_dim=2, b_size=4, comp_meth="C_BLAS", no_logo=1)
    x = np.arange(10 * 24, dtype=np.float64).reshape(10, 24)  # float64 is converted (CIANNA: garbage)
    y = np.zeros((10, 2), np.float32)
    cnn.create_dataset("TRAIN", 8, x, y, silent=1)
    from cianna.compat.state import registry

    ds = registry.networks[0].datasets["TRAIN"]
    assert len(ds) == 8 and ds.inputs.dtype == torch.float32
    x[0, 0] = -5  # the data were copied
    assert float(ds.inputs[0, 0]) == 0.0
    # channel-first flat rows map onto (C, H, W) = (3, 2, 4)
    img = cnn.get_network().check_input(ds.inputs[:1])
    assert img.shape == (1, 3, 2, 4) and float(img[0, 1, 1, 2]) == 8 + 4 + 2
    with pytest.raises(ValueError, match="expected 24"):
        cnn.create_dataset("VALID", 2, np.zeros((2, 23), np.float32), y[:2])
    with pytest.raises(ValueError, match="only 10 rows"):
        cnn.create_dataset("VALID", 11, x, np.zeros((11, 2)))
    with pytest.raises(ValueError, match="expected one of"):
        cnn.create_dataset("TRAINING", 2, x, y)
    with pytest.raises(ValueError, match="NaN"):
        bad = x.copy()
        bad[1, 3] = np.nan
        cnn.create_dataset("TEST", 4, bad, y, silent=1)
    cnn.create_dataset("TRAIN_buf", 5, x + 1, y, silent=1)
    cnn.swap_data_buffers("TRAIN")
    assert len(registry.networks[0].datasets["TRAIN"]) == 5
    assert len(registry.networks[0].datasets["TRAIN_buf"]) == 8
    cnn.delete_dataset("TRAIN_buf", silent=1)
    assert "TRAIN_buf" not in registry.networks[0].datasets
    with pytest.raises(ValueError, match="does not exist"):
        cnn.delete_dataset("TRAIN_buf")
    with pytest.raises(ValueError, match="TRAIN"):
        cnn.swap_data_buffers("TRAIN_buf")


# ------------------------------------------------------------------------------------------------ layers


def test_layer_builders_ids_shapes_and_defaults():
    cnn.init(in_dim=i_ar([16, 16]), in_nb_ch=2, out_dim=5, comp_meth="C_BLAS", no_logo=1)
    assert cnn.conv(i_ar([3, 5]), 6, stride=i_ar([1, 1]), padding=i_ar([1, 2])) == 0
    assert cnn.pool() == 1  # default p_size 2x2 from the input dims
    assert cnn.norm(group_size=3, activation=cnn.relu()) == 2
    assert cnn.conv(i_ar([2, 2]), 4, int_padding=i_ar([1, 1]), activation=cnn.logistic()) == 3
    assert cnn.lrn() == 4
    assert cnn.dense(12, activation="LINEAR") == 5
    assert cnn.conv(i_ar([1, 1]), 2, input_shape=i_ar([2, 2, 1, 3])) == 6
    assert cnn.dense(5, activation="SMAX", init_fct="xavier_U") == 7
    net = cnn.get_network()
    conv0 = net.layers[0]
    assert conv0.kernel_size == (5, 3) and conv0.padding == (2, 1)  # torch (H, W) from CIANNA [x, y]
    assert net.layers[1].kernel_size == (2, 2) and net.layers[1].out_shape == (6, 8, 8)
    assert net.layers[3].out_shape == (4, 14, 14)  # (8 + 7*1 - 2)//1 + 1
    assert net.layers[3].bias_value == -1.0 and net.layers[5].bias_value == 0.5  # activation defaults
    assert net.layers[0].bias_value == 0.1 or net.input_bias == pytest.approx(0.1)
    assert net.layers[6].in_shape == (3, 2, 2)
    assert net.output_shape == (5,)
    with pytest.raises(ValueError, match="unknown activation"):
        cnn.init(in_dim=i_ar([8]), in_nb_ch=1, out_dim=2, comp_meth="C_BLAS", no_logo=1)
        cnn.dense(4, activation="SOFTMAXX")
    with pytest.raises(ValueError, match="init_fct"):
        cnn.dense(4, init_fct="he")
    with pytest.raises(NotImplementedError, match="sequential"):
        cnn.dense(4)
        cnn.dense(4)
        cnn.dense(4, prev_layer=0)
    with pytest.raises(ValueError, match="p_type"):
        cnn.init(in_dim=i_ar([8]), in_nb_ch=1, out_dim=2, comp_meth="C_BLAS", no_logo=1)
        cnn.conv(i_ar([3]), 2)
        cnn.pool(p_type="MEDIAN")
    with pytest.raises(ValueError, match="only 'GN'"):
        cnn.norm(normalization="BN")


def test_pool_default_size_comes_from_input_dims_quirk26():
    cnn.init(in_dim=i_ar([8, 1]), in_nb_ch=1, out_dim=2, comp_meth="C_BLAS", no_logo=1)
    cnn.conv(i_ar([3, 1]), 2, padding=i_ar([1, 0]))
    cnn.pool()
    assert cnn.get_network().layers[-1].kernel_size == (1, 2)  # (H, W): y input dim is 1
    cnn.init(in_dim=i_ar([8, 8]), in_nb_ch=1, out_dim=2, comp_meth="C_BLAS", no_logo=1)
    cnn.conv(i_ar([3, 8]), 2)  # output W 6 x H 1
    with pytest.raises(ValueError, match="does not fit"):
        cnn.pool()  # 2x2 from the 8x8 input dims: too tall for the 6x1 map
    cnn.set_compat_switches(pool_size_from_input=False)
    cnn.pool()
    assert cnn.get_network().layers[-1].kernel_size == (1, 2)  # from the previous layer's output


def test_strict_size_shrink_quirk2_and_dense_pivot_zeroing_quirk1():
    cnn.init(in_dim=i_ar([8]), in_nb_ch=1, out_dim=8, comp_meth="C_BLAS", mixed_precision="BF16C_FP32A",
             no_logo=1)
    with pytest.warns(CiannaUserWarning, match="shrunk to 15"):
        cnn.dense(16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cnn.dense(8, activation="SMAX", strict_size=1)
    net = cnn.get_network()
    assert [layer.out_features for layer in net.layers] == [15, 8]
    assert net.dense_pivot_zeroing and net.layers[1].bias_input_scale == 0.0  # no bias after a RELU dense
    cnn.set_compat_switches(strict_size_shrink=False, dense_pivot_zeroing=False)
    cnn.init(in_dim=i_ar([8]), in_nb_ch=1, out_dim=8, comp_meth="C_BLAS", mixed_precision="on", no_logo=1)
    cnn.dense(16)
    cnn.dense(8, activation="SMAX")
    net = cnn.get_network()
    assert net.layers[0].out_features == 16 and net.layers[1].bias_input_scale == 1.0
    with pytest.raises(ValueError, match="unknown compatibility switch"):
        cnn.set_compat_switches(fast_mode=True)


# ------------------------------------------------------------------------------------------------ train/forward


def test_train_writes_error_checkpoints_and_console(capsys):
    small_net()
    cnn.train(nb_iter=4, learning_rate=0.01, momentum=0.9, confmat=1, save_every=2, save_bin=1, control_interv=2)
    cnn.train(nb_iter=1, learning_rate=0.01, control_interv=1, confmat=3, save_every=5)
    out = capsys.readouterr().out
    assert re.search(r"Iter: 1 \[#+-*\] 6 / 6 \| B\.Loss: [0-9.]+ \| B\.perf\.: [0-9.]+ it/s", out)
    assert "Average Training perf:" in out and "Learning rate: 0.01 | Momentum: 0.9" in out
    assert "Recall" in out and "Precis." in out and "Correct :" in out
    lines = Path("error.txt").read_text().splitlines()
    assert [int(line.split()[0]) for line in lines] == [2, 4, 5]  # iteration counter persists across calls
    assert all(np.isfinite(float(line.split()[1])) for line in lines)
    assert sorted(p.name for p in Path("net_save").iterdir()) == ["net0_s0002.dat", "net0_s0004.dat",
                                                                  "net0_s0005.dat"]
    cf = read_cianna_file("net_save/net0_s0004.dat", binary=True)
    assert [r.kind for r in cf.layers] == ["conv", "pool", "dense", "dense"]
    read_cianna_file("net_save/net0_s0005.dat", binary=False)  # save_bin=0 -> text
    # a new training from iteration 0 starts a new error.txt
    cnn.init(in_dim=i_ar([8, 8]), in_nb_ch=1, out_dim=3, b_size=4, comp_meth="C_BLAS", no_logo=1)
    x = np.random.default_rng(1).random((8, 64), dtype=np.float32)
    cnn.create_dataset("TRAIN", 8, x, np.eye(3, dtype=np.float32)[np.arange(8) % 3], silent=1)
    cnn.dense(3, activation="SMAX")
    cnn.train(nb_iter=1, learning_rate=0.01, control_interv=0, silent=1)
    assert not Path("error.txt").exists()


def test_training_reduces_loss_and_silent_modes(capsys):
    small_net(b_size=4)
    capsys.readouterr()
    cnn.train(nb_iter=1, learning_rate=0.0, control_interv=1, silent=1)
    assert capsys.readouterr().out == "" and not Path("error.txt").exists()  # silent=1: nothing
    cnn.train(nb_iter=1, learning_rate=0.0, control_interv=1, silent=2)
    first = float(Path("error.txt").read_text().split()[1])
    out = capsys.readouterr().out
    assert "Iter: 2" not in out and "Mean Loss" in out  # silent=2: control output only
    cnn.train(nb_iter=30, learning_rate=0.02, momentum=0.8, control_interv=30, silent=1)
    cnn.train(nb_iter=1, learning_rate=0.0, control_interv=1, silent=2)
    last = float(Path("error.txt").read_text().split()[-1])
    assert last < 0.8 * first


def test_train_errors():
    small_net(valid=False)
    with pytest.raises(ValueError, match="VALID"):
        cnn.train(nb_iter=1, learning_rate=0.01)
    cnn.train(nb_iter=1, learning_rate=0.01, control_interv=0, silent=1)
    cnn.init(in_dim=i_ar([8]), in_nb_ch=1, out_dim=3, comp_meth="C_BLAS", no_logo=1, inference_only=1)
    cnn.dense(3, activation="SMAX")
    with pytest.raises(RuntimeError, match="inference_only"):
        cnn.train(nb_iter=1, learning_rate=0.01)
    cnn.init(in_dim=i_ar([8]), in_nb_ch=1, out_dim=3, comp_meth="C_BLAS", no_logo=1)
    cnn.create_dataset("TRAIN", 4, np.zeros((4, 8)), np.zeros((4, 3)), silent=1)
    cnn.dense(4, activation="SMAX")
    with pytest.raises(ValueError, match="out_dim=3"):
        cnn.train(nb_iter=1, learning_rate=0.01, control_interv=0)
    cnn.init(in_dim=i_ar([8]), in_nb_ch=1, out_dim=3, comp_meth="C_BLAS", no_logo=1)
    cnn.create_dataset("TRAIN", 4, np.full((4, 8), 1e30), np.zeros((4, 3)), silent=1)
    cnn.dense(3, activation="LIN", init_fct="normal", init_scaling=1e10)
    from cianna.train import DivergenceError

    with pytest.raises(DivergenceError):
        cnn.train(nb_iter=1, learning_rate=1e10, control_interv=0, silent=1)


def test_sgd_mode_and_frozen_layers():
    small_net(b_size=1, n=8)
    net = cnn.get_network()
    w0 = net.layers[0].weight.detach().clone()
    w2 = net.layers[2].weight.detach().clone()
    cnn.set_frozen_layers(i_ar([1, 0, 0]))
    cnn.train(nb_iter=2, learning_rate=0.01, control_interv=0, silent=1)
    assert torch.equal(net.layers[0].weight, w0)
    assert not torch.equal(net.layers[2].weight, w2)
    with pytest.raises(IndexError):
        cnn.set_frozen_layers(i_ar([0, 0, 0, 0, 0]))


def test_forward_files_text_binary_and_mc_layout(capsys):
    x, y = small_net(b_size=4, n=10, drop=0.5)
    cnn.train(nb_iter=2, learning_rate=0.01, control_interv=0, silent=1)
    capsys.readouterr()
    cnn.forward()
    assert "Average forward perf" in capsys.readouterr().out
    txt = read_forward_file("fwd_res/net0_0002.dat", binary=False)
    assert txt.shape == (10, 4) and np.all(txt[:, -1] == 0)  # 3 softmax outputs + trailing pivot
    np.testing.assert_allclose(txt[:, :3].sum(1), 1.0, atol=1e-5)
    expected = cnn.get_network().predict(x).mean
    np.testing.assert_allclose(txt[:, :3], expected, rtol=1e-5, atol=1e-6)
    cnn.forward(saving=2, repeat=3, drop_mode="AVG_MODEL", no_error=1, silent=1)
    avg = read_forward_file("fwd_res/net0_0002.dat", binary=True, shape=(-1, 4))
    assert avg.shape == (30, 4)  # batches (4, 4, 2), each repeated 3 times: batch-major, repetition, example
    np.testing.assert_array_equal(avg[0:4], avg[4:8])
    np.testing.assert_array_equal(avg[8:12], avg[0:4])
    np.testing.assert_allclose(avg[12:16], txt[4:8], rtol=1e-5)
    np.testing.assert_allclose(avg[24:26], txt[8:10], rtol=1e-5)
    np.testing.assert_array_equal(avg[26:28], avg[24:26])
    cnn.forward(saving=2, repeat=3, drop_mode="MC_MODEL", no_error=1, silent=1)
    mc = read_forward_file("fwd_res/net0_0002.dat", binary=True, shape=(-1, 4))
    assert mc.shape == (30, 4)
    assert not np.allclose(mc[0:4], mc[4:8])  # masks re-sampled per repetition
    with pytest.raises(ValueError, match="drop_mode"):
        cnn.forward(drop_mode="BAYES")


def test_error_txt_not_divided_by_repeat_quirk14():
    small_net(b_size=4, n=8)
    cnn.forward(saving=0, silent=0)
    cnn.forward(saving=0, repeat=3)
    single, tripled = [float(line.split()[1]) for line in Path("error.txt").read_text().splitlines()]
    assert tripled == pytest.approx(3 * single, rel=1e-5)
    cnn.set_compat_switches(error_not_divided_by_repeat=False)
    cnn.forward(saving=0, repeat=3)
    assert float(Path("error.txt").read_text().splitlines()[-1].split()[1]) == pytest.approx(single, rel=1e-5)
    cnn.forward(saving=0, no_error=2)  # printed, not logged
    assert len(Path("error.txt").read_text().splitlines()) == 3


def test_save_load_roundtrip_multiple_networks_and_partial_load():
    x, _ = small_net(network=0)
    cnn.train(nb_iter=2, learning_rate=0.01, control_interv=0, silent=1)
    cnn.save("model/net_txt.dat")  # directory auto-created; text by default
    cnn.save("model/net_bin.dat", bin=1)
    ref = cnn.get_network(0).predict(x).mean
    for i, (name, b) in enumerate([("net_txt.dat", 0), ("net_bin.dat", 1)], start=1):
        cnn.init(in_dim=i_ar([8, 8]), in_nb_ch=1, out_dim=3, b_size=4, comp_meth="C_BLAS", no_logo=1, network=i)
        cnn.load("model/" + name, 7, network=i, bin=b)
        out = cnn.get_network(i).predict(x).mean
        np.testing.assert_allclose(out, ref, rtol=1e-4 if b == 0 else 1e-6, atol=1e-6)
        cnn.create_dataset("TEST", 4, x, np.zeros((4, 3)), network=i, silent=1)
        cnn.forward(network=i, saving=2, no_error=1, silent=1)
        assert Path(f"fwd_res/net{i}_0007.dat").exists()  # iteration set by load()
    cnn.init(in_dim=i_ar([8, 8]), in_nb_ch=1, out_dim=2, comp_meth="C_BLAS", no_logo=1, network=3)
    cnn.load("model/net_bin.dat", 0, network=3, nb_layers=3, bin=1)
    assert cnn.dense(2, activation="SMAX", network=3) == 3
    cnn.init(in_dim=i_ar([8, 8]), in_nb_ch=2, out_dim=3, comp_meth="C_BLAS", no_logo=1, network=4)
    with pytest.raises(ValueError, match="input channels"):
        cnn.load("model/net_bin.dat", 0, network=4, bin=1)
    cnn.init(in_dim=i_ar([8, 8]), in_nb_ch=1, out_dim=3, comp_meth="C_BLAS", no_logo=1, network=5)
    with pytest.raises(ValueError):
        cnn.load("model/net_txt.dat", 0, network=5, bin=1)  # wrong format flag: clear error


def test_forward_reproduces_original_cianna_outputs():
    """The original's MNIST-like save loaded through the interface reproduces its forward file."""
    x = np.load(REF / "mnist_tiny_input.npy")
    cnn.init(in_dim=i_ar([28, 28]), in_nb_ch=1, out_dim=10, b_size=16, comp_meth="C_BLAS", no_logo=1)
    cnn.load(str(REF / "mnist_tiny_bin.dat"), 2, bin=1)
    cnn.create_dataset("TEST", x.shape[0], x, np.zeros((x.shape[0], 10), np.float32), silent=1)
    cnn.forward(saving=2, no_error=1, repeat=1, drop_mode="AVG_MODEL", silent=1)
    ours = Path("fwd_res/net0_0002.dat").read_bytes()
    ref = read_forward_file(REF / "mnist_tiny_fwd_bin.dat", shape=(64, 11))
    got = read_forward_file("fwd_res/net0_0002.dat", shape=(64, 11))
    assert len(ours) == (REF / "mnist_tiny_fwd_bin.dat").stat().st_size
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)


def test_yolo_load_forward_matches_original():
    x = np.load(REF / "yolo_tiny_input.npy")[:4]
    cnn.init(in_dim=i_ar([256, 256]), in_nb_ch=1, out_dim=57, b_size=4, comp_meth="C_BLAS", no_logo=1)
    with pytest.warns(UserWarning, match="not given"):
        assert cnn.set_yolo_params(raw_output=0) == 0
    cnn.load(str(REF / "yolo_tiny_bin.dat"), 2, bin=1)
    cnn.create_dataset("TEST", 4, x, np.zeros((4, 57), np.float32), silent=1)
    cnn.forward(saving=2, no_error=1, silent=1)
    ref = read_forward_file(REF / "yolo_tiny_fwd_bin.dat", shape=(8, -1))[:4]
    got = read_forward_file("fwd_res/net0_0002.dat", shape=(4, -1))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_yolo_params_network0_quirk15_and_tiny_yolo_training():
    cnn.init(in_dim=i_ar([16, 16]), in_nb_ch=1, out_dim=1 + 2 * 7, b_size=2, comp_meth="C_BLAS", no_logo=1)
    cnn.init(in_dim=i_ar([8]), in_nb_ch=1, out_dim=1, comp_meth="C_BLAS", no_logo=1)  # network 1 is "last"
    n_filters = cnn.set_yolo_params(nb_box=2, max_nb_obj_per_image=2, prior_size=np.array([[4, 8], [4, 8]]),
                                    IoU_type="DIoU", prior_dist_type="OFFSET", error_type="natural",
                                    error_scales=cnn.set_error_scales(position=4),
                                    slopes_and_maxes=cnn.set_slopes_and_maxes(size=cnn.set_sm_single(0.5)),
                                    IoU_limits=cnn.set_IoU_limits(good_IoU_lim=0.6),
                                    fit_parts=cnn.set_fit_parts(objectness=0), rand_startup=0)
    assert n_filters == 16
    from cianna.compat.state import registry

    assert registry.networks[0].yolo_params is not None and registry.networks[1].yolo_params is None
    with pytest.raises(ValueError, match="already"):
        cnn.set_yolo_params(nb_box=1, prior_size=np.array([[4], [4]]), IoU_type="IoU", prior_dist_type="SIZE",
                            error_type="natural")
    cnn.conv(i_ar([3, 3]), 4, padding=i_ar([1, 1]), network=0)
    cnn.pool(network=0)
    cnn.conv(i_ar([2, 2]), 8, stride=i_ar([2, 2]), network=0)
    with pytest.raises(ValueError, match="nb_filters"):
        cnn.conv(i_ar([1, 1]), 10, activation="YOLO", network=0)
    cnn.conv(i_ar([1, 1]), n_filters, activation=cnn.yolo(), network=0)
    act = cnn.get_network(0).layers[-1].activation
    cfg = act.yolo_config
    assert cfg.error_scales.position == 4 and cfg.error_scales.size == 2  # sentinel keeps default
    assert cfg.slopes_and_maxes.size.slope == 0.5 and cfg.slopes_and_maxes.size.max == 1.6
    assert cfg.iou_limits().good_IoU_lim == pytest.approx(0.6) and cfg.fit_parts.objectness == 0
    rows = np.zeros((4, 15), np.float32)
    rows[:, 0] = 1
    rows[:, 1:8] = [1, 2, 3, 0, 9, 8, 1]  # class, xmin, ymin, zmin, xmax, ymax, zmax
    x = np.random.default_rng(0).random((4, 256), dtype=np.float32)
    for name in ("TRAIN", "VALID", "TEST"):
        cnn.create_dataset(name, 4, x, rows, network=0, silent=1)
    cnn.train(nb_iter=2, learning_rate=1e-3, network=0, silent=1)
    cnn.forward(network=0, saving=1, silent=0)
    text = Path("fwd_res/net0_0002.dat").read_text().splitlines()
    assert len(text) == 1 and len(text[0].split()) == 4 * 16 * 4 * 4  # quirk 13: one line
    err = Path("error.txt").read_text().splitlines()
    assert len(err[-1].split()) == 8  # iteration, loss, six YOLO parts
    # save / reload the YOLO network into another id (bare set_yolo_params: the file gives the layout)
    cnn.save("yolo.dat", network=0, bin=1)
    cnn.forward(network=0, saving=2, no_error=1, silent=1)
    before = read_forward_file("fwd_res/net0_0002.dat")
    cnn.init(in_dim=i_ar([16, 16]), in_nb_ch=1, out_dim=15, b_size=2, comp_meth="C_BLAS", no_logo=1, network=2)
    with pytest.warns(UserWarning):
        cnn.set_yolo_params(network=2)
    cnn.load("yolo.dat", 2, network=2, bin=1)
    cfg2 = cnn.get_network(2).layers[-1].activation.yolo_config
    assert cfg2.nb_box == 2 and cfg2.priors[:2] == [[4.0, 8.0], [4.0, 8.0]]
    assert cfg2.slopes_and_maxes.size.slope == 0.5
    cnn.create_dataset("TEST", 4, x, rows, network=2, silent=1)
    cnn.forward(network=2, saving=2, no_error=1, silent=1)
    np.testing.assert_allclose(read_forward_file("fwd_res/net2_0002.dat"), before, rtol=1e-6, atol=1e-6)


def test_perf_eval_and_print_arch_tex(capsys, monkeypatch):
    small_net(drop=0.2)
    monkeypatch.setenv("PATH", "")  # no pdflatex: only the .tex is written
    cnn.perf_eval()
    out = capsys.readouterr().out
    assert "total weights: " in out and re.search(r"^\s+3\s+dense", out, re.M)
    cnn.print_arch_tex("arch/", "net", activation=1, dropout=1, param_count=1)
    tex = Path("arch/net.tex").read_text()
    assert tex.count("\\\\") == 1 + 1 + 4  # header, input row, 4 layers
    assert "RELU\\_S800.00\\_L0.05" in tex and "Conv" in tex and "0.2" in tex
    assert not Path("arch/net.pdf").exists()


def test_learning_rate_decay_in_control_lines(capsys):
    small_net()
    cnn.train(nb_iter=3, learning_rate=0.1, end_learning_rate=0.01, lr_decay=0.5, momentum=0.5,
              weight_decay=1e-4, control_interv=1, silent=2)
    lrs = [float(v) for v in re.findall(r"Learning rate: ([0-9.e-]+)", capsys.readouterr().out)]
    expected = [0.01 + 0.09 * np.exp(-0.5 * i) for i in range(3)]  # iteration counter before the increment
    np.testing.assert_allclose(lrs, expected, rtol=1e-4)


def test_3d_and_1d_networks():
    cnn.init(in_dim=i_ar([6, 5, 4]), in_nb_ch=2, out_dim=3, b_size=2, comp_meth="C_BLAS", no_logo=1)
    cnn.conv(i_ar([3, 3, 3]), 4, padding=i_ar([1, 1, 1]))
    cnn.pool(p_type="AVG")
    cnn.dense(3, activation="LOGI")
    net = cnn.get_network()
    assert net.input_shape == (2, 4, 5, 6) and net.layers[0].out_shape == (4, 4, 5, 6)
    assert net.layers[1].out_shape == (4, 2, 2, 3) and net.layers[1].full_window_avg_grad
    x = np.random.default_rng(0).random((4, 240), dtype=np.float32)
    cnn.create_dataset("TRAIN", 4, x, np.full((4, 3), 0.5, np.float32), silent=1)
    cnn.create_dataset("TEST", 4, x, np.full((4, 3), 0.5, np.float32), silent=1)
    cnn.train(nb_iter=1, learning_rate=0.01, control_interv=0, silent=1)
    cnn.forward(saving=2, silent=1)
    assert read_forward_file("fwd_res/net0_0001.dat", shape=(4, 4)).shape == (4, 4)
    cnn.init(in_dim=i_ar([16]), in_nb_ch=3, out_dim=2 * 8, comp_meth="C_BLAS", no_logo=1)
    cnn.conv(i_ar([5]), 4, stride=i_ar([2]), padding=i_ar([2]))
    cnn.conv(i_ar([1]), 2, activation="LIN")
    assert cnn.get_network().output_shape == (2, 8)
    with pytest.raises(ValueError, match="entries beyond"):
        cnn.conv(i_ar([3, 3]), 2)
    x = np.random.default_rng(0).random((2, 48), dtype=np.float32)
    cnn.create_dataset("TEST", 2, x, np.zeros((2, 16), np.float32), silent=1)
    cnn.forward(saving=1, silent=1)
    assert read_forward_file("fwd_res/net1_0000.dat", binary=False).shape == (2, 16)  # C x W per line


def test_double_buffer_augmentation_pattern_with_a_thread():
    """The pattern of the large CIANNA examples: build TRAIN_buf in a thread while training, then swap."""
    import threading

    from cianna.compat.state import registry

    small_net(b_size=4, n=8, valid=False)
    rng = np.random.default_rng(3)
    sizes = []

    def refill(n):
        if "TRAIN_buf" in registry.networks[0].datasets:
            cnn.delete_dataset("TRAIN_buf", silent=1)
        cnn.create_dataset("TRAIN_buf", n, rng.random((n, 64), dtype=np.float32),
                           np.eye(3, dtype=np.float32)[np.arange(n) % 3], silent=1)

    refill(12)
    for it in range(3):
        cnn.swap_data_buffers("TRAIN")
        t = threading.Thread(target=refill, args=(12 + 4 * (it + 1),))
        t.start()
        cnn.train(nb_iter=1, learning_rate=0.01, shuffle_every=0, control_interv=0, silent=1)
        t.join()
        sizes.append(len(registry.networks[0].datasets["TRAIN"]))
    assert sizes == [12, 16, 20]
    assert registry.networks[0].iteration == 3
