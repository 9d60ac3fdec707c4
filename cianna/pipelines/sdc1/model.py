"""YOLO-CIANNA SDC1 network: a reduced-width, CPU-sized variant of the spec network (``sdc1.md`` §3.8).

Differences from the spec network, and why
------------------------------------------
* **Grid cell 8 px instead of 16 px** (three stride-2 convolutions instead of four). On the simulated
  population 88 % of the target boxes are the 5 × 5 px minimum and a 128² patch holds ≈ 25 targets; 8 px cells
  keep almost every cell to at most one source with fewer priors, and make the network cheaper: the
  16 px version needs its 1024/2048-channel head to resolve crowded cells.
* **Widths about 1/4 to 1/8 of the spec** (16 … 256 channels instead of 32 … 2048), 15 conv layers, one
  GroupNorm before the head, no dropout: the budget is ≈ 1 h of training on one shared CPU core.
* **6 priors** (w × h px): three 6 × 6, 12 × 9, 9 × 12, 24 × 24 (the spec's nine minus three of its six
  identical small ones, since cells are 4× smaller in area); λ_noobj 0.15 (small) / 0.01 (large).

Everything else follows ``yolo.md`` §13 (SDC1 configuration): DIoU, OFFSET prior distance, slopes and
clips, error scales, IoU limits, five regressed parameters with ``param_ind_scales = [2, 2, 1, 0.5, 0.5]``.
The network is fully convolutional: the same weights run on 128² training patches and on larger
inference tiles (:func:`network_for_size`).
"""
from __future__ import annotations

import copy

from cianna.detection.config import YoloConfig
from cianna.detection.yolo_activation import YoloActivation
from cianna.nn import Network

__all__ = ["CELL", "PRIORS", "yolo_config", "build_network", "network_for_size"]

#: Grid cell (network down-sampling factor) in pixels.
CELL = 8
#: Prior widths and heights in pixels (CIANNA layout: row 0 widths, row 1 heights).
PRIORS = [[6.0, 6.0, 6.0, 12.0, 9.0, 24.0], [6.0, 6.0, 6.0, 9.0, 12.0, 24.0]]


def yolo_config(max_nb_obj: int = 100, rand_startup: int = 2560) -> YoloConfig:
    """YOLO settings of ``yolo.md`` §13 (SDC1) with the priors of this module.

    Parameters
    ----------
    max_nb_obj : int
        Targets per training patch (row capacity).
    rand_startup : int
        Images seen with random association at the start of training.
    """
    nb = len(PRIORS[0])
    return YoloConfig(
        nb_box=nb, nb_class=0, nb_param=5, priors=PRIORS, fit_dim=2,
        prior_noobj_prob=[0.15 if w <= 6 else 0.01 for w in PRIORS[0]],
        error_scales={"position": 36.0, "size": 0.2, "probability": 0.5, "objectness": 2.0, "classes": 0.0,
                      "parameters": 5.0},
        slopes_and_maxes={"position": {"slope": 0.5, "max": 6.0, "min": -6.0},
                          "size": {"slope": 0.5, "max": 1.2, "min": -1.2},
                          "probability": {"slope": 0.2, "max": 6.0, "min": -6.0},
                          "objectness": {"slope": 0.5, "max": 6.0, "min": -6.0},
                          "classes": {"slope": 1.0, "max": 6.0, "min": -6.0},
                          "parameters": {"slope": 0.5, "max": 1.5, "min": -0.2}},
        param_ind_scales=[2.0, 2.0, 1.0, 0.5, 0.5],
        IoU_limits={"good_IoU_lim": 0.5, "low_IoU_best_box_assoc": -0.1, "min_prob_IoU_lim": -0.3,
                    "min_obj_IoU_lim": -0.3, "min_param_IoU_lim": -0.1},
        IoU_type="DIoU", prior_dist_type="OFFSET", strict_box_size=0, rand_startup=rand_startup,
        rand_prob_best_box_assoc=0.9, rand_prob=0.02, min_prior_forced_scaling=0.0, error_type="natural",
        raw_output=True, max_nb_obj_per_image=max_nb_obj)


def build_network(size: int = 128, config: YoloConfig | None = None, seed: int = 0) -> Network:
    """The reduced SDC1 network on ``size × size`` single-channel inputs (``size`` multiple of 8).

    Returns
    -------
    Network
        Output ``(N, 6·13, size/8, size/8)``, YOLO-activated.
    """
    if size % CELL:
        raise ValueError(f"input size {size} must be a multiple of the {CELL} px grid cell")
    cfg = config or yolo_config()
    net = Network((1, size, size), bias=0.1, seed=seed)
    net.conv(16, 5, padding=2)                   # 1   full resolution
    net.conv(16, 2, stride=2)                    # 2   /2
    net.conv(24, 3, padding=1)                   # 3
    net.conv(32, 3, padding=1)                   # 4
    net.conv(48, 2, stride=2)                    # 5   /4
    net.conv(64, 1)                              # 6
    net.conv(64, 3, padding=1)                   # 7
    net.conv(96, 2, stride=2)                    # 8   /8 = grid cell
    net.conv(96, 1)                              # 9
    net.conv(128, 3, padding=1)                  # 10
    net.conv(96, 1)                              # 11
    net.conv(128, 3, padding=1)                  # 12
    net.conv(256, 1)                             # 13
    net.norm(4)                                  # GroupNorm, 4 channels per group, linear
    net.conv(256, 1)                             # 14
    net.conv(cfg.nb_channels, 1, activation=YoloActivation(cfg, input_shape=(1, size, size)))  # 15
    return net


def network_for_size(net: Network, size: int) -> Network:
    """Copy of a fully convolutional network rebuilt for ``size × size`` inputs, weights shared by value.

    Parameters
    ----------
    net : Network
        Trained network (any input size).
    size : int
        New input side in pixels.
    """
    cfg = copy.deepcopy(net.config())
    cfg["input_shape"] = [cfg["input_shape"][0], int(size), int(size)]
    for layer in cfg["layers"]:
        act = layer.get("activation")
        if isinstance(act, dict) and "input_shape" in act:
            act["input_shape"] = [1, int(size), int(size)]
    new = Network.from_config(cfg)
    new.load_state_dict(net.state_dict())
    return new.eval()
