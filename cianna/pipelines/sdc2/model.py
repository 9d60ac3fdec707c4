"""The 3D YOLO-CIANNA network for SDC2 HI cubes: YOLO head configuration and an anisotropic 3D backbone.

Sources are small spatially (beam-convolved size 3-15 px) and long spectrally (w20 of 6-70 channels), so the
backbone down-samples the spectral axis more than the spatial ones: a grid cell covers ``CELL = (16, 8, 8)``
voxels (channels, rows, columns). The network is fully convolutional: it is trained on ``(1, 128, 32, 32)``
sub-cubes and run on larger tiles (:func:`resize_network`). Sized for CPU inference (about 0.2 GFLOP per
training sub-cube, 1.6 kFLOP per voxel).

Layers (torch order D, H, W; RELU = CIANNA leaky ReLU):

==== ======================================== ============== ===================
 #    layer                                    stride         output (C, D, H, W)
==== ======================================== ============== ===================
 0    conv 8, 5x3x3                            2, 1, 1        8, 64, 32, 32
 1    conv 16, 3x3x3                           2              16, 32, 16, 16
 2    conv 32, 3x3x3                           2              32, 16, 8, 8
 3    conv 32, 3x3x3                           1              32, 16, 8, 8
 4    conv 48, 3x3x3                           2              48, 8, 4, 4
 5    conv 48, 3x3x3                           1              48, 8, 4, 4
 6    conv 48, 1x1x1                           1              48, 8, 4, 4
 7    conv nb_box*(8+6) = 42, 1x1x1, YOLO      1              42, 8, 4, 4
==== ======================================== ============== ===================
"""
from __future__ import annotations

import copy

from cianna.detection.config import YoloConfig
from cianna.detection.yolo_activation import YoloActivation

__all__ = ["CELL", "TRAIN_CROP", "make_yolo_config", "build_network", "resize_network"]

CELL = (16, 8, 8)  #: voxels per grid cell (D, H, W)
TRAIN_CROP = (128, 32, 32)  #: training sub-cube (D, H, W)


def make_yolo_config(rand_startup: int = 2048, **overrides) -> YoloConfig:
    """YOLO head configuration: 3 priors, 6 regressed parameters, DIoU, difficult flags (``yolo.md``).

    ``overrides``: :class:`YoloConfig` fields replacing the defaults below; nested groups (``error_scales``,
    ``slopes_and_maxes``, ``IoU_limits``) are merged key by key.
    """
    base = dict(
        nb_box=3, nb_class=0, nb_param=6, fit_dim=3,
        # rows: widths (x), heights (y), depths (z = channels)
        priors=[[4.0, 6.0, 9.0], [4.0, 6.0, 9.0], [14.0, 28.0, 48.0]],
        prior_noobj_prob=[0.1, 0.1, 0.1],
        error_scales={"position": 12.0, "size": 2.0, "probability": 1.0, "objectness": 2.0, "classes": 1.0,
                      "parameters": 4.0},
        slopes_and_maxes={"position": {"slope": 0.5, "max": 6.0, "min": -6.0},
                          "size": {"slope": 0.5, "max": 1.4, "min": -1.4},
                          "probability": {"slope": 0.5, "max": 6.0, "min": -6.0},
                          "objectness": {"slope": 0.5, "max": 6.0, "min": -6.0},
                          "classes": {"slope": 1.0, "max": 6.0, "min": -6.0},
                          "parameters": {"slope": 0.5, "max": 1.5, "min": -0.2}},
        param_ind_scales=[2.0, 1.0, 1.0, 0.5, 0.5, 0.5],
        IoU_limits={"good_IoU_lim": 0.4, "low_IoU_best_box_assoc": -0.1, "min_prob_IoU_lim": -0.3,
                    "min_obj_IoU_lim": -0.3, "min_param_IoU_lim": -0.2},
        IoU_type="DIoU", prior_dist_type="OFFSET", strict_box_size=0, rand_startup=rand_startup,
        rand_prob_best_box_assoc=0.5, rand_prob=0.02, diff_flag=True, error_type="natural",
        max_nb_obj_per_image=24)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merged = dict(base[key])
            for k, v in value.items():
                merged[k] = {**merged[k], **v} if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
            base[key] = merged
        else:
            base[key] = value
    return YoloConfig(**base)


def build_network(input_shape=(1,) + TRAIN_CROP, config: YoloConfig | None = None, seed: int = 0,
                  norm: bool = False):
    """Build the SDC2 3D YOLO network.

    Parameters
    ----------
    input_shape : tuple of int
        ``(1, D, H, W)``; D, H, W multiples of :data:`CELL`.
    config : YoloConfig, optional
        Default :func:`make_yolo_config`.
    seed : int
    norm : bool
        Group normalisation (groups of 8 channels) after every hidden conv, the leaky ReLU moved after it
        (conv LIN -> norm RELU); trains much faster with SGD.

    Returns
    -------
    cianna.nn.Network
    """
    from cianna.nn import Network

    c, d, h, w = (int(s) for s in input_shape)
    if c != 1 or d % CELL[0] or h % CELL[1] or w % CELL[2]:
        raise ValueError(f"input_shape {tuple(input_shape)} must be (1, D, H, W) with D, H, W multiples of {CELL}")
    cfg = config or make_yolo_config()
    net = Network((c, d, h, w), bias=0.1, seed=seed)
    layers = [(8, (5, 3, 3), (2, 1, 1), (2, 1, 1)), (16, 3, 2, 1), (32, 3, 2, 1), (32, 3, 1, 1), (48, 3, 2, 1),
              (48, 3, 1, 1), (48, 1, 1, 0)]
    for filters, k, stride, pad in layers:
        if norm:
            net.conv(filters, k, stride=stride, padding=pad, activation="LIN")
            net.norm(8, activation="RELU")
        else:
            net.conv(filters, k, stride=stride, padding=pad)
    net.conv(cfg.nb_channels, 1, activation=YoloActivation(cfg, input_shape=(c, d, h, w)))
    return net


def resize_network(net, input_shape):
    """Same weights, other input size (the network is fully convolutional).

    Parameters
    ----------
    net : cianna.nn.Network
    input_shape : tuple of int
        ``(1, D, H, W)``, multiples of :data:`CELL`.
    """
    from cianna.nn import Network

    cfg = copy.deepcopy(net.config())
    cfg["input_shape"] = [int(s) for s in input_shape]
    last = cfg["layers"][-1]
    act = last.get("activation")
    if isinstance(act, dict) and "input_shape" in act:
        act["input_shape"] = [int(s) for s in input_shape]
    new = Network.from_config(cfg)
    new.load_state_dict(net.state_dict())
    new.eval()
    return new
