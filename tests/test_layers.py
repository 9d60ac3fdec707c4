"""Each layer's forward against an independent numpy reference (1D, 2D, 3D) and autograd gradchecks."""
import itertools

import numpy as np
import pytest
import torch

from cianna.nn import Network
from cianna.nn.activations import Logistic, Relu, Softmax, parse_activation
from cianna.nn.conv import Conv, insert_zeros
from cianna.nn.dense import Dense
from cianna.nn.norm import LRN, GroupNorm
from cianna.nn.pool import Pool

RNG = np.random.default_rng(1)
SHAPES = {1: (2, 11), 2: (2, 9, 10), 3: (2, 6, 7, 5)}
GRAD_SHAPES = {1: (2, 7), 2: (2, 5, 4), 3: (2, 4, 3, 5)}  # small: numerical Jacobians scale with the size


# --------------------------------------------------------------------------- numpy references
def np_conv(x, w, b, stride, pad, int_pad):
    """Cross-correlation by explicit window loops on the CIANNA virtual input."""
    n, c = x.shape[:2]
    spatial = x.shape[2:]
    virt = [(s - 1) * (ip + 1) + 1 + 2 * p for s, ip, p in zip(spatial, int_pad, pad)]
    v = np.zeros((n, c, *virt))
    idx = (slice(None), slice(None)) + tuple(slice(p, p + (s - 1) * (ip + 1) + 1, ip + 1)
                                             for s, ip, p in zip(spatial, int_pad, pad))
    v[idx] = x
    k = w.shape[2:]
    out_sp = [(vs - kk) // st + 1 for vs, kk, st in zip(virt, k, stride)]
    out = np.zeros((n, w.shape[0], *out_sp))
    for pos in itertools.product(*[range(o) for o in out_sp]):
        win = v[(slice(None), slice(None)) + tuple(slice(p * st, p * st + kk) for p, st, kk in zip(pos, stride, k))]
        out[(slice(None), slice(None)) + pos] = np.tensordot(win, w, axes=(list(range(1, win.ndim)), list(range(1, w.ndim)))) + b
    return out


def np_pool(x, k, stride, pad, kind):
    """Pooling over valid (non-padded) positions; an all-padding window gives 0."""
    spatial = x.shape[2:]
    out_sp = [(s + 2 * p - kk) // st + 1 for s, kk, st, p in zip(spatial, k, stride, pad)]
    out = np.zeros((*x.shape[:2], *out_sp))
    for pos in itertools.product(*[range(o) for o in out_sp]):
        sl = []
        for p, st, kk, pd, s in zip(pos, stride, k, pad, spatial):
            lo, hi = p * st - pd, p * st - pd + kk
            sl.append(slice(max(lo, 0), max(min(hi, s), 0)))
        win = x[(slice(None), slice(None)) + tuple(sl)].reshape(*x.shape[:2], -1)
        if win.shape[-1] == 0:
            continue
        out[(slice(None), slice(None)) + pos] = win.max(-1) if kind == "MAX" else win.mean(-1)
    return out


def np_relu(x, s=800.0, leak=0.05):
    return np.where(x <= 0, leak * x, np.where(x > s, s + (x - s) * leak, x))


def np_logi(x, s=6.0, beta=1.0):
    return 1.0 / (1.0 + np.exp(np.minimum(-beta * x, s)))


# --------------------------------------------------------------------------- conv
@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("stride,pad,int_pad", [(1, 0, 0), (2, 1, 0), (1, 1, 1), (2, 2, 1)])
def test_conv_matches_numpy(ndim, stride, pad, int_pad):
    in_shape = SHAPES[ndim]
    k = 3
    layer = Conv(in_shape, 4, k, stride, pad, int_pad, activation="LIN", bias_value=0.7)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias_weight.normal_()
    x = RNG.normal(size=(3, *in_shape))
    got = layer(torch.tensor(x, dtype=torch.float32)).detach().numpy()
    ref = np_conv(x, layer.weight.detach().double().numpy(), layer.bias_weight.detach().double().numpy() * 0.7,
                  (stride,) * ndim, (pad,) * ndim, (int_pad,) * ndim)
    assert got.shape == ref.shape == (3, *layer.out_shape)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_internal_padding_is_transposed_conv():
    """int_pad = s−1 equals ConvTranspose(stride s, padding f−1−pad) with the flipped, transposed kernel."""
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    layer = Conv((3, 5, 6), 4, 3, 1, 2, 1, activation="LIN", bias_value=0.0).double()
    with torch.no_grad():
        layer.weight.normal_()
    ref = torch.nn.functional.conv_transpose2d(x, layer.weight.flip(2, 3).transpose(0, 1), stride=2, padding=0)
    torch.testing.assert_close(layer(x), ref)


def test_insert_zeros_layout():
    x = torch.arange(1.0, 4.0).reshape(1, 1, 3)
    assert insert_zeros(x, (2,)).flatten().tolist() == [1, 0, 0, 2, 0, 0, 3]


def test_conv_rejects_stride_larger_than_kernel():
    with pytest.raises(ValueError, match="stride"):
        Conv((1, 8, 8), 2, 2, 3)


# --------------------------------------------------------------------------- pool
@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("kind", ["MAX", "AVG"])
@pytest.mark.parametrize("k,stride,pad", [(2, 2, 0), (3, 2, 1), (3, 1, 0), (2, 2, 2)])
def test_pool_matches_numpy(ndim, kind, k, stride, pad):
    in_shape = SHAPES[ndim]
    layer = Pool(in_shape, k, stride, pad, kind)
    x = RNG.normal(size=(2, *in_shape))
    got = layer(torch.tensor(x, dtype=torch.float32)).numpy()
    ref = np_pool(x, (k,) * ndim, (stride,) * ndim, (pad,) * ndim, kind)
    assert got.shape == ref.shape == (2, *layer.out_shape)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_global_pool():
    x = torch.randn(2, 3, 4, 5)
    layer = Pool((3, 4, 5), global_pool=True, pool_type="AVG")
    assert layer.out_shape == (3, 1, 1)
    torch.testing.assert_close(layer(x)[:, :, 0, 0], x.mean(dim=(2, 3)))


def test_avg_pool_full_window_gradient_quirk():
    x = torch.randn(1, 1, 4, requires_grad=True)
    Pool((1, 4), 2, 2, 1, "AVG", full_window_avg_grad=True)(x).sum().backward()
    # every input pixel belongs to one window of volume 2: quirk divides by 2 even at the padded border
    torch.testing.assert_close(x.grad, torch.full_like(x, 0.5))
    x.grad = None
    Pool((1, 4), 2, 2, 1, "AVG")(x).sum().backward()
    assert x.grad[0, 0, 0] == 1.0 and x.grad[0, 0, 1] == 0.5


# --------------------------------------------------------------------------- dense
def test_dense_matches_numpy():
    layer = Dense((3, 4, 5), 7, activation="LIN", bias_value=0.5)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias_weight.normal_()
    x = RNG.normal(size=(6, 3, 4, 5))
    ref = x.reshape(6, -1) @ layer.weight.detach().double().numpy().T + 0.5 * layer.bias_weight.detach().double().numpy()
    np.testing.assert_allclose(layer(torch.tensor(x, dtype=torch.float32)).detach().numpy(), ref, rtol=1e-4, atol=1e-4)


def test_dense_pivot_zeroing_switch():
    net = Network((5,), seed=0).dense(4, activation="RELU").dense(3, activation="LIN").dense(2, activation="LIN")
    assert [layer.bias_input_scale for layer in net.layers] == [1.0, 1.0, 1.0]
    net.set_quirks(dense_pivot_zeroing=True)
    # after RELU the pivot is zeroed, and a linear layer passes the zero pivot on
    assert [layer.bias_input_scale for layer in net.layers] == [1.0, 0.0, 0.0]


# --------------------------------------------------------------------------- norms
@pytest.mark.parametrize("channels,group_size,set_off", [(8, 4, 0), (8, 2, 1), (6, 4, 0), (6, 4, 1), (4, 4, 1)])
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_group_norm_matches_numpy(channels, group_size, set_off, ndim):
    in_shape = (channels, *SHAPES[ndim][1:])
    layer = GroupNorm(in_shape, group_size, set_off)
    with torch.no_grad():
        layer.gamma.uniform_(0.5, 2.0)
        layer.beta.normal_()
    x = RNG.normal(size=(3, *in_shape))
    ref = x.copy()
    g, b = layer.gamma.detach().double().numpy(), layer.beta.detach().double().numpy()
    for gi in range(layer.nb_group - set_off):
        part = x[:, gi * group_size:(gi + 1) * group_size]
        axes = tuple(range(1, part.ndim))
        mu, var = part.mean(axis=axes, keepdims=True), part.var(axis=axes, keepdims=True)
        ref[:, gi * group_size:(gi + 1) * group_size] = g[gi] * (part - mu) / np.sqrt(var + 1e-3) + b[gi]
    got = layer(torch.tensor(x, dtype=torch.float32)).detach().numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("r", [3, 5, 4])
def test_lrn_matches_numpy(r):
    x = RNG.normal(size=(2, 7, 3, 4))
    layer = LRN((7, 3, 4), r, k=1.5, alpha=0.7, beta=0.6)
    ref = np.empty_like(x)
    for c in range(7):
        lo, hi = max(0, c - r // 2), min(7, c + r // 2 + 1)
        s = 1.5 + 0.7 * (x[:, lo:hi] ** 2).sum(axis=1) / r
        ref[:, c] = x[:, c] / s ** 0.6
    np.testing.assert_allclose(layer(torch.tensor(x, dtype=torch.float32)).numpy(), ref, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- activations
def test_relu_matches_numpy_including_saturation():
    x = np.array([-50.0, -1.0, 0.0, 0.5, 10.0, 799.0, 801.0, 2000.0])
    got = Relu()(torch.tensor(x)).numpy()
    np.testing.assert_allclose(got, np_relu(x))
    got2 = parse_activation("RELU_S2.00_L0.10")(torch.tensor(x)).numpy()
    np.testing.assert_allclose(got2, np_relu(x, 2.0, 0.1))


def test_inference_bias_cache_follows_weight_changes():
    """Without autograd the effective bias is cached; in-place updates, bias_value and dtype changes renew it."""
    layer = Dense((5,), 3, activation="LIN", bias_value=0.5)
    x = torch.zeros(2, 5)
    with torch.no_grad():
        layer.bias_weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        np.testing.assert_allclose(layer(x)[0].numpy(), [0.5, 1.0, 1.5])
        layer.bias_weight.add_(1.0)  # optimizer-style in-place update
        np.testing.assert_allclose(layer(x)[0].numpy(), [1.0, 1.5, 2.0])
        layer.bias_value = 2.0
        np.testing.assert_allclose(layer(x)[0].numpy(), [4.0, 6.0, 8.0])
        layer.double()
        assert layer(x.double()).dtype == torch.float64
        np.testing.assert_allclose(layer(x.double())[0].numpy(), [4.0, 6.0, 8.0])
    # with autograd the bias weight receives its gradient (times the bias input)
    layer(x.double()).sum().backward()
    np.testing.assert_allclose(layer.bias_weight.grad.numpy(), [4.0, 4.0, 4.0])


def test_inference_relu_in_place_matches_and_spares_the_input():
    """Without autograd the RELU of a layer runs in place on its fresh pre-activation: same values (saturated
    branch included), the layer input untouched, also for a layer whose linear op returns its input."""
    x = torch.tensor([[-50.0, -1.0, 0.0, 0.5, 10.0, 799.0, 801.0, 2000.0]])
    r = Relu()
    np.testing.assert_array_equal(r.forward_inplace(x.clone()).numpy(), r(x).numpy())
    layer = Dense((8,), 8, activation="RELU", bias_value=0.0)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(8) * 3.0)
        ref = r(x * 3.0)
        np.testing.assert_array_equal(layer(x).numpy(), ref.numpy())
    # a linear op that returns its input (identity norm): the activation must not overwrite the caller's tensor
    gn = GroupNorm((4, 3), group_size=2, activation="RELU")
    gn.linear = lambda t: t
    inp = torch.tensor([[[-1.0, 2.0, 900.0]] * 4])
    keep = inp.clone()
    with torch.no_grad():
        out = gn(inp)
    assert torch.equal(inp, keep)
    np.testing.assert_array_equal(out.numpy(), r(keep).numpy())


def test_relu_gradient_in_all_regions():
    x = torch.tensor([-3.0, 1.0, 5.0], dtype=torch.float64, requires_grad=True)
    Relu(saturation=4.0, leaking=0.1)(x).sum().backward()
    assert x.grad.tolist() == pytest.approx([0.1, 1.0, 0.1])


def test_logistic_clamp_and_custom_gradient():
    x = torch.tensor([-20.0, -1.0, 0.0, 3.0], dtype=torch.float64, requires_grad=True)
    act = Logistic(saturation=6.0, beta=2.0)
    y = act(x)
    np.testing.assert_allclose(y.detach().numpy(), np_logi(x.detach().numpy(), 6.0, 2.0))
    y.sum().backward()
    # CIANNA keeps beta*y*(1-y) even where the clamp is active (quirk 19, reproduced)
    yd = y.detach()
    torch.testing.assert_close(x.grad, 2.0 * yd * (1 - yd))
    assert x.grad[0] > 0


def test_softmax_dense_rows_and_whole_conv_map():
    dense = torch.randn(3, 5)
    torch.testing.assert_close(Softmax()(dense), torch.softmax(dense, 1))
    maps = torch.randn(2, 3, 4, 4)
    out = Softmax()(maps)
    torch.testing.assert_close(out.sum(dim=(1, 2, 3)), torch.ones(2))


def test_activation_strings_round_trip():
    for text in ["LIN", "RELU_S800.00_L0.05", "RELU_S10.00_L0.00", "LOGI_S6.00_B1.00", "SMAX"]:
        assert parse_activation(text).to_string() == text
    assert parse_activation("LINEAR").name == "LIN"
    assert parse_activation("softmax").name == "SMAX"


# --------------------------------------------------------------------------- dropout
def test_dropout_non_inverted_and_modes():
    net = Network((200,), seed=3).dense(300, activation="LIN", drop_rate=0.5)
    layer = net.layers[0]
    x = torch.randn(4, 200)
    pre = layer.linear(x).detach()
    net.train()
    out = net(x).detach()
    kept = out != 0
    torch.testing.assert_close(out[kept], pre[kept])  # kept values are not rescaled
    assert 0.4 < kept.float().mean() < 0.6
    net.eval()
    torch.testing.assert_close(net(x), pre * 0.5)  # AVG_MODEL: weight scaling
    net.drop_mode = "MC_MODEL"
    a, b = net(x), net(x)
    assert not torch.equal(a, b)
    assert set(torch.unique((a != 0).float()).tolist()) == {0.0, 1.0}


def test_mc_prediction_reruns_only_the_tail():
    net = Network((1, 8, 8), seed=0).conv(4, 3, padding=1).pool(2).dense(16, drop_rate=0.3).dense(3, activation="SMAX")
    assert net.first_dropout_layer() == 2
    x = torch.rand(10, 1, 8, 8)
    res = net.predict(x, drop_mode="MC_MODEL", repeat=6, return_samples=True)
    assert res.samples.shape == (6, 10, 3)
    assert res.std.max() > 0
    np.testing.assert_allclose(res.mean, res.samples.mean(0), rtol=1e-6)
    avg = net.predict(x)
    assert avg.samples is None and avg.mean.shape == (10, 3)


# --------------------------------------------------------------------------- gradchecks
def _gradcheck(layer, shape):
    layer = layer.double()
    for p in layer.parameters():
        with torch.no_grad():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(1, *shape, dtype=torch.float64, requires_grad=True)
    params = [p for p in layer.parameters()]
    assert torch.autograd.gradcheck(lambda inp, *ps: layer(inp), (x, *params), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_gradcheck_conv(ndim):
    layer = Conv(GRAD_SHAPES[ndim], 2, 3, 2, 1, 1, activation="LIN", bias_value=0.3)
    torch.nn.init.normal_(layer.weight)
    _gradcheck(layer, GRAD_SHAPES[ndim])


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("kind", ["MAX", "AVG"])
def test_gradcheck_pool(ndim, kind):
    _gradcheck(Pool(GRAD_SHAPES[ndim], 3, 2, 1, kind), GRAD_SHAPES[ndim])


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_gradcheck_norms(ndim):
    shape = (6, *GRAD_SHAPES[ndim][1:])
    _gradcheck(GroupNorm(shape, 4, 0), shape)
    _gradcheck(GroupNorm(shape, 2, 1), shape)
    _gradcheck(LRN(shape, 3), shape)


def test_gradcheck_dense_and_activations():
    layer = Dense((5,), 4, activation="RELU_S1.00_L0.05", bias_value=0.1)
    torch.nn.init.normal_(layer.weight)
    _gradcheck(layer, (5,))
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(Logistic(), (x,))
    assert torch.autograd.gradcheck(Softmax(), (x,))
