"""``set_yolo_params`` and its builder functions, CIANNA V-1.0 interface (``yolo.md`` §2).

The builders return NumPy arrays in which every keyword left out holds CIANNA's "keep the default"
sentinel; :func:`yolo_config_kwargs` turns the arrays given to ``set_yolo_params`` into keyword arguments
of :class:`cianna.detection.config.YoloConfig` (sentinels become ``None`` = "CIANNA default").
"""
from __future__ import annotations

import warnings

import numpy as np

from cianna.detection.config import PARTS

__all__ = ["set_error_scales", "set_fit_parts", "set_IoU_limits", "set_sm_single", "set_slopes_and_maxes",
           "yolo_config_kwargs", "YOLO_PARAM_DEFAULTS"]

_IOU_LIMIT_NAMES = ("good_IoU_lim", "low_IoU_best_box_assoc", "min_prob_IoU_lim", "min_obj_IoU_lim",
                    "min_class_IoU_lim", "min_param_IoU_lim", "diff_IoU_lim", "diff_obj_lim")

#: Keywords of ``set_yolo_params`` and their CIANNA defaults (``None`` = array/string left out).
YOLO_PARAM_DEFAULTS = {
    "nb_box": 0, "nb_class": 0, "nb_param": 0, "max_nb_obj_per_image": 0, "prior_size": None,
    "prior_noobj_prob": None, "error_scales": None, "slopes_and_maxes": None, "param_ind_scales": None,
    "IoU_limits": None, "fit_parts": None, "IoU_type": None, "prior_dist_type": None, "strict_box_size": 0,
    "fit_dim": 0, "rand_startup": -1, "rand_prob_best_box_assoc": 0.0, "rand_prob": 0.0,
    "min_prior_forced_scaling": 0.0, "class_softmax": 0, "diff_flag": 0, "error_type": None,
    "no_override": 0, "raw_output": 0,
}


def set_error_scales(position=-1.0, size=-1.0, probability=-1.0, objectness=-1.0, classes=-1.0,
                     parameters=-1.0):
    """Loss weights of the six YOLO parts, for ``set_yolo_params(error_scales=...)``.

    Parameters
    ----------
    position, size, probability, objectness, classes, parameters : float, default -1
        Weight of each part; a value ``<= 0`` keeps CIANNA's default (2, 2, 1, 2, 1, 1). Use
        ``set_fit_parts(part=-1)`` to switch a part off.

    Returns
    -------
    numpy.ndarray of float32, shape (6,)
    """
    return np.array([position, size, probability, objectness, classes, parameters], dtype=np.float32)


def set_fit_parts(position=-2, size=-2, probability=-2, objectness=-2, classes=-2, parameters=-2):
    """What each YOLO part fits, for ``set_yolo_params(fit_parts=...)``.

    Parameters
    ----------
    position, size, probability, objectness, classes, parameters : int, default -2
        1 fit the target, 0 fit a neutral value, -1 no loss; ``<= -2`` keeps the default (1, and -1 for
        classes/parameters when their count is 0).

    Returns
    -------
    numpy.ndarray of int32, shape (6,)
    """
    return np.array([position, size, probability, objectness, classes, parameters], dtype=np.int32)


def set_IoU_limits(good_IoU_lim=-2.0, low_IoU_best_box_assoc=-2.0, min_prob_IoU_lim=-2.0, min_obj_IoU_lim=-2.0,
                   min_class_IoU_lim=-2.0, min_param_IoU_lim=-2.0, diff_IoU_lim=-2.0, diff_obj_lim=-2.0):
    """IoU thresholds of the association and loss, for ``set_yolo_params(IoU_limits=...)``.

    Parameters
    ----------
    good_IoU_lim, low_IoU_best_box_assoc, min_prob_IoU_lim, min_obj_IoU_lim, min_class_IoU_lim, \
min_param_IoU_lim, diff_IoU_lim, diff_obj_lim : float, default -2
        A value ``<= -1.99`` keeps the default of the chosen ``IoU_type`` (``yolo.md`` §7.1).

    Returns
    -------
    numpy.ndarray of float32, shape (8,)
    """
    return np.array([good_IoU_lim, low_IoU_best_box_assoc, min_prob_IoU_lim, min_obj_IoU_lim, min_class_IoU_lim,
                     min_param_IoU_lim, diff_IoU_lim, diff_obj_lim], dtype=np.float32)


def set_sm_single(slope=-1.0, fmin=-1e5, fmax=1e5):
    """Slope and output limits of one YOLO part, for :func:`set_slopes_and_maxes`.

    Parameters
    ----------
    slope : float, default -1
        Activation slope; ``<= 0`` keeps the default.
    fmin : float, default -1e5
        Lower output limit; ``<= -1e5`` keeps the default.
    fmax : float, default 1e5
        Upper output limit; ``>= 1e5`` keeps the default.

    Returns
    -------
    numpy.ndarray of float32, shape (3,)
        ``[slope, fmax, fmin]`` -- **max before min**, as CIANNA stores it.
    """
    return np.array([slope, fmax, fmin], dtype=np.float32)


def set_slopes_and_maxes(position=None, size=None, probability=None, objectness=None, classes=None,
                         parameters=None):
    """Per-part slopes and limits, for ``set_yolo_params(slopes_and_maxes=...)``.

    Parameters
    ----------
    position, size, probability, objectness, classes, parameters : array_like of 3 floats, optional
        Each a :func:`set_sm_single` array ``[slope, max, min]``; a part left out keeps its defaults.

    Returns
    -------
    numpy.ndarray of float32, shape (6, 3)
        One ``[slope, max, min]`` row per part.

    Raises
    ------
    ValueError
        If a part is not three numbers.
    """
    rows = []
    for name, value in zip(PARTS, (position, size, probability, objectness, classes, parameters)):
        if value is None:
            rows.append(set_sm_single())
            continue
        arr = np.asarray(value, dtype=np.float32).reshape(-1)
        if arr.size != 3:
            raise ValueError(f"set_slopes_and_maxes({name}=...) needs 3 values [slope, max, min] "
                             f"(use set_sm_single), got {arr.size}")
        rows.append(arr)
    return np.stack(rows).astype(np.float32)


def _float_array(value, name, shape=None):
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"set_yolo_params({name}=...) must be an array of numbers") from None
    if shape is not None and arr.size != int(np.prod(shape)):
        raise ValueError(f"set_yolo_params({name}=...) needs {int(np.prod(shape))} values "
                         f"(shape {shape}), got shape {arr.shape}")
    return arr.reshape(shape) if shape is not None else arr


def yolo_config_kwargs(params: dict) -> dict:
    """Translate ``set_yolo_params`` keywords into :class:`~cianna.detection.config.YoloConfig` arguments.

    Parameters
    ----------
    params : dict
        Keywords as passed to ``set_yolo_params`` (missing ones take :data:`YOLO_PARAM_DEFAULTS`).

    Returns
    -------
    dict
        Keyword arguments of ``YoloConfig`` (layout keys included only when ``nb_box > 0``).

    Raises
    ------
    ValueError, TypeError
        On arrays of the wrong size or type.
    """
    p = {**YOLO_PARAM_DEFAULTS, **params}
    out = {}
    for key in ("IoU_type", "prior_dist_type", "error_type"):
        default = {"IoU_type": "GIoU", "prior_dist_type": "SIZE", "error_type": "natural"}[key]
        if p[key] is None:
            warnings.warn(f"set_yolo_params: {key} not given, using CIANNA's default {default!r}", stacklevel=3)
            out[key] = default
        else:
            out[key] = str(p[key])
    nb_box, nb_class, nb_param = int(p["nb_box"]), int(p["nb_class"]), int(p["nb_param"])
    if nb_box > 0:
        out.update(nb_box=nb_box, nb_class=nb_class, nb_param=nb_param)
        if p["prior_size"] is None:
            priors = np.zeros((max(int(p["fit_dim"]), 1), nb_box))
        else:
            priors = _float_array(p["prior_size"], "prior_size")
            if priors.ndim == 1:
                priors = priors.reshape(1, -1)
            if priors.ndim != 2 or priors.shape[1] != nb_box or not 1 <= priors.shape[0] <= 3:
                raise ValueError(f"set_yolo_params(prior_size=...) must have shape (fit_dim, nb_box) = "
                                 f"(1..3, {nb_box}), got {priors.shape}")
        out["priors"] = priors.tolist()
        out["fit_dim"] = int(p["fit_dim"]) if int(p["fit_dim"]) > 0 else priors.shape[0]
        if p["prior_noobj_prob"] is not None:
            out["prior_noobj_prob"] = _float_array(p["prior_noobj_prob"], "prior_noobj_prob", (nb_box,)).tolist()
        if p["param_ind_scales"] is not None:
            out["param_ind_scales"] = _float_array(p["param_ind_scales"], "param_ind_scales", (nb_param,)).tolist()
    defaults_es = {"position": 2.0, "size": 2.0, "probability": 1.0, "objectness": 2.0, "classes": 1.0,
                   "parameters": 1.0}
    if p["error_scales"] is not None:
        es = _float_array(p["error_scales"], "error_scales", (6,))
        out["error_scales"] = {n: float(v) if v > 0 else defaults_es[n] for n, v in zip(PARTS, es)}
    if p["slopes_and_maxes"] is not None:
        from cianna.detection.config import SlopesAndMaxes

        sm = _float_array(p["slopes_and_maxes"], "slopes_and_maxes", (6, 3))
        base = SlopesAndMaxes()
        parts = {}
        for n, (slope, mx, mn) in zip(PARTS, sm):
            d = getattr(base, n)
            parts[n] = {"slope": float(slope) if slope > 0 else d.slope, "max": float(mx) if mx < 1e5 else d.max,
                        "min": float(mn) if mn > -1e5 else d.min}
        out["slopes_and_maxes"] = parts
    if p["IoU_limits"] is not None:
        lim = _float_array(p["IoU_limits"], "IoU_limits", (8,))
        out["IoU_limits"] = {n: (float(v) if v > -1.99 else None) for n, v in zip(_IOU_LIMIT_NAMES, lim)}
    if p["fit_parts"] is not None:
        fp = _float_array(p["fit_parts"], "fit_parts", (6,))
        out["fit_parts"] = {n: (int(v) if v > -2 else None) for n, v in zip(PARTS, fp)}
    out.update(strict_box_size=int(p["strict_box_size"]), rand_startup=int(p["rand_startup"]),
               rand_prob_best_box_assoc=float(p["rand_prob_best_box_assoc"]), rand_prob=float(p["rand_prob"]),
               min_prior_forced_scaling=float(p["min_prior_forced_scaling"]),
               class_softmax=bool(p["class_softmax"]), diff_flag=bool(p["diff_flag"]),
               raw_output=bool(p["raw_output"]), max_nb_obj_per_image=int(p["max_nb_obj_per_image"]))
    return out
