"""Process-wide state of the CIANNA interface: networks by id, their datasets, and compatibility switches.

CIANNA keeps up to ``MAX_NETWORKS_NB = 10`` networks in global C arrays, addressed by integer ids; every
function takes ``network=`` (default: the last network created). :class:`NetState` holds what CIANNA keeps
per network (input description, batch size, compute method, datasets, iteration counter, YOLO parameters)
plus the native :class:`cianna.nn.Network` and the persistent optimiser state.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

__all__ = ["CompatSwitches", "NetState", "MAX_NETWORKS_NB", "DATASET_NAMES", "registry"]

#: Maximum number of networks of a process (CIANNA's static arrays).
MAX_NETWORKS_NB = 10
#: Dataset slots of a network.
DATASET_NAMES = ("TRAIN", "VALID", "TEST", "TRAIN_buf", "VALID_buf", "TEST_buf")


@dataclass
class CompatSwitches:
    """CIANNA V-1.0 behaviours reproduced by :mod:`cianna.compat` (all on by default here; the native API has
    them off). Change them with :func:`cianna.compat.set_compat_switches`. See ``docs/compat.md``.

    Attributes
    ----------
    dense_pivot_zeroing : bool
        Quirk 1: a dense layer after a dense layer with a non-linear activation has no bias (affects
        predictions of every network with two stacked dense layers, e.g. the MNIST example).
    strict_size_shrink : bool
        Quirk 2: in the mixed-precision modes a ``dense`` layer with ``nb_neurons % 8 == 0`` gets one
        neuron less unless ``strict_size=1``.
    full_window_avg_grad : bool
        Quirk 3: average-pool backward divides by the full window volume (training with padded AVG pools).
    error_not_divided_by_repeat : bool
        Quirk 14: the loss ``forward(repeat=k)`` appends to ``error.txt`` is not divided by ``k``.
    yolo_text_single_line : bool
        Quirk 13: ``forward(saving=1)`` of a YOLO network writes all examples on one text line.
    yolo_params_network0 : bool
        Quirk 15: ``set_yolo_params`` without ``network=`` configures network 0 (not the last one).
    pool_size_from_input : bool
        Quirk 26: the default ``p_size`` of ``pool`` comes from the network input dims, not the previous layer.
    yolo_association_quirks : bool
        Quirks 9 and 10 of the YOLO association (smallest-prior forcing index, zero-distance prior under
        ``strict_box_size``), for training parity.
    """

    dense_pivot_zeroing: bool = True
    strict_size_shrink: bool = True
    full_window_avg_grad: bool = True
    error_not_divided_by_repeat: bool = True
    yolo_text_single_line: bool = True
    yolo_params_network0: bool = True
    pool_size_from_input: bool = True
    yolo_association_quirks: bool = True

    def as_dict(self) -> dict:
        """Plain ``{field: value}`` dict of the switches."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class NetState:
    """Everything CIANNA keeps about one network.

    Attributes
    ----------
    id : int
    in_dim : tuple of 3 int
        CIANNA ``[W, H, D]`` (missing dims 1).
    ndim : int
        Spatial dims of the native network (number of ``in_dim`` entries given to ``init``).
    in_nb_ch, out_dim : int
    bias : float
        Network input bias.
    b_size : int
    comp_meth : str
    device : torch.device
    precision : str
        Canonical mixed-precision mode.
    dynamic_load, inference_only, adv_size : int
    net : cianna.nn.Network
    datasets : dict of str to ArrayDataset
    iteration : int
        Global iteration counter (output file names, LR decay).
    yolo_params : dict or None
        Keywords of the last ``set_yolo_params`` call for this network.
    trainer : object or None
        Persistent optimiser (momentum buffers survive across ``train`` calls, as in CIANNA).
    """

    id: int
    in_dim: tuple
    ndim: int
    in_nb_ch: int
    out_dim: int
    bias: float
    b_size: int
    comp_meth: str
    device: torch.device
    precision: str
    dynamic_load: int
    inference_only: int
    adv_size: int
    net: object
    datasets: dict = field(default_factory=dict)
    iteration: int = 0
    yolo_params: dict | None = None
    trainer: object = None
    trainer_key: tuple = ()
    perf: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple:
        """Torch-order input shape ``(C, *spatial)``."""
        return (self.in_nb_ch, *tuple(self.in_dim[:self.ndim])[::-1])

    @property
    def input_dim(self) -> int:
        """Length of one flat input row, ``W·H·D·C``."""
        w, h, d = self.in_dim
        return int(w * h * d * self.in_nb_ch)


class _Registry:
    """The networks of the process and the global switches."""

    def __init__(self):
        self.networks: dict[int, NetState] = {}
        self.last: int | None = None
        self.switches = CompatSwitches()
        self.logo_shown = False

    def reset(self) -> None:
        """Forget every network created through the interface (a fresh session)."""
        self.networks.clear()
        self.last = None
        self.switches = CompatSwitches()


registry = _Registry()
