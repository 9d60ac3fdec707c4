"""Reading and writing CIANNA V-1.0 network save files (binary and text formats).

The original CIANNA writes a network with ``save(file, bin=1)`` (binary) or ``save(file, bin=0)`` (text)
and periodically with ``train(save_every=..., save_bin=...)``. This module parses both formats into a
neutral, framework-independent :class:`CiannaFile` (plain dataclasses holding NumPy ``float32`` arrays in
CIANNA's own memory layout) and writes such a structure back, byte-compatible with the original writer
(`framework.md` §6). Conversion to and from the native :class:`cianna.nn.network.Network` lives in
:mod:`cianna.compat.convert`.

Layouts kept verbatim (CIANNA order, not PyTorch order):

* spatial triples (``f_size``, ``stride``, ``padding``, ...) are ``(x, y, z)`` = ``(W, H, D)``;
* conv weights: ``(nb_filters, flat_f_size)``, ``flat_f_size = fw*fh*fd*prev_depth + 1``, each row ordered
  ``[C_in][fd][fh][fw]`` (fw fastest) followed by the bias weight;
* dense weights: ``(in_size, nb_neurons + 1)``; row = input index (last row = bias input), last column =
  pivot;
* group normalisation: ``gamma`` and ``beta`` of shape ``(nb_group,)``;
* YOLO priors: ``(3, nb_box)`` = widths, heights, depths (the file stores all widths, then all heights,
  then all depths); YOLO slopes: ``(6, 3)`` = per part ``[slope, max, min]``.

Shapes that the file does not store (dense ``in_size``, GN ``nb_group``) are recomputed by propagating
shapes from the header's input dims through the layer list (framework §4.1/§4.2), which also validates the
file: any inconsistency raises :class:`CiannaFormatError` naming the file, the layer and what was expected.

Format notes
------------
* Binary ``char[40]`` fields are NUL-terminated; the original leaves uninitialised bytes after the NUL.
  The reader keeps the text up to the NUL; the writer pads with NUL bytes. A file written here is therefore
  byte-identical to the original except for those padding bytes.
* The V-1.0 text reader forgets the six YOLO slope lines (framework §10, quirk 12); this reader consumes
  them.
* The text layout of an LRN layer is only partly specified (no trailing blank line is documented); the
  writer emits the header line followed by a blank line like a pool layer, and the reader accepts any
  whitespace between layers.
"""
from __future__ import annotations

import math
import os
import re
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np

__all__ = [
    "CiannaFormatError",
    "YoloRecord",
    "ConvRecord",
    "PoolRecord",
    "DenseRecord",
    "NormRecord",
    "LrnRecord",
    "LayerRecord",
    "LayerShape",
    "CiannaFile",
    "propagate_shapes",
    "read_cianna_file",
    "write_cianna_file",
    "detect_binary",
    "read_forward_file",
    "write_forward_file",
]

PathLike = Union[str, os.PathLike]

#: Activation prefixes understood by CIANNA V-1.0 (the activation string is parsed by prefix).
ACTIVATION_PREFIXES = ("RELU", "LOGI", "SMAX", "LIN", "YOLO")
POOL_TYPES = ("MAX", "AVG")
NORM_TYPES = ("GN",)
_STR_LEN = 40
#: Sanity bound on any single dimension / count read from a file (protects against absurd allocations).
_MAX_DIM = 1 << 24
_MAX_VALUES = 1 << 31


class CiannaFormatError(ValueError):
    """A CIANNA save or forward file is malformed, truncated or inconsistent.

    Parameters
    ----------
    message : str
        What was wrong and what was expected.
    path : str or None
        The file concerned.
    layer_index : int or None
        0-based index of the layer being read or written, if any.
    layer_type : str or None
        ``"conv"``, ``"pool"``, ``"dense"``, ``"norm"``, ``"lrn"`` or ``None``.
    location : str or None
        Byte offset (binary) or line number (text) where the problem was found.
    """

    def __init__(self, message, *, path=None, layer_index=None, layer_type=None, location=None):
        self.path = None if path is None else str(path)
        self.layer_index = layer_index
        self.layer_type = layer_type
        self.location = location
        self.reason = message
        parts = []
        if self.path is not None:
            parts.append(self.path)
        if layer_index is not None:
            parts.append(f"layer {layer_index}" + (f" ({layer_type})" if layer_type else ""))
        if location is not None:
            parts.append(location)
        prefix = ": ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)


# ---------------------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------------------


def _f32(x) -> float:
    """Round a Python number to the nearest float32 value (as a Python float)."""
    return float(np.float32(x))


def _triple(v, name) -> tuple[int, int, int]:
    t = tuple(int(x) for x in v)
    if len(t) != 3:
        raise ValueError(f"{name} must have 3 entries (x, y, z), got {v!r}")
    return t


@dataclass
class YoloRecord:
    """YOLO output parameters stored with a conv layer whose activation starts with ``"YOLO"``.

    Attributes
    ----------
    nb_box, nb_class, nb_param, fit_dim, class_softmax : int
        Boxes per cell, classes, extra regressed parameters, fitted spatial dims, class softmax flag.
    priors : numpy.ndarray, shape (3, nb_box), float32
        Prior sizes in input pixels: row 0 widths, row 1 heights, row 2 depths (0 in 2D models).
    slopes : numpy.ndarray, shape (6, 3), float32
        Per part (position, size, probability, objectness, classes, parameters): ``[slope, max, min]``.
    """

    nb_box: int
    nb_class: int
    nb_param: int
    fit_dim: int
    class_softmax: int
    priors: np.ndarray
    slopes: np.ndarray

    def __post_init__(self):
        self.priors = np.ascontiguousarray(np.asarray(self.priors, dtype=np.float32).reshape(3, -1))
        self.slopes = np.ascontiguousarray(np.asarray(self.slopes, dtype=np.float32).reshape(6, 3))

    @property
    def nb_filters(self) -> int:
        """Channel count of the YOLO conv layer: ``nb_box*(8+nb_class+nb_param)``."""
        return self.nb_box * (8 + self.nb_class + self.nb_param)


@dataclass
class ConvRecord:
    """Convolution layer (1D/2D/3D, possibly the YOLO output layer).

    Attributes
    ----------
    nb_filters : int
        Output channels.
    f_size, stride, padding, int_padding : tuple of 3 int
        ``(x, y, z)`` filter size, stride, zero padding and internal padding.
    prev_size : tuple of 3 int
        ``(W, H, D)`` of the layer input as stored in the file.
    prev_depth : int
        Input channels.
    drop_rate, bias_value : float
        Dropout rate and constant bias input (float32 values).
    activation : str
        Activation string verbatim, e.g. ``"RELU_S800.00_L0.05"``.
    weights : numpy.ndarray, shape (nb_filters, flat_f_size), float32
        ``flat_f_size = fw*fh*fd*prev_depth + 1``; per filter ``[C_in][fd][fh][fw]`` then the bias weight.
    yolo : YoloRecord or None
        Present iff the activation starts with ``"YOLO"``.
    """

    nb_filters: int
    f_size: tuple
    stride: tuple
    padding: tuple
    int_padding: tuple
    prev_size: tuple
    prev_depth: int
    drop_rate: float
    bias_value: float
    activation: str
    weights: np.ndarray
    yolo: YoloRecord | None = None

    kind = "conv"
    code = b"C"

    def __post_init__(self):
        for name in ("f_size", "stride", "padding", "int_padding", "prev_size"):
            setattr(self, name, _triple(getattr(self, name), name))
        self.nb_filters = int(self.nb_filters)
        self.prev_depth = int(self.prev_depth)
        self.drop_rate = _f32(self.drop_rate)
        self.bias_value = _f32(self.bias_value)
        self.weights = np.ascontiguousarray(np.asarray(self.weights, dtype=np.float32))

    @property
    def flat_f_size(self) -> int:
        """Weights per filter, bias weight included: ``fw*fh*fd*prev_depth + 1``."""
        fw, fh, fd = self.f_size
        return fw * fh * fd * self.prev_depth + 1


@dataclass
class PoolRecord:
    """Pooling layer.

    Attributes
    ----------
    p_size, stride, padding : tuple of 3 int
        ``(x, y, z)`` pool size, stride and (virtual) padding.
    global_pool : int
        1 for global pooling (whole map), else 0.
    drop_rate : float
        Dropout rate (float32 value).
    pool_type : str
        ``"MAX"`` or ``"AVG"``.
    activation : str
        Activation string verbatim.
    """

    p_size: tuple
    stride: tuple
    padding: tuple
    global_pool: int
    drop_rate: float
    pool_type: str
    activation: str

    kind = "pool"
    code = b"P"

    def __post_init__(self):
        for name in ("p_size", "stride", "padding"):
            setattr(self, name, _triple(getattr(self, name), name))
        self.global_pool = int(self.global_pool)
        self.drop_rate = _f32(self.drop_rate)


@dataclass
class DenseRecord:
    """Dense (fully connected) layer.

    Attributes
    ----------
    nb_neurons : int
        Output neurons (the pivot is extra).
    drop_rate, bias_value : float
        Dropout rate and constant bias input (float32 values).
    activation : str
        Activation string verbatim.
    weights : numpy.ndarray, shape (in_size, nb_neurons + 1), float32
        Row = input index (last row = bias input), column = neuron (last column = pivot).
        ``in_size`` = previous flat size + 1 (not stored in the file, recomputed).
    """

    nb_neurons: int
    drop_rate: float
    bias_value: float
    activation: str
    weights: np.ndarray

    kind = "dense"
    code = b"D"

    def __post_init__(self):
        self.nb_neurons = int(self.nb_neurons)
        self.drop_rate = _f32(self.drop_rate)
        self.bias_value = _f32(self.bias_value)
        self.weights = np.ascontiguousarray(np.asarray(self.weights, dtype=np.float32))


@dataclass
class NormRecord:
    """Group-normalisation layer.

    Attributes
    ----------
    norm_type : str
        ``"GN"``.
    group_size, set_off : int
        Channels per group; number of trailing groups passed through unchanged.
    activation : str
        Activation string verbatim.
    gamma, beta : numpy.ndarray, shape (nb_group,), float32
        ``nb_group = ceil(C_prev / group_size)`` (not stored in the file, recomputed).
    """

    norm_type: str
    group_size: int
    set_off: int
    activation: str
    gamma: np.ndarray
    beta: np.ndarray

    kind = "norm"
    code = b"N"

    def __post_init__(self):
        self.group_size = int(self.group_size)
        self.set_off = int(self.set_off)
        self.gamma = np.ascontiguousarray(np.asarray(self.gamma, dtype=np.float32).reshape(-1))
        self.beta = np.ascontiguousarray(np.asarray(self.beta, dtype=np.float32).reshape(-1))


@dataclass
class LrnRecord:
    """Local response normalisation layer (no parameters).

    Attributes
    ----------
    range : int
        Channel window size.
    k, alpha, beta : float
        LRN constants (float32 values).
    activation : str
        Activation string verbatim.
    """

    range: int
    k: float
    alpha: float
    beta: float
    activation: str

    kind = "lrn"
    code = b"L"

    def __post_init__(self):
        self.range = int(self.range)
        self.k = _f32(self.k)
        self.alpha = _f32(self.alpha)
        self.beta = _f32(self.beta)


LayerRecord = Union[ConvRecord, PoolRecord, DenseRecord, NormRecord, LrnRecord]


@dataclass(frozen=True)
class LayerShape:
    """Output shape of a layer during shape propagation.

    Attributes
    ----------
    size : tuple of 3 int or None
        ``(W, H, D)`` for spatial layers (input, conv, pool, norm, lrn); ``None`` for dense layers.
    channels : int
        Channels of a spatial output, or ``nb_neurons`` of a dense output.
    """

    size: tuple | None
    channels: int

    @property
    def flat(self) -> int:
        """Values per example without the bias/pivot slot."""
        if self.size is None:
            return self.channels
        return self.size[0] * self.size[1] * self.size[2] * self.channels


@dataclass
class CiannaFile:
    """A CIANNA network save, independent of any framework.

    Attributes
    ----------
    input_dims : tuple of 3 int
        Network input ``(W, H, D)`` from the file header.
    in_channels : int
        Input channels ``C`` from the header.
    layers : list of LayerRecord
        Layers in file order.
    """

    input_dims: tuple
    in_channels: int
    layers: list = field(default_factory=list)

    def __post_init__(self):
        self.input_dims = _triple(self.input_dims, "input_dims")
        self.in_channels = int(self.in_channels)
        self.layers = list(self.layers)

    def shapes(self) -> list[LayerShape]:
        """Output shape of every layer (see :func:`propagate_shapes`).

        Returns
        -------
        list of LayerShape
            ``len(layers) + 1`` entries; entry 0 is the network input.
        """
        return propagate_shapes(self)


# ---------------------------------------------------------------------------------------------------------
# Shape propagation and validation
# ---------------------------------------------------------------------------------------------------------


def _check_activation(act, err):
    if not isinstance(act, str) or not act:
        err(f"empty or missing activation string (got {act!r})")
    if len(act.encode("ascii", "replace")) >= _STR_LEN:
        err(f"activation string {act!r} longer than {_STR_LEN - 1} characters")
    if not all(33 <= ord(c) < 127 for c in act):
        err(f"activation string {act!r} contains non-printable or non-ASCII characters or spaces")
    if not act.startswith(ACTIVATION_PREFIXES):
        err(f"unknown activation {act!r} (expected a string starting with one of {', '.join(ACTIVATION_PREFIXES)})")


def _check_rate(x, name, err):
    if not math.isfinite(x) or not 0.0 <= x < 1.0:
        err(f"{name} must be a finite number in [0, 1), got {x!r}")


def _check_finite(x, name, err):
    if not math.isfinite(x):
        err(f"{name} must be finite, got {x!r}")


def _check_triple(t, name, lo, err):
    if any(v < lo or v > _MAX_DIM for v in t):
        err(f"{name} {t} out of range (each entry must be in [{lo}, {_MAX_DIM}])")


def _check_array(a, shape, name, err, *, finite):
    if not isinstance(a, np.ndarray) or a.shape != tuple(shape):
        got = getattr(a, "shape", None)
        err(f"{name} has shape {got}, expected {tuple(shape)}")
    if finite and not np.all(np.isfinite(a)):
        n = int(np.count_nonzero(~np.isfinite(a)))
        err(f"{name} contains {n} non-finite value(s)")


def _conv_out(size, f, stride, pad, int_pad):
    return (size + (size - 1) * int_pad + 2 * pad - f) // stride + 1


def _propagate_one(rec, prev: LayerShape, prev_is_dense: bool, err, *, check_arrays: bool, finite: bool):
    """Validate one record against its input shape and return its output shape."""
    if isinstance(rec, ConvRecord):
        _check_activation(rec.activation, err)
        if rec.nb_filters < 1 or rec.nb_filters > _MAX_DIM:
            err(f"nb_filters = {rec.nb_filters} out of range")
        _check_triple(rec.f_size, "f_size", 1, err)
        _check_triple(rec.stride, "stride", 1, err)
        _check_triple(rec.padding, "padding", 0, err)
        _check_triple(rec.int_padding, "int_padding", 0, err)
        _check_triple(rec.prev_size, "prev_size", 1, err)
        if rec.prev_depth < 1 or rec.prev_depth > _MAX_DIM:
            err(f"prev_depth = {rec.prev_depth} out of range")
        _check_rate(rec.drop_rate, "dropout rate", err)
        _check_finite(rec.bias_value, "bias value", err)
        if prev_is_dense:
            n = rec.prev_size[0] * rec.prev_size[1] * rec.prev_size[2] * rec.prev_depth
            if n != prev.channels:
                err(f"conv after a dense layer of {prev.channels} neurons needs prev_size x prev_depth = "
                    f"{prev.channels} values, file stores {rec.prev_size} x {rec.prev_depth} = {n}")
        else:
            if rec.prev_depth != prev.channels:
                err(f"prev_depth = {rec.prev_depth} but the previous layer outputs {prev.channels} channels")
            if rec.prev_size != prev.size:
                err(f"prev_size = {rec.prev_size} but the previous layer outputs (W, H, D) = {prev.size}")
        out = tuple(_conv_out(s, f, st, p, ip) for s, f, st, p, ip in
                    zip(rec.prev_size, rec.f_size, rec.stride, rec.padding, rec.int_padding))
        if any(o < 1 for o in out):
            err(f"output size {out} is not positive (input {rec.prev_size}, f_size {rec.f_size}, "
                f"stride {rec.stride}, padding {rec.padding}, int_padding {rec.int_padding})")
        is_yolo = rec.activation.startswith("YOLO")
        if is_yolo != (rec.yolo is not None):
            err("YOLO parameters must be present iff the activation starts with 'YOLO' "
                f"(activation {rec.activation!r}, yolo block {'present' if rec.yolo is not None else 'absent'})")
        if rec.yolo is not None:
            y = rec.yolo
            for name in ("nb_box", "nb_class", "nb_param"):
                v = getattr(y, name)
                if v < (1 if name == "nb_box" else 0) or v > 1 << 16:
                    err(f"YOLO {name} = {v} out of range")
            if y.fit_dim not in (1, 2, 3):
                err(f"YOLO fit_dim = {y.fit_dim}, expected 1, 2 or 3")
            if y.class_softmax not in (0, 1):
                err(f"YOLO class_softmax = {y.class_softmax}, expected 0 or 1")
            if y.nb_filters != rec.nb_filters:
                err(f"YOLO layer has {rec.nb_filters} filters, expected nb_box*(8+nb_class+nb_param) = "
                    f"{y.nb_filters}")
            _check_array(y.priors, (3, y.nb_box), "YOLO priors", err, finite=True)
            _check_array(y.slopes, (6, 3), "YOLO slopes", err, finite=True)
        if check_arrays:
            _check_array(rec.weights, (rec.nb_filters, rec.flat_f_size), "weights", err, finite=finite)
        return LayerShape(out, rec.nb_filters)

    if isinstance(rec, PoolRecord):
        _check_activation(rec.activation, err)
        if prev_is_dense or prev.size is None:
            err("a pool layer cannot follow a dense layer")
        _check_triple(rec.p_size, "p_size", 1, err)
        _check_triple(rec.stride, "stride", 1, err)
        _check_triple(rec.padding, "padding", 0, err)
        if rec.global_pool not in (0, 1):
            err(f"global flag = {rec.global_pool}, expected 0 or 1")
        _check_rate(rec.drop_rate, "dropout rate", err)
        if rec.pool_type not in POOL_TYPES:
            err(f"unknown pool type {rec.pool_type!r} (expected MAX or AVG)")
        if rec.global_pool:
            out = (1, 1, 1)
        else:
            out = tuple((s + 2 * p - k) // st + 1 for s, k, st, p in
                        zip(prev.size, rec.p_size, rec.stride, rec.padding))
            if any(o < 1 for o in out):
                err(f"output size {out} is not positive (input {prev.size}, p_size {rec.p_size}, "
                    f"stride {rec.stride}, padding {rec.padding})")
        return LayerShape(out, prev.channels)

    if isinstance(rec, DenseRecord):
        _check_activation(rec.activation, err)
        if rec.nb_neurons < 1 or rec.nb_neurons > _MAX_DIM:
            err(f"nb_neurons = {rec.nb_neurons} out of range")
        _check_rate(rec.drop_rate, "dropout rate", err)
        _check_finite(rec.bias_value, "bias value", err)
        if check_arrays:
            in_size = prev.flat + 1
            _check_array(rec.weights, (in_size, rec.nb_neurons + 1), "weights", err, finite=finite)
        return LayerShape(None, rec.nb_neurons)

    if isinstance(rec, NormRecord):
        _check_activation(rec.activation, err)
        if prev_is_dense or prev.size is None:
            err("a norm layer cannot follow a dense layer")
        if rec.norm_type not in NORM_TYPES:
            err(f"unknown normalisation type {rec.norm_type!r} (expected 'GN')")
        if rec.group_size < 1 or rec.group_size > _MAX_DIM:
            err(f"group_size = {rec.group_size} out of range")
        nb_group = -(-prev.channels // rec.group_size)
        if rec.set_off < 0 or rec.set_off > nb_group:
            err(f"set_off = {rec.set_off} out of range [0, nb_group = {nb_group}]")
        if check_arrays:
            _check_array(rec.gamma, (nb_group,), "gamma", err, finite=finite)
            _check_array(rec.beta, (nb_group,), "beta", err, finite=finite)
        return prev

    if isinstance(rec, LrnRecord):
        _check_activation(rec.activation, err)
        if prev_is_dense or prev.size is None:
            err("an LRN layer cannot follow a dense layer")
        if rec.range < 1 or rec.range > _MAX_DIM:
            err(f"range = {rec.range} out of range")
        for name in ("k", "alpha", "beta"):
            _check_finite(getattr(rec, name), name, err)
        return prev

    err(f"unsupported layer record of type {type(rec).__name__}")


def _kind(rec) -> str | None:
    return getattr(rec, "kind", None)


def propagate_shapes(cf: CiannaFile, *, path=None, check_arrays: bool = True,
                     finite: bool = True) -> list[LayerShape]:
    """Propagate shapes from the header's input dims through the layers, validating every record.

    Parameters
    ----------
    cf : CiannaFile
        The network description.
    path : str or os.PathLike, optional
        File name used in error messages.
    check_arrays : bool
        Also check weight / gamma / beta array shapes against the propagated shapes.
    finite : bool
        Also require every weight to be finite.

    Returns
    -------
    list of LayerShape
        ``len(cf.layers) + 1`` shapes; entry 0 is the input ``((W, H, D), C)``, entry ``i+1`` the output
        of layer ``i``.

    Raises
    ------
    CiannaFormatError
        On any inconsistency (names the layer and the expectation).
    """
    def head_err(msg):
        raise CiannaFormatError(msg, path=path, location="header")

    _check_triple(cf.input_dims, "input dims (W, H, D)", 1, head_err)
    if cf.in_channels < 1 or cf.in_channels > _MAX_DIM:
        head_err(f"input channel count {cf.in_channels} out of range")
    shapes = [LayerShape(tuple(cf.input_dims), cf.in_channels)]
    prev_is_dense = False
    for i, rec in enumerate(cf.layers):
        def err(msg, i=i, rec=rec):
            raise CiannaFormatError(msg, path=path, layer_index=i, layer_type=_kind(rec))
        out = _propagate_one(rec, shapes[-1], prev_is_dense, err, check_arrays=check_arrays, finite=finite)
        shapes.append(out)
        prev_is_dense = isinstance(rec, DenseRecord)
    return shapes


# ---------------------------------------------------------------------------------------------------------
# Binary format
# ---------------------------------------------------------------------------------------------------------


class _BinCursor:
    """Sequential little-endian reader over a bytes object with contextual errors."""

    def __init__(self, data: bytes, path):
        self.data = data
        self.pos = 0
        self.path = path
        self.layer_index = None
        self.layer_type = None

    def err(self, msg, pos=None):
        raise CiannaFormatError(msg, path=self.path, layer_index=self.layer_index, layer_type=self.layer_type,
                                location=f"byte offset {self.pos if pos is None else pos}")

    def take(self, n, what):
        if self.pos + n > len(self.data):
            self.err(f"file truncated while reading {what}: needs {n} bytes, "
                     f"{len(self.data) - self.pos} left")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def ints(self, n, what):
        return struct.unpack(f"<{n}i", self.take(4 * n, what))

    def floats(self, n, what):
        return struct.unpack(f"<{n}f", self.take(4 * n, what))

    def string(self, what):
        start = self.pos
        raw = self.take(_STR_LEN, what)
        nul = raw.find(b"\0")
        if nul < 0:
            self.err(f"{what}: char[{_STR_LEN}] field has no terminating NUL", start)
        try:
            return raw[:nul].decode("ascii")
        except UnicodeDecodeError:
            self.err(f"{what}: non-ASCII bytes {raw[:nul]!r}", start)

    def array(self, count, what):
        if count < 0 or count > _MAX_VALUES:
            self.err(f"{what}: implausible value count {count}")
        b = self.take(4 * count, f"{what} ({count} float32 values)")
        return np.frombuffer(b, dtype="<f4").astype(np.float32)


def _read_binary(data: bytes, path, nb_layers: int, finite: bool) -> CiannaFile:
    cur = _BinCursor(data, path)
    w, h, d, c = cur.ints(4, "header (int32 W, H, D, C)")
    cf = CiannaFile((w, h, d), c, [])

    def head_err(msg):
        raise CiannaFormatError(msg, path=path, location="header")

    if min(w, h, d, c) < 1 or max(w, h, d, c) > _MAX_DIM:
        head_err(f"bad header: input dims W, H, D, C = {w}, {h}, {d}, {c} (expected positive, <= {_MAX_DIM})")
    prev = LayerShape((w, h, d), c)
    prev_is_dense = False
    i = 0
    while cur.pos < len(data) and (nb_layers <= 0 or i < nb_layers):
        cur.layer_index, cur.layer_type = i, None
        code_pos = cur.pos
        code = cur.take(1, "layer type code")
        if code == b"C":
            cur.layer_type = "conv"
            nb_filters, = cur.ints(1, "nb_filters")
            f_size = cur.ints(3, "f_size")
            stride = cur.ints(3, "stride")
            padding = cur.ints(3, "padding")
            int_padding = cur.ints(3, "int_padding")
            prev_size = cur.ints(3, "prev_size")
            prev_depth, = cur.ints(1, "prev_depth")
            drop, bias = cur.floats(2, "dropout rate and bias value")
            act = cur.string("activation")
            yolo = None
            if act.startswith("YOLO"):
                nb_box, nb_class, nb_param, fit_dim, class_softmax = cur.ints(
                    5, "YOLO nb_box, nb_class, nb_param, fit_dim, class_softmax")
                if not 1 <= nb_box <= 1 << 16:
                    cur.err(f"YOLO nb_box = {nb_box} out of range")
                priors = cur.array(3 * nb_box, "YOLO priors")
                slopes = cur.array(18, "YOLO slopes")
                yolo = YoloRecord(nb_box, nb_class, nb_param, fit_dim, class_softmax,
                                  priors.reshape(3, nb_box), slopes.reshape(6, 3))
            rec = ConvRecord(nb_filters, f_size, stride, padding, int_padding, prev_size, prev_depth,
                             drop, bias, act, np.zeros((0, 0), np.float32), yolo)
            # validate the hyper-parameters before trusting the weight count
            out = _propagate_one(rec, prev, prev_is_dense, cur.err, check_arrays=False, finite=finite)
            rec.weights = cur.array(nb_filters * rec.flat_f_size, "weights").reshape(nb_filters, rec.flat_f_size)
        elif code == b"P":
            cur.layer_type = "pool"
            p_size = cur.ints(3, "p_size")
            stride = cur.ints(3, "stride")
            padding = cur.ints(3, "padding")
            glob, = cur.ints(1, "global flag")
            drop, = cur.floats(1, "dropout rate")
            ptype = cur.string("pool type")
            act = cur.string("activation")
            rec = PoolRecord(p_size, stride, padding, glob, drop, ptype, act)
            out = None
        elif code == b"D":
            cur.layer_type = "dense"
            nb, = cur.ints(1, "nb_neurons")
            drop, bias = cur.floats(2, "dropout rate and bias value")
            act = cur.string("activation")
            rec = DenseRecord(nb, drop, bias, act, np.zeros((0, 0), np.float32))
            out = _propagate_one(rec, prev, prev_is_dense, cur.err, check_arrays=False, finite=finite)
            in_size = prev.flat + 1
            rec.weights = cur.array(in_size * (nb + 1), "weights").reshape(in_size, nb + 1)
        elif code == b"N":
            cur.layer_type = "norm"
            ntype = cur.string("normalisation type")
            group_size, set_off = cur.ints(2, "group_size and set_off")
            act = cur.string("activation")
            rec = NormRecord(ntype, group_size, set_off, act, np.zeros(0), np.zeros(0))
            out = _propagate_one(rec, prev, prev_is_dense, cur.err, check_arrays=False, finite=finite)
            nb_group = -(-prev.channels // group_size)
            rec.gamma = cur.array(nb_group, "gamma")
            rec.beta = cur.array(nb_group, "beta")
        elif code == b"L":
            cur.layer_type = "lrn"
            rng, = cur.ints(1, "range")
            k, alpha, beta = cur.floats(3, "k, alpha, beta")
            act = cur.string("activation")
            rec = LrnRecord(rng, k, alpha, beta, act)
            out = None
        else:
            cur.err(f"unknown layer type code {code!r} (expected one of b'C', b'P', b'D', b'N', b'L'); "
                    f"{len(data) - code_pos} unparsed bytes remain (corrupted file or trailing garbage)",
                    code_pos)
        # full validation (arrays included) of the finished record
        out = _propagate_one(rec, prev, prev_is_dense, cur.err, check_arrays=True, finite=finite)
        cf.layers.append(rec)
        prev, prev_is_dense = out, isinstance(rec, DenseRecord)
        i += 1
    if not cf.layers:
        raise CiannaFormatError("no layer after the header", path=path, location=f"byte offset {cur.pos}")
    if nb_layers > 0 and i < nb_layers:
        raise CiannaFormatError(f"nb_layers = {nb_layers} requested but the file holds only {i} layers",
                                path=path)
    return cf


def _pack_str(s: str, what: str, err) -> bytes:
    b = s.encode("ascii")
    if len(b) >= _STR_LEN or b"\0" in b:
        err(f"{what} {s!r} does not fit a NUL-terminated char[{_STR_LEN}]")
    return b + b"\0" * (_STR_LEN - len(b))


def _binary_chunks(cf: CiannaFile, path) -> Iterator[bytes]:
    yield struct.pack("<4i", *cf.input_dims, cf.in_channels)
    for i, rec in enumerate(cf.layers):
        def err(msg, i=i, rec=rec):
            raise CiannaFormatError(msg, path=path, layer_index=i, layer_type=_kind(rec))
        if isinstance(rec, ConvRecord):
            yield b"C" + struct.pack("<17i2f", rec.nb_filters, *rec.f_size, *rec.stride, *rec.padding,
                                     *rec.int_padding, *rec.prev_size, rec.prev_depth, rec.drop_rate,
                                     rec.bias_value)
            yield _pack_str(rec.activation, "activation", err)
            if rec.yolo is not None:
                y = rec.yolo
                yield struct.pack("<5i", y.nb_box, y.nb_class, y.nb_param, y.fit_dim, y.class_softmax)
                yield y.priors.astype("<f4").tobytes()
                yield y.slopes.astype("<f4").tobytes()
            yield rec.weights.astype("<f4").tobytes()
        elif isinstance(rec, PoolRecord):
            yield b"P" + struct.pack("<10if", *rec.p_size, *rec.stride, *rec.padding, rec.global_pool,
                                     rec.drop_rate)
            yield _pack_str(rec.pool_type, "pool type", err)
            yield _pack_str(rec.activation, "activation", err)
        elif isinstance(rec, DenseRecord):
            yield b"D" + struct.pack("<i2f", rec.nb_neurons, rec.drop_rate, rec.bias_value)
            yield _pack_str(rec.activation, "activation", err)
            yield rec.weights.astype("<f4").tobytes()
        elif isinstance(rec, NormRecord):
            yield b"N" + _pack_str(rec.norm_type, "normalisation type", err)
            yield struct.pack("<2i", rec.group_size, rec.set_off)
            yield _pack_str(rec.activation, "activation", err)
            yield rec.gamma.astype("<f4").tobytes()
            yield rec.beta.astype("<f4").tobytes()
        elif isinstance(rec, LrnRecord):
            yield b"L" + struct.pack("<i3f", rec.range, rec.k, rec.alpha, rec.beta)
            yield _pack_str(rec.activation, "activation", err)
        else:  # pragma: no cover - propagate_shapes rejects it first
            err(f"unsupported layer record {type(rec).__name__}")


# ---------------------------------------------------------------------------------------------------------
# Text format
# ---------------------------------------------------------------------------------------------------------

_INT = r"(-?\d+)"
_FLT = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:inf|nan))"
_ACT = r"(\S+)"
_RE_HEADER = re.compile(rf"^{_INT}x{_INT}x{_INT}x{_INT}$")
_RE_CONV = re.compile(
    rf"^C{_INT}f{_INT}x{_INT}x{_INT}\.{_INT}x{_INT}x{_INT}s{_INT}x{_INT}x{_INT}p{_INT}x{_INT}x{_INT}ip"
    rf"{_INT}x{_INT}x{_INT}x{_INT}idim{_FLT}d{_FLT}b{_ACT}$")
_RE_POOL = re.compile(
    rf"^P{_INT}x{_INT}x{_INT}\.{_INT}x{_INT}x{_INT}s{_INT}x{_INT}x{_INT}p{_INT}g_{_FLT}d(\S+) {_ACT}$")
_RE_DENSE = re.compile(rf"^D{_INT}n{_FLT}d{_FLT}b{_ACT}$")
_RE_NORM = re.compile(rf"^N (\S+) S{_INT}_O{_INT}{_ACT}$")
_RE_LRN = re.compile(rf"^L {_INT} {_FLT} {_FLT} {_FLT} {_ACT}$")


class _TextCursor:
    """Line-oriented reader over a text save with contextual errors."""

    def __init__(self, text: str, path):
        self.lines = text.split("\n")
        if self.lines and self.lines[-1] == "":
            self.lines.pop()
        self.pos = 0  # index of the next line
        self.path = path
        self.layer_index = None
        self.layer_type = None

    def err(self, msg, line=None):
        ln = self.pos if line is None else line
        raise CiannaFormatError(msg, path=self.path, layer_index=self.layer_index, layer_type=self.layer_type,
                                location=f"line {ln}")

    def skip_blank(self):
        while self.pos < len(self.lines) and not self.lines[self.pos].strip():
            self.pos += 1

    def at_end(self):
        self.skip_blank()
        return self.pos >= len(self.lines)

    def line(self, what):
        self.skip_blank()
        if self.pos >= len(self.lines):
            self.err(f"file truncated: expected {what}, reached end of file")
        s = self.lines[self.pos]
        self.pos += 1
        return s

    def rows(self, n_rows, n_cols, what) -> np.ndarray:
        """Read ``n_rows`` lines of exactly ``n_cols`` numbers each (blank lines skipped).

        Returns
        -------
        numpy.ndarray, shape (n_rows, n_cols), float32
        """
        if n_rows < 0 or n_cols < 0 or n_rows * n_cols > _MAX_VALUES:
            self.err(f"{what}: implausible size {n_rows} x {n_cols}")
        if len(self.lines) - self.pos < n_rows:  # cheap check before allocating
            self.err(f"file truncated: {what}: expected {n_rows} lines of {n_cols} values, only "
                     f"{len(self.lines) - self.pos} lines left in the file")
        out = np.empty((n_rows, n_cols), dtype=np.float32)
        for r in range(n_rows):
            self.skip_blank()
            if self.pos >= len(self.lines):
                self.err(f"file truncated: {what}: expected {n_rows} lines of {n_cols} values, "
                         f"reached end of file after {r} lines")
            line = self.lines[self.pos]
            toks = line.split()
            if len(toks) != n_cols:
                self.err(f"{what}: line {r + 1} of {n_rows} has {len(toks)} values, expected {n_cols} "
                         f"(truncated or corrupted file; line starts with {line[:40]!r})", self.pos + 1)
            try:
                out[r] = np.array(toks, dtype=np.float64)
            except ValueError:
                bad = next((t for t in toks if not _is_number(t, False)), toks[0])
                self.err(f"{what}: line {r + 1} of {n_rows}: non-numeric token {bad[:40]!r}", self.pos + 1)
            self.pos += 1
        return out


def _is_number(tok, integer):
    try:
        int(tok) if integer else float(tok)
        return True
    except ValueError:
        return False


def _read_text(text: str, path, nb_layers: int, finite: bool) -> CiannaFile:
    cur = _TextCursor(text, path)
    first = cur.line("header line 'WxHxDxC'")
    m = _RE_HEADER.match(first.strip())
    if not m:
        cur.err(f"bad header: expected 'WxHxDxC', found {first[:60]!r}")
    w, h, d, c = (int(g) for g in m.groups())
    if min(w, h, d, c) < 1 or max(w, h, d, c) > _MAX_DIM:
        cur.err(f"bad header: input dims W, H, D, C = {w}, {h}, {d}, {c} (expected positive, <= {_MAX_DIM})")
    cf = CiannaFile((w, h, d), c, [])
    prev = LayerShape((w, h, d), c)
    prev_is_dense = False
    i = 0
    while not cur.at_end() and (nb_layers <= 0 or i < nb_layers):
        cur.layer_index, cur.layer_type = i, None
        head = cur.line("layer header")
        s = head.strip(" \t\r")
        tag = s[:1]
        if tag == "C":
            cur.layer_type = "conv"
            m = _RE_CONV.match(s)
            if not m:
                cur.err(f"malformed conv header {s[:120]!r} (expected "
                        "'C{nf}f{fw}x{fh}x{fd}.{sw}x{sh}x{sd}s{pw}x{ph}x{pd}p{iw}x{ih}x{id}ip{W}x{H}x{D}x{C}idim"
                        "{drop}d{bias}b{ACT} ')")
            g = m.groups()
            v = [int(x) for x in g[:17]]
            drop, bias, act = float(g[17]), float(g[18]), g[19]
            yolo = None
            if act.startswith("YOLO"):
                yl = cur.line("YOLO line 'nb_box nb_class nb_param fit_dim class_softmax'")
                try:
                    yv = [int(t) for t in yl.split()]
                except ValueError:
                    yv = []
                if len(yv) != 5:
                    cur.err(f"expected the YOLO line 'nb_box nb_class nb_param fit_dim class_softmax' "
                            f"(5 integers), found {yl[:60]!r}")
                nb_box = yv[0]
                if not 1 <= nb_box <= 1 << 16:
                    cur.err(f"YOLO nb_box = {nb_box} out of range")
                priors = cur.rows(3, nb_box, "YOLO priors (width, height and depth lines)")
                slopes = cur.rows(6, 3, "YOLO slopes (6 lines 'slope max min')")
                yolo = YoloRecord(*yv, priors, slopes)
            rec = ConvRecord(v[0], v[1:4], v[4:7], v[7:10], v[10:13], v[13:16], v[16], drop, bias, act,
                             np.zeros((0, 0), np.float32), yolo)
            _propagate_one(rec, prev, prev_is_dense, cur.err, check_arrays=False, finite=finite)
            ff = rec.flat_f_size
            rec.weights = cur.rows(rec.nb_filters, ff, "weights")
        elif tag == "P":
            cur.layer_type = "pool"
            m = _RE_POOL.match(s)
            if not m:
                cur.err(f"malformed pool header {s[:120]!r} (expected "
                        "'P{pw}x{ph}x{pd}.{sw}x{sh}x{sd}s{padw}x{padh}x{padd}p{global}g_{drop}d{MAX|AVG} {ACT} ')")
            g = m.groups()
            v = [int(x) for x in g[:10]]
            rec = PoolRecord(v[0:3], v[3:6], v[6:9], v[9], float(g[10]), g[11], g[12])
        elif tag == "D":
            cur.layer_type = "dense"
            m = _RE_DENSE.match(s)
            if not m:
                cur.err(f"malformed dense header {s[:120]!r} (expected 'D{{nb}}n{{drop}}d{{bias}}b{{ACT}} ')")
            g = m.groups()
            rec = DenseRecord(int(g[0]), float(g[1]), float(g[2]), g[3], np.zeros((0, 0), np.float32))
            _propagate_one(rec, prev, prev_is_dense, cur.err, check_arrays=False, finite=finite)
            in_size, nc = prev.flat + 1, rec.nb_neurons + 1
            rec.weights = cur.rows(in_size, nc, "weights")
        elif tag == "N":
            cur.layer_type = "norm"
            m = _RE_NORM.match(s)
            if not m:
                cur.err(f"malformed norm header {s[:120]!r} (expected 'N GN S{{group_size}}_O{{set_off}}{{ACT}} ')")
            g = m.groups()
            rec = NormRecord(g[0], int(g[1]), int(g[2]), g[3], np.zeros(0), np.zeros(0))
            _propagate_one(rec, prev, prev_is_dense, cur.err, check_arrays=False, finite=finite)
            nb_group = -(-prev.channels // rec.group_size)
            rec.gamma = cur.rows(1, nb_group, "gamma line")[0]
            rec.beta = cur.rows(1, nb_group, "beta line")[0]
        elif tag == "L":
            cur.layer_type = "lrn"
            m = _RE_LRN.match(s)
            if not m:
                cur.err(f"malformed LRN header {s[:120]!r} (expected 'L {{range}} {{k}} {{alpha}} {{beta}} {{ACT}} ')")
            g = m.groups()
            rec = LrnRecord(int(g[0]), float(g[1]), float(g[2]), float(g[3]), g[4])
        else:
            cur.err(f"unknown layer header {s[:60]!r} (expected a line starting with C, P, D, N or L); "
                    "corrupted file or trailing garbage", cur.pos)
        out = _propagate_one(rec, prev, prev_is_dense, cur.err, check_arrays=True, finite=finite)
        cf.layers.append(rec)
        prev, prev_is_dense = out, isinstance(rec, DenseRecord)
        i += 1
    if not cf.layers:
        raise CiannaFormatError("no layer after the header", path=path)
    if nb_layers > 0 and i < nb_layers:
        raise CiannaFormatError(f"nb_layers = {nb_layers} requested but the file holds only {i} layers",
                                path=path)
    return cf


def _g(values) -> str:
    """Format values as C's ``fprintf("%g ", v)`` for each value (float32 promoted to double)."""
    return "".join(["%g " % v for v in np.asarray(values, dtype=np.float32).reshape(-1).tolist()])


def _text_chunks(cf: CiannaFile) -> Iterator[str]:
    w, h, d = cf.input_dims
    yield f"{w}x{h}x{d}x{cf.in_channels}\n"
    for rec in cf.layers:
        if isinstance(rec, ConvRecord):
            f, st, p, ip, ps = rec.f_size, rec.stride, rec.padding, rec.int_padding, rec.prev_size
            yield (f"C{rec.nb_filters}f{f[0]}x{f[1]}x{f[2]}.{st[0]}x{st[1]}x{st[2]}s{p[0]}x{p[1]}x{p[2]}p"
                   f"{ip[0]}x{ip[1]}x{ip[2]}ip{ps[0]}x{ps[1]}x{ps[2]}x{rec.prev_depth}idim"
                   f"{'%f' % rec.drop_rate}d{'%f' % rec.bias_value}b{rec.activation} \n")
            if rec.yolo is not None:
                y = rec.yolo
                yield f"{y.nb_box} {y.nb_class} {y.nb_param} {y.fit_dim} {y.class_softmax}\n"
                for row in y.priors:
                    yield _g(row) + "\n"
                for row in y.slopes:
                    yield _g(row) + "\n"
            for row in rec.weights:
                yield _g(row) + "\n"
            yield "\n"
        elif isinstance(rec, PoolRecord):
            ps, st, p = rec.p_size, rec.stride, rec.padding
            yield (f"P{ps[0]}x{ps[1]}x{ps[2]}.{st[0]}x{st[1]}x{st[2]}s{p[0]}x{p[1]}x{p[2]}p{rec.global_pool}g_"
                   f"{'%f' % rec.drop_rate}d{rec.pool_type} {rec.activation} \n\n")
        elif isinstance(rec, DenseRecord):
            yield f"D{rec.nb_neurons}n{'%f' % rec.drop_rate}d{'%f' % rec.bias_value}b{rec.activation} \n"
            for row in rec.weights:
                yield _g(row) + "\n"
            yield "\n"
        elif isinstance(rec, NormRecord):
            yield f"N {rec.norm_type} S{rec.group_size}_O{rec.set_off}{rec.activation} \n"
            yield _g(rec.gamma) + "\n"
            yield _g(rec.beta) + "\n"
            yield "\n"
        elif isinstance(rec, LrnRecord):
            yield f"L {rec.range} {'%f' % rec.k} {'%f' % rec.alpha} {'%f' % rec.beta} {rec.activation} \n\n"


# ---------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------


def detect_binary(data: bytes) -> bool:
    """Tell a binary save from a text save by its first bytes.

    Parameters
    ----------
    data : bytes
        The beginning of the file (at least the first line of a text save).

    Returns
    -------
    bool
        ``False`` if the file starts with a text header ``WxHxDxC`` followed by a newline, else ``True``.
    """
    return re.match(rb"\s*\d+x\d+x\d+x\d+[ \t]*\r?\n", data[:128]) is None


def read_cianna_file(path: PathLike, *, binary: bool | None = None, nb_layers: int = 0,
                     check_finite: bool = True) -> CiannaFile:
    """Read a CIANNA network save (binary or text format).

    Parameters
    ----------
    path : str or os.PathLike
        The save file (e.g. ``net_save/net0_s0010.dat``).
    binary : bool or None
        ``True`` binary (``save(bin=1)``), ``False`` text, ``None`` auto-detect (:func:`detect_binary`).
    nb_layers : int
        If > 0, read only the first ``nb_layers`` layers (like ``load(nb_layers=...)``); the rest of the
        file is ignored. It is an error if the file holds fewer layers.
    check_finite : bool
        Reject files whose weights, GN parameters or YOLO priors/slopes contain NaN or infinity (a
        diverged or corrupted save). Hyper-parameters (dropout rate, bias value, LRN constants) must be
        finite regardless.

    Returns
    -------
    CiannaFile
        Header dims and layer records; weights are float32 arrays in CIANNA's layout
        (conv ``(nb_filters, flat_f_size)``, dense ``(in_size, nb_neurons + 1)``, GN ``(nb_group,)``).

    Raises
    ------
    CiannaFormatError
        If the file is malformed, truncated, has trailing garbage or is inconsistent; the message names
        the file, the layer index and type, the byte offset or line, and what was expected.
    FileNotFoundError
        If the file does not exist.
    """
    path = os.fspath(path)
    with open(path, "rb") as fh:
        data = fh.read()
    if binary is None:
        binary = detect_binary(data)
    if binary:
        return _read_binary(data, path, nb_layers, check_finite)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise CiannaFormatError(f"text save contains a non-ASCII byte at offset {exc.start} "
                                "(binary file read as text?)", path=path) from None
    return _read_text(text, path, nb_layers, check_finite)


def _atomic_open(path):
    """Create a temporary file next to ``path`` with the usual permissions; return ``(fd, tmp_path)``."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp_" + os.path.basename(path) + ".", dir=directory)
    try:  # mkstemp creates 0600 files; give the final file the permissions open() would
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
    except OSError:
        pass
    return fd, tmp


def write_cianna_file(cf: CiannaFile, path: PathLike, *, binary: bool = True, check_finite: bool = True) -> None:
    """Write a network in CIANNA's binary or text save format, atomically.

    The file is written to a temporary file in the destination directory, then renamed over ``path``
    (``os.replace``), so readers never see a partial file.

    Parameters
    ----------
    cf : CiannaFile
        The network; validated first with :func:`propagate_shapes` (array shapes must match the
        propagated shapes: conv ``(nb_filters, flat_f_size)``, dense ``(in_size, nb_neurons + 1)``,
        GN ``(nb_group,)``, YOLO priors ``(3, nb_box)`` and slopes ``(6, 3)``).
    path : str or os.PathLike
        Destination file.
    binary : bool
        ``True`` for the binary format (``save(bin=1)``), ``False`` for the text format.
    check_finite : bool
        Refuse to write non-finite weights.

    Raises
    ------
    CiannaFormatError
        If ``cf`` is inconsistent (names the layer), or a string does not fit its field.
    """
    path = os.fspath(path)
    propagate_shapes(cf, path=path, finite=check_finite)
    fd, tmp = _atomic_open(path)
    try:
        if binary:
            with os.fdopen(fd, "wb") as fh:
                for chunk in _binary_chunks(cf, path):
                    fh.write(chunk)
        else:
            with os.fdopen(fd, "w", encoding="ascii", newline="\n") as fh:
                for chunk in _text_chunks(cf):
                    fh.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ---------------------------------------------------------------------------------------------------------
# Forward output files (fwd_res/net{id}_{iter:04d}.dat)
# ---------------------------------------------------------------------------------------------------------


def read_forward_file(path: PathLike, *, binary: bool = True, shape: Sequence[int] | None = None) -> np.ndarray:
    """Read a ``forward()`` output file.

    Parameters
    ----------
    path : str or os.PathLike
        The file (``fwd_res/net{id}_{iter:04d}.dat``).
    binary : bool
        ``True``: raw little-endian float32, no header (``saving=2``). ``False``: text (``saving=1``),
        ``%g``-separated values, one line per example, or all examples on a single line (YOLO output of
        V-1.0, quirk 13); both are accepted.
    shape : sequence of int, optional
        Reshape the values to this shape (one entry may be -1), e.g. ``(N, nb_neurons + 1)`` for a dense
        output or ``(N, C, H, W)`` for a conv/YOLO output.

    Returns
    -------
    numpy.ndarray, float32
        ``shape`` if given; otherwise binary: 1-D ``(n_values,)``; text: ``(n_lines, values_per_line)``.

    Raises
    ------
    CiannaFormatError
        If the file size is not a multiple of 4 bytes (binary), lines have unequal lengths or hold a
        non-numeric token (text), or the values do not fit ``shape``.
    """
    path = os.fspath(path)
    if binary:
        data = Path(path).read_bytes()
        if len(data) % 4:
            raise CiannaFormatError(f"binary forward file of {len(data)} bytes is not a whole number of "
                                    "float32 values (truncated?)", path=path)
        arr = np.frombuffer(data, dtype="<f4").astype(np.float32)
    else:
        rows = []
        with open(path, encoding="ascii", errors="replace") as fh:
            for ln, line in enumerate(fh, 1):
                toks = line.split()
                if not toks:
                    continue
                try:
                    rows.append(np.array(toks, dtype=np.float64).astype(np.float32))
                except ValueError:
                    bad = next(t for t in toks if not _is_number(t, False))
                    raise CiannaFormatError(f"non-numeric token {bad[:40]!r}", path=path,
                                            location=f"line {ln}") from None
        lengths = {len(r) for r in rows}
        if len(lengths) > 1:
            raise CiannaFormatError(f"lines have different numbers of values {sorted(lengths)}", path=path)
        arr = np.stack(rows) if rows else np.zeros((0, 0), np.float32)
    if shape is not None:
        try:
            arr = arr.reshape(tuple(shape))
        except ValueError:
            raise CiannaFormatError(f"{arr.size} values cannot be reshaped to {tuple(shape)}",
                                    path=path) from None
    return arr


def write_forward_file(path: PathLike, values, *, binary: bool = True, single_line: bool = False) -> None:
    """Write a ``forward()`` output file like CIANNA (atomically).

    Parameters
    ----------
    path : str or os.PathLike
        Destination file.
    values : array_like, shape (N, ...)
        Outputs per example; each example is flattened to one row (C order).
    binary : bool
        ``True``: raw little-endian float32. ``False``: text, each value followed by a space (``%g ``),
        one line per example.
    single_line : bool
        Text only: put all examples on one line (the V-1.0 YOLO layout, quirk 13).
    """
    path = os.fspath(path)
    arr = np.asarray(values, dtype=np.float32)
    arr = arr.reshape(arr.shape[0], -1) if arr.ndim > 1 else arr.reshape(1, -1)
    fd, tmp = _atomic_open(path)
    try:
        if binary:
            with os.fdopen(fd, "wb") as fh:
                fh.write(arr.astype("<f4").tobytes())
        else:
            with os.fdopen(fd, "w", encoding="ascii", newline="\n") as fh:
                if single_line:
                    fh.write("".join(_g(row) for row in arr) + "\n")
                else:
                    for row in arr:
                        fh.write(_g(row) + "\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
