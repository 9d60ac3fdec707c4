"""The CIANNA network: a strictly sequential list of layers with shapes inferred layer to layer.

Example
-------
>>> from cianna.nn import Network
>>> net = Network(input_shape=(1, 28, 28), bias=0.1, seed=0)
>>> net.conv(8, 5, padding=2).pool(2).conv(16, 5, padding=2).pool(2)      # doctest: +ELLIPSIS
Network(...)
>>> net.dense(256, drop_rate=0.5).dense(128, drop_rate=0.2).dense(10, activation="SMAX")  # doctest: +ELLIPSIS
Network(...)
>>> net.output_shape
(10,)

Shapes are in PyTorch order: ``input_shape = (C, W)``, ``(C, H, W)`` or ``(C, D, H, W)``; kernel sizes,
strides and paddings are given per spatial dimension in the same ``(D, H, W)`` order (CIANNA's ``[x, y, z]``
lists are the reverse; :mod:`cianna.compat` converts them).
"""
from __future__ import annotations

import logging
import math

import torch
from torch import nn

from cianna.nn.activations import ACTIVATION_DEFAULT_BIAS, parse_activation
from cianna.nn.conv import Conv
from cianna.nn.dense import Dense
from cianna.nn.init import initialise_
from cianna.nn.layer import DROP_MODES, Layer
from cianna.nn.norm import LRN, GroupNorm
from cianna.nn.pool import Pool

__all__ = ["Network", "LAYER_TYPES"]

log = logging.getLogger(__name__)

LAYER_TYPES = {"conv": Conv, "pool": Pool, "dense": Dense, "norm": GroupNorm, "lrn": LRN}


class Network(nn.Module):
    """Sequential CIANNA network.

    Parameters
    ----------
    input_shape : tuple of int
        Shape of one input example, channel first: ``(C, W)``, ``(C, H, W)`` or ``(C, D, H, W)``; ``(F,)`` for
        plain feature vectors (dense layers only).
    bias : float, default 0.1
        CIANNA's network input bias: the constant bias input of the first layer (always overrides that
        layer's own ``bias``).
    seed : int, optional
        Seed of the initialisation and dropout generators (default: drawn from torch's global RNG, so
        ``torch.manual_seed`` makes it reproducible).
    dense_pivot_zeroing : bool, default False
        Compatibility switch reproducing CIANNA V-1.0 quirk 1: a dense layer following a dense layer with
        a non-linear activation gets a zero bias input (no effective bias). :mod:`cianna.compat` turns it
        on; native networks keep normal biases.

    Attributes
    ----------
    layers : torch.nn.ModuleList of Layer
    """

    def __init__(self, input_shape, *, bias: float = 0.1, seed: int | None = None,
                 dense_pivot_zeroing: bool = False):
        super().__init__()
        shape = tuple(int(s) for s in input_shape)
        if not 1 <= len(shape) <= 4 or any(s < 1 for s in shape):
            raise ValueError(f"input_shape={tuple(input_shape)} must be (F,) for feature vectors, or (C, W), "
                             "(C, H, W) or (C, D, H, W) for images, with positive sizes")
        self.input_shape = shape
        self.input_bias = float(bias)
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        self.seed = int(seed)
        self.dense_pivot_zeroing = bool(dense_pivot_zeroing)
        self.layers = nn.ModuleList()
        self._init_generator = torch.Generator().manual_seed(self.seed)
        self._drop_generators: dict[str, torch.Generator] = {}
        self._drop_mode = "AVG_MODEL"

    # ------------------------------------------------------------------ building
    @property
    def ndim(self) -> int:
        """Number of spatial dimensions of the input (0 for feature vectors, 1, 2 or 3)."""
        return len(self.input_shape) - 1

    @property
    def output_shape(self) -> tuple:
        """Shape of one output example (input shape if the network is empty)."""
        return self.layers[-1].out_shape if len(self.layers) else self.input_shape

    def _prev_shape(self) -> tuple:
        return self.output_shape

    def _bias_value(self, bias, activation) -> float:
        if not len(self.layers):
            return self.input_bias
        if bias is not None:
            return float(bias)
        return ACTIVATION_DEFAULT_BIAS[parse_activation(activation).name]

    def _check_can_follow(self, kind: str) -> None:
        if len(self.layers):
            last = self.layers[-1]
            if last.activation.output_only:
                raise ValueError(f"cannot add a {kind} layer after layer {len(self.layers) - 1} whose activation "
                                 f"{last.activation.name} is only allowed on the output layer")
            if kind == "pool" and last.kind == "pool":
                raise ValueError("two consecutive pool layers are not allowed (CIANNA rule)")
            if kind == "pool" and last.has_dropout:
                raise ValueError(f"a pool layer cannot follow layer {len(self.layers) - 1} which has dropout")
            if kind in ("norm", "lrn") and last.kind not in ("conv", "pool"):
                raise ValueError(f"a {kind} layer must follow a conv or pool layer, not {last.kind}")
        elif kind in ("norm", "lrn"):
            raise ValueError(f"a {kind} layer cannot be the first layer")

    def add(self, layer: Layer, *, init: str = "xavier", init_scaling: float | None = None) -> "Network":
        """Append an already built layer; initialises its weights with a CIANNA law.

        Returns
        -------
        Network
            ``self``, so calls chain.
        """
        prev = self._prev_shape()
        same = tuple(layer.in_shape) == tuple(prev)
        reshaped = math.prod(layer.in_shape) == math.prod(prev) and (layer.kind == "dense" or len(prev) == 1)
        if not (same or reshaped):
            raise ValueError(f"layer input shape {layer.in_shape} does not match the previous output {prev}")
        self._check_can_follow(layer.kind)
        if layer.kind in ("conv", "dense"):
            initialise_([layer.weight, layer.bias_weight], init, fan_in=layer.fan_in, fan_out=layer.fan_out,
                        layer_kind=layer.kind, scaling=init_scaling, generator=self._init_generator)
        layer._generator_fn = self._drop_generator
        layer.drop_mode = self._drop_mode
        self.layers.append(layer)
        self._apply_quirks()
        return self

    def conv(self, out_channels: int, kernel_size=3, *, stride=1, padding=0, int_padding=0, activation="RELU",
             bias: float | None = None, drop_rate: float = 0.0, init: str = "xavier",
             init_scaling: float | None = None, input_shape=None) -> "Network":
        """Append a convolution (see :class:`~cianna.nn.conv.Conv`).

        Parameters
        ----------
        out_channels : int
            Number of filters.
        kernel_size, stride, padding, int_padding : int or tuple of int
            Per spatial dimension, torch order (D, H, W).
        activation : str, default "RELU"
            CIANNA activation (RELU is leaky 0.05 and saturates at 800).
        bias : float, optional
            Constant bias input (default by activation: RELU 0.1, LOGI −1, LIN/YOLO 0.5, SMAX 0.1).
        drop_rate : float
        init, init_scaling : str, float
            Initialiser (:mod:`cianna.nn.init`).
        input_shape : tuple of int, optional
            ``(C, *spatial)`` to reshape a preceding dense output; required after a dense layer.
        """
        prev = self._prev_shape()
        if len(prev) == 1 and not len(self.layers):
            raise ValueError(f"the network input is a feature vector {prev}: a conv layer needs an image input "
                             "shape (C, W), (C, H, W) or (C, D, H, W)")
        if len(prev) == 1:
            if input_shape is None:
                raise ValueError("conv after a dense layer needs input_shape=(C, *spatial) to reshape its output")
            input_shape = tuple(int(s) for s in input_shape)
            if math.prod(input_shape) != prev[0]:
                raise ValueError(f"input_shape={input_shape} has {math.prod(input_shape)} values but the previous "
                                 f"dense layer has {prev[0]} neurons")
            if self.layers[-1].has_dropout:
                raise ValueError("a dense layer with dropout cannot feed a conv layer (CIANNA rule)")
            prev = input_shape
        layer = Conv(prev, out_channels, kernel_size, stride, padding, int_padding, activation,
                     self._bias_value(bias, activation), drop_rate)
        return self.add(layer, init=init, init_scaling=init_scaling)

    def pool(self, kernel_size=None, *, stride=None, padding=0, pool_type: str = "MAX", activation="LIN",
             global_pool: bool = False, drop_rate: float = 0.0) -> "Network":
        """Append a pooling layer (see :class:`~cianna.nn.pool.Pool`).

        ``kernel_size`` defaults to 2 in every spatial dimension of size > 1 (1 elsewhere).
        """
        prev = self._prev_shape()
        if len(prev) == 1:
            raise ValueError(f"pool needs a (C, *spatial) input, the previous output is a feature vector {prev}")
        if kernel_size is None:
            kernel_size = tuple(2 if s > 1 else 1 for s in prev[1:])
        layer = Pool(prev, kernel_size, stride, padding, pool_type, global_pool, activation, drop_rate)
        return self.add(layer)

    def dense(self, out_features: int, *, activation="RELU", bias: float | None = None, drop_rate: float = 0.0,
              init: str = "xavier", init_scaling: float | None = None) -> "Network":
        """Append a dense layer (see :class:`~cianna.nn.dense.Dense`)."""
        layer = Dense(self._prev_shape(), out_features, activation, self._bias_value(bias, activation), drop_rate)
        return self.add(layer, init=init, init_scaling=init_scaling)

    def norm(self, group_size: int = 8, *, set_off: int = 0, activation="LIN") -> "Network":
        """Append a CIANNA group normalisation (see :class:`~cianna.nn.norm.GroupNorm`)."""
        return self.add(GroupNorm(self._prev_shape(), group_size, set_off, activation))

    def lrn(self, range: int = 5, *, k: float = 1.0, alpha: float = 1.0, beta: float = 0.5,
            activation="LIN") -> "Network":
        """Append a cross-channel local response normalisation (see :class:`~cianna.nn.norm.LRN`)."""
        return self.add(LRN(self._prev_shape(), range, k, alpha, beta, activation))

    def _apply_quirks(self) -> None:
        for prev, layer in zip(self.layers[:-1], self.layers[1:]):
            if layer.kind == "dense":
                # the pivot survives only a linear activation, and only if it was non-zero at the input
                zero = (self.dense_pivot_zeroing and prev.kind == "dense"
                        and (prev.activation.name != "LIN" or prev.bias_input_scale == 0.0))
                layer.bias_input_scale = 0.0 if zero else 1.0

    def set_quirks(self, *, dense_pivot_zeroing: bool | None = None, full_window_avg_grad: bool | None = None):
        """Turn CIANNA V-1.0 compatibility switches on or off (see the class docstring and ``docs/compat.md``)."""
        if dense_pivot_zeroing is not None:
            self.dense_pivot_zeroing = bool(dense_pivot_zeroing)
        if full_window_avg_grad is not None:
            for layer in self.layers:
                if layer.kind == "pool":
                    layer.full_window_avg_grad = bool(full_window_avg_grad)
        self._apply_quirks()
        return self

    # ------------------------------------------------------------------ running
    def _drop_generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        gen = self._drop_generators.get(key)
        if gen is None:
            gen = torch.Generator(device=device).manual_seed(self.seed + 1)
            self._drop_generators[key] = gen
        return gen

    @property
    def drop_mode(self) -> str:
        """Inference dropout mode: ``"AVG_MODEL"`` (scale by 1−p) or ``"MC_MODEL"`` (random masks)."""
        return self._drop_mode

    @drop_mode.setter
    def drop_mode(self, mode: str) -> None:
        mode = {"AVG": "AVG_MODEL", "MC": "MC_MODEL"}.get(str(mode).upper(), str(mode).upper())
        if mode not in DROP_MODES:
            raise ValueError(f"drop_mode={mode!r}: expected 'AVG_MODEL' or 'MC_MODEL'")
        self._drop_mode = mode
        for layer in self.layers:
            layer.drop_mode = mode

    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        """Reshape flat rows to ``(N, *input_shape)`` and reject inputs of the wrong shape.

        Raises
        ------
        ValueError
            If ``x`` is neither ``(N, *input_shape)`` nor ``(N, prod(input_shape))``.
        """
        if tuple(x.shape[1:]) == self.input_shape:
            return x
        if x.dim() == 2 and x.shape[1] == math.prod(self.input_shape):
            return x.reshape(x.shape[0], *self.input_shape)
        raise ValueError(f"network input must have shape (N, {', '.join(map(str, self.input_shape))}) or "
                         f"(N, {math.prod(self.input_shape)}), got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor, *, return_preact: bool = False, start: int = 0):
        """Run the layers in order.

        Parameters
        ----------
        x : torch.Tensor, shape (N, *input_shape) or (N, prod(input_shape))
            Input batch (or, with ``start > 0``, the output of layer ``start − 1``).
        return_preact : bool
            Return ``(preact, output)`` of the last layer (the output loss needs both).
        start : int
            Index of the first layer to run (MC-dropout re-runs only the network tail).
        """
        if not len(self.layers):
            raise RuntimeError("the network has no layer")
        if start == 0:
            x = self.check_input(x)
        layers = list(self.layers._modules.values())  # plain list: ModuleList indexing is slow per call
        for layer in layers[start:-1]:
            x = layer(x)
        return layers[-1](x, return_preact=return_preact)

    def first_dropout_layer(self) -> int | None:
        """Index of the first layer with dropout, or None."""
        for i, layer in enumerate(self.layers):
            if layer.has_dropout:
                return i
        return None

    def head(self, x: torch.Tensor, stop: int) -> torch.Tensor:
        """Output of layer ``stop − 1`` (layers ``0 … stop−1``), used to share work across MC repeats."""
        x = self.check_input(x)
        for i in range(stop):
            x = self.layers[i](x)
        return x

    # ------------------------------------------------------------------ utilities
    def freeze(self, layers, frozen: bool = True) -> "Network":
        """Freeze (or unfreeze) layers: they still back-propagate errors but their weights stay fixed.

        Parameters
        ----------
        layers : int, iterable of int, or iterable of bool
            Layer indices, or CIANNA's per-layer flag list (``set_frozen_layers``).
        """
        if isinstance(layers, int):
            layers = [layers]
        layers = list(layers)
        if layers and all(isinstance(v, bool) for v in layers):
            for i, flag in enumerate(layers):
                self._set_frozen(i, bool(flag))
            return self
        for i in layers:
            self._set_frozen(int(i), frozen)
        return self

    def _set_frozen(self, index: int, frozen: bool) -> None:
        if not 0 <= index < len(self.layers):
            raise IndexError(f"layer index {index} out of range (network has {len(self.layers)} layers)")
        layer = self.layers[index]
        layer.frozen = frozen
        for p in layer.parameters():
            p.requires_grad_(not frozen)

    def num_parameters(self) -> int:
        """Total number of weights."""
        return sum(p.numel() for p in self.parameters())

    def summary(self) -> str:
        """One line per layer: index, type, input and output shapes, activation, parameter count."""
        lines = [f"Network input {self.input_shape}, input bias {self.input_bias}"]
        for i, layer in enumerate(self.layers):
            n = sum(p.numel() for p in layer.parameters())
            drop = f" drop {layer.drop_rate:g}" if layer.has_dropout else ""
            frozen = " [frozen]" if layer.frozen else ""
            lines.append(f"{i:3d} {layer.kind:5s} {str(layer.in_shape):>18s} -> {str(layer.out_shape):<18s} "
                         f"{layer.activation.to_string():<20s} {n:>10d}{drop}{frozen}")
        lines.append(f"total weights: {self.num_parameters()}")
        return "\n".join(lines)

    def config(self) -> dict:
        """JSON-serialisable architecture: ``Network.from_config(net.config())`` rebuilds it (weights aside)."""
        layers = []
        for i, layer in enumerate(self.layers):
            entry = {"type": layer.kind, **layer.config()}
            if layer.kind == "conv" and len(self.layers[i - 1].out_shape if i else self.input_shape) == 1:
                entry["input_shape"] = list(layer.in_shape)
            layers.append(entry)
        return {"input_shape": list(self.input_shape), "bias": self.input_bias, "seed": self.seed,
                "dense_pivot_zeroing": self.dense_pivot_zeroing, "layers": layers}

    @classmethod
    def from_config(cls, config: dict) -> "Network":
        """Rebuild a network (random weights) from :meth:`config` output.

        Raises
        ------
        ValueError
            On an unknown layer type or inconsistent shapes, naming the layer index.
        """
        try:
            net = cls(config["input_shape"], bias=config.get("bias", 0.1), seed=config.get("seed", 0),
                      dense_pivot_zeroing=config.get("dense_pivot_zeroing", False))
            layer_configs = config["layers"]
        except KeyError as exc:
            raise ValueError(f"network config is missing the key {exc}") from None
        for i, entry in enumerate(layer_configs):
            entry = dict(entry)
            kind = entry.pop("type", None)
            try:
                if kind == "conv":
                    in_shape = entry.pop("input_shape", None)
                    prev = tuple(in_shape) if in_shape is not None else net._prev_shape()
                    layer = Conv(prev, **entry)
                elif kind == "pool":
                    layer = Pool(net._prev_shape(), **entry)
                elif kind == "dense":
                    layer = Dense(net._prev_shape(), **entry)
                elif kind == "norm":
                    layer = GroupNorm(net._prev_shape(), **entry)
                elif kind == "lrn":
                    layer = LRN(net._prev_shape(), **entry)
                else:
                    raise ValueError(f"unknown layer type {kind!r}")
                net.add(layer)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"layer {i} ({kind}) of the network config: {exc}") from None
        return net

    def save(self, path):
        """Save architecture and weights to a safetensors checkpoint (atomic write); see :func:`cianna.load`."""
        from cianna.train.checkpoint import save_checkpoint

        return save_checkpoint(path, self)

    @classmethod
    def load(cls, path) -> "Network":
        """Load a network written by :meth:`save` (or a training checkpoint)."""
        from cianna.train.checkpoint import load_network

        return load_network(path)

    def predict(self, inputs, **kwargs):
        """Batched inference with AVG/MC dropout; see :func:`cianna.train.predict.predict`."""
        from cianna.train.predict import predict

        return predict(self, inputs, **kwargs)

    def __repr__(self) -> str:
        return f"Network(input_shape={self.input_shape}, layers={len(self.layers)}, " \
               f"output_shape={self.output_shape})"
