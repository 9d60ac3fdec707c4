"""Conversion between CIANNA save files (:class:`~cianna.compat.fileformat.CiannaFile`) and native networks.

``to_network`` builds a :class:`cianna.nn.network.Network` from a parsed CIANNA save (weights copied,
V-1.0 compatibility switches on), ``from_network`` goes back; ``load_cianna`` / ``save_cianna`` wrap them
with :func:`~cianna.compat.fileformat.read_cianna_file` / :func:`~cianna.compat.fileformat.write_cianna_file`.

Mapping (``framework.md`` §6.3):

* CIANNA spatial triples ``(x, y, z)`` = ``(W, H, D)`` ↔ torch order ``(D, H, W)``; a network is 1-D, 2-D or
  3-D depending on which CIANNA dims are non-trivial (size > 1 somewhere, or a kernel / padding > 1 / 0).
* conv weights ``(nb_filters, flat_f_size)``: ``weight = w[:, :-1].reshape(C_out, C_in, kD, kH, kW)``,
  ``bias_weight = w[:, -1]``; effective bias = ``bias_weight · bias_value``.
* dense weights ``(in_size, nb+1)``: ``weight = W[:-1, :nb].T``, ``bias_weight = W[-1, :nb]``; the pivot
  column is not a native parameter: it is kept on the layer (``cianna_pivot``) for an exact write-back,
  otherwise rebuilt as CIANNA creates it (``W[-1, nb] = bias_next / bias_this`` when a dense follows).
* the bias input of each dense layer is computed as V-1.0 does (quirk 1: 0 after a non-linear dense;
  after a linear dense, the pivot value); ``Network(dense_pivot_zeroing=True)`` reproduces the usual case
  and any other case is set explicitly through ``bias_input_scale`` with a warning.
* layer 0 uses the network input bias (``init(bias=...)``), which the file does not store: ``input_bias``
  (default: CIANNA's 0.1).
* YOLO: the file's nb_box/nb_class/nb_param/fit_dim/class_softmax/priors/slopes override the given
  :class:`~cianna.detection.config.YoloConfig` (training settings are not stored), unless ``no_override``.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import replace as dc_replace

import numpy as np
import torch

from cianna.compat.fileformat import (
    CiannaFile,
    ConvRecord,
    DenseRecord,
    LrnRecord,
    NormRecord,
    PoolRecord,
    YoloRecord,
    propagate_shapes,
    read_cianna_file,
    write_cianna_file,
)

__all__ = ["to_network", "from_network", "load_cianna", "save_cianna", "yolo_config_from_record",
           "forward_file_rows", "spatial_ndim"]

_PARTS = ("position", "size", "probability", "objectness", "classes", "parameters")


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------


def _to_torch_order(t, ndim: int) -> tuple:
    """CIANNA ``(x, y, z)`` → torch ``(D, H, W)`` restricted to the first ``ndim`` CIANNA dims."""
    return tuple(int(v) for v in t[:ndim][::-1])


def _to_cianna_order(t, fill: int) -> tuple:
    """Torch ``(D, H, W)`` (1–3 entries) → CIANNA ``(x, y, z)`` padded with ``fill``."""
    v = [int(x) for x in t][::-1]
    return tuple(v + [fill] * (3 - len(v)))


def spatial_ndim(cf: CiannaFile) -> int:
    """Smallest number of spatial dims (1, 2 or 3) that represents the network exactly.

    A CIANNA dim ``d`` (x, y, z) can be dropped when every spatial size in it is 1 and no conv/pool layer
    has a kernel > 1 or a padding > 0 in it.

    Parameters
    ----------
    cf : CiannaFile

    Returns
    -------
    int
    """
    shapes = propagate_shapes(cf)

    def needed(d):
        if any(s.size is not None and s.size[d] != 1 for s in shapes):
            return True
        for r in cf.layers:
            if isinstance(r, ConvRecord) and (r.f_size[d] != 1 or r.padding[d] != 0 or r.prev_size[d] != 1):
                return True
            if isinstance(r, PoolRecord) and not r.global_pool and (r.p_size[d] != 1 or r.padding[d] != 0):
                return True
        return False

    if needed(2):
        return 3
    if needed(1):
        return 2
    return 1


def yolo_config_from_record(y: YoloRecord, base=None, *, no_override: bool = False):
    """Build a :class:`~cianna.detection.config.YoloConfig` from the YOLO block of a save file.

    Parameters
    ----------
    y : YoloRecord
        Layout stored in the file (priors ``(3, nb_box)``, slopes ``(6, 3)``).
    base : YoloConfig, optional
        Training settings (error scales, IoU limits, association options, ...) that the file does not
        store; default ``YoloConfig()`` defaults.
    no_override : bool
        Keep ``base`` entirely (CIANNA ``set_yolo_params(no_override=1)``); its layout must then match.

    Returns
    -------
    YoloConfig
    """
    from cianna.detection.config import SlopeMaxMin, SlopesAndMaxes, YoloConfig

    if base is not None and no_override:
        if (base.nb_box, base.nb_class, base.nb_param) != (y.nb_box, y.nb_class, y.nb_param):
            raise ValueError(f"no_override: the given YoloConfig has nb_box/nb_class/nb_param = "
                             f"{(base.nb_box, base.nb_class, base.nb_param)} but the file stores "
                             f"{(y.nb_box, y.nb_class, y.nb_param)}")
        return base
    slopes = SlopesAndMaxes(**{p: SlopeMaxMin(float(s[0]), float(s[1]), float(s[2]))
                               for p, s in zip(_PARTS, y.slopes.tolist())})
    layout = dict(nb_box=y.nb_box, nb_class=y.nb_class, nb_param=y.nb_param,
                  priors=[[float(v) for v in row] for row in y.priors.tolist()], fit_dim=y.fit_dim,
                  class_softmax=bool(y.class_softmax), slopes_and_maxes=slopes)
    if base is None:
        return YoloConfig(**layout)
    extra = {}
    if len(base.prior_noobj_prob) != y.nb_box:
        extra["prior_noobj_prob"] = [0.2] * y.nb_box
    if len(base.param_ind_scales) != y.nb_param:
        extra["param_ind_scales"] = [1.0] * y.nb_param
    return dc_replace(base, **layout, **extra)


def _dense_bias_inputs(cf: CiannaFile, input_bias: float) -> list:
    """Bias input actually seen by every dense layer in CIANNA V-1.0 (None for other layers)."""
    out, prev = [], None
    prev_in = None
    for i, r in enumerate(cf.layers):
        if not isinstance(r, DenseRecord):
            out.append(None)
            prev, prev_in = r, None
            continue
        if i == 0:
            b = input_bias
        elif not isinstance(prev, DenseRecord):
            b = r.bias_value
        elif not prev.activation.startswith("LIN"):
            b = 0.0  # quirk 1: RELU/LOGI/SMAX write 0 into the pivot
        else:
            piv = prev.weights[:, -1].astype(np.float64)
            if np.any(piv[:-1] != 0):
                warnings.warn(f"layer {i - 1} (dense, LIN): its pivot column has non-zero entries outside the "
                              "bias row; the next layer's bias input then depends on the data in CIANNA, "
                              "which the native network does not reproduce (only the bias-row term is kept)",
                              stacklevel=3)
            b = float(piv[-1]) * prev_in
        out.append(float(b))
        prev, prev_in = r, float(b)
    return out


# ---------------------------------------------------------------------------------------------------------
# CIANNA file -> native network
# ---------------------------------------------------------------------------------------------------------


def to_network(cf: CiannaFile, *, input_bias: float = 0.1, yolo_config=None, no_override: bool = False,
               seed: int = 0, ndim: int | None = None):
    """Build a native network holding the weights of a CIANNA save.

    Parameters
    ----------
    cf : CiannaFile
        Parsed save (:func:`~cianna.compat.fileformat.read_cianna_file`).
    input_bias : float, default 0.1
        Network input bias (``init(bias=...)``), not stored in the file; used by layer 0.
    yolo_config : YoloConfig, optional
        Training settings for a YOLO output layer; the file's layout overrides it (see
        :func:`yolo_config_from_record`).
    no_override : bool
        Keep ``yolo_config`` as is instead of the file's YOLO layout.
    seed : int
        Seed of the network (only dropout sampling uses it; all weights come from the file).
    ndim : int, optional
        Spatial dims of the native network (default :func:`spatial_ndim`; a larger value keeps size-1 dims).

    Returns
    -------
    cianna.nn.network.Network
        Input shape ``(C, *spatial)`` in torch order, in eval mode, with ``dense_pivot_zeroing=True``.

    Raises
    ------
    CiannaFormatError
        If ``cf`` is inconsistent.
    ValueError
        If the native network rejects the architecture (message names the layer).
    """
    from cianna.nn.network import Network

    propagate_shapes(cf)
    nd = spatial_ndim(cf) if ndim is None else int(ndim)
    if nd < spatial_ndim(cf) or nd not in (1, 2, 3):
        raise ValueError(f"ndim={ndim}: this network needs at least {spatial_ndim(cf)} spatial dims")
    input_shape = (cf.in_channels, *_to_torch_order(cf.input_dims, nd))
    net = Network(input_shape, bias=float(np.float32(input_bias)), seed=seed, dense_pivot_zeroing=True)
    bias_inputs = _dense_bias_inputs(cf, float(np.float32(input_bias)))
    prev = None
    for i, r in enumerate(cf.layers):
        try:
            if isinstance(r, ConvRecord):
                act = r.activation
                if r.yolo is not None:
                    from cianna.detection.yolo_activation import YoloActivation

                    act = YoloActivation(yolo_config_from_record(r.yolo, yolo_config, no_override=no_override),
                                         input_shape=input_shape)
                in_shape = None
                if isinstance(prev, DenseRecord):
                    in_shape = (r.prev_depth, *_to_torch_order(r.prev_size, nd))
                net.conv(r.nb_filters, _to_torch_order(r.f_size, nd), stride=_to_torch_order(r.stride, nd),
                         padding=_to_torch_order(r.padding, nd), int_padding=_to_torch_order(r.int_padding, nd),
                         activation=act, bias=r.bias_value, drop_rate=r.drop_rate, input_shape=in_shape)
                layer = net.layers[-1]
                w = torch.from_numpy(r.weights[:, :-1].copy())
                with torch.no_grad():
                    layer.weight.copy_(w.reshape(layer.weight.shape))
                    layer.bias_weight.copy_(torch.from_numpy(r.weights[:, -1].copy()))
            elif isinstance(r, PoolRecord):
                net.pool(_to_torch_order(r.p_size, nd), stride=_to_torch_order(r.stride, nd),
                         padding=_to_torch_order(r.padding, nd), pool_type=r.pool_type, activation=r.activation,
                         global_pool=bool(r.global_pool), drop_rate=r.drop_rate)
            elif isinstance(r, DenseRecord):
                net.dense(r.nb_neurons, activation=r.activation, bias=r.bias_value, drop_rate=r.drop_rate)
                layer = net.layers[-1]
                nb = r.nb_neurons
                with torch.no_grad():
                    layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(r.weights[:-1, :nb].T)))
                    layer.bias_weight.copy_(torch.from_numpy(r.weights[-1, :nb].copy()))
                layer.cianna_pivot = r.weights[:, nb].copy()
            elif isinstance(r, NormRecord):
                net.norm(r.group_size, set_off=r.set_off, activation=r.activation)
                layer = net.layers[-1]
                with torch.no_grad():
                    layer.gamma.copy_(torch.from_numpy(r.gamma))
                    layer.beta.copy_(torch.from_numpy(r.beta))
            elif isinstance(r, LrnRecord):
                net.lrn(r.range, k=r.k, alpha=r.alpha, beta=r.beta, activation=r.activation)
            else:
                raise TypeError(f"unsupported record {type(r).__name__}")
        except (ValueError, TypeError) as exc:
            raise ValueError(f"layer {i} ({getattr(r, 'kind', '?')}): cannot build the native layer: {exc}") from exc
        prev = r
    # dense bias inputs that the network's quirk switch does not cover
    for i, (layer, b) in enumerate(zip(net.layers, bias_inputs)):
        if b is None or i == 0:
            continue
        native = layer.bias_value * layer.bias_input_scale
        if not math.isclose(native, b, rel_tol=1e-6, abs_tol=1e-12):
            warnings.warn(f"layer {i} (dense): CIANNA V-1.0 feeds it a bias input of {b:g}, not the "
                          f"{native:g} the native network would use; set explicitly through bias_input_scale "
                          "(Network.set_quirks() would reset it)", stacklevel=2)
            layer.bias_input_scale = b / layer.bias_value if layer.bias_value != 0 else 0.0
    net.eval()
    return net


# ---------------------------------------------------------------------------------------------------------
# native network -> CIANNA file
# ---------------------------------------------------------------------------------------------------------


def _yolo_record(activation) -> YoloRecord:
    cfg = activation.yolo_config
    if cfg is None:
        raise ValueError("the YOLO activation has no YoloConfig")
    priors = np.zeros((3, cfg.nb_box), np.float32)
    for d, row in enumerate(cfg.priors[:3]):
        priors[d] = row
    slopes = np.array([[getattr(cfg.slopes_and_maxes, p).slope, getattr(cfg.slopes_and_maxes, p).max,
                        getattr(cfg.slopes_and_maxes, p).min] for p in _PARTS], np.float32)
    return YoloRecord(cfg.nb_box, cfg.nb_class, cfg.nb_param, cfg.fit_dim, int(bool(cfg.class_softmax)),
                      priors, slopes)


def from_network(net) -> CiannaFile:
    """Describe a native network as a CIANNA save.

    Parameters
    ----------
    net : cianna.nn.network.Network
        Any network made of conv, pool, dense, norm (GN) and LRN layers.

    Returns
    -------
    CiannaFile
        Weights copied to float32 arrays in CIANNA's layout. The dense pivot column comes from
        ``layer.cianna_pivot`` when present (networks made by :func:`to_network`), otherwise it is
        rebuilt as CIANNA creates it.

    Raises
    ------
    ValueError
        On a layer type the CIANNA format cannot hold.
    """
    cin, *sp = net.input_shape
    cf = CiannaFile(_to_cianna_order(sp, 1), cin, [])
    layers = list(net.layers)
    for i, layer in enumerate(layers):
        act = layer.activation.to_string()
        kind = layer.kind
        if kind == "conv":
            in_c, *in_sp = layer.in_shape
            w = layer.weight.detach().to(torch.float32).cpu().reshape(layer.out_channels, -1).numpy()
            b = layer.bias_weight.detach().to(torch.float32).cpu().numpy()
            bias_value = net.input_bias if i == 0 else layer.bias_value
            cf.layers.append(ConvRecord(
                layer.out_channels, _to_cianna_order(layer.kernel_size, 1), _to_cianna_order(layer.stride, 1),
                _to_cianna_order(layer.padding, 0), _to_cianna_order(layer.int_padding, 0),
                _to_cianna_order(in_sp, 1), in_c, layer.drop_rate, bias_value, act,
                np.concatenate([w, b[:, None]], axis=1),
                _yolo_record(layer.activation) if layer.activation.name == "YOLO" else None))
        elif kind == "pool":
            k = _to_cianna_order(layer.kernel_size, 1)
            stride = k if layer.global_pool else _to_cianna_order(layer.stride, 1)
            cf.layers.append(PoolRecord(k, stride, _to_cianna_order(layer.padding, 0), int(layer.global_pool),
                                        layer.drop_rate, layer.pool_type, act))
        elif kind == "dense":
            nb = layer.out_features
            w = layer.weight.detach().to(torch.float32).cpu().numpy()
            W = np.zeros((w.shape[1] + 1, nb + 1), np.float32)
            W[:-1, :nb] = w.T
            W[-1, :nb] = layer.bias_weight.detach().to(torch.float32).cpu().numpy()
            piv = getattr(layer, "cianna_pivot", None)
            if piv is not None and np.shape(piv) == (W.shape[0],):
                W[:, nb] = piv
            elif i + 1 < len(layers) and layers[i + 1].kind == "dense":
                this_bias = net.input_bias if i == 0 else layer.bias_value
                W[-1, nb] = layers[i + 1].bias_value / this_bias if this_bias != 0 else 0.0
            bias_value = net.input_bias if i == 0 else layer.bias_value
            cf.layers.append(DenseRecord(nb, layer.drop_rate, bias_value, act, W))
        elif kind == "norm":
            cf.layers.append(NormRecord("GN", layer.group_size, layer.set_off, act,
                                        layer.gamma.detach().to(torch.float32).cpu().numpy(),
                                        layer.beta.detach().to(torch.float32).cpu().numpy()))
        elif kind == "lrn":
            cf.layers.append(LrnRecord(layer.range, layer.k, layer.alpha, layer.beta, act))
        else:
            raise ValueError(f"layer {i}: type {kind!r} has no CIANNA save-file representation")
    propagate_shapes(cf)
    return cf


# ---------------------------------------------------------------------------------------------------------
# file-level wrappers and forward-file layout
# ---------------------------------------------------------------------------------------------------------


def load_cianna(path, *, binary: bool | None = None, nb_layers: int = 0, input_bias: float = 0.1,
                yolo_config=None, no_override: bool = False, seed: int = 0):
    """Read a CIANNA save file into a native network (``load(file, ..., bin=...)``).

    Parameters
    ----------
    path : str or os.PathLike
    binary : bool or None
        Format (None = auto-detect).
    nb_layers : int
        Load only the first ``nb_layers`` layers (0 = all).
    input_bias, yolo_config, no_override, seed
        See :func:`to_network`.

    Returns
    -------
    cianna.nn.network.Network
    """
    return to_network(read_cianna_file(path, binary=binary, nb_layers=nb_layers), input_bias=input_bias,
                      yolo_config=yolo_config, no_override=no_override, seed=seed)


def save_cianna(net, path, *, binary: bool = True) -> None:
    """Write a native network as a CIANNA save file (``save(file, bin=...)``), atomically.

    Parameters
    ----------
    net : cianna.nn.network.Network
    path : str or os.PathLike
    binary : bool
        Binary (default) or text format.
    """
    write_cianna_file(from_network(net), path, binary=binary)


def forward_file_rows(net, output: torch.Tensor, *, raw_output: bool | None = None) -> np.ndarray:
    """Lay out network outputs as the rows of CIANNA's ``forward()`` file (``framework.md`` §5.8).

    Parameters
    ----------
    net : cianna.nn.network.Network
    output : torch.Tensor, shape (N, *net.output_shape)
        Activated outputs of the last layer.
    raw_output : bool, optional
        YOLO only: write the activated outputs instead of box corners (default: the config's
        ``raw_output``).

    Returns
    -------
    numpy.ndarray, shape (N, values_per_example), float32
        Dense output: ``nb_neurons + 1`` values (trailing pivot, always 0). Conv/pool: ``C·D·H·W``
        channel-major. YOLO: ``cianna_forward_output`` (box corners in input pixels, then probability,
        objectness, classes, parameters).
    """
    last = net.layers[-1]
    out = output.detach()
    if last.activation.name == "YOLO":
        from cianna.detection.decode import cianna_forward_output

        out = cianna_forward_output(out, last.activation.yolo_config, net.input_shape[1:], raw_output=raw_output)
    rows = out.reshape(out.shape[0], -1).to(torch.float32).cpu().numpy()
    if last.kind == "dense":
        rows = np.concatenate([rows, np.zeros((rows.shape[0], 1), np.float32)], axis=1)
    return rows
