"""CIANNA V-1.0 compatibility: ``import cianna.compat as cnn`` runs scripts written for ``import CIANNA as cnn``.

The module-level functions (:mod:`cianna.compat.api`) mirror the original interface -- names, keywords,
defaults, return values, files on disk (``net_save/``, ``fwd_res/``, ``error.txt``) and console output --
on top of the native :class:`cianna.nn.Network`. CIANNA V-1.0 behaviours that change predictions are
reproduced behind switches (:func:`set_compat_switches`), on here and off in the native API. The save-file
reader/writer is :mod:`cianna.compat.fileformat`, the converter :mod:`cianna.compat.convert`.
See ``docs/compat.md`` for the function/keyword table.
"""
from cianna.compat.api import (conv, create_dataset, delete_dataset, dense, forward, free_network,
                               get_compat_switches, get_network, init, linear, load, logistic, lrn, norm,
                               perf_eval, pool, print_arch_tex, relu, reset, save, set_compat_switches,
                               set_frozen_layers, set_yolo_params, softmax, swap_data_buffers, train, yolo)
from cianna.compat.yolo_params import (set_error_scales, set_fit_parts, set_IoU_limits, set_slopes_and_maxes,
                                       set_sm_single)

__all__ = ["init", "create_dataset", "delete_dataset", "swap_data_buffers", "linear", "relu", "logistic",
           "softmax", "yolo", "conv", "pool", "dense", "norm", "lrn", "set_yolo_params", "set_error_scales",
           "set_fit_parts", "set_IoU_limits", "set_sm_single", "set_slopes_and_maxes", "train", "forward",
           "perf_eval", "save", "load", "set_frozen_layers", "print_arch_tex", "free_network", "reset",
           "get_network", "set_compat_switches", "get_compat_switches"]
