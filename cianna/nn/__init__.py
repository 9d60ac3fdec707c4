"""Framework core: CIANNA layers, activations, initialisers and the sequential :class:`Network`."""
from cianna.nn.activations import (Activation, Linear, Logistic, LossResult, Relu, Softmax, parse_activation,
                                   register_activation)
from cianna.nn.conv import Conv
from cianna.nn.dense import Dense
from cianna.nn.layer import Layer
from cianna.nn.network import Network
from cianna.nn.norm import LRN, GroupNorm
from cianna.nn.pool import Pool

__all__ = ["Activation", "Linear", "Relu", "Logistic", "Softmax", "LossResult", "parse_activation",
           "register_activation", "Layer", "Conv", "Dense", "Pool", "GroupNorm", "LRN", "Network"]
