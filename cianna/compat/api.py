"""The module-level CIANNA V-1.0 Python interface on top of the native framework (``framework.md`` §2).

``import cianna.compat as cnn`` replaces ``import CIANNA as cnn``: same function names, keywords, defaults
and return values, same files on disk (``net_save/``, ``fwd_res/``, ``error.txt``) and console output. Where
CIANNA fails silently (unparsable arguments, unknown activation names, NaN loss, missing datasets) these
functions raise an exception that says what is wrong. Differences are listed in ``docs/compat.md``.

Dimensions follow CIANNA: arrays ``[x, y, z]`` = ``[W, H, D]`` (missing entries 1 for sizes/strides, 0 for
paddings); dataset rows are flat float32 vectors in channel-first order ``[C][D][H][W]``, W fastest.
"""
from __future__ import annotations

import math
import os
import time
import warnings

import numpy as np
import torch

from cianna.compat.console import (ProgressBar, confusion_display, control_line, forward_line, say,
                                   yolo_lines)
from cianna.compat.state import DATASET_NAMES, MAX_NETWORKS_NB, NetState, registry
from cianna.compat.yolo_params import yolo_config_kwargs
from cianna.train.confusion import confusion_matrix
from cianna.train.data import ArrayDataset
from cianna.train.optim import CiannaSGD, cianna_learning_rate
from cianna.train.precision import CiannaUserWarning, precision_context, resolve_device, resolve_precision
from cianna.train.trainer import DivergenceError

__all__ = ["init", "create_dataset", "delete_dataset", "swap_data_buffers", "linear", "relu", "logistic",
           "softmax", "yolo", "conv", "pool", "dense", "norm", "lrn", "set_yolo_params", "train", "forward",
           "perf_eval", "save", "load", "set_frozen_layers", "print_arch_tex", "free_network", "reset",
           "get_network", "set_compat_switches", "get_compat_switches"]

_COMP_METHODS = {"C_CUDA": "cuda", "C_BLAS": "cpu", "C_NAIV": "cpu"}
_INIT_FCTS = {"xavier": "xavier", "xavier_u": "xavier_U", "lecun": "lecun", "lecun_u": "lecun_U",
              "normal": "normal", "uniform": "uniform", "glorot_u": "glorot_U"}


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------


def _get(network) -> NetState:
    if network is None:
        if registry.last is None:
            raise RuntimeError("no network: call init(...) first")
        network = registry.last
    try:
        network = int(network)
    except (TypeError, ValueError):
        raise TypeError(f"network={network!r} must be an integer network id") from None
    if network not in registry.networks:
        raise ValueError(f"network {network} does not exist (existing ids: {sorted(registry.networks)}); "
                         "create it with init(..., network=id)")
    return registry.networks[network]


def _int_list(value, name: str, *, max_len: int = 3) -> list:
    """CIANNA int array (list, tuple or NumPy array of 1..max_len integers) → list of int."""
    if value is None or np.isscalar(value) or isinstance(value, (int, float)):
        raise TypeError(f"{name}={value!r} must be an array of 1 to {max_len} integers, e.g. "
                        f"np.array([5, 5], dtype='int') (CIANNA [x, y, z] order)")
    arr = np.asarray(value)
    if arr.ndim != 1 or not 1 <= arr.size <= max_len:
        raise ValueError(f"{name}={value!r} must hold 1 to {max_len} integers, got shape {arr.shape}")
    if arr.dtype.kind not in "iu" and not np.all(np.asarray(arr, dtype=np.float64) % 1 == 0):
        raise TypeError(f"{name}={value!r} must hold integers")
    return [int(v) for v in arr]


def _xyz(value, name: str, fill: int, default=None) -> tuple:
    """CIANNA ``[x, y, z]`` array with missing entries ``fill``."""
    if value is None:
        value = default if default is not None else [fill]
    v = _int_list(value, name)
    return tuple(v + [fill] * (3 - len(v)))


def _torch_order(xyz: tuple, ndim: int, name: str, trivial: int) -> tuple:
    """``(x, y, z)`` → torch ``(D, H, W)`` restricted to ``ndim`` dims; unused dims must be ``trivial``."""
    if any(v != trivial for v in xyz[ndim:]):
        raise ValueError(f"{name}={list(xyz)}: the network input has {ndim} spatial dim(s) "
                         f"(init in_dim), so entries beyond the first {ndim} must be {trivial}")
    return tuple(xyz[:ndim][::-1])


def _check_prev_layer(st: NetState, prev_layer) -> None:
    last = len(st.net.layers) - 1
    if prev_layer is not None and int(prev_layer) not in (last, -1):  # -1: CIANNA's "last layer" sentinel
        raise NotImplementedError(f"prev_layer={prev_layer}: only sequential networks are supported "
                                  f"(the previous layer must be the last one, {last})")


def _init_name(init_fct: str) -> str:
    key = str(init_fct).lower()
    if key not in _INIT_FCTS:
        raise ValueError(f"init_fct={init_fct!r}: expected one of xavier, xavier_U, lecun, lecun_U, normal, "
                         "uniform (CIANNA silently used xavier for unknown names)")
    return _INIT_FCTS[key]


def _scaling(init_scaling):
    return None if init_scaling is None or float(init_scaling) <= 0 else float(init_scaling)


def _layer_id(st: NetState) -> int:
    return len(st.net.layers) - 1


def _new_network(st_shape, bias):
    from cianna.nn import Network

    return Network(st_shape, bias=bias, dense_pivot_zeroing=registry.switches.dense_pivot_zeroing)


# ---------------------------------------------------------------------------------------------------------
# init and compat switches
# ---------------------------------------------------------------------------------------------------------


def init(in_dim, in_nb_ch, out_dim, bias=0.1, b_size=8, comp_meth="C_CUDA", network=None, dynamic_load=1,
         mixed_precision="off", inference_only=0, no_logo=0, adv_size=30):
    """Create a network (CIANNA ``init``).

    Parameters
    ----------
    in_dim : array of 1-3 int
        Spatial input dims ``[W]``, ``[W, H]`` or ``[W, H, D]`` (missing dims = 1). The number of entries
        sets the dimensionality of the native network.
    in_nb_ch : int
        Input channels.
    out_dim : int
        Length of one target row.
    bias : float, default 0.1
        Network input bias: constant bias input of the first layer.
    b_size : int, default 8
        Batch size; 1 = SGD mode (one random example per step); ``<= 0`` → 16.
    comp_meth : {"C_CUDA", "C_BLAS", "C_NAIV"}, default "C_CUDA"
        C_CUDA → the GPU (falls back to the CPU with a warning when none is present); C_BLAS/C_NAIV → CPU.
    network : int, optional
        Id of the network to create (default: next free id, at most 9).
    dynamic_load : int, default 1
        Accepted; datasets always stay in host memory and batches are moved to the device when used.
    mixed_precision : str, default "off"
        ``"off"``/``"FP32C_FP32A"``, ``"on"``/``"FP16C_FP32A"``, ``"TF32C_FP32A"``, ``"FP16C_FP16A"``,
        ``"BF16C_FP32A"`` (``torch.autocast`` on the device).
    inference_only : int, default 0
        1: ``train()`` refuses to run.
    no_logo : int, default 0
        1: skip the banner.
    adv_size : int, default 30
        Progress-bar width (0 → 30).

    Returns
    -------
    None

    Raises
    ------
    ValueError
        Bad dims, unknown compute method or precision, network id out of range.
    """
    dims = _int_list(in_dim, "in_dim")
    if any(d < 1 for d in dims):
        raise ValueError(f"in_dim={dims} must be positive")
    in_nb_ch, out_dim = int(in_nb_ch), int(out_dim)
    if in_nb_ch < 1 or out_dim < 1:
        raise ValueError(f"in_nb_ch={in_nb_ch} and out_dim={out_dim} must be >= 1")
    meth = str(comp_meth).upper()
    if meth not in _COMP_METHODS:
        raise ValueError(f"comp_meth={comp_meth!r}: expected 'C_CUDA', 'C_BLAS' or 'C_NAIV'")
    if network is None:
        network = max(registry.networks, default=-1) + 1
    network = int(network)
    if not 0 <= network < MAX_NETWORKS_NB:
        raise ValueError(f"network={network}: CIANNA supports ids 0 to {MAX_NETWORKS_NB - 1}")
    b_size = int(b_size) if int(b_size) > 0 else 16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CiannaUserWarning)
        device = resolve_device(_COMP_METHODS[meth])
    if meth == "C_CUDA" and device.type != "cuda":
        warnings.warn("comp_meth='C_CUDA' but no GPU is available: running on the CPU", CiannaUserWarning,
                      stacklevel=2)
    precision = resolve_precision(mixed_precision)
    xyz = tuple(dims + [1] * (3 - len(dims)))
    st = NetState(id=network, in_dim=xyz, ndim=len(dims), in_nb_ch=in_nb_ch, out_dim=out_dim,
                  bias=float(np.float32(bias)), b_size=b_size, comp_meth=meth, device=device, precision=precision,
                  dynamic_load=int(dynamic_load), inference_only=int(inference_only),
                  adv_size=int(adv_size) if int(adv_size) > 0 else 30, net=None)
    st.net = _new_network(st.input_shape, st.bias)
    registry.networks[network] = st  # a re-used id starts afresh (empty YOLO block, as CIANNA's init)
    registry.last = network
    if not int(no_logo) and not registry.logo_shown:
        from cianna import __version__

        say(f"cianna {__version__} -- CIANNA V-1.0 compatible interface (PyTorch {torch.__version__})")
        registry.logo_shown = True
    say(f"Network {network}: input {'x'.join(map(str, xyz))}x{in_nb_ch}, out_dim {out_dim}, batch {b_size}, "
        f"{meth} on {device}, {precision}")


def set_compat_switches(**switches) -> dict:
    """Turn CIANNA V-1.0 compatibility behaviours on or off (extension; see ``docs/compat.md``).

    Parameters
    ----------
    **switches : bool
        Any field of :class:`cianna.compat.state.CompatSwitches` (``dense_pivot_zeroing``,
        ``strict_size_shrink``, ``full_window_avg_grad``, ``error_not_divided_by_repeat``,
        ``yolo_text_single_line``, ``yolo_params_network0``, ``pool_size_from_input``,
        ``yolo_association_quirks``). They apply to layers and calls made afterwards.

    Returns
    -------
    dict
        All switches after the change.

    Raises
    ------
    ValueError
        On an unknown switch name.
    """
    known = registry.switches.as_dict()
    for name, value in switches.items():
        if name not in known:
            raise ValueError(f"unknown compatibility switch {name!r}; known: {', '.join(known)}")
        setattr(registry.switches, name, bool(value))
    return registry.switches.as_dict()


def get_compat_switches() -> dict:
    """Current compatibility switches (extension)."""
    return registry.switches.as_dict()


def get_network(network=None):
    """The native :class:`cianna.nn.Network` behind a CIANNA network id (extension)."""
    return _get(network).net


def free_network(network=None):
    """Forget a network and its datasets (CIANNA V-1.0.1+ ``free_network``).

    Parameters
    ----------
    network : int, optional
        Default: the last network created.
    """
    st = _get(network)
    del registry.networks[st.id]
    if registry.last == st.id:
        registry.last = max(registry.networks, default=None)


def reset():
    """Forget every network and restore the default compatibility switches (extension, for tests)."""
    registry.reset()


# ---------------------------------------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------------------------------------


def _dataset_name(dataset) -> str:
    name = str(dataset)
    if name not in DATASET_NAMES:
        raise ValueError(f"dataset={dataset!r}: expected one of {', '.join(DATASET_NAMES)}")
    return name


def _as_rows(array, name: str, what: str, size: int, width: int) -> np.ndarray:
    arr = np.asarray(array)
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise TypeError(f"create_dataset({name!r}): {what} must be a numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"create_dataset({name!r}): {what} must be 2-D (examples, values), got shape {arr.shape}")
    if arr.shape[0] < size:
        raise ValueError(f"create_dataset({name!r}, size={size}): {what} has only {arr.shape[0]} rows")
    if arr.shape[1] != width:
        raise ValueError(f"create_dataset({name!r}): {what} rows have {arr.shape[1]} values, expected {width}")
    return np.array(arr[:size], dtype=np.float32, order="C", copy=True)


def create_dataset(dataset, size, input, target, network=None, silent=0):
    """Create a dataset of a network (CIANNA ``create_dataset``); the arrays are copied.

    Parameters
    ----------
    dataset : {"TRAIN", "VALID", "TEST", "TRAIN_buf", "VALID_buf", "TEST_buf"}
    size : int
        Number of examples (the first ``size`` rows are used).
    input : numpy.ndarray, shape (>= size, W*H*D*C)
        Flat channel-first rows ``[C][D][H][W]`` (W fastest), without the bias value. Converted to float32
        when needed (CIANNA requires float32).
    target : numpy.ndarray, shape (>= size, out_dim)
        Target rows (zeros for unlabelled data).
    network : int, optional
    silent : int, default 0
        1: no log line.

    Raises
    ------
    ValueError, TypeError
        Unknown dataset name, wrong shapes or dtype, NaN/inf values.
    """
    st = _get(network)
    name = _dataset_name(dataset)
    size = int(size)
    if size < 1:
        raise ValueError(f"create_dataset({name!r}): size={size} must be >= 1")
    x = _as_rows(input, name, "input", size, st.input_dim)
    y = _as_rows(target, name, "target", size, st.out_dim)
    st.datasets[name] = ArrayDataset(x, y, name=name)
    if not int(silent):
        say(f"Dataset {name} of network {st.id}: {size} examples, {math.ceil(size / st.b_size)} batches "
            f"of {st.b_size}")


def delete_dataset(dataset, network=None, silent=0):
    """Free a dataset (CIANNA ``delete_dataset``).

    Parameters
    ----------
    dataset : str
        Dataset name (see :func:`create_dataset`).
    network : int, optional
    silent : int, default 0

    Raises
    ------
    ValueError
        If the dataset does not exist.
    """
    st = _get(network)
    name = _dataset_name(dataset)
    if name not in st.datasets:
        raise ValueError(f"delete_dataset: dataset {name} of network {st.id} does not exist")
    del st.datasets[name]
    if not int(silent):
        say(f"Dataset {name} of network {st.id} deleted")


def swap_data_buffers(dataset, network=None):
    """Exchange a dataset with its ``_buf`` twin (CIANNA ``swap_data_buffers``; no copy).

    Parameters
    ----------
    dataset : {"TRAIN", "VALID", "TEST"}
    network : int, optional

    Raises
    ------
    ValueError
        On another name.
    """
    st = _get(network)
    name = str(dataset)
    if name not in ("TRAIN", "VALID", "TEST"):
        raise ValueError(f"swap_data_buffers({dataset!r}): expected 'TRAIN', 'VALID' or 'TEST'")
    a, b = st.datasets.pop(name, None), st.datasets.pop(name + "_buf", None)
    if b is not None:
        st.datasets[name] = b
    if a is not None:
        st.datasets[name + "_buf"] = a


# ---------------------------------------------------------------------------------------------------------
# activation strings
# ---------------------------------------------------------------------------------------------------------


def linear():
    """Linear activation string ``"LIN"``."""
    return "LIN"


def relu(saturation=None, leaking=None):
    """Saturated leaky ReLU string: ``"RELU"`` + ``_S%.2f`` / ``_L%.2f`` for the values given.

    Parameters
    ----------
    saturation : float, optional
        Saturation level (CIANNA default 800).
    leaking : float, optional
        Leak factor (CIANNA default 0.05; 0 for a true ReLU).
    """
    s = "RELU"
    if saturation is not None:
        s += f"_S{float(saturation):.2f}"
    if leaking is not None:
        s += f"_L{float(leaking):.2f}"
    return s


def logistic(saturation=None, beta=None):
    """Clamped logistic string: ``"LOGI"`` + ``_S%.2f`` / ``_B%.2f`` for the values given.

    Parameters
    ----------
    saturation : float, optional
        Clamp of ``−β·x`` (CIANNA default 6).
    beta : float, optional
        Steepness (CIANNA default 1).
    """
    s = "LOGI"
    if saturation is not None:
        s += f"_S{float(saturation):.2f}"
    if beta is not None:
        s += f"_B{float(beta):.2f}"
    return s


def softmax():
    """Softmax activation string ``"SMAX"`` (output layer only)."""
    return "SMAX"


def yolo():
    """YOLO activation string ``"YOLO"`` (output conv layer; see :func:`set_yolo_params`)."""
    return "YOLO"


# ---------------------------------------------------------------------------------------------------------
# YOLO
# ---------------------------------------------------------------------------------------------------------


def set_yolo_params(nb_box=0, nb_class=0, nb_param=0, max_nb_obj_per_image=0, prior_size=None,
                    prior_noobj_prob=None, error_scales=None, slopes_and_maxes=None, param_ind_scales=None,
                    IoU_limits=None, fit_parts=None, IoU_type=None, prior_dist_type=None, strict_box_size=0,
                    fit_dim=0, rand_startup=-1, rand_prob_best_box_assoc=0.0, rand_prob=0.0,
                    min_prior_forced_scaling=0.0, class_softmax=0, diff_flag=0, network=None, error_type=None,
                    no_override=0, raw_output=0):
    """Configure the YOLO output layer of a network (CIANNA ``set_yolo_params``, ``yolo.md`` §2).

    Call it before creating the YOLO conv layer, and before ``load()`` of a YOLO model (a call without
    arguments is enough for inference: the file then provides the layout unless ``no_override=1``).

    Parameters
    ----------
    nb_box, nb_class, nb_param : int, default 0
        Boxes per cell, classes, extra regressed parameters.
    max_nb_obj_per_image : int, default 0
        If > 0, ``out_dim`` must equal ``1 + max·(7 + nb_param + diff_flag)``.
    prior_size : float array (fit_dim, nb_box), optional
        Prior sizes in input pixels (rows: widths, heights, depths).
    prior_noobj_prob : float array (nb_box,), optional
        Background weights (default 0.2).
    error_scales : float array (6,), optional
        :func:`set_error_scales` output.
    slopes_and_maxes : float array (6, 3), optional
        :func:`set_slopes_and_maxes` output.
    param_ind_scales : float array (nb_param,), optional
    IoU_limits : float array (8,), optional
        :func:`set_IoU_limits` output.
    fit_parts : int array (6,), optional
        :func:`set_fit_parts` output.
    IoU_type : {"IoU", "GIoU", "DIoU", "DIoU2"}, default "GIoU" (warning if absent)
    prior_dist_type : {"IoU", "SIZE", "OFFSET"}, default "SIZE" (warning if absent)
    strict_box_size : int, default 0
    fit_dim : int, default 0
        0 → number of rows of ``prior_size``.
    rand_startup : int, default -1
        -1 → 64000 images.
    rand_prob_best_box_assoc, rand_prob, min_prior_forced_scaling : float, default 0
    class_softmax, diff_flag : int, default 0
    network : int, optional
        **Default network 0** (CIANNA quirk 15, switch ``yolo_params_network0``; otherwise the last network).
    error_type : {"natural", "complete"}, default "natural" (warning if absent)
    no_override : int, default 0
        1: keep these settings when loading a YOLO model.
    raw_output : int, default 0
        1: ``forward()`` writes raw activated outputs instead of box corners.

    Returns
    -------
    int
        ``nb_box·(8 + nb_class + nb_param)``, the filter count of the YOLO conv.

    Raises
    ------
    ValueError
        Inconsistent parameters, ``out_dim`` mismatch, or a layout already set.
    """
    if network is None and registry.switches.yolo_params_network0:
        network = 0
    st = _get(network)
    params = dict(nb_box=nb_box, nb_class=nb_class, nb_param=nb_param,
                  max_nb_obj_per_image=max_nb_obj_per_image, prior_size=prior_size,
                  prior_noobj_prob=prior_noobj_prob, error_scales=error_scales, slopes_and_maxes=slopes_and_maxes,
                  param_ind_scales=param_ind_scales, IoU_limits=IoU_limits, fit_parts=fit_parts,
                  IoU_type=IoU_type, prior_dist_type=prior_dist_type, strict_box_size=strict_box_size,
                  fit_dim=fit_dim, rand_startup=rand_startup, rand_prob_best_box_assoc=rand_prob_best_box_assoc,
                  rand_prob=rand_prob, min_prior_forced_scaling=min_prior_forced_scaling,
                  class_softmax=class_softmax, diff_flag=diff_flag, error_type=error_type,
                  no_override=no_override, raw_output=raw_output)
    if st.yolo_params is not None and int(st.yolo_params["params"]["nb_box"]) > 0:
        raise ValueError(f"set_yolo_params: network {st.id} already has a YOLO layout (CIANNA allows one call)")
    kwargs = yolo_config_kwargs(params)
    if int(nb_box) > 0:
        cfg = _yolo_config(kwargs)  # validates now rather than at layer creation
        mx = int(max_nb_obj_per_image)
        if mx > 0 and st.out_dim != 1 + mx * cfg.target_stride:
            raise ValueError(f"set_yolo_params: out_dim={st.out_dim} of network {st.id} must be 1 + "
                             f"max_nb_obj_per_image*(7+nb_param+diff_flag) = {1 + mx * cfg.target_stride}")
    st.yolo_params = {"params": params, "kwargs": kwargs}
    return int(nb_box) * (8 + int(nb_class) + int(nb_param))


def _yolo_config(kwargs: dict):
    from cianna.detection.config import YoloConfig

    q = registry.switches.yolo_association_quirks
    return YoloConfig(**kwargs, compat_prior_index_quirk=q, compat_zero_distance_quirk=q)


def _yolo_activation(st: NetState, nb_filters: int):
    from cianna.detection.yolo_activation import YoloActivation

    if st.yolo_params is None or int(st.yolo_params["params"]["nb_box"]) <= 0:
        raise ValueError(f"network {st.id}: call set_yolo_params(nb_box=..., prior_size=..., network={st.id}) "
                         "before creating the YOLO layer")
    cfg = _yolo_config(st.yolo_params["kwargs"])
    if nb_filters != cfg.nb_channels:
        raise ValueError(f"the YOLO conv needs nb_filters = nb_box*(8+nb_class+nb_param) = {cfg.nb_channels}, "
                         f"got {nb_filters}")
    return YoloActivation(cfg, input_shape=st.net.input_shape)


# ---------------------------------------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------------------------------------


def conv(f_size, nb_filters, stride=None, padding=None, int_padding=None, activation="RELU", bias=None,
         prev_layer=None, input_shape=None, drop_rate=0.0, init_fct="xavier", init_scaling=-1, network=None):
    """Append a convolution layer (CIANNA ``conv``).

    Parameters
    ----------
    f_size : int array [x, y, z]
        Filter size (missing entries 1).
    nb_filters : int
    stride : int array, default [1, 1, 1]
    padding : int array, default [0, 0, 0]
    int_padding : int array, default [0, 0, 0]
        Zeros inserted between input pixels (transposed convolution).
    activation : str, default "RELU"
        ``relu()``, ``logistic()``, ``linear()``, ``softmax()``, ``yolo()`` strings.
    bias : float, optional
        Constant bias input; default by activation (RELU 0.1, LOGI -1, LIN/YOLO 0.5, SMAX 0.1); ignored on
        layer 0 (the ``init`` bias is used).
    prev_layer : int, optional
        Must be the last layer (networks are sequential).
    input_shape : int array [W, H, D, C], optional
        Reshape of a preceding dense layer's output (required after a dense layer).
    drop_rate : float, default 0
        Dropout on the pre-activation output (active if > 0.01).
    init_fct : str, default "xavier"
        ``xavier``, ``xavier_U``, ``lecun``, ``lecun_U``, ``normal``, ``uniform``.
    init_scaling : float, default -1
        Multiplies the std/limit (-1 → 1); the std/half-width itself for ``normal``/``uniform``.
    network : int, optional

    Returns
    -------
    int
        Id of the new layer.
    """
    st = _get(network)
    _check_prev_layer(st, prev_layer)
    nd = st.ndim
    f = _torch_order(_xyz(f_size, "f_size", 1), nd, "f_size", 1)
    s = _torch_order(_xyz(stride, "stride", 1), nd, "stride", 1)
    p = _torch_order(_xyz(padding, "padding", 0), nd, "padding", 0)
    ip = _torch_order(_xyz(int_padding, "int_padding", 0), nd, "int_padding", 0)
    in_shape = None
    if input_shape is not None:
        ish = _int_list(input_shape, "input_shape", max_len=4)
        if len(ish) != 4:
            raise ValueError(f"input_shape={ish} must be [W, H, D, C]")
        in_shape = (ish[3], *_torch_order(tuple(ish[:3]), nd, "input_shape", 1))
    act = activation
    if isinstance(activation, str) and activation.strip().upper().startswith("YOLO"):
        act = _yolo_activation(st, int(nb_filters))
    st.net.conv(int(nb_filters), f, stride=s, padding=p, int_padding=ip, activation=act,
                bias=None if bias is None else float(bias), drop_rate=float(drop_rate), init=_init_name(init_fct),
                init_scaling=_scaling(init_scaling), input_shape=in_shape)
    return _layer_id(st)


def pool(p_size=None, stride=None, padding=None, prev_layer=None, drop_rate=0.0, p_type="MAX", activation="LIN",
         p_global=0, network=None):
    """Append a pooling layer (CIANNA ``pool``).

    Parameters
    ----------
    p_size : int array [x, y, z], optional
        Default 2 in every dim where the **network input** dim is > 1, else 1 (quirk 26, switch
        ``pool_size_from_input``; otherwise from the previous layer's output).
    stride : int array, default p_size
    padding : int array, default [0, 0, 0]
        Virtual padding (padded positions ignored).
    prev_layer : int, optional
        Must be the last layer.
    drop_rate : float, default 0
    p_type : {"MAX", "AVG"}, default "MAX"
    activation : str, default "LIN"
    p_global : int, default 0
        1: pool each channel's whole map.
    network : int, optional

    Returns
    -------
    int
        Id of the new layer.
    """
    st = _get(network)
    _check_prev_layer(st, prev_layer)
    nd = st.ndim
    if p_size is None:
        if registry.switches.pool_size_from_input or not len(st.net.layers):
            dims = st.in_dim
        else:
            dims = tuple(st.net.output_shape[1:][::-1]) + (1,) * (3 - nd)
        p_size = [2 if d > 1 else 1 for d in dims]
    ps = _xyz(p_size, "p_size", 1)
    k = _torch_order(ps, nd, "p_size", 1)
    s = _torch_order(_xyz(stride, "stride", 1, default=list(ps)), nd, "stride", 1)
    pad = _torch_order(_xyz(padding, "padding", 0), nd, "padding", 0)
    ptype = str(p_type).upper()
    if ptype not in ("MAX", "AVG"):
        raise ValueError(f"p_type={p_type!r}: expected 'MAX' or 'AVG' (CIANNA silently used MAX)")
    st.net.pool(k, stride=s, padding=pad, pool_type=ptype, activation=activation, global_pool=bool(int(p_global)),
                drop_rate=float(drop_rate))
    st.net.layers[-1].full_window_avg_grad = registry.switches.full_window_avg_grad
    return _layer_id(st)


def dense(nb_neurons, activation="RELU", bias=None, prev_layer=None, drop_rate=0.0, strict_size=0,
          init_fct="xavier", init_scaling=-1, network=None):
    """Append a dense layer (CIANNA ``dense``).

    Parameters
    ----------
    nb_neurons : int
    activation : str, default "RELU"
    bias : float, optional
        Constant bias input (default by activation).
    prev_layer : int, optional
        Must be the last layer.
    drop_rate : float, default 0
    strict_size : int, default 0
        In the mixed-precision modes a layer with ``nb_neurons % 8 == 0`` is shrunk by one neuron unless
        ``strict_size=1`` (quirk 2, switch ``strict_size_shrink``; a warning says so). Set it on the output.
    init_fct : str, default "xavier"
    init_scaling : float, default -1
    network : int, optional

    Returns
    -------
    int
        Id of the new layer.
    """
    st = _get(network)
    _check_prev_layer(st, prev_layer)
    nb = int(nb_neurons)
    if (registry.switches.strict_size_shrink and not int(strict_size) and st.precision != "FP32C_FP32A"
            and nb % 8 == 0):
        warnings.warn(f"dense({nb}) shrunk to {nb - 1} neurons for tensor-core alignment in {st.precision} "
                      "(CIANNA behaviour; pass strict_size=1 to keep the size)", CiannaUserWarning, stacklevel=2)
        nb -= 1
    st.net.dense(nb, activation=activation, bias=None if bias is None else float(bias), drop_rate=float(drop_rate),
                 init=_init_name(init_fct), init_scaling=_scaling(init_scaling))
    return _layer_id(st)


def norm(normalization="GN", activation="LIN", prev_layer=None, group_size=8, set_off=0, network=None):
    """Append a group normalisation layer (CIANNA ``norm``).

    Parameters
    ----------
    normalization : str, default "GN"
        Only ``"GN"`` exists (CIANNA made an inert layer for anything else; this raises).
    activation : str, default "LIN"
    prev_layer : int, optional
    group_size : int, default 8
        Channels per group (one γ and β per group, ε = 1e-3).
    set_off : int, default 0
        Trailing groups left unnormalised.
    network : int, optional

    Returns
    -------
    int
        Id of the new layer.
    """
    st = _get(network)
    _check_prev_layer(st, prev_layer)
    if str(normalization).upper() != "GN":
        raise ValueError(f"normalization={normalization!r}: only 'GN' (group normalisation) exists")
    st.net.norm(int(group_size), set_off=int(set_off), activation=activation)
    return _layer_id(st)


def lrn(activation="LIN", prev_layer=None, range=5, k=1.0, alpha=1.0, beta=0.5, network=None):
    """Append a cross-channel local response normalisation (CIANNA ``lrn``; CUDA-only there, any device here).

    Parameters
    ----------
    activation : str, default "LIN"
    prev_layer : int, optional
    range : int, default 5
    k, alpha, beta : float, default 1.0, 1.0, 0.5
    network : int, optional

    Returns
    -------
    int
        Id of the new layer.
    """
    st = _get(network)
    _check_prev_layer(st, prev_layer)
    st.net.lrn(int(range), k=float(k), alpha=float(alpha), beta=float(beta), activation=activation)
    return _layer_id(st)


# ---------------------------------------------------------------------------------------------------------
# running the network
# ---------------------------------------------------------------------------------------------------------


def _check_output(st: NetState) -> None:
    net = st.net
    if not len(net.layers):
        raise RuntimeError(f"network {st.id} has no layer")
    last = net.layers[-1]
    if last.activation.name == "YOLO":
        cfg = last.activation.yolo_config
        if (st.out_dim - 1) % cfg.target_stride != 0 or (
                cfg.max_nb_obj_per_image > 0 and st.out_dim != 1 + cfg.max_nb_obj_per_image * cfg.target_stride):
            raise ValueError(f"network {st.id}: out_dim={st.out_dim} is not a YOLO target row length "
                             f"1 + max_obj*{cfg.target_stride}")
        return
    n_out = math.prod(last.out_shape)
    if n_out != st.out_dim:
        what = "neurons" if last.kind == "dense" else "output values"
        raise ValueError(f"network {st.id}: the output layer has {n_out} {what} but init(out_dim={st.out_dim})")


def _dataset(st: NetState, name: str, why: str) -> ArrayDataset:
    if name not in st.datasets:
        raise ValueError(f"{why} needs the {name} dataset of network {st.id}: create_dataset({name!r}, ...) first")
    return st.datasets[name]


def _context(st: NetState, size: int, training: bool) -> dict:
    return {"iteration": st.iteration, "train_size": size, "training": training, "generator": _generator(st)}


def _generator(st: NetState) -> torch.Generator:
    gen = st.perf.get("_generator")
    if gen is None:
        gen = torch.Generator().manual_seed(st.net.seed + 2)
        st.perf["_generator"] = gen
    return gen


def _optimizer(st: NetState) -> CiannaSGD:
    """Persistent CIANNA optimiser of a network; rebuilt (keeping momentum buffers) when layers change."""
    params = []
    for layer in st.net.layers:
        params += [(layer.kind, p) for p in layer.parameters()]
    key = tuple(id(p) for _, p in params)
    opt = st.trainer
    if opt is None or st.trainer_key != key:
        decay = [p for kind, p in params if kind != "norm"]
        no_decay = [p for kind, p in params if kind == "norm"]
        groups = [{"params": decay}] + ([{"params": no_decay, "weight_decay": 0.0}] if no_decay else [])
        new = CiannaSGD(groups, lr=0.0)
        if opt is not None:
            for p in decay + no_decay:
                if p in opt.state:
                    new.state[p] = opt.state[p]
        st.trainer, st.trainer_key = new, key
    return st.trainer


def _run_set(st: NetState, data: ArrayDataset, *, drop_mode: str, repeat: int, want_loss: bool, want_rows: bool,
             confmat: bool, bar: ProgressBar | None) -> dict:
    """Inference over a dataset with CIANNA's batching, MC-dropout re-runs and output ordering."""
    net = st.net
    net.to(st.device)
    act = net.layers[-1].activation
    was_training, old_mode = net.training, net.drop_mode
    net.eval()
    net.drop_mode = drop_mode
    mc = net.drop_mode == "MC_MODEL"
    split = net.first_dropout_layer() if mc else None
    total, parts, monitors, rows, preds, trues = 0.0, {}, {}, [], [], []
    size = len(data)
    start = time.perf_counter()
    try:
        with torch.no_grad():
            for b, (x, y) in enumerate(data.batches(st.b_size)):
                x, y = x.to(st.device), y.to(st.device)
                with precision_context(st.device, st.precision):
                    if split is None:
                        reps = [net(x, return_preact=True)]
                    else:
                        h = net.head(x, split) if split > 0 else net.check_input(x)
                        reps = [net(h, start=split, return_preact=True) for _ in range(repeat)]
                copies = repeat if split is None else 1
                for pre, out in reps:
                    if want_loss:
                        res = act.loss(pre.float(), out.float(), y, norm=st.b_size, context=_context(st, size, False))
                        total += res.total * copies
                        for key, v in res.parts.items():
                            parts[key] = parts.get(key, 0.0) + v * copies
                        for key, v in res.monitors.items():
                            monitors[key] = monitors.get(key, 0.0) + v * copies
                    if want_rows:
                        from cianna.compat.convert import forward_file_rows

                        r = forward_file_rows(net, out.float())
                        rows.extend([r] * copies)
                if confmat and repeat == 1:
                    out = reps[0][1]
                    preds.append(out.reshape(out.shape[0], -1).argmax(1).cpu())
                    trues.append(y.reshape(y.shape[0], -1).argmax(1).cpu())
                if bar is not None:
                    elapsed = time.perf_counter() - start
                    bar.update(b + 1, perf=(b + 1) * st.b_size / elapsed if elapsed > 0 else None)
    finally:
        net.train(was_training)
        net.drop_mode = old_mode
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - start
    out = {"total": total, "parts": parts, "monitors": monitors, "size": size,
           "perf": size * repeat / elapsed if elapsed > 0 else float("inf")}
    if want_rows:
        out["rows"] = np.concatenate(rows, axis=0) if rows else np.zeros((0, 0), np.float32)
    if preds:
        p, t = torch.cat(preds).numpy(), torch.cat(trues).numpy()
        n_class = int(math.prod(net.layers[-1].out_shape))
        out["confusion"] = confusion_matrix(t, p, n_class)
    return out


def _error_line(st: NetState, mean_loss: float, parts: dict, size: int) -> None:
    cols = [f"{st.iteration}", f"{mean_loss:g}"]
    if parts:
        cols += [f"{parts.get(k, 0.0) / size:g}" for k in ("pos", "size", "prob", "obj", "class", "param")]
    with open("error.txt", "a") as fh:
        fh.write(" ".join(cols) + "\n")


def _is_classifier_output(st: NetState) -> bool:
    last = st.net.layers[-1]
    if last.activation.name == "YOLO":
        return False
    return last.kind == "dense" or math.prod(last.out_shape[1:]) == 1


def train(nb_iter, learning_rate, end_learning_rate=0.0, control_interv=1, momentum=0.0, lr_decay=0.0,
          weight_decay=0.0, confmat=0, save_every=0, save_bin=0, network=None, shuffle_gpu=1, shuffle_every=1,
          TC_scale_factor=1.0, silent=0):
    """Train on the TRAIN dataset (CIANNA ``train``, ``framework.md`` §5).

    Parameters
    ----------
    nb_iter : int
        Iterations (passes over the current TRAIN set).
    learning_rate : float
        Initial rate ``lr0``.
    end_learning_rate : float, default 0
    control_interv : int, default 1
        Validate on VALID (which must exist) every N iterations; 0 never.
    momentum : float, default 0
    lr_decay : float, default 0
        ``lr = end + (lr0 − end)·exp(−lr_decay·iter)`` with the network's global iteration counter.
    weight_decay : float, default 0
    confmat : {0, 1, 2, 3}, default 0
        Confusion matrix at validation: 1 full, 2 recall/precision, 3 accuracy only.
    save_every : int, default 0
        Write ``net_save/net{id}_s{iter:04d}.dat`` every N iterations.
    save_bin : int, default 0
        Binary (1) or text (0) periodic saves.
    network : int, optional
    shuffle_gpu : int, default 1
        Accepted, no effect (shuffling is an index permutation on any device).
    shuffle_every : int, default 1
        Shuffle TRAIN when ``(iter + 1) % shuffle_every == 0`` after the increment (0 never; SGD mode never).
    TC_scale_factor : float, default 1
        Static loss scale, honoured in the FP16 modes only (forced to 1 with a warning otherwise).
    silent : int, default 0
        0 everything; 1 nothing (and no ``error.txt``); 2 control-step output only.

    Returns
    -------
    None

    Raises
    ------
    RuntimeError
        ``inference_only`` network.
    ValueError
        Missing datasets or an output layer that does not match ``out_dim``.
    DivergenceError
        Non-finite loss (CIANNA exits the process).
    """
    st = _get(network)
    if st.inference_only:
        raise RuntimeError(f"network {st.id} was created with inference_only=1: train() is refused")
    confmat, silent = int(confmat), int(silent)
    if confmat not in (0, 1, 2, 3):
        raise ValueError(f"confmat={confmat} must be 0, 1, 2 or 3")
    _check_output(st)
    data = _dataset(st, "TRAIN", "train()")
    if int(control_interv) > 0:
        _dataset(st, "VALID", f"train(control_interv={control_interv})")
    scale = float(TC_scale_factor)
    if scale != 1.0 and st.precision not in ("FP16C_FP32A", "FP16C_FP16A"):
        warnings.warn(f"TC_scale_factor={scale} ignored outside the FP16 modes (forced to 1)", CiannaUserWarning,
                      stacklevel=2)
        scale = 1.0
    if st.iteration == 0 and os.path.exists("error.txt"):
        os.remove("error.txt")
    net = st.net
    net.to(st.device)
    opt = _optimizer(st)
    for i, group in enumerate(opt.param_groups):
        group["momentum"] = float(momentum)
        group["weight_decay"] = float(weight_decay) if i == 0 else 0.0
    gen = _generator(st)
    act = net.layers[-1].activation
    sgd_mode = st.b_size == 1
    for _ in range(int(nb_iter)):
        lr = cianna_learning_rate(st.iteration, float(learning_rate), float(end_learning_rate), float(lr_decay))
        for group in opt.param_groups:
            group["lr"] = lr
        st.iteration += 1
        data = _dataset(st, "TRAIN", "train()")
        if not sgd_mode and int(shuffle_every) > 0 and (st.iteration + 1) % int(shuffle_every) == 0:
            data.shuffle(gen)
        size = len(data)
        nb_batch = size if sgd_mode else data.num_batches(st.b_size)
        bar = ProgressBar(f"Iter: {st.iteration}", nb_batch, st.adv_size, enabled=silent == 0)
        net.train()
        start, loss_sum = time.perf_counter(), 0.0
        for b, (x, y) in enumerate(data.batches(st.b_size, sgd_generator=gen if sgd_mode else None)):
            x, y = x.to(st.device, non_blocking=True), y.to(st.device, non_blocking=True)
            with precision_context(st.device, st.precision):
                pre, out = net(x, return_preact=True)
            res = act.loss(pre.float(), out.float(), y, norm=st.b_size, context=_context(st, size, True))
            if not math.isfinite(res.total):
                bar.close()
                raise DivergenceError(f"network {st.id}: non-finite training loss at iteration {st.iteration} "
                                      "(network divergence): lower the learning rate or check the data")
            (res.loss * scale if scale != 1.0 else res.loss).backward()
            if scale != 1.0:
                grads = [p.grad for p in net.parameters() if p.grad is not None]
                torch._foreach_div_(grads, scale)
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss_sum += res.total
            elapsed = time.perf_counter() - start
            bar.update(b + 1, loss=res.total / max(x.shape[0], 1),
                       perf=(b + 1) * x.shape[0] / elapsed if elapsed > 0 else None)
        bar.close()
        elapsed = time.perf_counter() - start
        perf = size / elapsed if elapsed > 0 else float("inf")
        if int(control_interv) > 0 and st.iteration % int(control_interv) == 0:
            if silent != 1:
                say(control_line(perf, loss_sum / max(size, 1), lr, float(momentum), float(weight_decay)))
            valid = _dataset(st, "VALID", "validation")
            cm_wanted = bool(confmat) and _is_classifier_output(st)
            res = _run_set(st, valid, drop_mode="AVG_MODEL", repeat=1, want_loss=True, want_rows=False,
                           confmat=cm_wanted, bar=ProgressBar("Fwd :", valid.num_batches(st.b_size), st.adv_size,
                                                              enabled=silent == 0))
            mean = res["total"] / res["size"]
            if math.isnan(mean):
                raise DivergenceError(f"network {st.id}: NaN validation loss at iteration {st.iteration} "
                                      "(network divergence detected)")
            if silent != 1:
                say(forward_line(res["perf"], mean))
                if res["parts"]:
                    for line in yolo_lines(res["parts"], res["monitors"], res["size"]):
                        say(line)
                if "confusion" in res:
                    say(confusion_display(res["confusion"], confmat))
                _error_line(st, mean, res["parts"], res["size"])
        if int(save_every) > 0 and st.iteration % int(save_every) == 0:
            from cianna.compat.convert import save_cianna

            os.makedirs("net_save", exist_ok=True)
            save_cianna(net, os.path.join("net_save", f"net{st.id}_s{st.iteration:04d}.dat"),
                        binary=bool(int(save_bin)))


def forward(saving=1, drop_mode="AVG_MODEL", no_error=0, repeat=1, network=None, silent=0):
    """Run the TEST dataset through the network (CIANNA ``forward``).

    Parameters
    ----------
    saving : {0, 1, 2}, default 1
        0 nothing; 1 text; 2 binary float32 -- ``fwd_res/net{id}_{iter:04d}.dat``. Per example: dense output
        ``nb_neurons + 1`` values (trailing 0 pivot), conv output ``C·D·H·W`` channel-major, YOLO boxes
        converted to corners (``yolo.md`` §11). File order: batch, then repetition, then example.
    drop_mode : {"AVG_MODEL", "MC_MODEL"}, default "AVG_MODEL"
        Dropout scaling or Monte-Carlo dropout (only layers from the first dropout layer on are re-run).
    no_error : {0, 1, 2}, default 0
        1: no loss computed (targets may be dummies); 2: loss printed but not appended to ``error.txt``.
    repeat : int, default 1
        Forward passes per batch (MC dropout samples).
    network : int, optional
    silent : int, default 0
        1: no output at all (and no ``error.txt`` line).

    Returns
    -------
    None

    Raises
    ------
    ValueError
        Missing TEST dataset, bad ``saving``/``drop_mode``/``repeat``.
    DivergenceError
        NaN mean loss (CIANNA exits the process).
    """
    st = _get(network)
    saving, no_error, repeat, silent = int(saving), int(no_error), int(repeat), int(silent)
    if saving not in (0, 1, 2):
        raise ValueError(f"saving={saving} must be 0 (none), 1 (text) or 2 (binary)")
    if repeat < 1:
        raise ValueError(f"repeat={repeat} must be >= 1")
    mode = {"AVG": "AVG_MODEL", "MC": "MC_MODEL"}.get(str(drop_mode).upper(), str(drop_mode).upper())
    if mode not in ("AVG_MODEL", "MC_MODEL"):
        raise ValueError(f"drop_mode={drop_mode!r}: expected 'AVG_MODEL' or 'MC_MODEL'")
    if not len(st.net.layers):
        raise RuntimeError(f"network {st.id} has no layer")
    data = _dataset(st, "TEST", "forward()")
    want_loss = no_error == 0 or no_error == 2
    if want_loss:
        _check_output(st)
    res = _run_set(st, data, drop_mode=mode, repeat=repeat, want_loss=want_loss, want_rows=saving > 0,
                   confmat=False, bar=ProgressBar("Fwd :", data.num_batches(st.b_size), st.adv_size,
                                                  enabled=silent == 0))
    size = res["size"]
    if saving:
        from cianna.compat.fileformat import write_forward_file

        os.makedirs("fwd_res", exist_ok=True)
        yolo_out = st.net.layers[-1].activation.name == "YOLO"
        write_forward_file(os.path.join("fwd_res", f"net{st.id}_{st.iteration:04d}.dat"), res["rows"],
                           binary=saving == 2,
                           single_line=saving == 1 and yolo_out and registry.switches.yolo_text_single_line)
    if want_loss:
        shown = res["total"] / (size * repeat)
        if math.isnan(shown) and silent != 1:
            raise DivergenceError(f"network {st.id}: NaN forward loss (network divergence detected)")
        if silent != 1:
            say(forward_line(res["perf"], shown))
            if res["parts"]:
                for line in yolo_lines({k: v / repeat for k, v in res["parts"].items()},
                                       res["monitors"], size * 1):
                    say(line)
        if no_error == 0 and silent != 1:
            divisor = size if registry.switches.error_not_divided_by_repeat else size * repeat
            parts = res["parts"]
            if parts and not registry.switches.error_not_divided_by_repeat:
                parts = {k: v / repeat for k, v in parts.items()}
            _error_line(st, res["total"] / divisor, parts, size)
    elif silent != 1:
        say(forward_line(res["perf"], None))


# ---------------------------------------------------------------------------------------------------------
# save / load / freeze
# ---------------------------------------------------------------------------------------------------------


def save(file, network=None, bin=0):
    """Write the network in CIANNA's save format (CIANNA ``save``).

    Parameters
    ----------
    file : str
        Destination path.
    network : int, optional
    bin : int, default 0
        1 binary, 0 text.
    """
    from cianna.compat.convert import save_cianna

    st = _get(network)
    if not len(st.net.layers):
        raise RuntimeError(f"network {st.id} has no layer to save")
    folder = os.path.dirname(os.fspath(file))
    if folder:
        os.makedirs(folder, exist_ok=True)
    save_cianna(st.net, file, binary=bool(int(bin)))


def load(file, iteration, network=None, nb_layers=0, bin=0):
    """Rebuild the layers and weights of a network from a CIANNA save file (CIANNA ``load``).

    Parameters
    ----------
    file : str
        CIANNA save (``save()`` or a ``net_save/`` checkpoint).
    iteration : int
        Value of the network's iteration counter after loading (file names, LR decay).
    network : int, optional
        A network created by ``init`` with no layer yet.
    nb_layers : int, default 0
        Load only the first N layers (0 = all); more layers may then be appended.
    bin : int, default 0
        1 binary file, 0 text file.

    Raises
    ------
    CiannaFormatError
        Malformed file or wrong format for ``bin``.
    ValueError
        Channel count differing from ``init``, an architecture that does not fit the ``init`` input dims
        (e.g. dense layers at another resolution), or a network that already has layers.
    """
    from cianna.compat.convert import spatial_ndim, to_network
    from cianna.compat.fileformat import read_cianna_file

    st = _get(network)
    if len(st.net.layers):
        raise ValueError(f"load(): network {st.id} already has {len(st.net.layers)} layers; load into a "
                         "freshly created network (init)")
    cf = read_cianna_file(file, binary=bool(int(bin)), nb_layers=int(nb_layers))
    if cf.in_channels != st.in_nb_ch:
        raise ValueError(f"load({file!r}): the file has {cf.in_channels} input channels, init(in_nb_ch="
                         f"{st.in_nb_ch})")
    if tuple(cf.input_dims) != tuple(st.in_dim):
        cf.input_dims = tuple(st.in_dim)  # CIANNA runs a loaded model at the init resolution
    yolo_cfg = None
    yolo_rec = next((r.yolo for r in cf.layers if getattr(r, "yolo", None) is not None), None)
    if yolo_rec is not None:
        yolo_cfg = _loaded_yolo_config(st, yolo_rec)
    nd = max(st.ndim, spatial_ndim(cf))
    try:
        net = to_network(cf, input_bias=st.bias, yolo_config=yolo_cfg, no_override=True,
                         seed=int(torch.randint(0, 2**31 - 1, (1,)).item()), ndim=nd)
    except ValueError as exc:
        raise ValueError(f"load({file!r}) into network {st.id} (in_dim {list(st.in_dim)}): {exc}") from exc
    for layer in net.layers:
        if layer.kind == "pool":
            layer.full_window_avg_grad = registry.switches.full_window_avg_grad
    net.train()
    st.ndim = nd
    st.net = net
    st.iteration = int(iteration)
    st.trainer, st.trainer_key = None, ()


def _loaded_yolo_config(st: NetState, rec):
    from cianna.compat.convert import yolo_config_from_record

    params = st.yolo_params
    kwargs = dict(params["kwargs"]) if params is not None else {}
    no_override = bool(params["params"]["no_override"]) if params is not None else False
    if no_override and kwargs.get("nb_box"):
        cfg = _yolo_config(kwargs)
        if (cfg.nb_box, cfg.nb_class, cfg.nb_param) != (rec.nb_box, rec.nb_class, rec.nb_param):
            raise ValueError(f"load(): set_yolo_params(no_override=1) gave nb_box/nb_class/nb_param = "
                             f"{(cfg.nb_box, cfg.nb_class, cfg.nb_param)} but the file stores "
                             f"{(rec.nb_box, rec.nb_class, rec.nb_param)}")
        return cfg
    layout = yolo_config_from_record(rec)
    for key in ("nb_box", "nb_class", "nb_param", "priors", "fit_dim", "class_softmax", "slopes_and_maxes"):
        kwargs[key] = getattr(layout, key)
    if len(kwargs.get("prior_noobj_prob", [])) != rec.nb_box:
        kwargs.pop("prior_noobj_prob", None)
    if len(kwargs.get("param_ind_scales", [])) != rec.nb_param:
        kwargs.pop("param_ind_scales", None)
    return _yolo_config(kwargs)


def set_frozen_layers(froz_array, network=None):
    """Freeze layers (CIANNA ``set_frozen_layers``): they back-propagate errors but keep their weights.

    Parameters
    ----------
    froz_array : int array
        ``frozen[i] = froz_array[i]`` for the first ``len(froz_array)`` layers (1 frozen, 0 trained).
    network : int, optional

    Raises
    ------
    IndexError
        More entries than layers.
    """
    st = _get(network)
    flags = np.asarray(froz_array).reshape(-1)
    if flags.size > len(st.net.layers):
        raise IndexError(f"set_frozen_layers: {flags.size} flags for a network of {len(st.net.layers)} layers")
    st.net.freeze([bool(int(v)) for v in flags])


# ---------------------------------------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------------------------------------


def perf_eval(network=None):
    """Print total weights, approximate memory use and per-layer forward/backprop time per example.

    CIANNA measures on the first batches of training/forward; here one batch of the first available
    dataset (TRAIN, VALID, TEST, else zeros) is timed layer by layer on the network's device.

    Parameters
    ----------
    network : int, optional

    Returns
    -------
    None
    """
    st = _get(network)
    net = st.net
    if not len(net.layers):
        raise RuntimeError(f"network {st.id} has no layer")
    net.to(st.device)
    n_weights = net.num_parameters()
    batch = None
    for name in ("TRAIN", "VALID", "TEST"):
        if name in st.datasets:
            batch = next(iter(st.datasets[name].batches(st.b_size)))[0]
            break
    if batch is None:
        batch = torch.zeros(st.b_size, st.input_dim)
    x = net.check_input(batch.to(st.device))
    was_training = net.training
    net.train()
    net(x).sum().backward()  # warm-up (one-time allocations are not layer costs)
    net.zero_grad(set_to_none=True)
    fwd, bwd, act_values = [], [], 0
    try:
        for layer in net.layers:
            h = x.detach().requires_grad_(True)
            t0 = time.perf_counter()
            out = layer(h)
            if st.device.type == "cuda":
                torch.cuda.synchronize()
            t1 = time.perf_counter()
            out.backward(torch.ones_like(out))
            if st.device.type == "cuda":
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            fwd.append((t1 - t0) / x.shape[0] * 1e6)
            bwd.append((t2 - t1) / x.shape[0] * 1e6)
            act_values += out.numel()
            x = out.detach()
    finally:
        net.zero_grad(set_to_none=True)
        net.train(was_training)
    ram_data = sum(d.inputs.numel() + d.targets.numel() for d in st.datasets.values()) * 4
    mem_w = n_weights * 4 * 3  # weights, gradients, momentum
    say(f"Network {st.id}: total weights: {n_weights}")
    say(f"Approximate memory: weights+grad+momentum {mem_w / 2**20:.2f} MB, activations per batch "
        f"{act_values * 8 / 2**20:.2f} MB, datasets {ram_data / 2**20:.2f} MB (device: {st.device})")
    tf, tb = sum(fwd) or 1.0, sum(bwd) or 1.0
    say(f"{'Layer':>5s} {'Type':>6s} {'Forward (us/ex)':>16s} {'%':>6s} {'Backprop (us/ex)':>17s} {'%':>6s}")
    for i, (layer, f, b) in enumerate(zip(net.layers, fwd, bwd)):
        say(f"{i:5d} {layer.kind:>6s} {f:16.3f} {100 * f / tf:6.2f} {b:17.3f} {100 * b / tb:6.2f}")
    say(f"{'total':>12s} {sum(fwd):16.3f} {100.0:6.2f} {sum(bwd):17.3f} {100.0:6.2f}")


def print_arch_tex(path, file_name, size=1, in_size=1, f_size=1, out_size=1, stride=1, padding=1, in_padding=0,
                   activation=0, bias=0, dropout=0, param_count=0, network=None):
    """Write a standalone LaTeX table of the architecture to ``path + file_name + ".tex"``.

    ``path`` is concatenated verbatim (end it with ``/``). The PDF is compiled only if ``pdflatex`` is on
    the ``PATH``.

    Parameters
    ----------
    path, file_name : str
    size, in_size, f_size, out_size, stride, padding : int, default 1
        Columns to include: layer size (filters, neurons, pool size or group size), input dims, filter
        size, output dims, stride, padding.
    in_padding, activation, bias, dropout, param_count : int, default 0
        Columns: internal padding, activation string, bias value, dropout rate, number of weights.
    network : int, optional

    Returns
    -------
    None
    """
    from cianna.compat.tex import write_arch_tex

    st = _get(network)
    flags = dict(size=size, in_size=in_size, f_size=f_size, out_size=out_size, stride=stride, padding=padding,
                 in_padding=in_padding, activation=activation, bias=bias, dropout=dropout, param_count=param_count)
    write_arch_tex(st.net, str(path), str(file_name), [k for k, v in flags.items() if int(v)])
