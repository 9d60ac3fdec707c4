"""Tests of cianna.compat.fileformat against the save files written by the original CIANNA V-1.0.

Reference files: tests/data/cianna_ref/ (see README.md there). What "byte-compatible" means here: the
original writes ``char[40]`` string fields with uninitialised bytes after the terminating NUL (the
checkpoint and the save of the same network differ only there). The writer pads with NUL bytes, so the
binary comparison is byte-exact everywhere except the bytes *after the NUL* of each ``char[40]`` field;
those offsets are derived independently in this file from the layout of framework.md §6.1, and the test
checks that the masked region is non-empty (the garbage really exists) and is all-zero in our output.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest

from cianna.compat.fileformat import (
    CiannaFile,
    CiannaFormatError,
    ConvRecord,
    DenseRecord,
    LrnRecord,
    NormRecord,
    PoolRecord,
    YoloRecord,
    detect_binary,
    propagate_shapes,
    read_cianna_file,
    read_forward_file,
    write_cianna_file,
    write_forward_file,
)

REF = Path(__file__).parent / "data" / "cianna_ref"
NETS = ("mnist", "conv3d", "yolo")
RELU = "RELU_S800.00_L0.05"


def ref(name: str) -> Path:
    return REF / name


_cache: dict = {}


def load(name: str, **kw) -> CiannaFile:
    """Read a reference file once per session (records are not mutated by the tests that use this)."""
    key = (name, tuple(sorted(kw.items())))
    if key not in _cache:
        _cache[key] = read_cianna_file(ref(name), **kw)
    return _cache[key]


def arrays(rec):
    """Numerical arrays of a record, by name."""
    out = {}
    for a in ("weights", "gamma", "beta"):
        if isinstance(getattr(rec, a, None), np.ndarray):
            out[a] = getattr(rec, a)
    if getattr(rec, "yolo", None) is not None:
        out["priors"] = rec.yolo.priors
        out["slopes"] = rec.yolo.slopes
    return out


def hyper(rec):
    """Hyper-parameters of a record (everything except arrays), as a dict."""
    d = {k: v for k, v in vars(rec).items() if not isinstance(v, (np.ndarray, YoloRecord))}
    d["kind"] = rec.kind
    if getattr(rec, "yolo", None) is not None:
        y = rec.yolo
        d["yolo"] = (y.nb_box, y.nb_class, y.nb_param, y.fit_dim, y.class_softmax)
    return d


def assert_same_file(a: CiannaFile, b: CiannaFile, *, rtol: float = 0.0):
    assert a.input_dims == b.input_dims and a.in_channels == b.in_channels
    assert len(a.layers) == len(b.layers)
    for i, (ra, rb) in enumerate(zip(a.layers, b.layers)):
        assert hyper(ra) == hyper(rb), f"layer {i}"
        aa, ab = arrays(ra), arrays(rb)
        assert aa.keys() == ab.keys()
        for k in aa:
            assert aa[k].dtype == np.float32 and ab[k].dtype == np.float32
            assert aa[k].shape == ab[k].shape, f"layer {i} {k}"
            if rtol == 0.0:
                np.testing.assert_array_equal(aa[k], ab[k], err_msg=f"layer {i} {k}")
            else:
                np.testing.assert_allclose(aa[k], ab[k], rtol=rtol, atol=1e-37, err_msg=f"layer {i} {k}")


# --------------------------------------------------------------------------------------------------------
# Reference files load, with the architecture described in the README
# --------------------------------------------------------------------------------------------------------

EXPECTED = {
    # kind, nb (filters/neurons), activation, drop_rate, weight shape
    "mnist": [
        ("conv", 8, RELU, 0.0, (8, 5 * 5 * 1 + 1)),
        ("pool", None, "LIN", 0.0, None),
        ("conv", 16, RELU, 0.0, (16, 5 * 5 * 8 + 1)),
        ("pool", None, "LIN", 0.0, None),
        ("dense", 256, RELU, 0.5, (7 * 7 * 16 + 1, 257)),
        ("dense", 128, RELU, 0.2, (257, 129)),
        ("dense", 10, "SMAX", 0.0, (129, 11)),
    ],
    "conv3d": [
        ("conv", 8, RELU, 0.0, (8, 27 + 1)),
        ("pool", None, "LIN", 0.0, None),
        ("conv", 16, RELU, 0.0, (16, 27 * 8 + 1)),
        ("pool", None, "LIN", 0.0, None),
        ("conv", 32, RELU, 0.0, (32, 27 * 16 + 1)),
        ("pool", None, "LIN", 0.0, None),
        ("dense", 64, RELU, 0.0, (4 * 4 * 4 * 32 + 1, 65)),
        ("dense", 10, "SMAX", 0.0, (65, 11)),
    ],
    "yolo": [
        ("conv", 8, RELU, 0.0, (8, 9 + 1)),
        ("conv", 16, RELU, 0.0, (16, 4 * 8 + 1)),
        ("conv", 16, RELU, 0.0, (16, 9 * 16 + 1)),
        ("conv", 32, RELU, 0.0, (32, 4 * 16 + 1)),
        ("conv", 32, RELU, 0.0, (32, 9 * 32 + 1)),
        ("conv", 64, RELU, 0.0, (64, 4 * 32 + 1)),
        ("conv", 64, RELU, 0.0, (64, 9 * 64 + 1)),
        ("conv", 128, RELU, 0.0, (128, 4 * 64 + 1)),
        ("conv", 128, RELU, 0.0, (128, 9 * 128 + 1)),
        ("norm", None, "LIN", None, None),
        ("conv", 32, "YOLO", 0.0, (32, 128 + 1)),
    ],
}
INPUT = {"mnist": ((28, 28, 1), 1), "conv3d": ((32, 32, 32), 1), "yolo": ((256, 256, 1), 1)}


@pytest.mark.parametrize("fmt", ["bin", "txt"])
@pytest.mark.parametrize("net", NETS)
def test_reference_save_loads_with_expected_architecture(net, fmt):
    cf = load(f"{net}_tiny_{fmt}.dat")
    assert (cf.input_dims, cf.in_channels) == INPUT[net]
    assert len(cf.layers) == len(EXPECTED[net])
    for i, (rec, (kind, nb, act, drop, wshape)) in enumerate(zip(cf.layers, EXPECTED[net])):
        assert rec.kind == kind, i
        assert rec.activation == act, i
        if drop is not None:
            assert rec.drop_rate == pytest.approx(drop, abs=1e-7), i
        if kind == "conv":
            assert rec.nb_filters == nb and rec.weights.shape == wshape, i
            assert rec.bias_value == pytest.approx(0.5 if act == "YOLO" else 0.1, rel=1e-6)
        elif kind == "dense":
            assert rec.nb_neurons == nb and rec.weights.shape == wshape, i
            assert rec.bias_value == pytest.approx(0.1, rel=1e-6)
        elif kind == "pool":
            assert rec.pool_type == "MAX" and rec.global_pool == 0
            assert rec.p_size == rec.stride == ((2, 2, 2) if net == "conv3d" else (2, 2, 1))
        elif kind == "norm":
            assert (rec.norm_type, rec.group_size, rec.set_off) == ("GN", 4, 0)
            assert rec.gamma.shape == rec.beta.shape == (128 // 4,)
        for a in arrays(rec).values():
            assert a.dtype == np.float32 and np.all(np.isfinite(a))
    # trained weights are not trivial
    assert np.std(cf.layers[0].weights) > 1e-3


def test_reference_conv_hyper_parameters():
    mn = load("mnist_tiny_bin.dat")
    c0, c2 = mn.layers[0], mn.layers[2]
    assert (c0.f_size, c0.stride, c0.padding, c0.int_padding) == ((5, 5, 1), (1, 1, 1), (2, 2, 0), (0, 0, 0))
    assert (c0.prev_size, c0.prev_depth) == ((28, 28, 1), 1)
    assert (c2.prev_size, c2.prev_depth) == ((14, 14, 1), 8)
    yo = load("yolo_tiny_bin.dat")
    strided = yo.layers[1]
    assert (strided.f_size, strided.stride, strided.padding) == ((2, 2, 1), (2, 2, 1), (0, 0, 0))
    shapes = yo.shapes()
    assert shapes[-1].size == (16, 16, 1) and shapes[-1].channels == 32
    c3 = load("conv3d_tiny_bin.dat")
    assert c3.layers[4].prev_size == (8, 8, 8) and c3.layers[4].padding == (1, 1, 1)
    assert [s.flat for s in c3.shapes()] == [32768, 8 * 32768, 8 * 4096, 16 * 4096, 16 * 512, 32 * 512,
                                             32 * 64, 64, 10]


@pytest.mark.parametrize("fmt", ["bin", "txt"])
def test_yolo_block_read_in_both_formats_including_text_slopes(fmt):
    """Quirk 12: the V-1.0 text reader skips the six slope lines; this reader must read them."""
    y = load(f"yolo_tiny_{fmt}.dat").layers[-1].yolo
    assert y is not None
    assert (y.nb_box, y.nb_class, y.nb_param, y.fit_dim, y.class_softmax) == (4, 0, 0, 2, 0)
    np.testing.assert_array_equal(y.priors, [[6, 12, 24, 48], [6, 12, 24, 48], [0, 0, 0, 0]])
    # README: position (0.5, 6, -6), size (0.5, 1.2, -1.2), probability (0.2, 6, -6), objectness (0.5, 6, -6);
    # classes and parameters keep the defaults (1, 6, -6) and (1, 1.2, -0.2) (yolo.md §4)
    np.testing.assert_allclose(y.slopes, [[0.5, 6, -6], [0.5, 1.2, -1.2], [0.2, 6, -6], [0.5, 6, -6],
                                          [1, 6, -6], [1, 1.2, -0.2]], rtol=1e-7)


def test_save_every_checkpoint_equals_save():
    cp = load("net0_s0002_mnist.dat")
    assert_same_file(cp, load("mnist_tiny_bin.dat"))


@pytest.mark.parametrize("name", ["mnist_tiny_bin.dat", "yolo_tiny_txt.dat", "net0_s0002_mnist.dat",
                                  "conv3d_tiny_txt.dat"])
def test_format_auto_detection(name):
    data = ref(name).read_bytes()
    assert detect_binary(data) == ("txt" not in name)
    assert_same_file(read_cianna_file(ref(name)), read_cianna_file(ref(name), binary="txt" not in name))


# --------------------------------------------------------------------------------------------------------
# Binary vs text, writers, round trips
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("net", NETS)
def test_binary_and_text_saves_hold_the_same_network(net):
    b, t = load(f"{net}_tiny_bin.dat"), load(f"{net}_tiny_txt.dat")
    # %g keeps 6 significant digits: relative error <= 5e-6 (+ float32 rounding of the decimal)
    assert_same_file(b, t, rtol=5.2e-6)
    # ... and the text values are exactly the %g rendering of the binary values
    for rb, rt in zip(b.layers, t.layers):
        for k, a in arrays(rb).items():
            expect = np.array(["%g" % v for v in a.reshape(-1).tolist()], dtype=np.float64).astype(np.float32)
            np.testing.assert_array_equal(arrays(rt)[k].reshape(-1), expect)


@pytest.mark.parametrize("net", NETS)
def test_text_writer_reproduces_reference_text_byte_for_byte(net, tmp_path):
    out = tmp_path / "net.dat"
    write_cianna_file(load(f"{net}_tiny_bin.dat"), out, binary=False)
    assert out.read_bytes() == ref(f"{net}_tiny_txt.dat").read_bytes()
    # the same from the text read (6-digit decimals survive float32)
    write_cianna_file(load(f"{net}_tiny_txt.dat"), out, binary=False)
    assert out.read_bytes() == ref(f"{net}_tiny_txt.dat").read_bytes()


def string_field_spans(cf: CiannaFile) -> list[tuple[int, int]]:
    """(start, end) byte spans of every char[40] field of the binary layout of ``cf`` (framework §6.1)."""
    spans, pos = [], 16
    for rec, shp in zip(cf.layers, cf.shapes()[:-1]):
        if isinstance(rec, ConvRecord):
            spans.append((pos + 1 + 17 * 4 + 8, pos + 1 + 17 * 4 + 8 + 40))
            pos += 1 + 17 * 4 + 8 + 40
            if rec.yolo is not None:
                pos += 5 * 4 + 3 * rec.yolo.nb_box * 4 + 18 * 4
            pos += rec.weights.size * 4
        elif isinstance(rec, PoolRecord):
            spans += [(pos + 45, pos + 85), (pos + 85, pos + 125)]
            pos += 125
        elif isinstance(rec, DenseRecord):
            spans.append((pos + 13, pos + 53))
            pos += 53 + rec.weights.size * 4
        elif isinstance(rec, NormRecord):
            spans += [(pos + 1, pos + 41), (pos + 49, pos + 89)]
            pos += 89 + 2 * 4 * -(-shp.channels // rec.group_size)
        elif isinstance(rec, LrnRecord):
            spans.append((pos + 17, pos + 57))
            pos += 57
    return spans, pos


def compare_binary_modulo_string_padding(ours: bytes, theirs: bytes, cf: CiannaFile) -> int:
    """Assert byte equality except after the NUL of char[40] fields; return the number of masked bytes."""
    spans, total = string_field_spans(cf)
    assert total == len(theirs) == len(ours)
    mask = np.zeros(len(theirs), dtype=bool)
    for s, e in spans:
        nul = theirs.index(b"\0", s, e)
        assert ours[s:nul + 1] == theirs[s:nul + 1]
        assert ours[nul + 1:e] == b"\0" * (e - nul - 1), "writer must pad strings with NUL bytes"
        mask[nul + 1:e] = True
    a = np.frombuffer(ours, np.uint8)
    b = np.frombuffer(theirs, np.uint8)
    diff = np.flatnonzero((a != b) & ~mask)
    assert diff.size == 0, f"{diff.size} differing bytes outside string padding, first at offset {diff[:5]}"
    return int(mask.sum())


@pytest.mark.parametrize("name", ["mnist_tiny_bin.dat", "conv3d_tiny_bin.dat", "yolo_tiny_bin.dat",
                                  "net0_s0002_mnist.dat"])
def test_binary_writer_reproduces_reference_bytes(name, tmp_path):
    theirs = ref(name).read_bytes()
    out = tmp_path / "net.dat"
    write_cianna_file(load(name), out, binary=True)
    ours = out.read_bytes()
    masked = compare_binary_modulo_string_padding(ours, theirs, load(name))
    # the original really leaves garbage there (otherwise the masking would hide nothing)
    assert masked > 0
    assert ours != theirs


def test_checkpoint_and_save_differ_only_in_string_padding():
    compare_binary_modulo_string_padding_pair(ref("net0_s0002_mnist.dat").read_bytes(),
                                              ref("mnist_tiny_bin.dat").read_bytes(), load("mnist_tiny_bin.dat"))


def compare_binary_modulo_string_padding_pair(a: bytes, b: bytes, cf: CiannaFile):
    spans, total = string_field_spans(cf)
    assert len(a) == len(b) == total
    mask = np.zeros(len(a), dtype=bool)
    for s, e in spans:
        nul = a.index(b"\0", s, e)
        assert b.index(b"\0", s, e) == nul
        mask[nul + 1:e] = True
    diff = (np.frombuffer(a, np.uint8) != np.frombuffer(b, np.uint8))
    assert diff.any() and not (diff & ~mask).any()


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("fmt", ["bin", "txt"])
def test_round_trip_write_then_read(net, fmt, tmp_path):
    src = load(f"{net}_tiny_{fmt}.dat")
    for binary in (True, False):
        out = tmp_path / f"rt_{binary}.dat"
        write_cianna_file(src, out, binary=binary)
        back = read_cianna_file(out)
        # exact, except binary-born weights written as text (%g: 6 significant digits); a value read from
        # text survives float32 and a second %g exactly
        assert_same_file(back, src, rtol=5.2e-6 if (fmt == "bin" and not binary) else 0.0)
        # second generation is byte-identical
        out2 = tmp_path / f"rt2_{binary}.dat"
        write_cianna_file(back, out2, binary=binary)
        assert out2.read_bytes() == out.read_bytes()


def test_partial_load_nb_layers():
    cf = read_cianna_file(ref("mnist_tiny_bin.dat"), nb_layers=5)
    assert [r.kind for r in cf.layers] == ["conv", "pool", "conv", "pool", "dense"]
    np.testing.assert_array_equal(cf.layers[4].weights, load("mnist_tiny_bin.dat").layers[4].weights)
    cf = read_cianna_file(ref("yolo_tiny_txt.dat"), nb_layers=2)
    assert len(cf.layers) == 2
    with pytest.raises(CiannaFormatError, match="only 7 layers"):
        read_cianna_file(ref("mnist_tiny_bin.dat"), nb_layers=8)


# --------------------------------------------------------------------------------------------------------
# A synthetic network exercising every layer type and option
# --------------------------------------------------------------------------------------------------------


def synthetic() -> CiannaFile:
    rng = np.random.default_rng(1)

    def w(*shape):
        return rng.normal(size=shape).astype(np.float32)

    layers = [
        # 3D input (12, 10, 6) x 2 channels; strided conv with int_padding (upsampling)
        ConvRecord(4, (3, 3, 2), (2, 1, 1), (1, 0, 1), (1, 0, 0), (12, 10, 6), 2, 0.25, 0.1,
                   "LOGI_S6.00_B1.00", w(4, 3 * 3 * 2 * 2 + 1)),
        # -> ((12 + 11 + 2 - 3)//2 + 1, (10 - 3) + 1, (6 + 2 - 2) + 1) = (12, 8, 7)
        LrnRecord(5, 1.0, 1e-4, 0.75, "LIN"),
        PoolRecord((3, 2, 2), (2, 2, 1), (1, 0, 0), 0, 0.0, "AVG", "RELU_S800.00_L0.00"),
        # -> ((12 + 2 - 3)//2 + 1, (8 - 2)//2 + 1, (7 - 2) + 1) = (6, 4, 6)
        NormRecord("GN", 3, 1, "LIN", w(2), w(2)),  # 4 channels, groups of 3 -> ceil = 2 groups
        DenseRecord(24, 0.0, 0.5, "LIN", w(6 * 4 * 6 * 4 + 1, 25)),
        # dense -> conv reshape: 24 = 2 x 3 x 1 x 4
        ConvRecord(10, (1, 1, 1), (1, 1, 1), (0, 0, 0), (0, 0, 0), (2, 3, 1), 4, 0.0, 0.5, "YOLO",
                   w(10, 5), YoloRecord(1, 2, 0, 3, 1, [[4.5], [3.0], [2.0]],
                                       np.arange(18, dtype=np.float32).reshape(6, 3) / 7)),
    ]
    return CiannaFile((12, 10, 6), 2, layers)


def test_synthetic_network_shapes():
    shapes = propagate_shapes(synthetic())
    assert [(s.size, s.channels) for s in shapes] == [
        ((12, 10, 6), 2), ((12, 8, 7), 4), ((12, 8, 7), 4), ((6, 4, 6), 4), ((6, 4, 6), 4), (None, 24),
        ((2, 3, 1), 10)]


@pytest.mark.parametrize("binary", [True, False])
def test_synthetic_network_round_trip(binary, tmp_path):
    cf = synthetic()
    out = tmp_path / "syn.dat"
    write_cianna_file(cf, out, binary=binary)
    back = read_cianna_file(out)
    assert_same_file(back, cf, rtol=0.0 if binary else 5.2e-6)
    assert back.layers[-1].yolo.class_softmax == 1 and back.layers[-1].yolo.fit_dim == 3
    assert back.layers[1].alpha == pytest.approx(1e-4) and back.layers[2].pool_type == "AVG"
    if not binary:
        text = out.read_text()
        assert "L 5 1.000000 0.000100 0.750000 LIN \n" in text
        assert "P3x2x2.2x2x1s1x0x0p0g_0.000000dAVG RELU_S800.00_L0.00 \n\n" in text
        assert "N GN S3_O1LIN \n" in text
        assert "C4f3x3x2.2x1x1s1x0x1p1x0x0ip12x10x6x2idim0.250000d0.100000bLOGI_S6.00_B1.00 \n" in text
        assert "\n1 2 0 3 1\n4.5 \n3 \n2 \n0 0.142857 0.285714 \n" in text


def test_global_pool_shape_and_round_trip(tmp_path):
    cf = CiannaFile((7, 5, 1), 3, [
        ConvRecord(2, (3, 3, 1), (1, 1, 1), (1, 1, 0), (0, 0, 0), (7, 5, 1), 3, 0, 0.1, "LIN",
                   np.ones((2, 28), np.float32)),
        PoolRecord((7, 5, 1), (7, 5, 1), (0, 0, 0), 1, 0, "AVG", "SMAX"),
        DenseRecord(3, 0, 0.1, "SMAX", np.zeros((3, 4), np.float32)),
    ])
    assert propagate_shapes(cf)[2] .size == (1, 1, 1)
    write_cianna_file(cf, tmp_path / "g.dat")
    assert read_cianna_file(tmp_path / "g.dat").layers[1].global_pool == 1


# --------------------------------------------------------------------------------------------------------
# Malformed files
# --------------------------------------------------------------------------------------------------------


def write_bytes(tmp_path, data: bytes, name="bad.dat") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def layer_offsets(cf: CiannaFile) -> list[int]:
    """Byte offset of the type code of every layer in the binary layout."""
    offs, pos = [], 16
    spans, _ = string_field_spans(cf)
    for rec, shp in zip(cf.layers, cf.shapes()[:-1]):
        offs.append(pos)
        size = {"pool": 125, "lrn": 57}.get(rec.kind)
        if rec.kind == "conv":
            size = 117 + rec.weights.size * 4 + (0 if rec.yolo is None else 92 + 12 * rec.yolo.nb_box)
        elif rec.kind == "dense":
            size = 53 + rec.weights.size * 4
        elif rec.kind == "norm":
            size = 89 + 8 * rec.gamma.size
        pos += size
    return offs


@pytest.mark.parametrize("cut_layer, where", [(0, 5), (0, 200), (2, 60), (4, 20000), (6, -3), (1, 100)])
def test_truncated_binary_names_file_and_layer(cut_layer, where, tmp_path):
    data = ref("mnist_tiny_bin.dat").read_bytes()
    cf = load("mnist_tiny_bin.dat")
    offs = layer_offsets(cf) + [len(data)]
    cut = offs[cut_layer] + where if where >= 0 else offs[cut_layer + 1] + where
    p = write_bytes(tmp_path, data[:cut])
    kind = cf.layers[cut_layer].kind
    with pytest.raises(CiannaFormatError, match="truncated") as ei:
        read_cianna_file(p)
    msg = str(ei.value)
    assert str(p) in msg and f"layer {cut_layer} ({kind})" in msg
    assert ei.value.layer_index == cut_layer and ei.value.layer_type == kind


def test_truncated_binary_header(tmp_path):
    p = write_bytes(tmp_path, ref("mnist_tiny_bin.dat").read_bytes()[:10])
    with pytest.raises(CiannaFormatError, match=r"truncated while reading header"):
        read_cianna_file(p, binary=True)
    p = write_bytes(tmp_path, ref("mnist_tiny_bin.dat").read_bytes()[:16])
    with pytest.raises(CiannaFormatError, match="no layer"):
        read_cianna_file(p, binary=True)


@pytest.mark.parametrize("header, msg", [((0, 28, 1, 1), "bad header"), ((28, 28, 1, -1), "bad header"),
                                         ((28, 27, 1, 1), "prev_size")])
def test_bad_binary_header(header, msg, tmp_path):
    data = bytearray(ref("mnist_tiny_bin.dat").read_bytes())
    data[:16] = struct.pack("<4i", *header)
    with pytest.raises(CiannaFormatError, match=msg):
        read_cianna_file(write_bytes(tmp_path, bytes(data)))


def test_unknown_layer_code(tmp_path):
    data = bytearray(ref("mnist_tiny_bin.dat").read_bytes())
    off = layer_offsets(load("mnist_tiny_bin.dat"))[3]
    assert data[off:off + 1] == b"P"
    data[off] = ord("X")
    p = write_bytes(tmp_path, bytes(data))
    with pytest.raises(CiannaFormatError, match=r"layer 3.*unknown layer type code b'X'") as ei:
        read_cianna_file(p)
    assert str(p) in str(ei.value) and f"byte offset {off}" in str(ei.value)


@pytest.mark.parametrize("tail, msg", [(b"\x00\x01\x02", "unknown layer type code"),
                                       (b"P\x02\x00", "truncated"),
                                       (b"D" + b"\xff" * 12 + b"LIN" + b"\0" * 37, "nb_neurons = -1"),
                                       (b"D" + b"\xff" * 60, "no terminating NUL")])
def test_binary_trailing_garbage(tail, msg, tmp_path):
    p = write_bytes(tmp_path, ref("yolo_tiny_bin.dat").read_bytes() + tail)
    with pytest.raises(CiannaFormatError, match=msg) as ei:
        read_cianna_file(p)
    assert "layer 11" in str(ei.value)


def conv_field_offset(net: str, layer: int, index: int) -> int:
    """Offset of the ``index``-th 4-byte field after the type code of a conv layer."""
    return layer_offsets(load(net))[layer] + 1 + 4 * index


@pytest.mark.parametrize("field, value, msg", [
    (16, struct.pack("<i", 3), "prev_depth = 3 but the previous layer outputs 8 channels"),   # prev_depth
    (0, struct.pack("<i", 0), "nb_filters = 0"),
    (4, struct.pack("<i", 0), "stride"),
    (17, struct.pack("<f", float("nan")), "dropout rate"),
    (17, struct.pack("<f", 1.5), "dropout rate"),
    (18, struct.pack("<f", float("inf")), "bias value"),
])
def test_corrupted_conv_fields(field, value, msg, tmp_path):
    data = bytearray(ref("mnist_tiny_bin.dat").read_bytes())
    off = conv_field_offset("mnist_tiny_bin.dat", 2, field)
    data[off:off + 4] = value
    with pytest.raises(CiannaFormatError, match=msg) as ei:
        read_cianna_file(write_bytes(tmp_path, bytes(data)))
    assert "layer 2 (conv)" in str(ei.value)


def test_string_field_without_nul_or_unknown_activation(tmp_path):
    data = bytearray(ref("mnist_tiny_bin.dat").read_bytes())
    s, e = string_field_spans(load("mnist_tiny_bin.dat"))[0][0]
    data[s:e] = b"A" * 40
    with pytest.raises(CiannaFormatError, match=r"layer 0 \(conv\).*no terminating NUL"):
        read_cianna_file(write_bytes(tmp_path, bytes(data)))
    data[s:s + 8] = b"SOFTMAX\0"
    with pytest.raises(CiannaFormatError, match="unknown activation 'SOFTMAX'"):
        read_cianna_file(write_bytes(tmp_path, bytes(data)))


def test_non_finite_weights_rejected_unless_allowed(tmp_path):
    data = bytearray(ref("mnist_tiny_bin.dat").read_bytes())
    off = layer_offsets(load("mnist_tiny_bin.dat"))[5] + 53 + 4 * 100
    data[off:off + 4] = struct.pack("<f", float("nan"))
    p = write_bytes(tmp_path, bytes(data))
    with pytest.raises(CiannaFormatError, match=r"layer 5 \(dense\).*1 non-finite"):
        read_cianna_file(p)
    cf = read_cianna_file(p, check_finite=False)
    assert np.isnan(cf.layers[5].weights.reshape(-1)[100])


def test_bad_yolo_block(tmp_path):
    data = bytearray(ref("yolo_tiny_bin.dat").read_bytes())
    off = layer_offsets(load("yolo_tiny_bin.dat"))[10] + 117
    assert struct.unpack("<5i", data[off:off + 20]) == (4, 0, 0, 2, 0)
    bad = bytearray(data)
    bad[off + 4:off + 8] = struct.pack("<i", 1)  # nb_class = 1 -> 36 filters expected
    with pytest.raises(CiannaFormatError, match=r"layer 10 \(conv\).*nb_box\*\(8\+nb_class\+nb_param\) = 36"):
        read_cianna_file(write_bytes(tmp_path, bytes(bad)))
    bad = bytearray(data)
    bad[off + 12:off + 16] = struct.pack("<i", 4)  # fit_dim 4
    with pytest.raises(CiannaFormatError, match="fit_dim = 4"):
        read_cianna_file(write_bytes(tmp_path, bytes(bad)))


def text_lines() -> list[str]:
    return ref("mnist_tiny_txt.dat").read_text().split("\n")


def test_truncated_text_names_file_and_layer(tmp_path):
    lines = text_lines()
    p = write_bytes(tmp_path, "\n".join(lines[:500]).encode())  # inside the first dense layer's rows
    with pytest.raises(CiannaFormatError, match="truncated") as ei:
        read_cianna_file(p)
    assert str(p) in str(ei.value) and "layer 4 (dense)" in str(ei.value)
    assert "expected 785 lines of 257 values" in str(ei.value)
    # cut in the middle of a line: that line has too few values
    text = ref("mnist_tiny_txt.dat").read_text()
    cut = text.index("P2x2x1", 100) - 30
    p = write_bytes(tmp_path, (text[:cut] + "\n" + text[text.index("P2x2x1", 100):]).encode())
    with pytest.raises(CiannaFormatError,
                       match=r"layer 0 \(conv\): line 10: .*line 8 of 8 has \d+ values, expected 26"):
        read_cianna_file(p)


def test_text_row_too_long_and_bad_number(tmp_path):
    lines = text_lines()
    bad = list(lines)
    bad[2] = bad[2] + "0.5 "
    with pytest.raises(CiannaFormatError, match=r"layer 0 \(conv\): line 3: .*line 1 of 8 has 27 values, expected 26"):
        read_cianna_file(write_bytes(tmp_path, "\n".join(bad).encode()))
    bad = list(lines)
    bad[40] = "1.2.3 " + " ".join(bad[40].split()[1:]) + " "
    with pytest.raises(CiannaFormatError, match=r"layer 4 \(dense\).*'1\.2\.3'"):
        read_cianna_file(write_bytes(tmp_path, "\n".join(bad).encode()))


@pytest.mark.parametrize("lineno, new, msg", [
    (0, "28x28x1", "bad header"),
    (0, "28x28x1x0", "bad header"),
    (1, "C8f5x5x1.1x1x1s2x2x0p0x0x0ip28x28x1x1idim0.000000d0.100000b", "malformed conv header"),
    (1, "C8f5x5x1.1x1x1s2x2x0p0x0x0ip28x28x1x2idim0.000000d0.100000bRELU_S800.00_L0.05 ", "prev_depth"),
    (11, "P2x2x1.2x2x1s0x0x0p0g_0.000000dMIN LIN ", "unknown pool type 'MIN'"),
    (11, "Q2x2x1.2x2x1s0x0x0p0g_0.000000dMAX LIN ", "unknown layer header"),
    (33, "D256n0.500000d0.100000bFOO ", "unknown activation 'FOO'"),
])
def test_malformed_text_headers(lineno, new, msg, tmp_path):
    lines = text_lines()
    assert lines[11].startswith("P") and lines[33].startswith("D256")
    lines[lineno] = new
    p = write_bytes(tmp_path, "\n".join(lines).encode())
    with pytest.raises(CiannaFormatError, match=msg) as ei:
        read_cianna_file(p, binary=False)
    assert str(p) in str(ei.value)


def test_text_trailing_garbage(tmp_path):
    text = ref("conv3d_tiny_txt.dat").read_text()
    p = write_bytes(tmp_path, (text + "\n\nhello world\n").encode())
    with pytest.raises(CiannaFormatError, match=r"layer 8.*unknown layer header 'hello world'"):
        read_cianna_file(p)
    p = write_bytes(tmp_path, (text + "0.1 0.2\n").encode())
    with pytest.raises(CiannaFormatError, match="layer 8"):
        read_cianna_file(p)
    p = write_bytes(tmp_path, (text + "\n \n\n").encode())  # whitespace is fine
    assert len(read_cianna_file(p).layers) == 8


def test_text_yolo_without_slope_lines_is_rejected(tmp_path):
    """A text YOLO block must carry its 6 slope lines (they are part of the format even though V-1.0
    does not read them); without them the first weight row is mistaken for slopes and must fail."""
    lines = ref("yolo_tiny_txt.dat").read_text().split("\n")
    i = lines.index("4 0 0 2 0")
    del lines[i + 4:i + 10]
    with pytest.raises(CiannaFormatError, match=r"layer 10 \(conv\).*YOLO slopes"):
        read_cianna_file(write_bytes(tmp_path, "\n".join(lines).encode()))


def test_binary_file_read_as_text_and_vice_versa(tmp_path):
    with pytest.raises(CiannaFormatError, match="non-ASCII|bad header"):
        read_cianna_file(ref("mnist_tiny_bin.dat"), binary=False)
    with pytest.raises(CiannaFormatError):
        read_cianna_file(ref("mnist_tiny_txt.dat"), binary=True)


# --------------------------------------------------------------------------------------------------------
# Writer validation and atomicity
# --------------------------------------------------------------------------------------------------------


def test_writer_rejects_inconsistent_network_and_leaves_target_untouched(tmp_path):
    out = tmp_path / "keep.dat"
    out.write_bytes(b"old content")
    cf = read_cianna_file(ref("mnist_tiny_bin.dat"))
    cf.layers[5].weights = cf.layers[5].weights[:-1]
    with pytest.raises(CiannaFormatError, match=r"layer 5 \(dense\).*shape \(256, 129\), expected \(257, 129\)"):
        write_cianna_file(cf, out)
    cf = read_cianna_file(ref("mnist_tiny_bin.dat"))
    cf.layers[0].activation = "RELU_" + "x" * 40
    with pytest.raises(CiannaFormatError, match="longer than 39"):
        write_cianna_file(cf, out, binary=False)
    assert out.read_bytes() == b"old content"
    assert sorted(os.listdir(tmp_path)) == ["keep.dat"]  # no temporary file left behind


def test_writer_replaces_atomically(tmp_path):
    out = tmp_path / "net.dat"
    out.write_bytes(b"old")
    write_cianna_file(load("mnist_tiny_bin.dat"), out)
    assert out.read_bytes()[:16] == struct.pack("<4i", 28, 28, 1, 1)
    assert sorted(os.listdir(tmp_path)) == ["net.dat"]
    mask = os.umask(0o022)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600


# --------------------------------------------------------------------------------------------------------
# Forward output files
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("net, shape", [("mnist", (64, 11)), ("conv3d", (16, 11))])
def test_reference_dense_forward_files(net, shape):
    out = read_forward_file(ref(f"{net}_tiny_fwd_bin.dat"), shape=(-1, 11))
    assert out.shape == shape and out.dtype == np.float32
    np.testing.assert_allclose(out[:, :10].sum(axis=1), 1.0, rtol=1e-5)  # softmax rows
    assert np.all(out[:, 10] == 0.0)  # trailing pivot column


def test_reference_yolo_forward_file():
    out = read_forward_file(ref("yolo_tiny_fwd_bin.dat"), shape=(8, 32, 16, 16))
    box = out.reshape(8, 4, 8, 16, 16)
    # probability and objectness are sigmoids, xmax >= xmin in pixels
    assert np.all((box[:, :, 6:8] > 0) & (box[:, :, 6:8] < 1))
    assert np.all(box[:, :, 3] >= box[:, :, 0]) and np.all(box[:, :, 4] >= box[:, :, 1])
    with pytest.raises(CiannaFormatError, match="cannot be reshaped"):
        read_forward_file(ref("yolo_tiny_fwd_bin.dat"), shape=(7, 32, 16, 16))


def test_forward_file_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    vals = rng.normal(size=(5, 3, 4)).astype(np.float32)
    write_forward_file(tmp_path / "b.dat", vals)
    np.testing.assert_array_equal(read_forward_file(tmp_path / "b.dat", shape=vals.shape), vals)
    write_forward_file(tmp_path / "t.dat", vals, binary=False)
    text = (tmp_path / "t.dat").read_text()
    assert text.count("\n") == 5 and text.endswith(" \n")
    t = read_forward_file(tmp_path / "t.dat", binary=False)
    assert t.shape == (5, 12)
    np.testing.assert_allclose(t, vals.reshape(5, 12), rtol=5e-6)
    write_forward_file(tmp_path / "s.dat", vals, binary=False, single_line=True)  # YOLO quirk 13
    assert (tmp_path / "s.dat").read_text().count("\n") == 1
    s = read_forward_file(tmp_path / "s.dat", binary=False, shape=(5, 3, 4))
    np.testing.assert_array_equal(s.reshape(5, 12), t)


def test_forward_file_errors(tmp_path):
    p = write_bytes(tmp_path, b"\x00" * 10, "f.dat")
    with pytest.raises(CiannaFormatError, match="not a whole number"):
        read_forward_file(p)
    p = write_bytes(tmp_path, b"1 2 3 \n4 5 \n", "f.dat")
    with pytest.raises(CiannaFormatError, match="different numbers"):
        read_forward_file(p, binary=False)
    p = write_bytes(tmp_path, b"1 2 3 \n4 x 6 \n", "f.dat")
    with pytest.raises(CiannaFormatError, match="line 2"):
        read_forward_file(p, binary=False)


def test_empty_and_absurd_files_fail_cleanly(tmp_path):
    with pytest.raises(CiannaFormatError, match="truncated while reading header"):
        read_cianna_file(write_bytes(tmp_path, b""))
    with pytest.raises(CiannaFormatError, match="no layer"):
        read_cianna_file(write_bytes(tmp_path, b"28x28x1x1\n\n"))
    # huge but in-range dims: the dense weight block cannot be in the file -> truncated, no huge allocation
    text = b"4096x4096x64x1\nD100000n0.000000d0.100000bLIN \n0 0 0\n"
    with pytest.raises(CiannaFormatError, match=r"layer 0 \(dense\).*(truncated|implausible)"):
        read_cianna_file(write_bytes(tmp_path, text))
    data = struct.pack("<4i", 4096, 4096, 64, 1) + b"D" + struct.pack("<i2f", 100000, 0.0, 0.1) + b"LIN" + \
        b"\0" * 37 + b"\0" * 64
    with pytest.raises(CiannaFormatError, match=r"layer 0 \(dense\).*(truncated|implausible)"):
        read_cianna_file(write_bytes(tmp_path, data))
    with pytest.raises(CiannaFormatError, match="bad header"):
        read_cianna_file(write_bytes(tmp_path, struct.pack("<4i", 1 << 30, 1, 1, 1) + b"P"))
