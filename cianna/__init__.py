"""cianna: CIANNA (Convolutional Interactive Artificial Neural Networks by/for Astrophysicists) on PyTorch.

The package offers a CIANNA-like network builder (:class:`cianna.Network`), a trainer reproducing CIANNA's
optimiser and conventions (:class:`cianna.Trainer`), the YOLO-CIANNA detector (:mod:`cianna.detection`),
sky simulators (:mod:`cianna.sim`), challenge scorers (:mod:`cianna.scoring`) and science pipelines
(:mod:`cianna.pipelines`). Scripts written for the original interface run through :mod:`cianna.compat`.
"""
import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

from cianna.nn import Network  # noqa: E402
from cianna.train import (ArrayDataset, StreamingDataset, Trainer, load_network, predict,  # noqa: E402
                          save_checkpoint)


def load(path):
    """Load a network saved with :meth:`Network.save` / :func:`save_checkpoint` (alias of :func:`load_network`)."""
    return load_network(path)


__all__ = ["Network", "Trainer", "ArrayDataset", "StreamingDataset", "predict", "load", "load_network",
           "save_checkpoint", "__version__"]
